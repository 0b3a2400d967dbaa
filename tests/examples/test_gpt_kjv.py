"""The GPT example's documented tensor-parallel command runs (shortened as its docstring test
runs it, tests/readme/commands.py, and sharing that run): a GPT with a tied lm_head keeps it
replicated, so the optimizer sees DTensors mixed with plain tensors, which fused AdamW
refused."""
import pytest

from tests.readme.commands import run_documented


@pytest.mark.slow
def test_gpt_kjv_trains_with_tensor_parallelism_on_two_processes():
    out = run_documented("python examples/gpt_kjv.py --strategy tensor --devices 2")
    assert "validation loss" in out and "sample: And God said," in out, out[-3000:]
