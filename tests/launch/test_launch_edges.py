"""fit inside a launched job (strategy/devices against the world size), fit(devices=N)
leaving the caller's signal handlers alone, LR callbacks under a parameter server, and
strategy="auto" on a model with several inputs."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bigtrain.launch import runner
from bigtrain.parallel.base import resolve_strategy
from tests.launch.jobs import clean_env, free_port, kubernetes_env

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import bigtrain
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    bigtrain.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype("float32"); y = (x[:, 0] > 0).astype("int64")
    i = Input(shape=(6,)); m = Model(inputs=i, outputs=Dense(2, activation="softmax")(i))
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    m.fit(x, y, epochs=1, batch_size=16, verbose=0, timeout=30)
    np.save(sys.argv[1], m.get_weights()[0])
""")


def run_two_ranks(tmp_path, script_text: str) -> list[np.ndarray]:
    """Run `script_text` as both ranks of a 2-rank job under `bigtrain run` (each rank
    saves an array to the file named by its argument); returns the two arrays."""
    script = tmp_path / "train.py"
    script.write_text(script_text)
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "bigtrain.cli.main", "run", str(script),
                               f"out{r}.npy"], cwd=tmp_path,
                              env=clean_env(kubernetes_env(r, 2, port)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    for p in procs:
        out = p.communicate(timeout=120)[0]
        assert p.returncode == 0, out
    return [np.load(tmp_path / f"out{r}.npy") for r in range(2)]


def test_fit_without_strategy_in_a_launched_job_trains_data_parallel(tmp_path):
    w0, w1 = run_two_ranks(tmp_path, SCRIPT)  # each rank's own weights: the same
    np.testing.assert_array_equal(w0, w1)


@pytest.fixture
def two_rank_job(monkeypatch):
    """This process as rank 0 of a 2-rank job a launcher started (no store is opened)."""
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)


def test_single_in_a_launched_multi_rank_job_is_refused(two_rank_job):
    with pytest.raises(ValueError, match="strategy='single' in a job of 2 processes"):
        runner.check_launched_job(resolve_strategy("single"), None, 2)


@pytest.mark.parametrize("devices", [1, 4])
def test_devices_other_than_the_world_size_are_refused(two_rank_job, devices):
    with pytest.raises(ValueError, match=f"fit\\(devices={devices}\\) but this job has 2"):
        runner.check_launched_job(resolve_strategy("ddp"), devices, 2)
    runner.check_launched_job(resolve_strategy("ddp"), 2, 2)  # agrees: no error
    runner.check_launched_job(resolve_strategy("ddp"), None, 2)


def _toy_model():
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    i = Input(shape=(4,))
    m = Model(inputs=i, outputs=Dense(2, activation="softmax")(i))
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return m


def test_fit_refuses_single_and_wrong_devices_before_joining(two_rank_job, monkeypatch):
    def no_join(*a, **k):
        raise AssertionError("fit joined the job before refusing")
    monkeypatch.setattr(runner.dist_env, "join_existing_job", no_join)
    x, y = np.zeros((8, 4), "float32"), np.zeros(8, "int64")
    with pytest.raises(ValueError, match="strategy='single'"):
        _toy_model().fit(x, y, batch_size=4, verbose=0, strategy="single")
    with pytest.raises(ValueError, match="devices=4"):
        _toy_model().fit(x, y, batch_size=4, verbose=0, strategy="ddp", devices=4)


def test_fit_without_strategy_in_a_launched_job_picks_ddp(two_rank_job, monkeypatch):
    seen = {}

    def fake_run_task(task, strat, owner, devices, options, cluster=None):
        seen["strategy"] = strat.name
        raise KeyboardInterrupt  # stop here: no process group in this test
    monkeypatch.setattr(runner, "run_task", fake_run_task)
    with pytest.raises(KeyboardInterrupt):
        _toy_model().fit(np.zeros((8, 4), "float32"), np.zeros(8, "int64"), batch_size=4,
                         verbose=0)
    assert seen["strategy"] == "ddp"


def test_lr_callbacks_under_a_parameter_server_are_refused_before_launch():
    from bigtrain.callbacks import LearningRateScheduler, ReduceLROnPlateau
    for cb in (LearningRateScheduler(lambda e, lr: lr), ReduceLROnPlateau()):
        with pytest.raises(ValueError, match=f"{type(cb).__name__} with strategy 'ps'"):
            _toy_model().fit(np.zeros((8, 4), "float32"), np.zeros(8, "int64"),
                             batch_size=4, verbose=0, strategy="ps", devices=3,
                             callbacks=[cb])


