"""At exit, a `bigtrain run` rank's gloo group is gone before the rank tells rank 0 it left
(bigtrain.launch.join._destroy_group).

destroy_process_group only forgets the group; DistributedDataParallel's reducer holds it in
a reference cycle, so after a ddp fit gloo's threads (its run loops and its socket loop)
kept running through the exit handshake and into the interpreter's teardown, where rank 0
(which hosts the store) and the peer sockets were already gone. Now and then, on a loaded
host, such a rank aborted after its work was done ("terminate called without an active
exception")."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_JOB_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_",
                  "OMPI_COMM_WORLD_", "PMI_", "TORCHELASTIC_", "BIGTRAIN_LAUNCHER_PID")

# the exit hook is registered before fit, so it runs after fit's own (atexit: last in, first
# out): it sees what is left once the rank has left the job
SCRIPT = textwrap.dedent("""
    import atexit, os
    import numpy as np
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model

    def native_threads():
        tasks = os.listdir("/proc/self/task")
        names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
        print(f"rank {os.environ['RANK']} threads at exit: {sorted(names)}", flush=True)

    atexit.register(native_threads)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = np.eye(2, dtype="float32")[rng.integers(0, 2, 64)]
    inputs = Input(shape=(8,))
    model = Model(inputs=inputs, outputs=Dense(2, activation="softmax")(Dense(16)(inputs)))
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=16, strategy="ddp", verbose=0)
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc")
def test_no_gloo_thread_outlives_the_ranks_exit_handshake(tmp_path):
    (tmp_path / "ddp_fit.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_JOB_VARIABLES)}
    run = subprocess.run([sys.executable, "-m", "bigtrain.cli.main", "run", "--nproc-per-node",
                          "2", "ddp_fit.py"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={**env, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    lines = sorted(line for line in run.stdout.splitlines() if "threads at exit" in line)
    assert [line.split()[1] for line in lines] == ["0", "1"], run.stdout[-2000:]
    for line in lines:
        assert "gloo" not in line, f"a gloo thread still ran after the rank left: {line}"
