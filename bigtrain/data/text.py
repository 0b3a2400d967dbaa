"""A byte-level text corpus for next-token language modelling (nanoGPT's `shakespeare_char`
idea, with bytes as tokens so no tokenizer has to be trained or shipped).

Token ids are the UTF-8 bytes of the text: vocabulary size 256, `encode` and `decode` are
exact inverses for any string.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BYTE_VOCAB_SIZE = 256


@dataclass(frozen=True, eq=False)
class TextCorpus:
    """Train/validation token streams of one text, with its byte-level codec.

    Attributes:
        train: 1-D np.int64 token ids (bytes) of the training part of the text.
        val: 1-D np.int64 token ids of the held-out tail of the text.
        vocab_size: number of distinct token ids (256 for bytes).

    Example:
        >>> enc = TextCorpus.encode
        >>> c = TextCorpus(train=enc("In the beginning"), val=enc("Amen."))
        >>> x, y = c.windows("train", block_size=4)   # 16 bytes -> starts 0, 4, 8
        >>> x.shape, y.shape
        ((3, 4), (3, 4))
        >>> c.decode(x[0]), c.decode(y[0])
        ('In t', 'n th')
    """

    train: np.ndarray
    val: np.ndarray
    vocab_size: int = BYTE_VOCAB_SIZE

    def __post_init__(self):
        if self.vocab_size != BYTE_VOCAB_SIZE:
            raise ValueError(f"TextCorpus is byte-level: vocab_size must be {BYTE_VOCAB_SIZE}, "
                             f"got {self.vocab_size}.")
        for name in ("train", "val"):
            ids = getattr(self, name)
            if not isinstance(ids, np.ndarray) or ids.ndim != 1 or ids.dtype != np.int64:
                raise TypeError(f"TextCorpus.{name} must be a 1-D np.int64 array of token ids, "
                                f"got {type(ids).__name__} "
                                f"{getattr(ids, 'dtype', '')} {getattr(ids, 'shape', '')}.")
            if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
                raise ValueError(f"TextCorpus.{name} has ids outside [0, {self.vocab_size}).")

    @staticmethod
    def encode(text: str) -> np.ndarray:
        """UTF-8 bytes of `text` as an int64 array of shape (len(bytes),)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    @staticmethod
    def decode(ids) -> str:
        """Inverse of `encode`. Invalid byte sequences (a window cut inside a multi-byte
        character) decode to U+FFFD instead of raising."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= BYTE_VOCAB_SIZE):
            raise ValueError(f"decode expects byte ids in [0, {BYTE_VOCAB_SIZE}), "
                             f"got min {arr.min()} max {arr.max()}.")
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def _split(self, split: str) -> np.ndarray:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}.")
        return getattr(self, split)

    def windows(self, split: str, block_size: int, stride: int | None = None,
                max_windows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic (x, y) next-token pairs cut from one split, ready for `fit(x, y)`.

        Args:
            split: "train" or "val".
            block_size: T, tokens per example.
            stride: tokens between the starts of consecutive windows (default T: no overlap).
            max_windows: keep only the first this many windows (None: all).

        Returns:
            x: (N, T) int64 ids; y: (N, T) int64, y[i, t] is the token after x[i, t].

        Example:
            >>> x, y = corpus.windows("val", block_size=64)   # doctest: +SKIP
        """
        data = self._split(split)
        stride = block_size if stride is None else stride
        if not all(isinstance(v, (int, np.integer)) and v >= 1 for v in (block_size, stride)):
            raise ValueError(f"block_size and stride must be whole numbers >= 1, got "
                             f"{block_size!r}, {stride!r}.")
        if max_windows is not None and not (isinstance(max_windows, (int, np.integer)) and
                                            max_windows >= 0):
            raise ValueError(f"max_windows must be a whole number >= 0 or None, got "
                             f"{max_windows!r} (a negative one dropped windows from the end).")
        if data.size < block_size + 1:
            raise ValueError(f"The {split} split has {data.size} tokens, fewer than "
                             f"block_size + 1 = {block_size + 1}; use a smaller block_size.")
        # (L - T, T + 1) views; row s holds tokens s .. s+T, so x = [:, :-1], y = [:, 1:].
        rows = np.lib.stride_tricks.sliding_window_view(data, block_size + 1)[::stride]
        if max_windows is not None:
            rows = rows[:max_windows]
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])

    def batches(self, split: str, block_size: int, batch_size: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One random batch of (x, y) pairs, nanoGPT's `get_batch`.

        Args:
            split: "train" or "val".
            block_size: T, tokens per example.
            batch_size: B, examples in the batch.
            rng: the numpy Generator drawing the start offsets (seed it for reproducibility).

        Returns:
            x, y: (B, T) int64 arrays, y shifted one token to the right of x.

        Example:
            >>> x, y = corpus.batches("train", 128, 32, np.random.default_rng(0))  # doctest: +SKIP
        """
        data = self._split(split)
        if data.size < block_size + 1:
            raise ValueError(f"The {split} split has {data.size} tokens, fewer than "
                             f"block_size + 1 = {block_size + 1}; use a smaller block_size.")
        starts = rng.integers(0, data.size - block_size, size=batch_size)  # (B,)
        idx = starts[:, None] + np.arange(block_size + 1)[None, :]       # (B, T + 1)
        rows = data[idx]
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])
