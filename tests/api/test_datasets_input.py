import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import bigtrain
from tests.api.conftest import seed_like_model, teacher_data


class Lazy(Dataset):
    """Items made on demand; counts how many were read."""

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return torch.from_numpy(self.x[i]), torch.from_numpy(self.y[i])


def test_dataset_and_dataloader_train_like_arrays():
    x, y, _ = teacher_data(n=320)
    results = []
    for source in ("arrays", "dataset", "loader"):
        bigtrain.clear_session()
        bigtrain.set_seed(0)
        model = seed_like_model()
        if source == "arrays":
            model.fit(x, y, epochs=2, batch_size=32, verbose=0)
        elif source == "dataset":
            model.fit(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), epochs=2,
                      batch_size=32, verbose=0)
        else:
            # the loader's order rules: a RandomSampler is fit's seeded order
            model.fit(DataLoader(Lazy(x, y), batch_size=32, shuffle=True), epochs=2,
                      verbose=0)
        results.append(model.get_weights())
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_dataset_validation_split_and_evaluate():
    x, y, _ = teacher_data(n=200)
    ds = Lazy(x, y)
    model = seed_like_model()
    hist = model.fit(ds, epochs=1, batch_size=50, validation_split=0.2, verbose=0)
    assert "val_loss" in hist.history
    assert 200 <= ds.reads <= 205  # each of 160 + 40 items read once (plus a shape probe or so)
