"""A GPT language model you can read top to bottom (after nanoGPT), on one device.

The model is cut into three named parts so that parallel strategies can split it from the
outside without touching this file:

    model.embed    token + position embeddings          idx (B, T) -> x (B, T, C)
    model.blocks   nn.ModuleList of pre-LayerNorm Blocks x (B, T, C) -> x (B, T, C)
    model.head     final LayerNorm + lm_head             x (B, T, C) -> logits (B, T, V)

`forward(idx)` is just `head(blocks(embed(idx)))`, so a pipeline may place `embed`, any run
of `blocks` and `head` on different stages. The lm_head weight is tied to the token
embedding (`head.lm_head.weight is embed.wte.weight`). When a pipeline puts `embed` and
`head` on different ranks each rank holds its own copy of that tensor; the pipeline then
sums the two gradients between the first and last stage before the optimizer step, so
both copies stay equal and training matches this single-device model exactly.

Attention uses separate q/k/v projections (not one fused `c_attn`) so that tensor
parallelism can shard them column-wise by heads; the head count is read from the
projection width at run time, so a shard with `n_head / tp` heads runs the same code.

Parallel plans live here, beside the layers they split (plain data: no import of any
parallel code). `CausalSelfAttention.tp_plan(degree)` and `MLP.tp_plan(degree)` name the
Megatron styles of their own Linears (q/k/v and c_fc column-wise, c_proj row-wise);
bigtrain.parallel.tensor_plan prefixes them with the module's name, wherever the block
sits (a GPT, a pipeline stage, a Keras-style TransformerBlock). `GPT.pp_layers()` is the
chain a pipeline cuts, `GPT.sample_input(n)` what it times the layers on.

Example:
    from bigtrain.zoo.gpt import GPT, GPTConfig, gpt_loss
    model = GPT(GPTConfig.tiny())
    idx = torch.randint(0, 64, (2, 16))
    loss = gpt_loss(model(idx), idx)
    text = model.generate(idx[:, :4], max_new_tokens=8, top_k=10)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT.

    Attributes:
        vocab_size: number of token ids (V).
        block_size: longest sequence the position table covers (max T).
        n_layer: number of transformer blocks.
        n_head: attention heads per block (nh); must divide n_embd.
        n_embd: model width (C); head size hs = C / nh.
        dropout: dropout probability on attention, residual and embeddings (0 = off).
        bias: whether Linear and LayerNorm layers carry a bias (GPT-2: True).
    """
    vocab_size: int = 50304
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self):
        for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, field) < 1:
                raise ValueError(f"GPTConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                f"pick n_head among the divisors of n_embd or set n_embd to a multiple of "
                f"{self.n_head} (e.g. {self.n_head * max(1, round(self.n_embd / self.n_head))})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def tiny(cls, **overrides) -> "GPTConfig":
        """4 layers, width 32, 4 heads, 16 tokens, vocab 64: for tests (~55k params)."""
        return cls(**{**dict(vocab_size=64, block_size=16, n_layer=4, n_head=4, n_embd=32),
                      **overrides})

    @classmethod
    def small(cls, **overrides) -> "GPTConfig":
        """6 layers, width 192, 6 heads, 128 tokens: CPU benchmarks (~3M params)."""
        return cls(**{**dict(vocab_size=4096, block_size=128, n_layer=6, n_head=6,
                             n_embd=192), **overrides})

    @classmethod
    def gpt2(cls, **overrides) -> "GPTConfig":
        """GPT-2 124M: 12 layers, width 768, 12 heads, 1024 tokens, vocab 50304."""
        return cls(**overrides)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with q/k/v projections sharded-friendly."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.head_dim = cfg.n_embd // cfg.n_head
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape  # (B, T, C)
        # -1 heads: nh on one device, nh / tp on a tensor-parallel shard
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, nh * hs)
        return self.resid_drop(self.c_proj(y))  # (B, T, C)

    def tp_plan(self, degree: int) -> dict[str, str]:
        """Tensor-parallel styles of this module's Linears: heads split over `degree` ranks
        (q/k/v column-wise: nh / degree heads each), then one all-reduce after c_proj.

        Raises:
            ValueError: the head count does not divide by `degree` (names the fix).
        """
        heads = self.q_proj.out_features // self.head_dim
        if heads % degree:
            ok = [d for d in range(1, heads + 1) if heads % d == 0]
            raise ValueError(f"has {heads} heads, not divisible by the tensor degree {degree}; "
                             f"use a degree in {ok} or a head count divisible by {degree}")
        return {"q_proj": "colwise", "k_proj": "colwise", "v_proj": "colwise",
                "c_proj": "rowwise"}


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)

    def tp_plan(self, degree: int) -> dict[str, str]:
        """Tensor-parallel styles: c_fc column-wise (4C / degree each), c_proj row-wise."""
        return {"c_fc": "colwise", "c_proj": "rowwise"}


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class Embedding(nn.Module):
    """Token + learned position embeddings: idx (B, T) int64 -> (B, T, C)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.block_size = cfg.block_size
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size={self.block_size}; "
                             "crop the input or build the model with a larger block_size")
        pos = torch.arange(T, device=idx.device)  # (T,)
        return self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)


class Head(nn.Module):
    """Final LayerNorm and the vocabulary projection: (B, T, C) -> logits (B, T, V)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(x))  # (B, T, V)