def test_get_lrs_of_a_server_side_optimizer_says_why():
    import torch
    from bigtrain.engine.callbacks._util import get_lrs
    from bigtrain.parallel.parameter_server.worker import ServerSideOptimizer
    with pytest.raises(ValueError, match="parameter server"):
        get_lrs(ServerSideOptimizer([torch.nn.Parameter(torch.zeros(2))]))


def test_auto_profiles_a_model_with_several_inputs_on_the_real_sample():
    import torch
    from bigtrain.engine.data import ArrayData
    from bigtrain.zoo.wide_and_deep import WideAndDeep
    net = WideAndDeep(num_ids=50, num_fields=4, num_dense=3)
    data = ArrayData([torch.randint(0, 50, (16, 4)), torch.randn(16, 3)], [torch.zeros(16, 1)])
    sample = runner.example_input(data, net)
    assert [tuple(t.shape) for t in sample] == [(1, 4), (1, 3)]
    from bigtrain.plan import plan
    assert plan(net, devices=2, batch_size=16, example_input=sample).best is not None


SIGNALS = textwrap.dedent("""
    import os, signal, threading, time, numpy as np
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    x = np.random.randn(64, 4).astype("float32"); y = np.random.randint(0, 2, 64)
    i = Input(shape=(4,)); m = Model(inputs=i, outputs=Dense(2, activation="softmax")(i))
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    m.fit(x, y, epochs=1, batch_size=16, strategy="ddp", devices=2, verbose=0)
    print("AFTER", signal.getsignal(signal.SIGINT) is signal.default_int_handler,
          signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
    threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    try:
        m.fit(x, y, epochs=100000, batch_size=16, strategy="ddp", devices=2, verbose=0)
    except BaseException as e:
        print("RAISED", type(e).__name__, flush=True)
""")


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_fit_devices_leaves_signal_handlers_and_ctrl_c_is_keyboard_interrupt(tmp_path):
    script = tmp_path / "sig.py"
    script.write_text(SIGNALS)
    env = clean_env({})
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=240)
    assert "AFTER True True" in out.stdout, out.stdout + out.stderr
    assert "RAISED KeyboardInterrupt" in out.stdout, out.stdout + out.stderr


def test_batch_norm_on_several_ranks_is_announced_before_they_start():
    import numpy as np

    import bigtrain
    from bigtrain.layers import BatchNormalization, Dense, Input
    from bigtrain.models import Model
    bigtrain.clear_session()
    inp = Input(shape=(6,))
    model = Model(inp, Dense(2, activation="softmax")(BatchNormalization()(Dense(4)(inp))))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).normal(size=(32, 6)).astype("float32"), np.arange(32) % 2
    with pytest.warns(UserWarning, match="BatchNormalization normalises over each rank's"):
        model.fit(x, y, batch_size=8, verbose=0, strategy="ddp", devices=2, timeout=60)


def test_a_layer_unused_after_the_first_step_under_ddp_names_bigtrains_fix():
    """torch's error points at DistributedDataParallel's keyword, which a fit never sees. (A
    layer unused from the start is found before DDP is built and trains; one that stops
    being used later still meets torch's error.)"""
    import numpy as np
    import torch
    from torch import nn

    from bigtrain.models import Model
    from bigtrain.parallel import DataParallel

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.unused, self.b = nn.Linear(6, 4), nn.Linear(4, 4), nn.Linear(4, 2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1  # used in the first two calls: fit's look at its rows, step 1
            h = torch.relu(self.a(x))
            return self.b(self.unused(h) if self.calls <= 2 else h)

    x, y = np.random.default_rng(0).normal(size=(32, 6)).astype("float32"), np.arange(32) % 2
    for strategy, fails in (("ddp", True), (DataParallel(find_unused_parameters=True), False)):
        model = Model(Unused())
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        fit = lambda: model.fit(x, y, batch_size=8, verbose=0, strategy=strategy,  # noqa: E731
                                devices=2, timeout=60)
        if fails:
            with pytest.raises(RuntimeError, match=r"find_unused_parameters=True\) \(from bigtr"):
                fit()
        else:
            fit()


def _failure(tmp_path, rank: int, message: str, timestamp: int):
    import json

    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
    path = tmp_path / f"error-{rank}.json"
    path.write_text(json.dumps({"message": {"message": message,
                                            "extraInfo": {"timestamp": str(timestamp)}}}))
    return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=1, error_file=str(path))


