"""A PipelineStage that posts every receive of a step when the step starts (gloo only).

torch's schedules post a micro-batch's receive just before they wait for it. On gloo a
transfer then needs the receiver's post to reach the sender's I/O thread before the
payload moves; with the ranks' threads sharing few cores, that hand-off waited for a
scheduler tick (2-4 ms) in some transfers, which at 8 micro-batches was most of the
pipeline's excess bubble (bench_pipeline: gpipe m=8 2.1-2.5x theory in torch's order,
1.5x with the receives posted early; bench/RESULTS.md). Here the stage posts the receives
of all its micro-batches, forward activations and backward gradients, at the step's first
forward chunk (the first stage: its gradients at its first backward chunk, where it waits
anyway), and each chunk waits for its own input just before it computes, so the data is
already there or on its way.

Safe only where every (sender, receiver) pair carries one ordered stream, which holds for
one stage per rank (gpipe, 1f1b): stage s receives activations only from s-1 and gradients
only from s+1, both in micro-batch order, each into its own per-micro-batch buffer. Not
used for schedules with several stages per rank, whose streams share a peer pair, nor on
NCCL, where a pending receive would hold back the sends queued behind it on the pair's
stream.

The gradients travel on a process group of their own (`grad_group`, the same ranks): in
1f1b the first stage sends a micro-batch's activations while the next sends another's
gradients, often at the same moment, and two ranks posting sends to each other at once on
one gloo pair stalled 4-5 ms in the send call (one I/O thread and socket pair for both
directions). A hand-written p = 2 1F1B with chunks of fixed length read 1.44-1.51x the
theory's bubble at 8 micro-batches on one group, 1.10-1.24x with a group per direction
(bench/RESULTS.md).

The wait is outside the compute methods the bubble timer wraps (`compute_chunks`).
"""
from __future__ import annotations

import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage


class EarlyRecvStage(PipelineStage):
    """PipelineStage whose receives for a whole step are posted at its first forward chunk.

    Args:
        microbatches: the schedule's micro-batches per step.
        grad_group: the process group the gradients are sent and received on (the same
            ranks as the stage's `group`); None: the stage's group.
        *args, **kwargs: those of PipelineStage.
    """

    #: the methods that are this stage's compute (bigtrain.parallel.pipeline_stage.wrap_chunks)
    compute_chunks = (("compute_forward", 0), ("compute_backward", 1))

    def __init__(self, *args, microbatches: int, grad_group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.microbatches = microbatches
        self.grad_group = grad_group if grad_group is not None else self.group
        self._posted: dict[tuple[str, int], list] = {}
        self._grads_due = False  # this step's gradient receives are still to be posted

    # the schedule asks for receive ops to post and wait on: they are already posted
    def get_fwd_recv_ops(self, fwd_chunk_id: int) -> list[dist.P2POp]:
        return []

    def get_bwd_recv_ops(self, bwd_chunk_id: int) -> list[dist.P2POp]:
        return []

    def get_bwd_send_ops(self, bwd_chunk_id: int) -> list[dist.P2POp]:
        return [dist.P2POp(op.op, op.tensor, op.peer, self.grad_group, op.tag)
                for op in super().get_bwd_send_ops(bwd_chunk_id)]

    def forward_one_chunk(self, fwd_chunk_id: int, *args, **kwargs):
        if fwd_chunk_id == 0:
            self._new_step()
        self._arrived("F", fwd_chunk_id)
        return self.compute_forward(fwd_chunk_id, *args, **kwargs)

    def backward_one_chunk(self, bwd_chunk_id: int, *args, **kwargs):
        if self._grads_due:
            self._post("B", PipelineStage.get_bwd_recv_ops)
        self._arrived("B", bwd_chunk_id)
        return self.compute_backward(bwd_chunk_id, *args, **kwargs)

    def compute_forward(self, *args, **kwargs):
        return PipelineStage.forward_one_chunk(self, *args, **kwargs)

    def compute_backward(self, *args, **kwargs):
        return PipelineStage.backward_one_chunk(self, *args, **kwargs)

    def clear_runtime_states(self) -> None:
        """torch's per-step reset (before the schedule's own set-up messages): a receive
        still pending from an unfinished step would take one of those messages."""
        if self._posted:
            raise RuntimeError(
                f"pipeline stage {self.stage_index}: a new step started while "
                f"{len(self._posted)} receives of the previous step were never read; the "
                "previous step did not finish (an error on another rank?)")
        super().clear_runtime_states()

    def _new_step(self) -> None:
        """Post this step's receives. A stage that waits for its first input posts them all
        now, activations then gradients. The first stage posts its gradients' receives at
        its first backward instead: it waits there anyway, while here the posts (which can
        stall a few ms on gloo) would delay the step's first chunk, which every stage waits
        for."""
        self._post("F", PipelineStage.get_fwd_recv_ops)  # none on the first stage
        self._grads_due = True
        if not self.is_first:
            self._post("B", PipelineStage.get_bwd_recv_ops)

    def _post(self, kind: str, recv_ops) -> None:
        """Post the receives `recv_ops(self, i)` of every micro-batch i, in order (none for
        gradients without a backward, or on the last stage)."""
        group = None
        if kind == "B":
            self._grads_due, group = False, self.grad_group
        for i in range(self.microbatches):
            works = [dist.irecv(op.tensor, src=op.peer, group=group or op.group, tag=op.tag)
                     for op in recv_ops(self, i)]
            if works:
                self._posted[kind, i] = works

    def _arrived(self, kind: str, chunk: int) -> None:
        """Wait until micro-batch `chunk`'s input ("F": activations, "B": gradients) is in
        its buffer."""
        works = self._posted.pop((kind, chunk), None)
        if works is None:  # nothing to receive here (first stage's inputs, last's grads)
            if chunk >= self.microbatches:  # ... unless the stage never posted for it
                raise RuntimeError(
                    f"pipeline stage {self.stage_index}: micro-batch {chunk} has no posted "
                    f"receive; the stage was built for {self.microbatches} micro-batches")
            return
        for work in works:
            work.wait()

