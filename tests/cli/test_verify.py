"""`bigtrain verify`: ddp and zero3 match one process; a strategy that skips one gradient
reduction is caught; an unknown name or a check too weak to tell strategies apart fails
before any rank starts; the exit status says it all."""
import textwrap

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from bigtrain.cli.main import main
from bigtrain.engine.data import ArrayData
from bigtrain.launch.verify import (FAIL, PASS, UNAVAILABLE, UNSUPPORTED, ParityRow, all_passed,
                                   first_samples)
from bigtrain.parallel.base import register
from bigtrain.parallel.data_parallel import DataParallel

SCRIPT = textwrap.dedent("""
    LR = 0.01
    import sys
    import numpy as np
    import bigtrain
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    print("SCRIPT START", sys.argv[1:], flush=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)).astype("float32")
    y = np.eye(3, dtype="float32")[(x[:, :3]).argmax(1)]
    bigtrain.set_seed(0)
    inp = Input(shape=(12,))
    model = Model(inp, Dense(3, activation="softmax")(Dense(16, activation="relu")(inp)))
    model.compile(optimizer="adam", loss="categorical_crossentropy", learning_rate=LR)
    try:
        model.fit(x, y, epochs=50, batch_size=16, strategy="ddp", devices=4)
    except Exception:  # verify must not be fooled by a script that swallows errors
        pass
    print("AFTER FIT", flush=True)
""")


class SkipsOneReduction(DataParallel):
    """Broken on purpose: DDP never all-reduces the first parameter's gradient, so each
    rank updates it from its own half of the batch only."""
    name = "test_skips_one_reduction"

    def setup_module(self, module):
        first = next(name for name, _ in module.named_parameters())
        DDP._set_params_and_buffers_to_ignore_for_model(module, [first])
        return super().setup_module(module)


register(SkipsOneReduction.name, SkipsOneReduction)


def _table(out: str) -> dict[str, str]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[3].rstrip(":") in ("pass", "FAIL", "error", "unavailable",
                                                        "unsupported"):
            rows[parts[0]] = parts[3].rstrip(":")
    return rows


@pytest.mark.timeout(400)
def test_verify_passes_good_strategies_and_catches_a_broken_one(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    code = main(["verify", str(script), "--strategies",
                 f"ddp,zero3,{SkipsOneReduction.name}",
                 "--steps", "3", "--devices", "2", "--tolerance", "1e-5",
                 "--script-args", "--rows 200"])
    out = capsys.readouterr().out
    assert out.count("SCRIPT START ['--rows', '200']") == 1 and "AFTER FIT" not in out, out
    assert "3 steps of global batch 16" in out, out
    assert _table(out) == {"ddp": "pass", "zero3": "pass", SkipsOneReduction.name: "FAIL"}, out
    assert code == 1  # one strategy failed


def test_unknown_strategy_name_fails_before_training(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    with pytest.raises(SystemExit, match=r"unknown strategy name 'zer03' \(did you mean "
                                         r"'zero3'\?\)") as exit_:
        main(["verify", str(script), "--strategies", "ddp,zer03"])
    assert exit_.value.code != 0
    assert "steps of global batch" not in capsys.readouterr().out  # nothing trained


def test_a_check_too_weak_to_tell_strategies_apart_fails(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.replace("LR = 0.01", "LR = 1e-9"))  # 3 steps move ~3e-9
    with pytest.raises(SystemExit, match=r"moved the parameters by only .* a strategy that "
                                         r"trains wrong \(or not at all\) would pass") as exit_:
        main(["verify", str(script), "--strategies", "ddp", "--steps", "3"])
    assert exit_.value.code != 0
    assert "pass" not in _table(capsys.readouterr().out).values()  # no rank was started


def test_exit_status_and_rows():
    ok = [ParityRow("ddp", PASS, 0.0, 0.0), ParityRow("pipeline", UNSUPPORTED, detail="x")]
    assert all_passed(ok)
    assert not all_passed(ok + [ParityRow("zero3", FAIL, 1e-3, 1e-4)])
    assert not all_passed(ok + [ParityRow("zer03", UNAVAILABLE)])  # nothing was checked
    with pytest.raises(ValueError, match="unknown parity status"):
        ParityRow("ddp", "ok")


def test_first_samples_keeps_order_and_weights():
    data = ArrayData([torch.arange(10.0)[:, None]], [torch.arange(10)], torch.ones(10))
    head = first_samples(data, 4)
    assert len(head) == 4 and head.xs[0][:, 0].tolist() == [0, 1, 2, 3]
    assert len(head.sample_weight) == 4 and first_samples(data, 50) is data


def test_verify_rejects_a_script_without_fit(tmp_path):
    script = tmp_path / "nofit.py"
    script.write_text("print('no training here')\n")
    with pytest.raises(SystemExit, match="without calling model.fit"):
        main(["verify", str(script), "--strategies", "ddp"])


def test_first_samples_keeps_the_inputs_dtypes():
    """verify trains on the first samples: they keep the model's Input specs, so integer
    inputs are cast for a float Input there as in fit."""
    from bigtrain.engine.data import InputSpec
    spec = [InputSpec("x", torch.float32, (2,))]
    data = ArrayData([torch.arange(8).reshape(4, 2)], [torch.zeros(4)], None, inputs=spec)
    first = first_samples(data, 2)
    assert first.inputs == spec
    x, _, _ = first.take(torch.arange(2), "cpu")
    assert x.dtype == torch.float32