def test_the_failing_rank_is_shown_before_the_ranks_that_lost_it(tmp_path):
    """Rank 2 (a parameter server) raised the real error; rank 0 failed in the same second
    on the closed connection. torch's first failure is rank 0's; bigtrain shows rank 2's."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from bigtrain.launch.launcher import _root_cause
    err = ChildFailedError("fit", {
        0: _failure(tmp_path, 0, "RuntimeError: parameter server 0 (rank 2) stopped "
                    "responding: Connection closed by peer [127.0.0.1]:1", 1000),
        1: _failure(tmp_path, 1, "RuntimeError: Connection closed by peer", 1000),
        2: _failure(tmp_path, 2, "ValueError: this checkpoint was written for another "
                    "number of servers", 1000)})
    assert err.get_first_failure()[0] == 0
    shown = _root_cause(err)
    assert shown.startswith("distributed fit failed on rank 2") and "ValueError" in shown
    assert "ranks [0, 1] failed too" in shown
    alone = ChildFailedError("fit", {1: _failure(tmp_path, 1, "ValueError: bad", 5)})
    assert _root_cause(alone) == "distributed fit failed on rank 1 (exit code 1):\nValueError: bad"


AUTO_SCRIPT = SCRIPT.replace("timeout=30)", "timeout=30, strategy='auto')").replace(
    "import bigtrain\n", textwrap.dedent("""\
    import os
    import bigtrain
    from bigtrain.launch import runner
    # the planner's timings differ between ranks: make them choose differently
    runner.choose_auto = lambda *a, **k: "zero1" if os.environ["RANK"] == "0" else "ddp"
    resolve = runner.resolve_strategy
    def record(name):
        with open(f"strategy{os.environ['RANK']}.txt", "w") as f:
            f.write(str(name))
        return resolve(name)
    runner.resolve_strategy = record
    """))


def test_auto_in_a_launched_job_runs_rank_0s_choice_on_every_rank(tmp_path):
    w0, w1 = run_two_ranks(tmp_path, AUTO_SCRIPT)
    assert [(tmp_path / f"strategy{r}.txt").read_text() for r in range(2)] == ["zero1"] * 2
    np.testing.assert_array_equal(w0, w1)


def test_predict_after_a_zero3_fit_in_a_launched_job_runs_on_every_rank(tmp_path):
    """After fit the weights stay split over the job's ranks; every rank's predict takes
    part in the forward (only a rank-0-only callback's predict is refused)."""
    p0, p1 = run_two_ranks(tmp_path, SCRIPT.replace(
        "timeout=30)", "timeout=30, strategy='zero3')").replace(
        "np.save(sys.argv[1], m.get_weights()[0])", "np.save(sys.argv[1], m.predict(x[:5]))"))
    assert p0.shape == (5, 2)
    np.testing.assert_array_equal(p0, p1)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_a_launched_fit_leaves_no_store_threads_behind():
    """The rendezvous stores' server threads end with the fit: a DataLoader worker the
    caller forks later inherited them and aborted when it exited."""
    x, y = np.zeros((8, 4), "float32"), np.zeros(8, "int64")
    _toy_model().fit(x, y, batch_size=4, verbose=0, strategy="ddp", devices=2, timeout=60)
    before = len(os.listdir("/proc/self/task"))
    _toy_model().fit(x, y, batch_size=4, verbose=0, strategy="ddp", devices=2, timeout=60)
    assert len(os.listdir("/proc/self/task")) <= before


def test_the_rank_that_raised_is_named_when_its_peer_fails_on_the_closed_connection():
    """Rank 1 meets a bad label in its share of a Dataset; rank 0 then fails on the closed
    connection. The error shown is rank 1's own (rank 0 waits before failing)."""
    import torch
    from torch.utils.data import TensorDataset
    x = np.zeros((16, 4), "float32")
    y = np.zeros(16, "int64")
    y[12] = 7  # in rank 1's half of the last batch, past the 2 classes
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    with pytest.raises(RuntimeError, match=r"failed on rank 1 (.|\n)*IndexError"):
        _toy_model().fit(data, batch_size=8, verbose=0, strategy="ddp", devices=2,
                         shuffle=False, timeout=60)
