"""Plain single-device PyTorch architectures. Nothing here imports the training layers
(cli, api, engine, parallel, plan, diagnose): parallelism is applied from outside.

Example:
    >>> from bigtrain.zoo import MLP
    >>> model = MLP(784, [128], 10)
"""
from bigtrain.zoo.gpt import GPT, GPTConfig, gpt_loss
from bigtrain.zoo.mlp import MLP

__all__ = ["GPT", "GPTConfig", "MLP", "gpt_loss"]