class GPT(nn.Module):
    """Decoder-only transformer: embed -> blocks -> head, lm_head tied to the embedding.

    Args:
        cfg: the model's shape (see GPTConfig presets tiny/small/gpt2).

    Example:
        model = GPT(GPTConfig.tiny())
        logits = model(torch.randint(0, 64, (2, 16)))  # (2, 16, 64)
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.embed = Embedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.head = Head(cfg)
        self.head.lm_head.weight = self.embed.wte.weight  # weight tying (V, C)
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the stream stays O(1)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weight once); minus position embeddings if non_embedding."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        return self.head(x)  # (B, T, V)

    def pp_layers(self) -> list[tuple[str, nn.Module]]:
        """The chain a pipeline cuts, in execution order, with state-dict prefixes:
        embed, blocks.0 .. blocks.{n-1}, head."""
        blocks = [(f"blocks.{i}", b) for i, b in enumerate(self.blocks)]
        return [("embed", self.embed), *blocks, ("head", self.head)]

    def sample_input(self, n: int = 2) -> torch.Tensor:
        """`n` random full-length sequences of token ids (n, block_size), e.g. to time the
        layers on."""
        return torch.randint(0, self.config.vocab_size, (n, self.config.block_size))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None) -> torch.Tensor:
        """Sample `max_new_tokens` tokens after the prompt `idx` (B, T); returns (B, T + new).

        Args:
            idx: prompt token ids, int64 (B, T).
            max_new_tokens: how many tokens to append.
            temperature: > 0; lower is greedier.
            top_k: keep only the k most likely tokens at each step (None: all).
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.block_size:]  # crop to the position table
            logits = self(ctx)[:, -1, :] / temperature  # (B, V)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)  # (B, 1)
            idx = torch.cat((idx, nxt), dim=1)
        return idx


def gpt_loss(logits: torch.Tensor, targets: torch.Tensor, sample_weight=None) -> torch.Tensor:
    """Mean next-token cross-entropy; logits (B, T, V), targets (B, T) int64.

    `sample_weight` (B,) optionally weights whole sequences (weighted mean over tokens).
    """
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           reduction="none").view(targets.shape)  # (B, T)
    if sample_weight is None:
        return loss.mean()
    w = sample_weight.reshape(-1, *([1] * (loss.dim() - 1))).to(loss.dtype)  # (B, 1)
    return (loss * w).sum() / (w.sum() * loss[0].numel()).clamp_min(1e-12)
