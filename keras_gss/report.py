"""Counting what is pruned: `sparsity_report`.

A group counts as zero when its L2 norm is at or below `threshold` (the paper
uses 1e-3). Weights count as zero only when exactly zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import keras
import numpy as np
from keras import ops

from keras_gss import compact as compaction
from keras_gss import graph, groups
from keras_gss._validate import non_negative


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
    """Sparsity of one prunable layer's grouped weight."""

    layer: str
    type: str
    groups: int
    zero_groups: int
    weights: int
    zero_weights: int
    trainable: bool = True

    @property
    def sparsity(self) -> float:
        """Fraction of the grouped weight's entries that are exactly zero."""
        return self.zero_weights / self.weights if self.weights else 0.0

    @property
    def group_sparsity(self) -> float:
        """Fraction of groups whose norm is at or below the threshold."""
        return self.zero_groups / self.groups if self.groups else 0.0

    def to_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "sparsity": self.sparsity,
            "group_sparsity": self.group_sparsity,
        }


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Per-layer rows and totals over all prunable layers; `str()` is a table."""

    rows: tuple[LayerSparsity, ...]
    threshold: float

    def _total(self, field: str) -> int:
        return int(sum(getattr(row, field) for row in self.rows))

    @property
    def groups(self) -> int:
        return self._total("groups")

    @property
    def zero_groups(self) -> int:
        return self._total("zero_groups")

    @property
    def weights(self) -> int:
        return self._total("weights")

    @property
    def zero_weights(self) -> int:
        return self._total("zero_weights")

    @property
    def sparsity(self) -> float:
        """Fraction of all prunable kernel weights that are exactly zero."""
        return self.zero_weights / self.weights if self.weights else 0.0

    @property
    def group_sparsity(self) -> float:
        """Fraction of all groups at or below the threshold."""
        return self.zero_groups / self.groups if self.groups else 0.0

    def __getitem__(self, name: str) -> LayerSparsity:
        for row in self.rows:
            if row.layer == name:
                return row
        raise KeyError(f"No prunable layer named '{name}' in this report.")

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "layers": [row.to_dict() for row in self.rows],
            "total": {
                "groups": self.groups,
                "zero_groups": self.zero_groups,
                "weights": self.weights,
                "zero_weights": self.zero_weights,
                "sparsity": self.sparsity,
                "group_sparsity": self.group_sparsity,
            },
        }

    def __str__(self) -> str:
        header = ("layer", "type", "groups", "zero", "weights", "zero", "sparsity")
        lines = [
            (
                r.layer + ("" if r.trainable else " (frozen)"),
                r.type,
                str(r.groups),
                str(r.zero_groups),
                str(r.weights),
                str(r.zero_weights),
                f"{r.sparsity:.1%}",
            )
            for r in self.rows
        ]
        lines.append(
            (
                "total",
                "",
                str(self.groups),
                str(self.zero_groups),
                str(self.weights),
                str(self.zero_weights),
                f"{self.sparsity:.1%}",
            )
        )
        widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

        def fmt(row):
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [cell.rjust(w) for cell, w in zip(row[2:], widths[2:])]
            return "  ".join(cells).rstrip()

        rule = "-" * len(fmt(header))
        return "\n".join([fmt(header), rule, *map(fmt, lines[:-1]), rule, fmt(lines[-1])])


def measure_layer(layer: keras.layers.Layer, threshold: float) -> tuple[LayerSparsity, np.ndarray]:
    """One layer's `LayerSparsity` and its group norms."""
    spec = groups.get_spec(layer)
    weight = groups.layer_weight(layer, spec)
    norms = groups.layer_group_norms(layer)
    values = np.asarray(ops.convert_to_numpy(weight.value))
    row = LayerSparsity(
        layer=layer.name,
        type=type(layer).__name__,
        groups=int(norms.size),
        zero_groups=int(np.sum(norms <= threshold)),
        weights=int(values.size),
        zero_weights=int(np.sum(values == 0)),
        trainable=bool(layer.trainable),
    )
    return row, norms


def sparsity_report(
    model: keras.Model,
    threshold: float = 1e-3,
    layers: Iterable[keras.layers.Layer] | None = None,
) -> SparsityReport:
    """Count zero groups and zero weights in every prunable layer of `model`.

    Args:
        model: a built Keras model.
        threshold: a group whose L2 norm is at or below this counts as zero
            (default 1e-3, the paper's).
        layers: restrict the report to these layers (default: all prunable ones).

    Example:

    >>> import keras, keras_gss as gss
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> gss.sparsity_report(model).groups
    3
    """
    threshold = non_negative("threshold", threshold)
    chosen = list(layers) if layers is not None else groups.prunable_layers(model)
    return SparsityReport(
        rows=tuple(measure_layer(layer, threshold)[0] for layer in chosen),
        threshold=threshold,
    )


@dataclasses.dataclass(frozen=True)
class ModelStats:
    """Parameters and FLOPs per example, dense and once dead groups are removed."""

    params: int
    live_params: int
    flops: float
    live_flops: float

    @property
    def flop_ratio(self) -> float:
        """Live FLOPs over dense FLOPs (1.0 for an unpruned model)."""
        return self.live_flops / self.flops if self.flops else 1.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "flop_ratio": self.flop_ratio}


def model_stats(model: keras.Model, threshold: float = 0.0) -> ModelStats:
    """Count parameters and FLOPs, dense and live.

    FLOPs are 2 x the multiply-adds of each prunable layer's kernel per example
    (both halves of a separable convolution) and of MultiHeadAttention (its
    projections and the attention); bias, activations and pooling are left out.
    Live counts are what `compact` removes: the coupled groups
    (`keras_gss.dependency`) whose kernel slices are at or below `threshold`
    (default 0: exactly zero) and whose removal keeps the model's function, with
    every weight they own (biases, BatchNormalization, input slices of readers).
    A group zeroed in one layer but coupled to live channels (a residual stream)
    counts as live, because it is.

    Example:

    >>> import keras_gss as gss
    >>> gss.model_stats(gss.models.lenet()).flops
    89480192.0
    """
    threshold = non_negative("threshold", threshold)
    infos = graph.describe(model)
    params = int(model.count_params())
    try:
        plan = compaction.plan(model, threshold)
    except TypeError:  # subclassed: counted layer by layer, groups with exact zeros
        dead = np.zeros(graph.coupled_size(infos), dtype=bool)
        for info in infos:
            dead[info.coupled] = groups.layer_group_norms(info.layer) <= threshold
        live_params = params - sum(i.weights for i in infos) + graph.live_weights(infos, dead)
        return ModelStats(
            params, int(round(live_params)), _flops(infos), graph.live_flops(infos, dead)
        )
    dead = np.zeros(max(graph.coupled_size(infos), plan.remove.size), dtype=bool)
    dead[: plan.remove.size] = plan.remove
    other = graph.fixed_flops(infos)  # layers whose channels stay (MultiHeadAttention)
    live_params = 0
    for layer in groups.iter_layers(model):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        weights = compaction.sliced_weights(layer, plan.slices.get(id(layer)))
        live_params += sum(int(w.size) for w in weights.values())
    return ModelStats(
        params=params,
        live_params=int(live_params),
        flops=_flops(infos) + other,
        live_flops=float(graph.live_flops(infos, dead)) + other,
    )


def _flops(infos) -> float:
    return float(sum(i.dense_flops for i in infos))
