"""Per-layer sensitivity: prune one family of coupled layers at a time, evaluate, restore.

A *family* is the set of layers that the same coupled groups span (one layer in
a chain; every layer writing into one residual stream of a ResNet). For each
family and level, the weakest `level` of its prunable groups (by L2 norm over
every member slice) are zeroed, the model is evaluated, and every weight is
put back exactly. The table says how much each family's pruning costs in
accuracy and saves in FLOPs (and predicted latency, with a `LatencyTable`);
`SensitivityTable.auto_layers` picks the layers worth pruning.

Example:

>>> import numpy as np, keras_gss as gss
>>> model = gss.models.lenet()
>>> x, y = np.random.rand(64, 28, 28, 1).astype("float32"), np.arange(64) % 10
>>> table = gss.sensitivity(model, x, y, levels=(0.5,), verbose=0)
>>> sorted(row["family"] for row in table.rows)
['conv1', 'conv2', 'fc1', 'fc2']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import keras
import numpy as np

from keras_gss import graph, pruning


@dataclasses.dataclass
class SensitivityTable:
    """`rows`: one dict per family and level (`family`, `layers`, `level`, `pruned`
    groups, `score`, `drop` from `baseline`, `flops_saved`, `latency_saved`)."""

    baseline: float
    rows: list

    def auto_layers(self, tolerance: float = 0.02, min_saved: float = 0.05, level=None) -> list:
        """Layers worth pruning: those of the families whose pruning at `level`
        (default: the middle level profiled) loses at most `tolerance` of the score
        and saves at least `min_saved` of the model's latency (FLOPs without a
        latency table)."""
        levels = sorted({row["level"] for row in self.rows})
        if not levels:
            return []
        level = levels[len(levels) // 2] if level is None else level
        chosen = []
        for row in self.rows:
            if row["level"] != level:
                continue
            saved = row["latency_saved"] if row["latency_saved"] is not None else row["flops_saved"]
            if row["drop"] <= tolerance and saved >= min_saved:
                chosen.extend(name for name in row["layers"] if name not in chosen)
        return chosen

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        head = f"{'family':24} {'level':>6} {'score':>7} {'drop':>7} {'FLOPs-':>7} {'time-':>7}"
        lines = [f"baseline score {self.baseline:.4f}", head, "-" * len(head)]
        for r in self.rows:
            time = "" if r["latency_saved"] is None else f"{r['latency_saved']:.1%}"
            lines.append(
                f"{r['family'][:24]:24} {r['level']:6.2f} {r['score']:7.4f} {r['drop']:+7.4f} "
                f"{r['flops_saved']:7.1%} {time:>7}"
            )
        return "\n".join(lines)


def accuracy(x, y, batch_size: int = 256) -> Callable[[keras.Model], float]:
    """A score function: top-1 accuracy of `model.predict(x)` against labels `y`
    (integers, or one-hot rows)."""
    labels = np.asarray(y)
    if labels.ndim > 1 and labels.shape[-1] > 1:
        labels = labels.argmax(axis=-1)
    labels = labels.reshape(-1)

    def score(model: keras.Model) -> float:
        out = np.asarray(keras.ops.convert_to_numpy(model.predict(x, batch_size, verbose=0)))
        if out.shape[0] != labels.shape[0]:
            raise ValueError(
                f"sensitivity: the model gave {out.shape[0]} predictions for "
                f"{labels.shape[0]} labels: x and y must have the same length."
            )
        return float(np.mean(out.reshape(out.shape[0], -1).argmax(axis=-1) == labels))

    return score


def sensitivity(
    model: keras.Model,
    x=None,
    y=None,
    levels: Sequence[float] = (0.25, 0.5, 0.75),
    layers=None,
    score: Callable[[keras.Model], float] | None = None,
    latency_table=None,
    batch_size: int = 256,
    verbose: int = 1,
) -> SensitivityTable:
    """Prune each family of coupled layers alone to each level, evaluate, restore.

    Args:
        model: a built functional or Sequential model (trained).
        x, y: evaluation data; the default score is top-1 accuracy on them.
        levels: fractions of a family's groups to prune, each in (0, 1).
        layers: only the families holding these layers (names or objects;
            default None: every family that can be pruned).
        score: instead of `x, y`, a function of the model returning a number,
            higher is better (e.g. a negative loss).
        latency_table: a `keras_gss.latency.LatencyTable` of this model: the
            table then also gives the predicted latency saved.
        batch_size: for the default score's `predict` (default 256).
        verbose: 1 shows a progress bar.

    Returns:
        A `SensitivityTable`. Every weight of `model` is restored exactly, also
        when evaluation fails.
    """
    checked = sorted({_level(v) for v in np.atleast_1d(np.asarray(levels, dtype=float))})
    if not checked:
        raise ValueError("Invalid value for argument `levels`: expected at least one level.")
    if score is None:
        if x is None or y is None:
            raise ValueError("sensitivity needs `x` and `y` (or a `score` function).")
        score = accuracy(x, y, batch_size)
    elif not callable(score):
        raise TypeError(
            f"Invalid value for argument `score`: expected a function. Received: {score!r}"
        )
    pruning.check_latency("weights", "rms", latency_table)
    infos = graph.describe(model)
    if not infos:
        raise ValueError(f"sensitivity: model '{model.name}' has no prunable layer.")
    units = graph.Units(infos)
    chosen = None
    if layers is not None:
        found = graph.find_layers([i.layer for i in infos], layers, "prunable layer", "this model")
        chosen = {id(layer) for layer in found}
    families = []
    for f in range(units.families):
        members = np.flatnonzero((units.family == f) & units.prunable)
        spanned = [infos[i].layer for i, _ in units.members[np.flatnonzero(units.family == f)[0]]]
        if members.size and (chosen is None or any(id(layer) in chosen for layer in spanned)):
            families.append((members, [layer.name for layer in spanned]))
    _, norms = pruning.measure(infos, 0.0)
    unit_norm = np.sqrt(units.gather([n**2 for n in norms]))
    none = np.zeros(graph.coupled_size(infos), dtype=bool)
    dense_ms = None if latency_table is None else latency_table.predict_infos(infos, none)
    saved = model.get_weights()
    bar = keras.utils.Progbar(len(families) * len(checked) + 1) if verbose else None
    rows = []
    try:
        baseline = float(score(model))
        if bar:
            bar.add(1)
        for members, names in families:
            order = members[np.argsort(unit_norm[members], kind="stable")]
            size = int(np.count_nonzero(units.family == units.family[members[0]]))
            for level in checked:
                count = min(order.size, size - 1, int(round(level * size)))
                doomed = np.zeros(len(units), dtype=bool)
                doomed[order[:count]] = True
                dead_slots = _keep_one(units.scatter(doomed, infos, fill=False))
                pruning.apply(model, infos, dead_slots, freeze=False)
                dead = graph.dead_groups(infos, [~d for d in dead_slots])
                value = float(score(model))
                row = {
                    "family": "+".join(names),
                    "layers": names,
                    "level": level,
                    "pruned": int(count),
                    "score": value,
                    "drop": baseline - value,
                    "flops_saved": 1.0 - graph.flop_ratio(infos, dead),
                    "latency_saved": None
                    if latency_table is None
                    else 1.0 - latency_table.predict_infos(infos, dead) / dense_ms,
                }
                rows.append(row)
                model.set_weights(saved)
                if bar:
                    bar.add(1)
    finally:
        model.set_weights(saved)
    return SensitivityTable(baseline=baseline, rows=rows)


def _keep_one(dead_slots):
    """Every layer keeps at least one live group."""
    for dead in dead_slots:
        if dead.all():
            dead[np.flatnonzero(dead)[-1]] = False
    return dead_slots


def _level(value: float) -> float:
    if not (0.0 < value < 1.0):
        raise ValueError(
            f"Invalid value in argument `levels`: {value!r}. Expected fractions in (0, 1)."
        )
    return float(value)
