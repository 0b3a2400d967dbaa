"""A small GPT language model on the King James Bible (byte-level tokens), Keras-style.

Reports validation loss and perplexity and prints a generated sample.

    python examples/gpt_kjv.py                     # one process
    python examples/gpt_kjv.py --strategy pipeline --devices 2
    python examples/gpt_kjv.py --strategy tensor --devices 2
"""
import argparse
import math

import torch

import bigtrain
from bigtrain.datasets import kjv_text
from bigtrain.losses import SparseCategoricalCrossentropy
from bigtrain.models import Model
from bigtrain.zoo import GPT, GPTConfig

parser = argparse.ArgumentParser()
parser.add_argument("--strategy", default=None)
parser.add_argument("--devices", type=int, default=None)
parser.add_argument("--windows", type=int, default=3000, help="training windows of 64 tokens")
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()

bigtrain.set_seed(0)
corpus = kjv_text()
x, y = corpus.windows("train", block_size=64, max_windows=args.windows)
xv, yv = corpus.windows("val", block_size=64, max_windows=300)

config = GPTConfig(vocab_size=corpus.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128)
model = Model(GPT(config), name="gpt_kjv")
model.compile(optimizer="adamw", loss=SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"], learning_rate=2e-3)
model.summary()
model.fit(x, y, epochs=args.epochs, batch_size=32, validation_data=(xv, yv),
          strategy=args.strategy, devices=args.devices)

if bigtrain.is_main_process():
    val_loss, val_acc = model.evaluate(xv, yv, batch_size=64)
    print(f"validation loss {val_loss:.3f} - perplexity {math.exp(val_loss):.1f} "
          f"(a uniform byte model has 256) - next-byte accuracy {val_acc:.3f}")
    prompt = torch.tensor(corpus.encode("And God said, ")[None, :])
    out = model.generate(prompt, max_new_tokens=120, temperature=0.8, top_k=20)
    print("sample:", corpus.decode(out[0].tolist()))
