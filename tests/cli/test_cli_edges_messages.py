"""A target that names no module, and a run directory whose run.json is not a run record:
one line naming what was wrong and the expected form, a non-zero exit, no traceback."""
import json
import textwrap

import pytest

from bigtrain.cli.main import main


@pytest.mark.parametrize("command", [["summary"], ["plan", "--devices", "2"]])
@pytest.mark.parametrize("target, missing", [("nosuchmodule_xyz:foo", "nosuchmodule_xyz"),
                                             ("x.txt:f", "x.txt"),
                                             ("nosuchpkg_xyz.sub:f", "nosuchpkg_xyz.sub")])
def test_a_missing_module_is_one_line(command, target, missing, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([command[0], target, *command[1:]])
    message = str(e.value)
    assert repr(missing) in message and "module_or_file.py:attribute" in message
    assert "\n" not in message


def test_a_missing_import_inside_the_module_keeps_its_traceback(tmp_path, monkeypatch):
    # the user's module exists but imports something missing: that error is theirs to see
    (tmp_path / "user_models_xyz.py").write_text("import nosuchdependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="nosuchdependency_xyz"):
        main(["summary", "user_models_xyz:build"])


@pytest.mark.parametrize("text", ["{not json", json.dumps({"a": 1}), "[1, 2]", "null",
                                  json.dumps({"history": 3})])
@pytest.mark.parametrize("command", ["report", "doctor"])
def test_a_corrupt_or_foreign_run_json_is_one_line(command, text, tmp_path):
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(SystemExit) as e:
        main([command, str(tmp_path)])
    message = str(e.value)
    assert message.startswith(f"bigtrain {command}: ") and "is not a bigtrain run record" in message
    assert str(tmp_path / "run.json") in message and "\n" not in message


def test_a_valid_run_json_still_reports(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        from bigtrain.layers import Dense, Input
        from bigtrain.models import Model
        x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
        y = (x[:, 0] > 0).astype("int64")
        i = Input(shape=(3,)); m = Model(inputs=i, outputs=Dense(2, activation="softmax")(i))
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        m.fit(x, y, epochs=1, batch_size=8, verbose=0, run_dir={str(tmp_path / "run")!r})
    """))
    assert main(["train", str(script)]) == 0
    assert main(["doctor", str(tmp_path / "run")]) == 0
    assert main(["report", str(tmp_path / "run")]) == 0
    assert "wrote " in capsys.readouterr().out
