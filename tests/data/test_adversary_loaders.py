"""DataLoaders and Datasets ported from torch scripts: a DistributedSampler (which hands each
rank its own part, while fit splits every global batch itself: together the ranks trained
on half the data, silently) is refused on every rank of a job; a sampler whose len() is not
what it yields, and items holding text, are refused with the fix, before training."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from tests.dist import run_ranks

RNG = np.random.default_rng(5)
X = RNG.normal(size=(40, 4)).astype(np.float32)
Y = np.arange(40) % 2


def _model():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(4,))
    model = Model(inp, Dense(2, activation="softmax")(inp))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def _dataset():
    return TensorDataset(torch.from_numpy(X), torch.arange(40))


def _samples_trained(rank, world):
    """On a rank of a job: ("refused", message), or ("trained", the sample ids this rank's
    epoch 0 reads) for a DataLoader over a DistributedSampler, as a torch script builds it."""
    from bigtrain.api.inputs import prepare_data
    from bigtrain.engine.feed import EpochPlan, feed_epoch
    model = _model()
    model.compile(optimizer="sgd", loss="mse")  # the targets are the sample ids
    loader = DataLoader(_dataset(), batch_size=8, sampler=DistributedSampler(_dataset()))
    try:
        data = prepare_data(model, loader, None)
    except ValueError as e:
        return "refused", str(e)
    plan = EpochPlan(0, 8, None, 0, False, (rank, world), 1, world, 0, torch.device("cpu"))
    feed = feed_epoch(data, plan)
    return "trained", [int(v) for _ in feed.step_numbers(0) for v in feed.next()[1].micro[0][1]]


def test_a_distributed_sampler_is_refused_on_every_rank():
    results = run_ranks(_samples_trained, 2, timeout=60)
    seen = {i for kind, ids in results if kind == "trained" for i in ids}
    assert [kind for kind, _ in results] == ["refused", "refused"], \
        f"the ranks trained on {len(seen)} of 40 samples"
    assert all("DistributedSampler over 2 replicas" in msg and "shuffle=True" in msg
               for _, msg in results)


class Miscounted(Sampler):
    def __iter__(self):
        return iter(range(30))

    def __len__(self):
        return 40


def test_a_sampler_whose_len_differs_from_its_indices_is_named():
    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)), batch_size=8,
                        sampler=Miscounted())
    with pytest.raises(ValueError, match=r"\(Miscounted\) gave 30 indices .* says 40"):
        _model().fit(loader, epochs=1, verbose=0)


class Text(Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):
        return f"verse {i}", Y[i]


def test_items_holding_text_are_refused_before_any_rank_starts():
    with pytest.raises(TypeError, match=r"items hold x as a str .*encode text first"):
        _model().fit(Text(), epochs=1, verbose=0, strategy="ddp", devices=2, timeout=30)
