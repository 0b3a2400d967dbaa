"""Tiny single-device models for the planner tests (an MLP and a GPT-like decoder)."""
import torch
from torch import nn


def mlp(d_in: int = 784, hidden: int = 512, d_out: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class TinyGPT(nn.Module):
    """Token + position embeddings, one pre-norm causal block, tied LM head."""

    def __init__(self, vocab: int = 64, d: int = 32, heads: int = 4, max_len: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.block = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0,
                                                batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2

    def forward(self, idx):  # idx: (B, T) token ids
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))  # (B, T, d)
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)
        x = self.block(x, src_mask=mask, is_causal=True)
        return self.head(self.norm(x))  # (B, T, vocab)
