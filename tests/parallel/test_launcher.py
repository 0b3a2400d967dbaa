"""fit(..., devices=2) from a plain script without a main guard, and `bigtrain run`."""
import os
import runpy
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import numpy as np, torch
    import bigtrain
    from bigtrain.models import Model
    print("TOP OF SCRIPT rank", __import__("os").environ.get("RANK", "-"), flush=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 20)).astype("float32")
    ids = (x @ rng.normal(size=(20, 4))).argmax(1)

    class Net(torch.nn.Module):   # defined in the unguarded script itself
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(),
                                            torch.nn.Linear(32, 4))
        def forward(self, x):
            return self.body(x)

    bigtrain.set_seed(0)
    model = Model(Net())
    model.compile(optimizer="adam", loss=torch.nn.functional.cross_entropy,
                  metrics=["accuracy"], learning_rate=0.01)
    h = model.fit(x, ids, epochs=8, batch_size=64, strategy=STRATEGY, devices=DEVICES, verbose=2)
    if bigtrain.is_main_process():
        print("AFTER FIT", round(h.history["accuracy"][-1], 3),
              float(model.net.body[0].weight.detach().abs().sum()), flush=True)
""")


def _run(tmp_path, strategy, devices, launcher=()):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT.replace("STRATEGY", repr(strategy)).replace("DEVICES", repr(devices)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([*launcher, str(path)] if launcher else [sys.executable, str(path)],
                         capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _run_here(tmp_path, capsys):
    """The script without strategy and devices, run in this process: the one-process
    reference (a subprocess would only add its own torch import)."""
    path = tmp_path / "single.py"
    path.write_text(SCRIPT.replace("STRATEGY", "None").replace("DEVICES", "None"))
    capsys.readouterr()
    runpy.run_path(str(path), run_name="__main__")
    return capsys.readouterr().out


def _after(stdout):
    line = next(line for line in stdout.splitlines() if line.startswith("AFTER FIT"))
    return float(line.split()[2]), float(line.split()[3])


@pytest.mark.slow
def test_unguarded_script_with_devices_runs_once_and_matches_single(tmp_path, capsys):
    out = _run(tmp_path, "ddp", 2)
    assert out.count("TOP OF SCRIPT") == 1, out  # workers never re-ran the script
    assert out.count("AFTER FIT") == 1  # the code after fit runs once, in the caller
    assert out.count("Epoch 8/8") == 1  # only rank 0 prints progress
    acc, wsum = _after(out)
    single_acc, single_wsum = _after(_run_here(tmp_path, capsys))
    assert acc > 0.8
    assert abs(wsum - single_wsum) < 1e-3 * abs(single_wsum)  # same training as one process


@pytest.mark.slow
def test_bigtrain_run_joins_the_launched_group(tmp_path):
    launcher = [sys.executable, "-m", "bigtrain.cli.main", "run", "--nproc-per-node", "2"]
    out = _run(tmp_path, "ddp", None, launcher)
    assert out.count("TOP OF SCRIPT") == 2  # torchrun semantics: the script runs on every rank
    assert out.count("AFTER FIT") == 1  # is_main_process() tells the ranks apart
