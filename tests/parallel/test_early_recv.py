"""Pipeline receives posted at the step's start on gloo (bigtrain.parallel.early_recv): every
receive of a step is pending before the stage's first compute (the first stage's gradients:
before its first backward), each chunk still reads the
right micro-batch (parity with one process, 3 stages so the middle one receives from both
sides), gradients travel on a group of their own over the same ranks, and nothing stays
pending after a step or a forward-only call."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bigtrain.parallel.early_recv import EarlyRecvStage
from bigtrain.parallel.pipeline import Pipeline
from tests.dist import run_ranks
from tests.parallel.test_pipeline import BATCH, STEPS, TOL, max_diff, train_reference, train_with


def make_chain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 16), nn.GELU(),
                         nn.Linear(16, 8), nn.Linear(8, 3))


def chain_data(step):
    g = torch.Generator().manual_seed(3000 + step)
    return torch.randn(BATCH, 12, generator=g), torch.randint(0, 3, (BATCH,), generator=g)


def chain_loss(out, y, sw):
    return F.cross_entropy(out, y)


def _run(rank, world, schedule):
    seen = []  # the pending receives when each step's first forward chunk computes
    grads_on_own_group = []  # per gradient send: was it on the stage's gradient group?

    class Spy(Pipeline):
        def setup_module(self, module):
            out = super().setup_module(module)
            self.kept, self.module = list(self._rt.pstages), out  # teardown drops them
            for st in self.kept:
                assert isinstance(st, EarlyRecvStage), type(st)
                assert st.grad_group is not st.group
                assert (dist.get_process_group_ranks(st.grad_group)
                        == dist.get_process_group_ranks(st.group))
                sends = st.get_bwd_send_ops

                def spied_sends(chunk, _st=st, _s=sends):
                    ops = _s(chunk)
                    grads_on_own_group.extend(op.group is _st.grad_group for op in ops)
                    return ops
                st.get_bwd_send_ops = spied_sends
                compute = st.compute_forward

                def spied(chunk, *a, _st=st, _c=compute, **k):
                    if chunk == 0:
                        seen.append(sorted(_st._posted))
                    return _c(chunk, *a, **k)
                st.compute_forward = spied
                back = st.compute_backward

                def spied_back(chunk, *a, _st=st, _c=back, **k):
                    if chunk == 0 and _st.is_first:
                        seen.append(sorted(_st._posted))
                    return _c(chunk, *a, **k)
                st.compute_backward = spied_back
            return out

        def teardown(self):
            self.left = [dict(st._posted) for st in self.kept]
            seen.append("forward only")
            with torch.no_grad():  # forward only: activations posted, no gradients
                self.out = self.module(chain_data(0)[0][:5]).numpy()
            self.left += [dict(st._posted) for st in self.kept]
            st = self.kept[0]  # a step after one that left a receive unread is refused
            st._posted["F", 99] = []
            with pytest.raises(RuntimeError, match="never read"):
                st.clear_runtime_states()
            st._posted.clear()
            super().teardown()

    strategy = Spy(stages=world, microbatches=4, schedule=schedule, split=[2, 2, 2])
    trained = train_with(rank, world, strategy, make_chain, chain_data, chain_loss)
    return trained, seen, strategy.left, strategy.out, grads_on_own_group


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_receives_posted_at_step_start_train_the_same(schedule):
    ref, ref_losses = train_reference(make_chain, chain_data, chain_loss)
    results = run_ranks(_run, 3, schedule, timeout=180)
    (full, losses), *_ = results[0]
    assert max_diff(full, ref) <= TOL
    assert losses == pytest.approx(ref_losses, abs=1e-5)
    m = 4
    fwd_rest = [("F", i) for i in range(1, m)]  # F0 was just read by the first chunk
    bwd_all = [("B", i) for i in range(m)]
    expected = {0: [[]], 1: [sorted(fwd_rest + bwd_all)], 2: [fwd_rest]}
    # the first stage posts its gradients' receives at its first backward instead
    expected[0].append([("B", i) for i in range(1, m)])
    model = make_chain()
    model.load_state_dict(ref)
    with torch.no_grad():
        expected_out = model(chain_data(0)[0][:5])
    for rank, (_, seen, left, out, own_group) in enumerate(results):
        # every stage but the first sends one gradient per micro-batch, on its own group
        assert own_group == ([] if rank == 0 else [True] * (m * STEPS)), (rank, own_group)
        cut = seen.index("forward only")
        assert seen[:cut] == expected[rank] * STEPS, (rank, seen)
        # a forward-only call (5 rows padded to 4 micro-batches) posts activations only
        assert seen[cut + 1] == [k for k in expected[rank][0] if k[0] == "F"], (rank, seen)
        assert left == [{}, {}], (rank, left)  # every posted receive was read
        assert torch.allclose(torch.as_tensor(out), expected_out, atol=1e-6)
