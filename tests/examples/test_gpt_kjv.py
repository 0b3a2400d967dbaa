"""The GPT example's documented tensor-parallel command runs (shortened by its own flags):
a GPT with a tied lm_head keeps it replicated, so the optimizer sees DTensors mixed with plain
tensors, which fused AdamW refused."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpt_kjv_trains_with_tensor_parallelism_on_two_processes():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "gpt_kjv.py"), "--strategy", "tensor",
         "--devices", "2", "--windows", "32", "--epochs", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "validation loss" in done.stdout and "sample: And God said," in done.stdout
