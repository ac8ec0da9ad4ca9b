"""The paper's experiment, as steps the CLI and the benchmark share.

A `Recipe` (`keras_gss.recipes`) names a method and its levers; `train` fits a model with them;
`prune_to` hard-prunes a trained model to a sparsity level; `finetune` trains
with the regularizers removed and the pruned weights held at zero.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from keras_gss import pruning
from keras_gss.attach import detach
from keras_gss.recipes import METHODS, REGULARIZE, Recipe  # noqa: F401 (experiment.Recipe)


def compile_model(model: keras.Model, lr: float) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Test accuracy in [0, 1]."""
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def train(
    model: keras.Model,
    recipe: Recipe,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    callbacks: list | None = None,
    verbose: int = 1,
    level: float | None = None,
) -> keras.callbacks.History:
    """Attach the recipe's regularizers (if any) and fit.

    With a `gradual` recipe and a `level` (default: the recipe's `target`), the
    model is pruned to it while it trains (the target ramped cubically).
    """
    recipe.attach(model)
    callbacks = recipe.callbacks(level) + list(callbacks or [])
    compile_model(model, lr)
    return model.fit(
        x, y, epochs=epochs, batch_size=batch_size, callbacks=callbacks, verbose=verbose
    )


def prune_to(model: keras.Model, recipe: Recipe, level: float):
    """Hard-prune to `level`: whole groups for structured methods, weights for magnitude."""
    if recipe.method == "magnitude":
        return pruning.magnitude_prune(model, level)
    return pruning.prune(
        model,
        target_sparsity=level,
        metric=recipe.metric,
        ranking=recipe.ranking,
        min_live_groups=recipe.min_live_groups,
        round_to=recipe.round_to,
        layers=recipe.layers,
    )


def finetune(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    epochs: float,
    batch_size: int,
    lr: float,
    callbacks: list | None = None,
    verbose: int = 1,
):
    """Train without keras-gss regularizers, pruned weights held at zero.

    A fractional `epochs` (e.g. 0.25) trains on that share of `x` for one epoch.
    """
    if epochs <= 0:
        return None
    detach(model)
    compile_model(model, lr)
    whole = int(epochs) if epochs >= 1 else 1
    if epochs < 1:
        count = max(batch_size, int(len(x) * epochs))
        x, y = x[:count], y[:count]
    return model.fit(
        x, y, epochs=whole, batch_size=batch_size, callbacks=callbacks or [], verbose=verbose
    )


class Timer:
    """Wall time of named steps: `with timer("train"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Step:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = (
                    timer.seconds.get(name, 0.0) + time.perf_counter() - self.start
                )

        return _Step()
