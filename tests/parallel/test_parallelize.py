"""parallelize() and the plans models declare, without processes (the composed strategies'
parity on several ranks is in test_hybrid, test_tensor_parallel and test_pipeline)."""
import pytest
import torch
from torch import nn

from bigtrain.parallel.dims import ParallelDims, Topology
from bigtrain.parallel.parallelize import checkpoint_blocks, parallelize
from bigtrain.parallel.pipeline_partition import chain_layers
from bigtrain.parallel.pipeline_stage import StageModule
from bigtrain.parallel.tensor_plan import check_tp, tp_plan
from bigtrain.zoo.gpt import GPT, GPTConfig


class Gated(nn.Module):
    """A block that declares its own plan: both inputs column-wise, the output row-wise."""

    def __init__(self):
        super().__init__()
        self.up, self.gate, self.down = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.down(self.up(x) * torch.sigmoid(self.gate(x)))

    def tp_plan(self, degree):
        if 8 % degree:
            raise ValueError(f"has 8 hidden features, not divisible by {degree}")
        return {"up": "colwise", "gate": "colwise", "down": "rowwise"}


def test_a_declared_plan_wins_and_the_chain_rule_covers_the_rest():
    model = nn.Sequential(Gated(), nn.ReLU(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4))
    assert tp_plan(model, 2) == {"0.up": "colwise", "0.gate": "colwise", "0.down": "rowwise",
                                 "2": "colwise", "4": "rowwise"}
    with pytest.raises(ValueError, match="^0 has 8 hidden features, not divisible by 3"):
        check_tp(model, 3)


def test_gpt_declares_its_tensor_and_pipeline_plans():
    gpt = GPT(GPTConfig.tiny())
    plan = tp_plan(gpt, 2)
    assert plan["blocks.0.attn.q_proj"] == "colwise" and plan["blocks.1.mlp.c_proj"] == "rowwise"
    assert plan["head.lm_head"] == "replicate"  # tied to the token embedding
    names = [n for n, _ in chain_layers(gpt)]
    assert names == ["embed", *[f"blocks.{i}" for i in range(gpt.config.n_layer)], "head"]
    assert gpt.sample_input(3).shape == (3, gpt.config.block_size)


def test_stage_keys_map_back_to_the_models_names_and_layers_are_its_blocks():
    gpt = GPT(GPTConfig.tiny())
    stage = StageModule(["blocks.1", "head"], [gpt.blocks[1], gpt.head])
    assert stage.original_name("layers.0.attn.q_proj.weight") == "blocks.1.attn.q_proj.weight"
    assert stage.original_name("layers.1.ln_f.bias") == "head.ln_f.bias"
    assert checkpoint_blocks(stage) == ["blocks.1", "head"]


def test_one_process_parallelize_checkpoints_blocks_and_keeps_results():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.tiny())
    idx = torch.randint(0, gpt.config.vocab_size, (2, 8))
    before = gpt(idx)
    topo = Topology(ParallelDims(), rank=0, distributed=False)
    (same,) = parallelize(gpt, topo, activation_checkpointing=True)
    assert same is gpt and all(getattr(b, "_bigtrain_checkpointed", False) for b in gpt.blocks)
    assert torch.equal(gpt(idx), before)
    assert topo.data_shard() == (0, 1) and topo.group("dp") is None
