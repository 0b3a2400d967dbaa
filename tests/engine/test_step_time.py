"""The step-time breakdown every fit writes into run.json: single process, and 2 gloo ranks
of DDP (whose exposed gradient communication is measured by the end-of-fit probe)."""
import numpy as np
import pytest

from bigtrain.diagnose import RunRecord
from tests.api.conftest import seed_like_model, teacher_data
from tests.dist import run_ranks

PHASES = ("data", "forward", "backward", "optimizer")


def test_single_process_fit_records_every_phase(tmp_path):
    x, y, _ = teacher_data(n=256)
    seed_like_model().fit(x, y, epochs=1, batch_size=32, verbose=0, run_dir=str(tmp_path))
    rec = RunRecord.load(tmp_path)
    st = rec.step_time
    assert all(getattr(st, p) > 0 for p in PHASES), st
    assert st.comm_exposed == 0.0 and "no communication" in rec.extra["step_time_note"]
    assert rec.extra["timed_steps"] == 8
    assert rec.rank_step_times == pytest.approx([st.data + st.forward + st.backward
                                                 + st.optimizer])
    assert rec.script is None  # a test runner is not a training script


def _ddp_fits(rank, world, run_dir):
    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    from tests.parallel.strategy_cases import build
    env = DistEnv(rank=rank, world_size=world, local_world_size=world)
    states = []
    for folder in (None, run_dir):  # the probe (run_dir given) must not change the weights
        model, task = build("seed", steps=6, batch=64)
        task.run_dir = folder
        states.append(run_rank(task, resolve_strategy("ddp"), model, env).state_dict)
    if rank != 0:
        return None
    return [{k: v.numpy() for k, v in s.items()} for s in states]


def test_ddp_breakdown_measures_exposed_gradient_communication(tmp_path):
    plain, probed = run_ranks(_ddp_fits, 2, str(tmp_path), timeout=180)[0]
    for k in plain:
        np.testing.assert_array_equal(plain[k], probed[k])
    rec = RunRecord.load(tmp_path)
    st = rec.step_time
    assert all(getattr(st, p) > 0 for p in PHASES), st
    # 64k gradients all-reduced by gloo: backward waits for part of it on any host. No loss
    # check all-reduce falls in these 6 steps, so the probe is the only source of comm.
    assert rec.extra["probed_sync_wait_s"] > 0 and st.comm_exposed > 0
    assert "probed" in rec.extra["step_time_note"] and len(rec.rank_step_times) == 2


def test_tokens_per_second_for_token_inputs_only(tmp_path):
    from bigtrain.layers import Dense, Embedding, Flatten, Input
    from bigtrain.models import Model
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (128, 12))
    inp = Input(shape=(12,), dtype="int64")
    model = Model(inp, Dense(4, activation="softmax")(Flatten()(Embedding(50, 8)(inp))))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(ids, ids[:, 0] % 4, epochs=1, batch_size=32, verbose=0, run_dir=str(tmp_path))
    rec = RunRecord.load(tmp_path)
    assert rec.tokens_per_s == pytest.approx(12 * rec.samples_per_s)
    x, y, _ = teacher_data(n=64)  # float features: no tokens to count
    seed_like_model().fit(x, y, epochs=1, verbose=0, run_dir=str(tmp_path / "features"))
    assert RunRecord.load(tmp_path / "features").tokens_per_s is None
