"""The dict-output module of test_dict_outputs, apart from it: launched ranks import this
file to unpickle it, without the test's Keras import."""
import torch
from torch import nn


class DictOut(nn.Module):
    """(B, 4) -> {"b": (B, 3) probabilities, "a": (B, 2), "c": (B, 1)}; "c" gets no loss."""

    def __init__(self):
        super().__init__()
        self.h, self.a, self.b, self.c = (nn.Linear(4, 6), nn.Linear(6, 2), nn.Linear(6, 3),
                                          nn.Linear(6, 1))

    def forward(self, x):
        h = torch.tanh(self.h(x))  # (B, 6)
        return {"b": torch.softmax(self.b(h), -1), "a": self.a(h), "c": self.c(h)}
