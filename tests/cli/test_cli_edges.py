"""`bigtrain plan` and `bigtrain doctor` on inputs they cannot handle: one line, no traceback."""
import textwrap

import pytest

from bigtrain.cli.main import main

MODELS = textwrap.dedent("""
    import torch
    from torch import nn
    from bigtrain.zoo.gpt import GPT, GPTConfig

    def gpt_odd():  # 3 heads: no 2-way tensor split
        return GPT(GPTConfig(vocab_size=101, block_size=8, n_layer=1, n_head=3, n_embd=12))

    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__(); self.a = nn.Linear(4, 8); self.b = nn.Linear(6, 8)
        def forward(self, x1, x2):
            return self.a(x1) + self.b(x2)

    def two_in():
        return TwoIn()

    def bn():
        return nn.Sequential(nn.Linear(7, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
""")


@pytest.fixture
def models(tmp_path, monkeypatch):
    (tmp_path / "cli_models.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    return "cli_models.py"


def test_plan_marks_an_impossible_tensor_split(models, capsys):
    assert main(["plan", f"{models}:gpt_odd", "--devices", "2"]) == 0
    out = capsys.readouterr().out
    assert "cannot run: tensor: " in out and "3 heads" in out
    assert "best: tensor" not in out


def test_plan_of_a_batchnorm_model(models, capsys):
    assert main(["plan", f"{models}:bn", "--devices", "2"]) == 0
    assert "best: " in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["two_in", "--devices", "2"], "takes 2 inputs (x1, x2)"),
    (["bn", "--devices", "0"], "--devices and --batch-size must be at least 1"),
    (["bn", "--devices", "2", "--batch-size", "0"], "must be at least 1"),
])
def test_plan_refuses_in_one_line(models, argv, message):
    with pytest.raises(SystemExit) as e:
        main(["plan", f"{models}:{argv[0]}", *argv[1:]])
    assert str(e.value).startswith("bigtrain plan: ") and message in str(e.value)


def test_doctor_names_itself_for_a_missing_script(tmp_path):
    with pytest.raises(SystemExit, match="bigtrain doctor: no such script"):
        main(["doctor", str(tmp_path / "nope.py")])


def test_doctor_reports_nan_data_as_a_finding(tmp_path, capsys):
    script = tmp_path / "nan.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from bigtrain.layers import Dense, Input
        from bigtrain.models import Model
        x = np.ones((32, 3), "float32"); x[3, 1] = np.nan; y = np.zeros(32, "int64")
        i = Input(shape=(3,)); m = Model(inputs=i, outputs=Dense(2, activation="softmax")(i))
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    """))
    assert main(["doctor", str(script)]) == 0
    assert "nan_values" in capsys.readouterr().out
