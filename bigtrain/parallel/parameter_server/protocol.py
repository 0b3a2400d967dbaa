"""The parameter server's wire protocol, on torch.distributed point-to-point messages.

Every exchange is a worker-initiated request to one server. Each server rank runs one
handler thread per worker, blocked in `recv(src=worker)`, so a slow or dead worker never
blocks the others, and messages of one worker are handled in the order they were sent
(a push is always applied before the same worker's next pull is answered).

A request is a fixed header followed by zero to two payload tensors whose sizes the header
gives (gloo needs the receiver to know each size):

    header  int64[9] = [op, sender_rank, clock, a, b, c, d, status, e]  tag TAG_HEADER
    index   int32[a]   row ids, counts                                    tag TAG_INDEX
    values  <dtype>[b] parameter values or gradients, flattened           tag TAG_VALUES

    op     a                       b           payloads            reply
    PULL   pieces on this server   0           index: known version  header, versions, values
                                               per piece (-1 want,
                                               -2 skip)
    ROWS   parameter index         0           index: row ids       header, values (rows)
    PUSH   index length            values len  index, values        none (errors come back
                                                                    on the next reply)
    SET    values len              0           values: every piece  none (overwrites values,
                                               of this server       keeps optimizer state)
    DONE   -                       -           -                    none
    END    epoch                   -           -                    none (the sender's
                                                                    stream ran out)
    SYNC   -                       -           -                    header, once every live
                                                                    worker sent its SYNC

`clock` is the number of steps the sender has completed (its logical clock). The PUSH index
is `[numel per piece (0 = absent)] + [(rows, values) per sparse parameter] + [row ids]`,
where (NO_GRAD, 0) marks a table the step did not use (unlike (0, 0): a gradient with no
rows on this server); its values are the dense gradients in piece order followed by the
sparse rows. Row ids are int32 (tables up to 2**31 rows) so a sparse push costs 4 bytes per row beyond the row.

Replies reuse the header: `[op, server_rank, server_clock, n_values, staleness,
max_staleness, mean_staleness_milli, status, ended]`, where `server_clock` is the updates
this server applied in this run (BSP: synchronous steps; ASP/SSP: pushes) and `ended` is
1 + the last epoch in which some worker sent END (0: none), so that under ASP/SSP the other
workers stop that epoch's open-ended stream at their next pull without a collective. A PULL reply sends int64 versions (one per
piece; -1 = not sent) then the values of the pieces it sent, concatenated. When `status`
is ERROR the reply carries instead one uint8 payload, the UTF-8 error message, of length
`n_values`, and the worker raises it as a ValueError.

Example:
    send_header(Op.DONE, rank=0, clock=5, dst=3, group=g)
"""
from __future__ import annotations

import enum

import torch
import torch.distributed as dist

HEADER_LEN = 9
TAG_HEADER, TAG_INDEX, TAG_VALUES = 101, 102, 103
TAG_REPLY, TAG_REPLY_INDEX, TAG_REPLY_VALUES = 201, 202, 203
OK, ERROR = 0, 1
WANT, SKIP = -1, -2  # PULL index entries: send this piece / leave it out
NO_GRAD = -1  # PUSH rows count of a table without a gradient this step


class Op(enum.IntEnum):
    PULL = 1
    ROWS = 2
    PUSH = 3
    DONE = 4
    SET = 5
    END = 6
    SYNC = 7


class CommError(RuntimeError):
    """A peer stopped answering (its process died or its connection closed)."""


def header(op: int, sender: int, clock: int, a: int = 0, b: int = 0, c: int = 0, d: int = 0,
           status: int = OK, e: int = 0) -> torch.Tensor:
    """An int64[9] header tensor (see the module docstring for the fields)."""
    return torch.tensor([int(op), sender, clock, a, b, c, d, status, e], dtype=torch.int64)


def send(tensors: list[tuple[torch.Tensor, int]], dst: int, group) -> int:
    """Send `(tensor, tag)` pairs to `dst` in order; returns the bytes sent.

    Uses isend for every tensor then waits, so the payloads leave back to back. Empty
    tensors are not sent (the receiver knows their size, 0, from the header and skips them).
    Raises CommError when the peer is gone.
    """
    try:
        works = [dist.isend(t.contiguous(), dst=dst, group=group, tag=tag)
                 for t, tag in tensors if t.numel() > 0]
        for w in works:
            w.wait()
    except RuntimeError as err:
        raise CommError(str(err)) from err
    return sum(t.numel() * t.element_size() for t, _ in tensors)


def recv(shape_or_len: int, dtype: torch.dtype, src: int, group, tag: int) -> torch.Tensor:
    """Receive one 1-D tensor of `shape_or_len` elements from `src`; CommError if it is gone."""
    buf = torch.empty(int(shape_or_len), dtype=dtype)
    if buf.numel() == 0:
        return buf
    try:
        dist.recv(buf, src=src, group=group, tag=tag)
    except RuntimeError as err:
        raise CommError(str(err)) from err
    return buf


def recv_header(src: int, group, tag: int) -> torch.Tensor:
    return recv(HEADER_LEN, torch.int64, src, group, tag)


def error_reply(op: int, sender: int, clock: int, message: str) -> list[tuple[torch.Tensor, int]]:
    """The messages of an ERROR reply carrying `message` (UTF-8) to the worker."""
    data = torch.tensor(list(message.encode("utf-8")), dtype=torch.uint8)
    return [(header(op, sender, clock, a=data.numel(), status=ERROR), TAG_REPLY),
            (data, TAG_REPLY_VALUES)]


def recv_reply(src: int, group) -> torch.Tensor:
    """Receive a reply header; raise ValueError with the server's message on ERROR."""
    head = recv_header(src, group, TAG_REPLY)
    if int(head[7]) == ERROR:
        msg = recv(int(head[3]), torch.uint8, src, group, TAG_REPLY_VALUES)
        raise ValueError(f"parameter server (rank {src}) rejected a request: "
                         f"{bytes(msg.tolist()).decode('utf-8')}")
    return head
