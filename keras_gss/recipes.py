"""Recipes: a pruning method with all of its levers, and the named ones that the
benchmarks measured best.

`for_weights(target)` is the recommended recipe for a share of the weights
(a weak group lasso with a proximal step, pruned while it trains by the monitor,
ranked by `"auto"`); `for_flops(target)` the one for a share of the FLOPs (the
monitor alone, ranked by `"memory"`, widths a multiple of 8); `paper(target)`
the paper's two-term loss, for comparison. What they measured: README, "Results
at a glance", and `docs/choosing_coefficients.md`. `keras-gss train` runs
`for_weights(0.9, epochs=3, steps=300)`.

Example:

>>> import keras, numpy as np, keras_gss as gss
>>> x = np.random.rand(256, 8).astype("float32"); y = (x[:, 0] > 0.5).astype("int32")
>>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
...                           keras.layers.Dense(2)])
>>> recipe = gss.recipes.for_weights(0.5, epochs=3, steps=24)
>>> model = recipe.attach(model)   # GroupLasso(2e-4) and a proximal step
>>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
>>> _ = model.fit(x, y, epochs=3, batch_size=32, callbacks=recipe.callbacks(), verbose=0)
>>> round(gss.sparsity_report(model, threshold=0.0).sparsity, 1)
0.5
"""

from __future__ import annotations

import dataclasses

import keras

from keras_gss import pruning
from keras_gss._validate import (
    check_update_freq,
    fraction,
    int_at_least,
    non_negative,
    open_fraction,
)
from keras_gss.attach import attach
from keras_gss.graph import check_layers
from keras_gss.monitor import SparsityMonitor
from keras_gss.regularizers import ATTENTIONS, GroupLasso, GuidedStructuredSparsity
from keras_gss.schedules import AttentionWarmup

