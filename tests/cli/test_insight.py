"""run_dir -> report/doctor, plan from the CLI, and strategy='auto'."""
import sys

import numpy as np
import pytest
from PIL import Image

from bigtrain.cli.main import main
from bigtrain.diagnose import RunRecord
from tests.api.conftest import seed_like_model, teacher_data


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    x, y, _ = teacher_data(n=400)
    model = seed_like_model()
    model.fit(x, y, epochs=3, batch_size=32, validation_split=0.25, verbose=0, run_dir=str(folder))
    return folder


def test_fit_writes_a_run_record(run_dir):
    record = RunRecord.load(run_dir)
    assert record.strategy == "single" and record.world_size == 1
    assert record.history["loss"] and len(record.history["val_loss"]) == 3
    assert record.samples_per_s > 0
    assert 0 < record.mfu < 1 and record.peak_flops > 0  # measured, not assumed
    mem = record.memory[0]
    n = 20 * 32 + 32 + 32 * 4 + 4
    assert mem.params == 4 * n and mem.grads in (0, 4 * n)
    assert mem.optimizer >= 8 * n  # Adam's two moments


def test_report_writes_markdown_and_valid_pngs(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text().strip()
    pngs = list(run_dir.glob("*.png"))
    assert pngs
    for png in pngs:
        with Image.open(png) as im:
            im.verify()


def test_doctor_reads_the_run(run_dir, capsys):
    assert main(["doctor", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip()


def test_report_on_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(SystemExit, match="not a bigtrain run directory"):
        main(["report", str(tmp_path)])


def test_plan_command_ranks_strategies(tmp_path, capsys):
    f = tmp_path / "m.py"
    f.write_text("from bigtrain.layers import Dense, Input\nfrom bigtrain.models import Model\n"
                 "def build():\n    i = Input(shape=(1000,))\n"
                 "    return Model(i, Dense(10)(Dense(512, activation='relu')(i)))\n")
    assert main(["plan", f"{f}:build", "--devices", "4", "--device-memory", "80GB"]) == 0
    out = capsys.readouterr().out
    assert "ddp" in out and "zero3" in out and "best:" in out


def test_auto_on_one_device_is_single(capsys):
    x, y, _ = teacher_data(n=64)
    hist = seed_like_model().fit(x, y, epochs=1, verbose=0, strategy="auto")
    assert np.isfinite(hist.history["loss"][0])


def test_export_writes_loadable_weights(tmp_path, capsys):
    x, y, _ = teacher_data(n=64)
    model = seed_like_model()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, checkpoint_dir=str(tmp_path / "ck"))
    out = tmp_path / "w.safetensors"
    assert main(["export", str(tmp_path / "ck"), str(out)]) == 0
    fresh = seed_like_model()
    fresh.load_weights(str(out))
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SystemExit, match="bigtrain export"):
        main(["export", str(tmp_path / "nothing"), str(out)])


def test_doctor_checks_a_scripts_data_before_training(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text(
        "import numpy as np\n"
        "from bigtrain.layers import Dense, Input\nfrom bigtrain.models import Model\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.normal(size=(300, 5)).astype('float32')\n"
        "x[:, 2] = 7.0  # a constant feature\n"
        "y = np.eye(2, dtype='float32')[(x[:, 0] > 0).astype(int)]\n"
        "i = Input(shape=(5,))\n"
        "m = Model(i, Dense(2, activation='softmax')(i))\n"
        "m.compile(optimizer='adam', loss='categorical_crossentropy')\n"
        "m.fit(x, y, epochs=1000)\n"
        "raise SystemExit('trained: the doctor must not train')\n")
    assert main(["doctor", str(script)]) == 0
    out = capsys.readouterr().out
    assert "constant" in out.lower() and "2" in out


def test_doctor_lr_test_flags_a_learning_rate_far_too_low(tmp_path, capsys):
    findings = {}
    for lr in ("1e-7", "3e-2"):
        path = tmp_path / f"train_{lr}.py"
        path.write_text(lr_script(lr, "epochs=5, batch_size=20"))
        assert main(["doctor", str(path), "--lr-test"]) == 0
        findings[lr] = capsys.readouterr().out
    assert "lr_too_low" in findings["1e-7"]
    assert "lr_too" not in findings["3e-2"]


LR_SCRIPT_TEMPLATE = (
    "import sys\nimport numpy as np\n"
    "from bigtrain.layers import Dense, Input\nfrom bigtrain.models import Model\n"
    "rng = np.random.default_rng(0)\n"
    "x = rng.normal(size=(600, 8)).astype('float32')\n"
    "y = np.eye(3, dtype='float32')[(x @ rng.normal(size=(8, 3))).argmax(1)]\n"
    "i = Input(shape=(8,))\n"
    "m = Model(i, Dense(3, activation='softmax')(Dense(16, activation='relu')(i)))\n"
    "m.compile(optimizer='adam', loss='categorical_crossentropy', learning_rate=LR)\n"
    "m.fit(x, y, FIT)\n")


def lr_script(lr: str, fit: str) -> str:
    """A training script at learning rate `lr`, calling fit(x, y, <fit>)."""
    return LR_SCRIPT_TEMPLATE.replace("LR", lr).replace("FIT", fit)


LR_SCRIPT = lr_script("1e-7", "epochs=1, batch_size=20, verbose=0, run_dir=sys.argv[1]")


def test_doctor_run_dir_lr_test_reruns_the_recorded_script(tmp_path, capsys):
    script, run = tmp_path / "train.py", tmp_path / "run"
    script.write_text(LR_SCRIPT)
    before = list(sys.argv)
    assert main(["train", str(script), str(run)]) == 0
    assert sys.argv == before  # the script saw its own argv; ours is back
    record = RunRecord.load(run)
    assert record.script == str(script) and record.script_args == [str(run)]
    assert main(["doctor", str(run)]) == 0
    out = capsys.readouterr().out  # the recorded update/weight ratio is evidence already
    assert "lr_too_low" in out and "at the current lr" not in out
    assert main(["doctor", str(run), "--lr-test"]) == 0
    assert "at the current lr 1e-07" in capsys.readouterr().out  # the range test's finding
    record.script = None
    record.save(run)
    assert main(["doctor", str(run), "--lr-test"]) == 0
    assert "lr_test_skipped" in capsys.readouterr().out
