"""The paper's experiment, as steps the CLI and the benchmark share.

A `Recipe` names a method and its levers; `train` fits a model with them;
`prune_to` hard-prunes a trained model to a sparsity level; `finetune` trains
with the regularizers removed and the pruned weights held at zero.
"""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np

from keras_gss import pruning
from keras_gss._validate import check_update_freq, int_at_least, non_negative, open_fraction
from keras_gss.attach import attach, detach
from keras_gss.graph import check_layers
from keras_gss.monitor import SparsityMonitor
from keras_gss.regularizers import ATTENTIONS, GroupLasso, GuidedStructuredSparsity
from keras_gss.schedules import AttentionWarmup

METHODS = ("gss", "group-lasso", "magnitude", "dense")
REGULARIZE = ("all", "pruned")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One method with all of its levers.

    Args:
        method: `"gss"`, `"group-lasso"` (SSL), `"magnitude"` or `"dense"`.
        lasso: group-lasso strength (gss, group-lasso).
        variance: attention strength (gss).
        attention: attention form (`"variance"`, `"scale_invariant"`, `"fraction"`).
        keep: fraction kept alive by the `"fraction"` attention.
        warmup: epochs of attention warm-up (0 = none).
        proximal: proximal group-lasso step strength (None = none).
        ranking: how groups are ranked for hard pruning (see `keras_gss.pruning`).
        metric: what a sparsity level counts, `"weights"` or `"flops"`.
        min_live_groups: live groups every layer keeps when pruning.
        gradual: prune to the level during training (a `SparsityMonitor` ramping
            the target cubically over the epochs) instead of once afterwards.
        end_epoch: with `gradual`, the epoch (0-based) at whose end the level is
            reached (None = the last).
        update_freq: with `gradual`, prune every this many batches (or `"epoch"`).
        round_to: every pruned layer keeps a multiple of this many live groups
            (vector-friendly widths for CPU kernels; 1 = any count).
        release: with `gradual`, remove the regularizers once the level is
            reached, so the epochs left train on the task loss alone.
        threshold: with `gradual`, a group whose norm is at or below this counts
            as zero and is pruned at once (0 = exact zeros only).
        begin_epoch: with `gradual`, the epoch (0-based) the pruning ramp starts at.
        layers: names of the layers that may be pruned (None = every prunable
            layer but the output).
        regularize: where `train` attaches the regularizers and proximal step:
            `"all"` (every prunable layer but the output) or `"pruned"` (only
            `layers`; the same as `"all"` when `layers` is None). With `"pruned"`
            the layers that are never pruned train on the task loss alone.

    Example:

    >>> recipe = Recipe("group-lasso", lasso=2e-4, proximal=5e-6, gradual=True,
    ...                 end_epoch=1, update_freq=50)
    >>> recipe.monitor(0.9).update_freq
    50
    """

    method: str = "gss"
    lasso: float = 2e-3
    variance: float = 1e-2
    attention: str = "variance"
    keep: float = 0.25
    warmup: int = 0
    proximal: float | None = None
    ranking: str = "rms"
    metric: str = "weights"
    min_live_groups: int = 1
    gradual: bool = False
    end_epoch: int | None = None
    update_freq: str | int = "epoch"
    round_to: int = 1
    release: bool = False
    threshold: float = 0.0
    begin_epoch: int = 0
    layers: tuple[str, ...] | None = None
    regularize: str = "all"

    def __post_init__(self):
        # every lever checked here, by its own name, not later by what it builds
        pruning.check_choice("method", self.method, METHODS)
        pruning.check_choice("attention", self.attention, ATTENTIONS)
        pruning.check_choice("ranking", self.ranking, pruning.RANKINGS)
        pruning.check_choice("metric", self.metric, pruning.METRICS)
        pruning.check_choice("regularize", self.regularize, REGULARIZE)
        for name in ("lasso", "variance", "threshold"):
            non_negative(name, getattr(self, name))
        if self.proximal is not None:
            non_negative("proximal", self.proximal)
        open_fraction("keep", self.keep)
        int_at_least("warmup", self.warmup, 0)
        int_at_least("min_live_groups", self.min_live_groups, 1)
        int_at_least("round_to", self.round_to, 1)
        check_update_freq(self.update_freq)
        if self.layers is not None:
            names = check_layers(self.layers)
            if not all(isinstance(name, str) for name in names):
                raise TypeError(f"Invalid value for argument `layers`. A Recipe names layers "
                                f"(str). Received: layers={self.layers!r}")  # fmt: skip
            object.__setattr__(self, "layers", names)  # frozen: a tuple, from a list too
        int_at_least("begin_epoch", self.begin_epoch, 0)
        if self.end_epoch is not None:
            int_at_least("end_epoch", self.end_epoch, self.begin_epoch)

    @property
    def structured(self) -> bool:
        return self.method in ("gss", "group-lasso")

    def monitor(self, level: float | None, verbose: int = 0) -> SparsityMonitor:
        """The callback that prunes to `level` during training (`gradual`); with
        `level=None` it prunes only groups at or below `threshold`."""
        return SparsityMonitor(
            threshold=self.threshold,
            target_sparsity=level,
            begin_epoch=self.begin_epoch,
            ranking=self.ranking,
            metric=self.metric,
            min_live_groups=self.min_live_groups,
            end_epoch=self.end_epoch,
            update_freq=self.update_freq,
            round_to=self.round_to,
            release=self.release,
            layers=self.layers,
            verbose=verbose,
        )

    def regularizer(self):
        if self.method == "gss":
            return GuidedStructuredSparsity(
                self.lasso, self.variance, attention=self.attention, keep=self.keep
            )
        if self.method == "group-lasso":
            return GroupLasso(self.lasso)
        return None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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

    With a `gradual` recipe and a `level`, the model is pruned to `level` while it
    trains (the target ramped cubically over the epochs).
    """
    callbacks = list(callbacks or [])
    if recipe.structured:
        where = recipe.layers if recipe.regularize == "pruned" else None
        attach(model, recipe.regularizer(), proximal=recipe.proximal, layers=where)
        if recipe.method == "gss" and recipe.warmup:
            callbacks.insert(0, AttentionWarmup(recipe.warmup))
        if recipe.gradual and level is not None:
            callbacks.insert(0, recipe.monitor(level))
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
