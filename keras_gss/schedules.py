"""Changing regularization strengths during training."""

from __future__ import annotations

import keras

from keras_gss import groups
from keras_gss.regularizers import GuidedStructuredSparsity


class AttentionWarmup(keras.callbacks.Callback):
    """Ramps the attention strength of every `GuidedStructuredSparsity` linearly.

    At the start of epoch `e` (0-based) the `variance` coefficient is
    ``base * min(1, (e + 1) / warmup_epochs)``, where `base` is the value it held
    when training began: group lasso first shapes the norms, then attention
    separates them. The train function is retraced when the value changes.

    Args:
        warmup_epochs: epochs to reach the full strength, an int >= 1 (default 2).

    Example:

    >>> import keras_gss as gss
    >>> warmup = gss.AttentionWarmup(warmup_epochs=3)
    """

    def __init__(self, warmup_epochs: int = 2):
        super().__init__()
        if (
            not isinstance(warmup_epochs, int)
            or isinstance(warmup_epochs, bool)
            or warmup_epochs < 1
        ):
            raise ValueError(
                "Invalid value for argument `warmup_epochs`. Expected an int >= 1. "
                f"Received: warmup_epochs={warmup_epochs!r}"
            )
        self.warmup_epochs = warmup_epochs
        self._base: dict[int, float] = {}

    def _regularizers(self):
        for layer in groups.prunable_layers(self.model):
            regularizer = groups.layer_weight(layer).regularizer
            if isinstance(regularizer, GuidedStructuredSparsity):
                yield regularizer

    def on_train_begin(self, logs=None):
        self._base = {id(r): r.variance for r in self._regularizers()}

    def on_train_end(self, logs=None):
        for regularizer in self._regularizers():
            regularizer.variance = self._base.get(id(regularizer), regularizer.variance)

    def on_epoch_begin(self, epoch, logs=None):
        scale = min(1.0, (epoch + 1) / self.warmup_epochs)
        changed = False
        for regularizer in self._regularizers():
            value = self._base.get(id(regularizer), regularizer.variance) * scale
            changed |= value != regularizer.variance
            regularizer.variance = value
        if changed and getattr(self.model, "make_train_function", None) is not None:
            self.model.make_train_function(force=True)
