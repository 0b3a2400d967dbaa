"""What fit says, before any rank starts, about dtypes it would otherwise take silently.

bigtrain's mixed precision is fit's `precision=` switch: weights, optimizer state, losses
and metrics stay float32 while the forward runs in bf16/float16 (torch.autocast, or FSDP's
MixedPrecisionPolicy under the sharded strategies), as Keras's "mixed_bfloat16" and
"mixed_float16" policies keep their variables float32. Two settings look like they ask for
something else and would pass unnoticed:

- a Keras global dtype policy (`keras.mixed_precision.set_global_policy("mixed_bfloat16")`)
  or floatx (`keras.config.set_floatx("float64")`): bigtrain's layers do not read Keras's
  global state, so the fit would train in `precision` as if it were unset;
- trainable weights in float16/bfloat16 (`module.half()`, `.bfloat16()`): the optimizer
  then updates them in that dtype, where a step smaller than about 1/256 (bf16) of a weight
  rounds away, so training can stall without an error.

Both warn with the fix; neither changes what trains.

Example:
    check_dtypes(model.net, "32")   # warns when keras's global policy is mixed_bfloat16
"""
from __future__ import annotations

import sys
import warnings

import torch
from torch import nn

from bigtrain.launch import join as dist_env

#: Keras's mixed policies and the precision= that does what they do
KERAS_MIXED = {"mixed_bfloat16": "bf16-mixed", "mixed_float16": "16-mixed"}


class DtypeWarning(UserWarning):
    """A dtype setting that this fit does not follow, or that loses updates."""


def keras_policy_note(precision: str) -> str | None:
    """Why Keras's global dtype policy or floatx, when set and imported, is not what this
    fit does, and what to pass instead; None when Keras is not imported or agrees."""
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    try:
        policy = keras.mixed_precision.global_policy().name
        floatx = keras.config.floatx()
    except Exception:  # noqa: BLE001 - a Keras without these: nothing to compare
        return None
    if policy in KERAS_MIXED and KERAS_MIXED[policy] == precision:
        return None  # the same mixed precision, asked for both ways
    if policy == "float32" and floatx == "float32":
        return None
    want = KERAS_MIXED.get(policy)
    fix = (f"pass fit(..., precision={want!r}), which computes in "
           f"{policy.removeprefix('mixed_')} and keeps weights, losses and metrics in "
           "float32 as Keras's policy does" if want else
           "bigtrain's layers compute in float32 (float64 or half-precision layers are "
           "not supported); for mixed precision pass fit(..., precision='bf16-mixed')")
    return (f"Keras's global dtype policy is {policy!r} (floatx {floatx!r}), which "
            f"bigtrain's layers do not read: this fit trains with precision={precision!r}. "
            f"To train as that policy does, {fix}; to silence this, "
            "keras.mixed_precision.set_global_policy('float32')")


def half_weights_note(net: nn.Module) -> str | None:
    """Why float16/bfloat16 trainable weights would lose updates, naming the first; None
    when every trainable float weight is float32 or wider."""
    for name, p in net.named_parameters():
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            kind = str(p.dtype).removeprefix("torch.")
            return (f"the model's trainable weights are {kind} (first: {name!r}), so the "
                    f"optimizer updates them in {kind}, where a step much smaller than a "
                    "weight rounds away and training can stall silently. Keep the weights "
                    "float32 (model.net.float(), or build the module in float32) and fit "
                    "with precision='bf16-mixed' (or '16-mixed'): the forward then runs in "
                    "half precision and the updates land in float32, as Keras's mixed "
                    "policies do")
    return None


def check_dtypes(net: nn.Module, precision: str) -> None:
    """Warn (DtypeWarning, main process only) about a Keras global dtype policy this fit
    does not follow and about half-precision trainable weights (see the module docstring)."""
    if not dist_env.is_main_process():
        return
    for note in (keras_policy_note(precision), half_weights_note(net)):
        if note:
            warnings.warn(note, DtypeWarning, stacklevel=4)
