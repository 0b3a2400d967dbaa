"""The scripts for a GPU machine stay runnable: their dry runs walk the same code on the CPU
with tiny models (a GPU machine is lent rarely; a script broken by a refactor would waste it)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _dry_run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), "--dry-run",
                           *args], capture_output=True, text=True, timeout=240, env=env,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_gpu_gpt_dry_run_times_every_contender():
    out = _dry_run("gpu_gpt.py")
    for line in ("fit / hand eager:", "fit / hand compiled:", "FLOPs per step"):
        assert line in out, out
    # each contender's row carries a positive throughput
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(("fit ", "hand "))
            and "tokens" not in ln and "/" not in ln]
    assert len(rows) == 3, out
    assert all(float(r[-2].replace(",", "")) > 0 for r in rows), out


@pytest.mark.slow
def test_gpu_offload_dry_run_climbs_the_ladder():
    out = _dry_run("gpu_offload.py", "--max-seconds", "120")
    assert "fsdp_offload  peak" in out and "largest GPT" in out, out
    assert "failed" not in out and "not even" not in out, out


def test_gpu_check_script_names_existing_scripts():
    text = open(os.path.join(ROOT, "bench", "gpu_check.sh")).read()
    for script in ("bench/gpu_gpt.py", "bench/gpu_offload.py"):
        assert script in text and os.path.exists(os.path.join(ROOT, script))
    assert "timeout" in text
