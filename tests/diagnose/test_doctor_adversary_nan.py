"""NaN inputs that reach training through a torch Dataset (fit checks arrays for NaN before
training, but cannot read a Dataset ahead), against a learning rate that drives the loss to
NaN, on the digits.

A NaN batch turns steady losses into NaN in one step (or NaN at the very first step, before
any update); the doctor must name the data first, not clipping, a lower rate or dead units
(a NaN gradient is not a dead unit). A rate that overshoots makes the loss grow before it
becomes NaN: that stays lr_too_high, not nan_inputs.
"""
import torch
from torch.utils.data import Dataset

from bigtrain.optimizers import SGD, Adam
from tests.diagnose.adversary_runs import fit_dataset, shown, sklearn_data
from tests.diagnose.real_runs import ranked


class Digits(Dataset):
    """The standardized digits as a Dataset; item i of `bad` has a NaN pixel."""

    def __init__(self, bad=()):
        x, y, _, _ = sklearn_data("digits")
        self.x, self.y, self.bad = torch.as_tensor(x), torch.as_tensor(y), set(bad)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        row = self.x[i].clone()
        if i in self.bad:
            row[3] = float("nan")
        return row, self.y[i]


def _nan_run(bad, optimizer=None):
    record, _ = fit_dataset(Digits(bad), 64, optimizer or Adam(learning_rate=1e-3))
    assert record.stop["reason"] == "nan_loss", record.stop
    return record, ranked(record)


def test_one_nan_item_mid_epoch_is_named_as_the_data():
    record, findings = _nan_run([700])
    k = next(i for i, v in enumerate(record.step_losses) if v != v)
    assert k > 0  # finite, steady steps first
    assert findings[0].kind == "nan_inputs", shown(findings)
    assert "isfinite(ds[i]" in findings[0].advice
    assert "dead_units" not in [f.kind for f in findings]


def test_nan_at_the_first_step_is_the_data_not_dead_units():
    record, findings = _nan_run(range(0, 1437, 3))
    assert findings[0].kind == "nan_inputs", shown(findings)
    assert "before any update" in findings[0].evidence
    assert "dead_units" not in [f.kind for f in findings], shown(findings)


def test_a_rate_that_drives_the_loss_to_nan_is_not_called_nan_inputs():
    record, findings = _nan_run((), optimizer=SGD(learning_rate=30.0))
    assert findings[0].kind in ("lr_too_high", "exploding_gradients"), shown(findings)
    assert "nan_inputs" not in [f.kind for f in findings]
