"""`bigtrain run` as the ranks of jobs that Open MPI, MPICH (PMI) or a Kubernetes operator
started: two subprocesses per job on loopback, each with only its launcher's variables; ddp
over them matches one process (SLURM's: the sbatch script's srun line, in test_slurm.py). A
SLURM job that claims more ranks than start ends within --join-timeout in one line naming
the variable."""
import re
import time

import numpy as np
import pytest

from tests.launch.jobs import (TRAIN, free_port, kubernetes_env, max_diff, openmpi_env,
                               pmi_env, reference_weights, run_job, slurm_env)

LIMIT_S = 120  # two bigtrain imports and 4 steps on a loaded 2-core machine
TOL = 1e-5


@pytest.fixture(scope="module")
def reference():
    full, one_less = reference_weights(), reference_weights(steps=3)
    assert max_diff(full, one_less) > 100 * TOL  # the check can tell one step apart
    return full


@pytest.mark.slow
@pytest.mark.timeout(LIMIT_S + 30)
@pytest.mark.parametrize("launcher", [openmpi_env, pmi_env, kubernetes_env],
                         ids=["openmpi", "pmi", "kubernetes"])  # SLURM: test_slurm.py
def test_ranks_started_by_a_launcher_train_ddp_like_one_process(tmp_path, reference, launcher):
    (tmp_path / "train.py").write_text(TRAIN)
    port = free_port()
    done = run_job([launcher(r, 2, port) for r in range(2)],
                   ["run", "--join-timeout", "60", "train.py", "weights.npz"], tmp_path,
                   LIMIT_S)
    report = "\n".join(f"--- rank {r} exit {c}\n{out[-3000:]}" for r, (c, out) in
                       enumerate(done))
    assert [c for c, _ in done] == [0, 0], report
    assert [re.search(r"TRAINED rank=(\d) of (\d)", out).groups() for _, out in done] == \
        [("0", "2"), ("1", "2")], report
    with np.load(tmp_path / "weights.npz") as saved:
        trained = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    assert max_diff(trained, reference) <= TOL


@pytest.mark.slow
@pytest.mark.timeout(LIMIT_S + 30)
def test_a_job_that_claims_4_ranks_when_2_start_fails_naming_the_variable(tmp_path):
    (tmp_path / "train.py").write_text(TRAIN)
    port, join_s = free_port(), 3
    started = time.monotonic()
    done = run_job([slurm_env(r, 2, port, claimed=4) for r in range(2)],
                   ["run", "--join-timeout", str(join_s), "train.py", "weights.npz"],
                   tmp_path, LIMIT_S)
    took = time.monotonic() - started
    for rank, (code, out) in enumerate(done):
        assert code not in (None, 0), out
        assert "Traceback" not in out, out
        assert re.search(rf"bigtrain run \(rank {rank}\): SLURM_NTASKS=4 says the job has 4 "
                         rf"ranks, but ranks 2, 3 of 4 never joined the job within {join_s} s",
                         out), out
        assert "srun starts one task per rank" in out, out
    assert not (tmp_path / "weights.npz").exists()  # nothing trained
    assert took < LIMIT_S  # not bigtrain's 300 s group timeout, nor torch's 30 minutes
