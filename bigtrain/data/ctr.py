"""Deterministic synthetic click data with a learnable ground truth (for CTR models).

Each of `num_fields` fields owns a contiguous block of `num_ids // num_fields` ids; ids are
drawn with a power-law skew (a few ids are frequent, most rare, as in real click logs).
A hidden weight per id plus hidden weights on the dense features give the true logit:

    logit = sum_f w[id_f] + dense @ v + bias          click ~ Bernoulli(sigmoid(logit))

so a model that learns per-id weights (e.g. WideAndDeep) can approach the Bayes AUC,
returned as `CTRData.oracle_logits` for comparison.

Example:
    from bigtrain.data.ctr import CTRConfig, make_ctr
    data = make_ctr(CTRConfig(num_samples=50_000, num_ids=1_000_000))
    data.ids.shape, data.dense.shape, data.clicks.shape    # (50000, 8), (50000, 4), (50000, 1)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CTRConfig:
    """Shape and difficulty of the synthetic click log.

    Attributes:
        num_samples: rows of the log.
        num_ids: size of the shared id space (rows of the model's embedding table).
        num_fields: categorical fields per sample.
        num_dense: numeric features per sample.
        skew: power-law exponent of id frequency (1: uniform; larger: more skewed).
        id_scale: standard deviation of the hidden per-id weights (signal strength).
        seed: everything is drawn from this seed.
    """
    num_samples: int = 10_000
    num_ids: int = 10_000
    num_fields: int = 8
    num_dense: int = 4
    skew: float = 3.0
    id_scale: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.num_samples < 1 or self.num_fields < 1 or self.num_dense < 0:
            raise ValueError(f"CTRConfig needs num_samples, num_fields >= 1 and num_dense >= 0, "
                             f"got {self.num_samples}, {self.num_fields}, {self.num_dense}")
        if self.num_ids < self.num_fields:
            raise ValueError(f"num_ids ({self.num_ids}) must be >= num_fields "
                             f"({self.num_fields}): each field needs its own ids")
        if self.skew < 1.0:
            raise ValueError(f"skew must be >= 1 (1 = uniform ids), got {self.skew}")


@dataclass(frozen=True)
class CTRData:
    """ids (N, F) int64, dense (N, D) float32, clicks (N, 1) float32 in {0, 1}, and the
    true logits (N,) a perfect model would output."""
    ids: torch.Tensor
    dense: torch.Tensor
    clicks: torch.Tensor
    oracle_logits: torch.Tensor

    def split(self, fraction: float) -> tuple["CTRData", "CTRData"]:
        """(first `fraction` of rows, the rest): a train/test split."""
        n = int(len(self.ids) * fraction)
        head = CTRData(self.ids[:n], self.dense[:n], self.clicks[:n], self.oracle_logits[:n])
        tail = CTRData(self.ids[n:], self.dense[n:], self.clicks[n:], self.oracle_logits[n:])
        return head, tail


def make_ctr(config: CTRConfig = CTRConfig()) -> CTRData:
    """Draw the click log described by `config` (same config -> same tensors).

    Args:
        config: sizes, skew, signal strength and seed.

    Returns:
        CTRData with ids already offset per field into [0, num_ids).
    """
    g = torch.Generator().manual_seed(config.seed)
    per_field = config.num_ids // config.num_fields
    id_weight = torch.randn(config.num_ids, generator=g) * config.id_scale
    dense_weight = torch.randn(config.num_dense, generator=g) * 0.5
    u = torch.rand(config.num_samples, config.num_fields, generator=g)
    local = (per_field * u.pow(config.skew)).long().clamp_(max=per_field - 1)  # skewed
    ids = local + torch.arange(config.num_fields) * per_field                   # (N, F)
    dense = torch.randn(config.num_samples, config.num_dense, generator=g)      # (N, D)
    logits = id_weight[ids].sum(1) / config.num_fields ** 0.5 + dense @ dense_weight - 0.5
    clicks = torch.bernoulli(torch.sigmoid(logits), generator=g).unsqueeze(1)   # (N, 1)
    return CTRData(ids, dense, clicks, logits)
