"""The callbacks of `evaluate(callbacks=...)` and `predict(callbacks=...)`, called as Keras
calls them: evaluate runs the test hooks (on_test_begin, on_test_batch_begin/end with the
running logs, on_test_end with the returned logs), predict the predict hooks
(on_predict_batch_end gets {"outputs": the batch's outputs})."""
from __future__ import annotations


def hook_list(model, callbacks, rows: int, batch_size: int):
    """The CallbackList `callbacks` run in (None for none), with Keras's params; rank 0
    alone runs the main-process-only ones, as in fit."""
    if not callbacks:
        return None
    from bigtrain.engine.callbacks._util import is_main_process
    from bigtrain.engine.callbacks.base import CallbackList
    params = {"verbose": 0, "epochs": 1, "steps": -(-rows // batch_size)}
    return CallbackList(list(callbacks), model, params, is_main_process())


def batch_outputs(outs: list, keys):
    """The last batch's outputs as predict returns them: an array, a list, or a dict.
    `outs`: per output, the list of its batches' CPU tensors so far; `keys`: a dict
    output's keys, or None."""
    arrays = [o[-1].numpy() for o in outs]
    if keys is not None:
        return dict(zip(keys, arrays))
    return arrays[0] if len(arrays) == 1 else arrays
