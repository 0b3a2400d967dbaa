"""`bigtrain slurm`: the sbatch script it writes, checked line by line and run: its srun
command started as srun would start it (one process per task, SLURM's variables set)."""
import re
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bigtrain.cli.main import main as bigtrain_cli
from tests.launch.jobs import (REPO, TRAIN, free_port, max_diff, reference_weights, run_job,
                               srun_tasks)

LIMIT_S = 120


def test_the_script_asks_for_nodes_and_gpus_and_runs_bigtrain_under_srun(tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    assert bigtrain_cli(["slurm", "train.py", "--nodes", "2", "--gpus-per-node", "8",
                         "--partition", "gpu", "--time", "02:00:00", "--setup",
                         "source .venv/bin/activate", "-o", "job.sbatch", "--",
                         "--epochs", "3"]) == 0
    assert "wrote job.sbatch (16 ranks: 2 node(s) x 8)" in capsys.readouterr().out
    text = (tmp_path / "job.sbatch").read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert [line for line in lines if line.startswith("#SBATCH")] == [
        "#SBATCH --job-name=train", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu", "#SBATCH --time=02:00:00",
        "#SBATCH --output=%x-%j.out"]
    assert lines.index("source .venv/bin/activate") < lines.index(
        "srun --kill-on-bad-exit=1 bigtrain run train.py --epochs 3")
    assert subprocess.run(["bash", "-n", "job.sbatch"], timeout=30).returncode == 0  # syntax


@pytest.mark.parametrize("flags, message", [
    (["--gpus-per-node", "8", "--tasks-per-node", "4"], "one rank per GPU"),
    (["--time", "2h"], "--time '2h' is not a SLURM time"),
    (["--nodes", "0"], "--nodes must be at least 1"),
])
def test_bad_requests_are_refused_before_writing(tmp_path, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        bigtrain_cli(["slurm", "train.py", *flags])
    assert not (tmp_path / "train.sbatch").exists()


def test_submit_runs_sbatch_and_says_so_when_there_is_none(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no sbatch here
    with pytest.raises(SystemExit, match="sbatch is not on PATH: this host is not a SLURM "
                                         "login node. Copy train.sbatch to one"):
        bigtrain_cli(["slurm", "train.py", "--submit"])
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$1" > submitted\necho "Submitted batch job 77"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert bigtrain_cli(["slurm", "train.py", "--submit"]) == 0
    assert "Submitted batch job 77" in capsys.readouterr().out
    assert (tmp_path / "submitted").read_text().strip() == "train.sbatch"


@pytest.mark.slow
@pytest.mark.timeout(LIMIT_S + 30)
def test_the_scripts_srun_line_trains_ddp_like_one_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text(TRAIN)
    bigtrain_cli(["slurm", "train.py", "--nodes", "1", "--tasks-per-node", "2",
                  "--join-timeout", "60", "--", "weights.npz"])
    tasks, argv = srun_tasks((tmp_path / "train.sbatch").read_text(), "localhost", 1, "99")
    assert argv == ["run", "--join-timeout", "60", "train.py", "weights.npz"]
    port = free_port()  # as `export MASTER_PORT=...` in the batch script would
    done = run_job([{**t, "MASTER_PORT": str(port)} for t in tasks], argv, tmp_path, LIMIT_S)
    assert [c for c, _ in done] == [0, 0], "\n".join(out[-3000:] for _, out in done)
    assert [re.search(r"TRAINED rank=(\d) of 2", out)[1] for _, out in done] == ["0", "1"]
    with np.load(tmp_path / "weights.npz") as saved:
        trained = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    assert max_diff(trained, reference_weights()) <= 1e-5


def test_the_readme_shows_the_script_bigtrain_slurm_writes(tmp_path, monkeypatch):
    readme = (Path(REPO) / "README.md").read_text()
    shown = re.search(r"```text\n(#!/bin/bash\n.*?)```", readme, re.DOTALL)[1]
    monkeypatch.chdir(tmp_path)
    bigtrain_cli(["slurm", "train.py", "--nodes", "2", "--gpus-per-node", "8", "--partition",
                  "gpu", "--time", "02:00:00", "--setup", "source .venv/bin/activate"])
    assert (tmp_path / "train.sbatch").read_text() == shown
