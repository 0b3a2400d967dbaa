"""Pipelines over transformers users write themselves, against one process.

A hand-written GPT (its own attention, an lm_head tied to the embedding, laid out as
`embed`, `blocks`, `head`) and an nn.Sequential of nn.TransformerEncoderLayer train as one
process under every schedule. What was wrong: a module cut by that convention was trusted
to compute head(blocks(embed(x))). A final LayerNorm kept beside `head` never ran nor
trained (the fit then failed at its end, loading the weights back: "Missing key(s)"), and a
forward that scaled the embedding or handed its blocks a causal mask trained another model
without a word. Each is now refused before any rank starts, naming what differs. And under
the zero-bubble schedule a stage with no trainable weight (embedding and first block frozen)
handed the next stage an input without gradient, whose weight gradients then came out wrong
(0.3 off one process after one step); such a stage's output now asks for a gradient."""
import numpy as np
import pytest

from bigtrain.parallel.pipeline import Pipeline
from tests.dist import run_ranks
from tests.parallel.transformer_review_cases import (BATCH, build, compiled, data, max_diff,
                                                     reference, run_cases)

TOL = 1e-5
SCHEDULES = {"gpipe": 2, "1f1b": 2, "interleaved": 2, "zero_bubble": 2}  # micro-batches


def _pipeline(schedule):
    return Pipeline(stages=2, microbatches=SCHEDULES[schedule], schedule=schedule)


@pytest.mark.slow
def test_user_transformers_train_as_one_process_under_every_schedule():
    cases = [("hand_gpt", _pipeline(s)) for s in SCHEDULES] + [("encoder", _pipeline("1f1b"))]
    got = run_ranks(run_cases, 2, cases, timeout=90)[0]
    for kind in ("hand_gpt", "encoder"):
        ref = reference(kind)
        for case in cases:
            if case[0] == kind:
                assert max_diff(ref, got[repr(case)]) <= TOL, case
    state = got[repr(cases[0])]
    assert (state["embed.tok.weight"] == state["head.lm.weight"]).all()  # still tied


def test_weights_beside_the_chain_are_refused_before_any_rank_starts():
    model, task = build("final_norm_beside")
    with pytest.raises(ValueError, match=r"'ln_f.weight', 'ln_f.bias' outside the layers a "
                                         r"pipeline runs.*into `head`"):
        Pipeline(stages=2).check_model(task.module, 2)
    x, y = data()
    with pytest.raises(ValueError, match="outside the layers a pipeline runs"):
        model.fit(x, y, batch_size=BATCH, verbose=0, strategy=_pipeline("gpipe"), devices=2,
                  timeout=30)


@pytest.mark.parametrize("kind", ["scaled_embedding", "masked_encoder"])
def test_a_forward_that_is_not_its_chain_is_refused_before_any_rank_starts(kind):
    model = compiled(kind)
    x, y = data()
    with pytest.raises(ValueError, match="forward does more than run the layers a pipeline "
                                         "cuts.*differs from forward's"):
        model.fit(x, y, batch_size=BATCH, verbose=0, strategy=_pipeline("gpipe"), devices=2,
                  timeout=30)
    fresh = compiled(kind).get_weights()  # the same seed: the refused fit trained nothing
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), fresh))


def test_more_microbatches_than_samples_names_a_batch_size_that_fits():
    with pytest.raises(ValueError, match=r"batch of 2 samples per pipeline replica; use a batch "
                                         r"size of 4 \(per replica\), or microbatches among "
                                         r"\[1, 2\]$"):
        Pipeline(stages=2, microbatches=4, schedule="gpipe").validate(2, 2)  # not "4 or 4"
    with pytest.raises(ValueError, match=r"use a batch size of 4 or 8 \(per replica\)"):
        Pipeline(stages=2, microbatches=4, schedule="gpipe").validate(2, 6)


def test_the_forward_check_leaves_the_model_as_it_was():
    import torch
    from torch import nn

    from bigtrain.parallel.pipeline_partition import chain_layers, refuse_off_chain
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 3))
    model[1].eval()  # frozen statistics, as a user may keep them
    stats = model[1].running_mean.clone()
    sample = torch.randn(5, 4)
    state = torch.get_rng_state()
    refuse_off_chain(model, chain_layers(model), sample)
    assert model.training and not model[1].training and model[2].training
    assert torch.equal(model[1].running_mean, stats)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_stage_without_trainable_weights_trains_as_one_process_under_zero_bubble():
    cases = [("frozen_front", Pipeline(stages=2, microbatches=2, schedule=s, split=[1, 2, 1, 2]))
             for s in ("zero_bubble", "interleaved")]  # embed | blocks 0-1 | 2 | 3 + head
    got = run_ranks(run_cases, 2, cases, timeout=60)[0]
    ref = reference("frozen_front")
    for case in cases:
        assert max_diff(ref, got[repr(case)]) <= TOL, case[1].schedule
