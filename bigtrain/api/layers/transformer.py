"""Keras-style transformer layers over the zoo's GPT parts, so a GPT can be written
functionally:

    ids = Input(shape=(64,), dtype="int64")
    h = PositionalEmbedding(sequence_length=64, vocab_size=256, embed_dim=128)(ids)
    for _ in range(4):
        h = TransformerBlock(num_heads=4)(h)
    logits = Dense(256)(LayerNormalization()(h))
"""
from __future__ import annotations

from bigtrain.api.layers.base import Layer
from bigtrain.zoo.gpt import Block, GPTConfig
from bigtrain.zoo.gpt import Embedding as GPTEmbedding


class PositionalEmbedding(Layer):
    """Token + learned position embeddings: ids (T,) -> (T, embed_dim)."""

    def __init__(self, sequence_length: int, vocab_size: int, embed_dim: int,
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length, self.vocab_size = int(sequence_length), int(vocab_size)
        self.embed_dim, self.dropout = int(embed_dim), float(dropout)

    def build(self, input_shape):
        if input_shape[-1] > self.sequence_length:
            raise ValueError(f"inputs of length {input_shape[-1]} exceed sequence_length="
                             f"{self.sequence_length}")
        cfg = GPTConfig(vocab_size=self.vocab_size, block_size=self.sequence_length, n_layer=1,
                        n_head=1, n_embd=self.embed_dim, dropout=self.dropout)
        self.embed = GPTEmbedding(cfg)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.embed_dim)

    def output_dtype(self, input_dtype):
        import torch
        return torch.float32

    def call(self, ids):
        return self.embed(ids.long())

    def get_config(self):
        return {"name": self.name, "sequence_length": self.sequence_length,
                "vocab_size": self.vocab_size, "embed_dim": self.embed_dim, "dropout": self.dropout}


class TransformerBlock(Layer):
    """A pre-LayerNorm causal transformer block (attention + MLP) on (T, C) inputs."""

    def __init__(self, num_heads: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.dropout = int(num_heads), float(dropout)

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"TransformerBlock takes (sequence, features) inputs, got {input_shape}")
        seq, width = input_shape
        if width % self.num_heads:
            raise ValueError(f"{width} features do not split into {self.num_heads} heads; use a "
                             "num_heads that divides the width")
        cfg = GPTConfig(vocab_size=1, block_size=seq, n_layer=1, n_head=self.num_heads,
                        n_embd=width, dropout=self.dropout)
        self.block = Block(cfg)

    def call(self, x):
        return self.block(x)

    def get_config(self):
        return {"name": self.name, "num_heads": self.num_heads, "dropout": self.dropout}
