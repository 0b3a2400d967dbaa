"""Running a recurrent layer over a Keras time-step mask, with Keras's semantics.

Keras (every backend) steps through time and, at a masked step, keeps the previous state
and repeats the previous output (zeros before the first real step), or, with
`zero_output_for_mask` (set by Bidirectional when it returns sequences), outputs zeros.
Since the state starts at zero, the output at step t is the state h_t in the first case and
mask_t * h_t in the second. `go_backwards` reverses the inputs and the mask together.

Two exact ways to get there:
- right padding (each row is real steps then padding, every row has a real step): torch's
  packed sequences run the fused kernel over the real steps only;
- any other mask: one fused kernel call per step, holding the state where the step is masked.
"""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


def right_padded_lengths(mask: torch.Tensor) -> torch.Tensor | None:
    """(B,) lengths when every row of the (B, T) mask is ones then zeros, with one real step."""
    lengths = mask.sum(1)
    steps = torch.arange(mask.shape[1], device=mask.device)
    if bool(((steps < lengths[:, None]) == mask).all()) and bool((lengths > 0).all()):
        return lengths
    return None


def _gather_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, F) at steps index (B, T) per row."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def run_packed(kernel, x, lengths, state, backwards: bool):
    """Right-padded rows through the fused kernel on packed sequences.

    Args:
        kernel: (data, state, batch_sizes) -> (out data, new state tuple of (1, B, u)).
        x: (B, T, F) inputs in time order; lengths (B,) real steps per row.
        backwards: go_backwards; the real steps are read last to first.
    Returns (outputs (B, T, u) in the order Keras steps, final state tuple of (B, u)).
    """
    b, t = x.shape[:2]
    steps = torch.arange(t, device=x.device)[None, :]
    if backwards:  # row i reads x[len-1], ..., x[0]: its real steps reversed, at the front
        x = _gather_steps(x, (lengths[:, None] - 1 - steps).clamp(min=0))
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    sort = packed.sorted_indices
    data, new = kernel(packed.data, tuple(s[:, sort] for s in state), packed.batch_sizes)
    out, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, sort,
                                                packed.unsorted_indices),
                                 batch_first=True, total_length=t)
    final = tuple(s[0, packed.unsorted_indices] for s in new)
    real = steps < lengths[:, None]  # (B, T) in the packed order
    if backwards:  # Keras steps the padding first (state zero), then the real steps
        lead = t - lengths[:, None]
        out = _gather_steps(out, (steps - lead).clamp(min=0))
        return torch.where((steps >= lead)[..., None], out, torch.zeros_like(out)), final
    return torch.where(real[..., None], out, final[0][:, None, :]), final


def run_stepwise(kernel, x, mask, state, backwards: bool):
    """Any mask: one fused kernel call per step, the state held at masked steps.

    Same arguments as `run_packed`, with the (B, T) bool `mask` instead of lengths.
    """
    if backwards:
        x, mask = x.flip(1), mask.flip(1)
    outs = []
    for i in range(x.shape[1]):
        _, new = kernel(x[:, i:i + 1], state, None)
        keep = mask[None, :, i, None]  # (1, B, 1)
        state = tuple(torch.where(keep, n, s) for n, s in zip(new, state))
        outs.append(state[0][0])
    return torch.stack(outs, 1), tuple(s[0] for s in state)


def run_masked(kernel, x, mask, state, backwards: bool, zero_output: bool):
    """Keras's masked recurrence; (outputs (B, T, u) in step order, final states (B, u))."""
    if mask.shape != x.shape[:2]:
        raise ValueError(f"the time-step mask has shape {tuple(mask.shape)}, expected "
                         f"(batch, timesteps) = {tuple(x.shape[:2])}")
    mask = mask.bool()
    # shapes only on the meta device (the planner's pass): no data to find the padding in
    lengths = None if mask.is_meta else right_padded_lengths(mask)
    if lengths is not None:
        out, final = run_packed(kernel, x, lengths, state, backwards)
    else:
        out, final = run_stepwise(kernel, x, mask, state, backwards)
    if zero_output:
        step_mask = mask.flip(1) if backwards else mask
        out = out * step_mask[..., None].to(out.dtype)
    return out, final
