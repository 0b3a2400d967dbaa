"""The data, first weights and fit arguments the tests of what carries from one fit to the
next share (test_schedule_after_ranks, test_schedule_saved_after_ranks,
test_optimizer_after_ranks): a 6 -> 3 softmax model, 32 samples, 4 optimizer steps an epoch."""
import numpy as np

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 6)).astype("float32")
Y = RNG.integers(0, 3, 32)
FIT = dict(batch_size=8, shuffle=False, verbose=0)  # 4 optimizer steps per epoch
W0 = [RNG.normal(scale=0.5, size=(6, 3)).astype("float32"), np.zeros(3, "float32")]
LOSS = "sparse_categorical_crossentropy"
RANKS = dict(devices=2, timeout=60)
