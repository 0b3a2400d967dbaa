"""Restarts after a killed rank: `fit(..., max_restarts=1)` and `bigtrain run --max-restarts 1`
survive rank 1 dying by SIGKILL mid-epoch. The elastic agent restarts the group, the run
resumes from its newest checkpoint (inside the second epoch, not from the start) and ends
with the weights of a run that was never interrupted.

The reference is a single-process run: 2-rank DDP sums gradients in another order, so the
weights agree within 1e-6, not bit for bit (tests/parallel/test_resume.py shows that a
2-rank resume equals the 2-rank uninterrupted run exactly)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from safetensors.torch import load_file

import bigtrain
from bigtrain.callbacks import Callback
from tests.parallel.strategy_cases import case_data, max_param_diff, seed_model

KILL_EPOCH, KILL_BATCH = 1, 1  # rank 1 dies as it starts the 2nd batch of the 2nd epoch
SAMPLES = 72  # 3 global batches of 24 per epoch
FIT = dict(batch_size=24, epochs=2, verbose=0)
TOL = 1e-6
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class KillRankOnce(Callback):
    """SIGKILLs rank `rank` at (epoch, batch), on the first attempt of the job only."""

    main_process_only = False  # must run on the rank it kills

    def __init__(self, rank: int, epoch: int, batch: int, marker: str):
        super().__init__()
        self.rank, self.epoch, self.batch, self.marker = rank, epoch, batch, marker
        self.current = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if (first_attempt and int(os.environ.get("RANK", "0")) == self.rank
                and (self.current, batch) == (self.epoch, self.batch)):
            open(self.marker, "w").close()  # proof that the kill happened
            os.kill(os.getpid(), signal.SIGKILL)


def make_model():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    model = seed_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", learning_rate=1e-3)
    return model


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


@pytest.fixture(scope="module")
def reference():
    model = make_model()
    model.fit(*case_data("seed", SAMPLES), **FIT)
    start = _weights(make_model())
    assert max_param_diff(_weights(model), start) > 1e-4  # equality below means something
    return _weights(model)


@pytest.mark.slow
def test_fit_survives_a_killed_rank(tmp_path, reference):
    marker = tmp_path / "killed"
    model = make_model()
    history = model.fit(*case_data("seed", SAMPLES), **FIT, strategy="ddp", devices=2,
                        timeout=60, max_restarts=1, checkpoint_dir=str(tmp_path / "ckpt"),
                        checkpoint_every=1,
                        callbacks=[KillRankOnce(1, KILL_EPOCH, KILL_BATCH, str(marker))])
    assert marker.exists(), "rank 1 was never killed: the test did not test a restart"
    assert history.epoch == [KILL_EPOCH]  # the restarted group resumed inside epoch 2
    assert max_param_diff(reference, _weights(model)) <= TOL


def run_script(ckpt: str, marker: str, out: str) -> None:
    """What every rank of `bigtrain run` executes (see the test below)."""
    model = make_model()
    history = model.fit(*case_data("seed", SAMPLES), **FIT, strategy="ddp", timeout=60,
                        checkpoint_dir=ckpt, checkpoint_every=1,
                        callbacks=[KillRankOnce(1, KILL_EPOCH, KILL_BATCH, marker)])
    if int(os.environ["RANK"]) == 0:
        model.save_weights(out)
        with open(out + ".json", "w") as f:
            json.dump({"epochs": history.epoch}, f)


@pytest.mark.slow
def test_bigtrain_run_survives_a_killed_rank(tmp_path, reference):
    script = tmp_path / "train.py"
    script.write_text("import sys\nfrom tests.parallel.test_restarts import run_script\n"
                      "if __name__ == '__main__':\n    run_script(*sys.argv[1:4])\n")
    out, marker = str(tmp_path / "final.safetensors"), str(tmp_path / "killed")
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bigtrain.cli.main", "run", "--nproc-per-node", "2",
           "--max-restarts", "1", "--monitor-interval", "0.1", str(script),
           str(tmp_path / "ckpt"), marker, out]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.path.exists(marker), "rank 1 was never killed: the test did not test a restart"
    with open(out + ".json") as f:
        assert json.load(f)["epochs"] == [KILL_EPOCH]
    assert max_param_diff(reference, load_file(out)) <= TOL
