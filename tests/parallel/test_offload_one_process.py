"""fsdp_offload in one process (the single-accelerator case offload exists for): the model
goes through fully_shard with CPUOffloadPolicy on a group of this process alone, trains like
the single strategy, checkpoints and resumes, and leaves no process group behind."""
import numpy as np
import torch

import bigtrain
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from bigtrain.parallel.base import DistEnv
from bigtrain.parallel.sharded import Sharded
from tests.api.conftest import seed_like_model, teacher_data


def _fit(strategy, seed=0, epochs=1, **kw):
    x, y, _ = teacher_data(n=160)
    bigtrain.clear_session()  # same layer names, so the checkpoint's keys match
    bigtrain.set_seed(seed)
    model = seed_like_model()
    hist = model.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0, strategy=strategy,
                     **kw)
    return model, hist


def test_one_process_offload_shards_on_its_own_group_and_cleans_up():
    strategy = Sharded(reshard_after_forward=True, offload=True)
    strategy.setup(DistEnv())
    module = strategy.setup_module(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    assert dist.is_initialized() and dist.get_world_size() == 1
    assert all(isinstance(p, DTensor) for p in module.parameters())
    assert set(strategy.full_state_dict(module)) == {"0.weight", "0.bias"}
    strategy.teardown()
    assert not dist.is_initialized()


def test_one_process_offload_matches_single():
    ref, _ = _fit("single")
    off, hist = _fit("fsdp_offload")
    assert np.isfinite(hist.history["loss"][0])
    for a, b in zip(ref.get_weights(), off.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert not dist.is_initialized()


def test_one_process_offload_checkpoints_and_resumes(tmp_path):
    ck = str(tmp_path / "ck")
    whole, _ = _fit("fsdp_offload", epochs=2)
    _fit("fsdp_offload", epochs=1, checkpoint_dir=ck, checkpoint_every=2)
    # other initial weights: only a resume from the checkpoint can end where `whole` ends
    resumed, hist = _fit("fsdp_offload", seed=1, epochs=2, checkpoint_dir=ck)
    assert hist.epoch == [1]
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
