"""Transformers written by users (not bigtrain's zoo GPT) and the harness that trains each
(model, strategy) case on the ranks of one process group and on one process.

HandGPT: its own attention (one fused qkv Linear, heads viewed from it), pre-LayerNorm
blocks, a learned position table, an lm_head tied to the token embedding, laid out as
`embed`, `blocks`, `head` so a pipeline may cut it. Encoder: an nn.Sequential of
nn.TransformerEncoderLayer. The faulty ones a pipeline must refuse: a final LayerNorm beside
`head`, a forward that scales the embedding, blocks fed a causal mask."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import bigtrain
from bigtrain import optimizers
from bigtrain.api.training import make_task, prepare_data
from bigtrain.engine.task import FitConfig
from bigtrain.losses import SparseCategoricalCrossentropy
from bigtrain.models import Model

V, T, C, HEADS = 63, 8, 24, 3  # vocab not divisible by 2 ranks, 3 heads of width 8
SAMPLES, BATCH = 24, 8


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, x):
        B, n, _ = x.shape  # (B, T, C)
        q, k, v = (t.view(B, n, HEADS, C // HEADS).transpose(1, 2)
                   for t in self.qkv(x).split(C, 2))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, n, C))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(C), Attention(), nn.LayerNorm(C)
        self.fc, self.out = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(V, C), nn.Parameter(torch.randn(T, C) * 0.02)

    def forward(self, idx):
        return self.tok(idx) + self.pos[:idx.shape[1]]  # (B, T, C)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln, self.lm = nn.LayerNorm(C), nn.Linear(C, V, bias=False)

    def forward(self, x):
        return self.lm(self.ln(x))  # (B, T, V)


class HandGPT(nn.Module):
    def __init__(self, layers: int = 4):
        super().__init__()
        self.embed, self.head = Embed(), Head()
        self.blocks = nn.ModuleList(Block() for _ in range(layers))
        self.head.lm.weight = self.embed.tok.weight  # tied (V, C)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class FrozenFront(HandGPT):
    """Embedding (with the tied lm_head) and the first block frozen: a pipeline stage of
    these has no trainable weight, and its input needs no gradient."""

    def __init__(self):
        super().__init__()
        self.embed.requires_grad_(False)
        self.blocks[0].requires_grad_(False)


class FinalNormBeside(HandGPT):
    """A final LayerNorm of its own beside `head`: not in the pipeline's chain."""

    def __init__(self):
        super().__init__()
        self.ln_f = nn.LayerNorm(C)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class ScaledEmbedding(HandGPT):
    """Scales the embedding in its own forward (no weights outside the chain)."""

    def forward(self, idx):
        x = self.embed(idx) * C ** 0.5
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class MaskedEncoder(nn.Module):
    """nn.TransformerEncoderLayer blocks that its forward hands a causal mask."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(V, C), nn.Linear(C, V)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(C, HEADS, 2 * C, dropout=0.0,
                                                               batch_first=True)
                                    for _ in range(2))

    def forward(self, idx):
        x, mask = self.embed(idx), nn.Transformer.generate_square_subsequent_mask(idx.shape[1])
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return self.head(x)


def encoder() -> nn.Sequential:
    return nn.Sequential(nn.Embedding(V, C),
                         *[nn.TransformerEncoderLayer(C, HEADS, 2 * C, dropout=0.0,
                                                      batch_first=True) for _ in range(2)],
                         nn.Linear(C, V))


MODELS = {"hand_gpt": HandGPT, "encoder": encoder, "frozen_front": FrozenFront,
          "final_norm_beside": FinalNormBeside,
          "scaled_embedding": ScaledEmbedding, "masked_encoder": MaskedEncoder}


def data():
    """Token ids (SAMPLES, T) and next-token targets."""
    x = np.random.default_rng(0).integers(0, V, (SAMPLES, T))
    return x, np.roll(x, -1, axis=1)


def compiled(kind: str) -> Model:
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    torch.manual_seed(0)
    model = Model(MODELS[kind]())
    model.compile(optimizer=optimizers.SGD(learning_rate=0.5, momentum=0.9),
                  loss=SparseCategoricalCrossentropy(from_logits=True))
    return model


def build(kind: str):
    """(model, task): one epoch of SAMPLES / BATCH steps, no shuffling."""
    model = compiled(kind)
    x, y = data()
    cfg = FitConfig(epochs=1, batch_size=BATCH, verbose=0, shuffle=False, seed=0)
    return model, make_task(model, prepare_data(model, x, y), None, cfg, [], split=True)


def reference(kind: str) -> dict:
    """One process: the final state dict (float64 numpy)."""
    from bigtrain.engine.loop import train
    from bigtrain.parallel.base import Strategy
    model, task = build(kind)
    return {k: v.double().numpy() for k, v in train(task, Strategy(), model).state_dict.items()}


def run_cases(rank, world, cases) -> dict:
    """Inside a rank of tests.dist.run_ranks: {repr(case): rank 0's final state (float64
    numpy)} for each case = (model kind, strategy)."""
    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    env = DistEnv(rank=rank, world_size=world, local_rank=rank, local_world_size=world,
                  device=torch.device("cpu"))
    out = {}
    for kind, name in cases:
        model, task = build(kind)
        strategy = resolve_strategy(name)
        strategy.validate(world, BATCH)
        state = run_rank(task, strategy, model, env).state_dict
        out[repr((kind, name))] = ({k: v.double().numpy() for k, v in state.items()}
                                   if state else None)
    return out


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)
