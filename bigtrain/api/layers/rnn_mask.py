"""Running a recurrent layer over a Keras time-step mask, with Keras's semantics.

Keras (every backend) steps through time and, at a masked step, keeps the previous state
and repeats the previous output (zeros before the first real step), or, with
`zero_output_for_mask` (set by Bidirectional when it returns sequences), outputs zeros.
Since the state starts at zero, the output at step t is the state h_t in the first case and
mask_t * h_t in the second. `go_backwards` reverses the inputs and the mask together.

Two exact ways to get there:
- padding at the end or at the start of every row (Keras's pad_sequences pads at the
  start by default), each row with a real step: torch's packed sequences run the fused
  kernel over the real steps only;
- any other mask: one fused kernel call per step, holding the state where the step is masked.
"""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


def padded_lengths(mask: torch.Tensor) -> tuple[torch.Tensor, bool] | None:
    """((B,) real steps per row, whether the padding leads) when every row of the (B, T)
    mask is ones then zeros (trailing padding) or zeros then ones (leading padding, as
    Keras's pad_sequences makes by default), with at least one real step; else None.
    None for a batch of no rows (a rank's empty share of a small last batch): torch cannot
    pack it, and the step-by-step path gives its (0, T, u) outputs and the weights' zero
    gradients."""
    lengths = mask.sum(1)
    if mask.shape[0] == 0 or not bool((lengths > 0).all()):
        return None
    steps = torch.arange(mask.shape[1], device=mask.device)[None, :]
    if bool(((steps < lengths[:, None]) == mask).all()):
        return lengths, False
    if bool(((steps >= mask.shape[1] - lengths[:, None]) == mask).all()):
        return lengths, True
    return None


def _gather_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, F) at steps index (B, T) per row."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def run_packed(kernel, x, lengths, leading: bool, state):
    """Padded rows through the fused kernel on packed sequences (the real steps only).

    Args:
        kernel: (data, state, batch_sizes) -> (out data, new state tuple of (1, B, u)).
        x: (B, T, F) inputs in the order the steps are taken; lengths (B,) real steps.
        leading: the padding comes first in each row (the state stays zero through it).
    Returns (outputs (B, T, u), final state tuple of (B, u)).
    """
    t = x.shape[1]
    steps = torch.arange(t, device=x.device)[None, :]
    lead = t - lengths[:, None]
    if leading:  # move each row's real steps to the front
        x = _gather_steps(x, (steps + lead).clamp(max=t - 1))
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    sort = packed.sorted_indices
    data, new = kernel(packed.data, tuple(s[:, sort] for s in state), packed.batch_sizes)
    out, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, sort,
                                                packed.unsorted_indices),
                                 batch_first=True, total_length=t)
    final = tuple(s[0, packed.unsorted_indices] for s in new)
    if leading:  # outputs back in place; zeros (the zero state) over the padding
        out = _gather_steps(out, (steps - lead).clamp(min=0))
        return torch.where((steps >= lead)[..., None], out, torch.zeros_like(out)), final
    # over trailing padding the state, and so the output, stays the last real step's
    return torch.where((steps < lengths[:, None])[..., None], out, final[0][:, None, :]), final


def run_stepwise(kernel, x, mask, state):
    """Any mask: one fused kernel call per step, the state held at masked steps.

    Same arguments as `run_packed`, with the (B, T) bool `mask` instead of lengths.
    """
    outs = []
    for i in range(x.shape[1]):
        _, new = kernel(x[:, i:i + 1], state, None)
        keep = mask[None, :, i, None]  # (1, B, 1)
        state = tuple(torch.where(keep, n, s) for n, s in zip(new, state))
        outs.append(state[0][0])
    return torch.stack(outs, 1), tuple(s[0] for s in state)


def run_masked(kernel, x, mask, state, backwards: bool, zero_output: bool,
               stepwise: bool = False):
    """Keras's masked recurrence; (outputs (B, T, u) in step order, final states (B, u)).
    `stepwise`: one step at a time even where the padding could run packed (a kernel
    that takes one step only)."""
    if mask.shape != x.shape[:2]:
        raise ValueError(f"the time-step mask has shape {tuple(mask.shape)}, expected "
                         f"(batch, timesteps) = {tuple(x.shape[:2])}")
    mask = mask.bool()
    if backwards:  # the steps, and their mask, in the order they are taken
        x, mask = x.flip(1), mask.flip(1)
    # shapes only on the meta device (the planner's pass): no data to find the padding in
    padding = None if mask.is_meta or stepwise else padded_lengths(mask)
    if padding is not None:
        out, final = run_packed(kernel, x, *padding, state)
    else:
        out, final = run_stepwise(kernel, x, mask, state)
    if zero_output:
        out = out * mask[..., None].to(out.dtype)
    return out, final
