"""Wide & Deep click-through-rate model (Cheng et al., 2016) on one device.

Each sample has `num_fields` categorical ids (already offset into one shared id space of
`num_ids` rows, e.g. hashed field values) and `num_dense` numeric features. One embedding
table serves both towers: column 0 of an id's row is its wide (linear) weight, the other
`embed_dim` columns its deep embedding, so a batch looks each id up once (and a parameter
server moves each touched row once).

    ids (B, F) --embedding--> (B, F, 1+E) --+-- [..., 0].sum(F) ---------------+--> logit (B, 1)
                                            +-- [..., 1:] (B, F*E) + dense --MLP-+
    dense (B, D) --linear--------------------------------------------------------+

Example:
    from bigtrain.zoo.wide_and_deep import WideAndDeep
    model = WideAndDeep(num_ids=1_000_000, num_fields=8, num_dense=4)
    logits = model(torch.randint(0, 1_000_000, (64, 8)), torch.randn(64, 4))   # (64, 1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, clicks)
"""
from __future__ import annotations

import torch
from torch import nn


class WideAndDeep(nn.Module):
    """Logits of a click from categorical ids and dense features.

    Args:
        num_ids: rows of the shared embedding table (all fields' ids together).
        num_fields: categorical ids per sample.
        num_dense: numeric features per sample.
        embed_dim: width of the deep embedding (the table has 1 + embed_dim columns).
        hidden: widths of the deep tower's hidden layers.
    """

    def __init__(self, num_ids: int, num_fields: int, num_dense: int, embed_dim: int = 16,
                 hidden: tuple[int, ...] = (64, 32)):
        super().__init__()
        if min(num_ids, num_fields, embed_dim) < 1 or num_dense < 0:
            raise ValueError(f"WideAndDeep needs num_ids, num_fields, embed_dim >= 1 and "
                             f"num_dense >= 0, got {num_ids}, {num_fields}, {embed_dim}, "
                             f"{num_dense}")
        self.embedding = nn.Embedding(num_ids, 1 + embed_dim)
        nn.init.normal_(self.embedding.weight, std=0.01)
        self.dense_wide = nn.Linear(num_dense, 1)
        layers, width = [], num_fields * embed_dim + num_dense
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.deep = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        rows = self.embedding(ids)                                    # (B, F, 1+E)
        wide = rows[..., 0].sum(1, keepdim=True) + self.dense_wide(dense)  # (B, 1)
        deep = self.deep(torch.cat([rows[..., 1:].flatten(1), dense], 1))  # (B, 1)
        return wide + deep                                            # logits (B, 1)