METHODS = ("gss", "group-lasso", "monitor", "magnitude", "dense")
REGULARIZE = ("all", "pruned")
# proximal strength x training steps: the total shrink the benchmark measured best
# (5e-6 x 1,800 steps, 3e-5 x 300 steps)
PROXIMAL_BUDGET = 0.009


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One method with all of its levers.

    Args:
        method: `"gss"` (the paper's two terms), `"group-lasso"` (SSL),
            `"monitor"` (no regularizer: the monitor alone prunes), `"magnitude"`
            (single weights, one shot) or `"dense"`.
        lasso: group-lasso strength (gss, group-lasso).
        variance: attention strength (gss).
        attention: attention form (`"variance"`, `"scale_invariant"`, `"fraction"`).
        keep: fraction kept alive by the `"fraction"` attention.
        warmup: epochs of attention warm-up (0 = none).
        proximal: proximal group-lasso step strength (None = none).
        ranking, metric, min_live_groups, round_to, layers: how groups are chosen,
            as in `keras_gss.prune` (same defaults).
        gradual: prune to the level during training (a `SparsityMonitor` ramping
            the target cubically over the epochs) instead of once afterwards.
        end_epoch: with `gradual`, the epoch (0-based) at whose end the level is
            reached (None = the last).
        update_freq: with `gradual`, prune every this many batches (or `"epoch"`).
        release: with `gradual`, remove the regularizers once the level is
            reached, so the epochs left train on the task loss alone.
        threshold: with `gradual`, a group whose norm is at or below this counts
            as zero and is pruned at once (0 = exact zeros only).
        begin_epoch: with `gradual`, the epoch (0-based) the pruning ramp starts at.
        regularize: where `attach` puts the regularizers and proximal step:
            `"all"` (every prunable layer but the output) or `"pruned"` (only
            `layers`; the same as `"all"` when `layers` is None).
        target: the level `monitor()` and `callbacks()` prune to when not given
            one (None = by `threshold` only).
        coupled: regularize coupled channel groups as wholes (`attach(...,
            coupled=True)`: one norm per channel across the layers that write it).

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
    ranking: str = pruning.RANKING
    metric: str = pruning.METRIC
    min_live_groups: int = pruning.MIN_LIVE_GROUPS
    gradual: bool = False
    end_epoch: int | None = None
    update_freq: str | int = "epoch"
    round_to: int = pruning.ROUND_TO
    release: bool = False
    threshold: float = 0.0
    begin_epoch: int = 0
    layers: tuple[str, ...] | None = None
    regularize: str = "all"
    target: float | None = None
    coupled: bool = False

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
        fraction("target", self.target)
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
        """Prunes whole groups (units, filters, coupled channels)."""
        return self.method in ("gss", "group-lasso", "monitor")

    def regularizer(self) -> keras.regularizers.Regularizer | None:
        """The kernel regularizer `attach` puts on each layer (None: none)."""
        if self.method == "gss":
            return GuidedStructuredSparsity(
                self.lasso, self.variance, attention=self.attention, keep=self.keep
            )
        if self.method == "group-lasso":
            return GroupLasso(self.lasso)
        return None

    def attach(self, model: keras.Model) -> keras.Model:
        """Put the recipe's regularizer and proximal step on `model` (in place;
        nothing for `"monitor"`, `"magnitude"` and `"dense"`)."""
        regularizer = self.regularizer()
        if regularizer is None:
            return model
        where = self.layers if self.regularize == "pruned" else None
        return attach(model, regularizer, proximal=self.proximal, layers=where,
                      coupled=self.coupled)  # fmt: skip

    def monitor(self, level: float | None = None, verbose: int = 0) -> SparsityMonitor:
        """The callback that prunes to `level` (default: `target`) during training;
        with neither it prunes only groups at or below `threshold`."""
        return SparsityMonitor(
            threshold=self.threshold,
            target_sparsity=self.target if level is None else level,
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

    def callbacks(self, level: float | None = None, verbose: int = 0) -> list:
        """What `model.fit` needs: the attention warm-up (gss with `warmup`) and,
        for a `gradual` structured recipe with a level (`level`, default
        `target`), the monitor that prunes to it."""
        callbacks = []
        if self.method == "gss" and self.warmup:
            callbacks.append(AttentionWarmup(self.warmup))
        level = self.target if level is None else level
        if self.structured and self.gradual and level is not None:
            callbacks.append(self.monitor(level, verbose))
        return callbacks

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _schedule(epochs: int, steps: int | None) -> dict:
    int_at_least("epochs", epochs, 1)
    if steps is not None:
        int_at_least("steps", steps, 1)
    # the target one epoch before the end (the last epoch trains at it), pruned in
    # about 36 small steps, every multiple of 10 batches (1,800 steps: every 50,
    # the benchmark's; 300: every 10, the CLI's)
    every = (steps or 1800) / 36
    return {
        "gradual": True,
        "end_epoch": max(epochs - 2, 0),
        "update_freq": max(10, 10 * round(every / 10)) if every >= 5 else max(1, int(every)),
    }


def for_weights(target: float = 0.9, epochs: int = 3, steps: int | None = None) -> Recipe:
    """The recommended recipe for a weight target: `GroupLasso(2e-4)` with a
    proximal step of total strength 0.009 over the run, pruned while it trains by
    the monitor (ranking `"auto"`, at least 4 live groups per layer, the target
    reached one epoch before the end, about 36 pruning steps).

    Args:
        target: fraction of prunable kernel weights to zero, in [0, 1).
        epochs: training epochs of the `fit` the callbacks go into.
        steps: training steps in all (epochs x batches per epoch); sets the
            proximal strength and how often the monitor prunes (default 1,800,
            the benchmark's run).

    Then `detach` and fine-tune at a tenth of the rate (what the benchmark did).

    >>> for_weights(0.9, epochs=3, steps=300).proximal
    3e-05
    >>> for_weights(0.9, epochs=3, steps=1800).update_freq  # the benchmark's run
    50
    """
    schedule = _schedule(epochs, steps)
    return Recipe(
        "group-lasso", lasso=2e-4, proximal=float(f"{PROXIMAL_BUDGET / (steps or 1800):.3g}"),
        threshold=1e-3, ranking="auto", metric="weights", min_live_groups=4,
        target=fraction("target", target), **schedule,
    )  # fmt: skip


def for_flops(
    target: float = 0.5,
    epochs: int = 3,
    steps: int | None = None,
    layers=None,
    round_to: int = 8,
    min_live_groups: int = 8,
) -> Recipe:
    """The recommended recipe for a FLOP target: the monitor alone (no
    regularizer), ranked by `"memory"`, `min_live_groups` per layer, widths
    a multiple of `round_to` (turns FLOPs into CPU time), on the same schedule as
    `for_weights`. Name the layers that hold the FLOPs in `layers` (LeNet: the
    two convolutions) where the others should keep their width.

    >>> for_flops(0.85, layers=["conv1", "conv2"]).regularizer() is None
    True
    """
    return Recipe(
        "monitor", ranking="memory", metric="flops", min_live_groups=min_live_groups,
        round_to=round_to, layers=layers, target=fraction("target", target),
        **_schedule(epochs, steps),
    )  # fmt: skip


def paper(target: float = 0.9, epochs: int = 3, steps: int | None = None) -> Recipe:
    """The paper's loss (group lasso 2e-3 + attention 1e-2) on the recommended
    schedule: for comparison; it lost to `for_weights` at every level measured."""
    return Recipe(
        "gss", lasso=2e-3, variance=1e-2, threshold=1e-3, ranking="auto",
        min_live_groups=4, target=fraction("target", target), **_schedule(epochs, steps),
    )  # fmt: skip
