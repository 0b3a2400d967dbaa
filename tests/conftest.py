"""Suite-wide settings: Keras 3 (the oracle for layer math and fit semantics) runs on torch."""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")
