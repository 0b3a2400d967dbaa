"""Callbacks the training loop calls, Keras-style (see `base.py` for the contract).

Example:
    >>> from bigtrain.engine.callbacks import EarlyStopping, ModelCheckpoint
    >>> callbacks = [EarlyStopping(patience=3, restore_best_weights=True),
    ...              ModelCheckpoint("ckpt/best.safetensors", save_best_only=True)]
"""
from bigtrain.engine.callbacks.base import Callback, CallbackList
from bigtrain.engine.callbacks.checkpoint import ModelCheckpoint
from bigtrain.engine.callbacks.csv_logger import CSVLogger
from bigtrain.engine.callbacks.early_stopping import EarlyStopping
from bigtrain.engine.callbacks.history import History
from bigtrain.engine.callbacks.keras_extras import (BackupAndRestore, LambdaCallback,
                                                    RemoteMonitor, SwapEMAWeights,
                                                    TerminateOnNaN)
from bigtrain.engine.callbacks.lr_scheduler import LearningRateScheduler
from bigtrain.engine.callbacks.progress import ProgbarLogger, ProgressBar
from bigtrain.engine.callbacks.reduce_lr import ReduceLROnPlateau
from bigtrain.engine.callbacks.tensorboard import TensorBoard

__all__ = ["BackupAndRestore", "CSVLogger", "Callback", "CallbackList", "EarlyStopping",
           "History", "LambdaCallback", "LearningRateScheduler", "ModelCheckpoint",
           "ProgbarLogger", "ProgressBar", "ReduceLROnPlateau", "RemoteMonitor",
           "SwapEMAWeights", "TensorBoard", "TerminateOnNaN"]
