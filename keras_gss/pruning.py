"""Choosing groups to prune and writing the zeros: shared by `SparsityMonitor`,
the one-shot `prune` and the benchmark.

Rankings (which live group goes first when a target must be met), from the
lowest score up:

- `"rms"`: root-mean-square weight of the group, `||W_g|| / sqrt(size of g)`:
  comparable across layers of different fan-in (the default).
- `"norm"`: the plain L2 norm `||W_g||`.
- `"hybrid"`: rms divided by (fraction of all weights + fraction of all FLOPs
  that the group's own slice holds): a cost-aware ranking that prefers groups
  that are both weak and expensive.
- `"flops"`: rms divided by the fraction of FLOPs freed.
- `"memory"`: rms relative to the median rms of the layer's live groups,
  divided by (fraction of weights + fraction of FLOPs + fraction of activation
  values per example) that the group's slice holds: `"hybrid"` that also charges
  a filter for the feature map it writes, memory traffic that FLOPs do not see
  (a LeNet's first convolution holds 3 % of the FLOPs but two thirds of the
  activations). Comparing norms within each layer keeps a layer of large weights
  (a first convolution with one input channel) from being spared whole.
- `"auto"`: `"rms"` for weight targets, `"hybrid"` for FLOP targets (what the
  benchmark measured to work best for each).

Targets are a fraction of zero prunable kernel weights (`metric="weights"`) or
a fraction of FLOPs removed (`metric="flops"`, FLOPs left <= 1 - target).
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
from keras import ops

from keras_gss import graph, groups
from keras_gss._validate import fraction, int_at_least, non_negative
from keras_gss.attach import reset_traced_functions
from keras_gss.constraints import ElementMask, GroupMask
from keras_gss.report import SparsityReport, measure_layer

RANKINGS = ("rms", "norm", "hybrid", "flops", "memory", "auto")
METRICS = ("weights", "flops")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected one of {choices}. "
            f"Received: {name}={value!r}"
        )
    return value


def live_mask(info: graph.LayerInfo) -> np.ndarray:
    """Groups not frozen at zero by a `GroupMask` (all True without one)."""
    constraint = groups.layer_weight(info.layer, info.spec).constraint
    if isinstance(constraint, GroupMask):
        return constraint.live
    return np.ones(info.groups, dtype=bool)


def measure(infos: list[graph.LayerInfo], threshold: float, check_finite: bool = True):
    """`(rows, norms)`: one `LayerSparsity` and one array of group norms per layer."""
    rows, norms = [], []
    for info in infos:
        row, layer_norms = measure_layer(info.layer, threshold)
        if check_finite and not np.all(np.isfinite(layer_norms)):
            raise ValueError(
                f"Layer '{info.layer.name}' holds NaN or inf weights; nothing was pruned. "
                "Lower the learning rate or the regularization strengths, or check the "
                "input data."
            )
        rows.append(row)
        norms.append(layer_norms)
    return rows, norms


def group_scores(
    infos: list[graph.LayerInfo], norms: list[np.ndarray], live: list[int], ranking: str
) -> list[np.ndarray]:
    """Score of every group (lower is pruned first), one array per layer."""
    scores = []
    total_w = sum(info.weights for info in infos)
    total_f = sum(info.dense_flops for info in infos) or 1.0
    total_a = sum(info.groups * info.activations for info in infos) or 1.0
    for info, layer_norms in zip(infos, norms):
        if ranking == "norm":
            scores.append(layer_norms)
            continue
        rms = layer_norms / math.sqrt(info.group_size)
        if ranking == "rms":
            scores.append(rms)
            continue
        in_frac = 1.0
        if info.producer is not None:
            in_frac = live[info.producer] / infos[info.producer].groups
        # The layer's own share only: charging a group for its consumers' input
        # slices too makes first layers look the most expensive and strips them.
        cost = info.dense_flops / info.groups * in_frac / total_f
        if ranking in ("hybrid", "memory"):
            cost += info.group_size * in_frac / total_w
        if ranking == "memory":
            cost += info.activations / total_a
            alive = rms[layer_norms > 0]
            rms = rms / (float(np.median(alive)) if alive.size else 1.0)
        scores.append(rms / max(cost, 1e-30))
    return scores


def select(
    infos: list[graph.LayerInfo],
    rows,
    norms: list[np.ndarray],
    threshold: float,
    relative_threshold: float | None = None,
    target: float | None = None,
    metric: str = "weights",
    ranking: str = "rms",
    min_live_groups: int = 1,
    round_to: int = 1,
) -> list[np.ndarray]:
    """Boolean arrays of live groups to prune now, one per layer.

    A live group is pruned when its norm is at or below `threshold` (or below
    `relative_threshold` times the largest group norm of its layer); then, if
    `target` is set, the lowest-scored live groups until the target is met. Output
    layers are never pruned and every layer keeps `min_live_groups` live groups.
    With `round_to` r > 1 every layer with dead groups then also loses its weakest
    `live % r` groups (unless that would leave fewer than `min_live_groups`), and the target
    prunes r groups at a time, each block ranked by its strongest member: every
    live count stays a multiple of r (or the layer's untouched full width).
    """
    masks = [live_mask(info) for info in infos]
    dead = []
    for info, layer_norms, mask in zip(infos, norms, masks):
        new = mask & (layer_norms <= threshold)
        if relative_threshold is not None and layer_norms.size:
            new |= mask & (layer_norms <= relative_threshold * layer_norms.max())
        if info.protected:
            new[:] = False
        else:
            keep = min(min_live_groups, int(mask.sum()))
            alive_after = np.flatnonzero(mask & ~new)
            if alive_after.size < keep:  # spare the strongest of the doomed groups
                doomed = np.flatnonzero(new)
                strongest = doomed[np.argsort(layer_norms[doomed])[::-1]]
                new[strongest[: keep - alive_after.size]] = False
        dead.append(new)
    if round_to > 1:  # the remainder first: zeroed groups may have left any count
        for info, layer_norms, mask, new in zip(infos, norms, masks, dead):
            alive = np.flatnonzero(mask & ~new)
            extra = alive.size % round_to
            pruned = alive.size < info.groups  # a full width stays as it is
            if not info.protected and pruned and extra and alive.size - extra >= min_live_groups:
                new[alive[np.argsort(layer_norms[alive], kind="stable")[:extra]]] = True
    if target is None:
        return dead
    live = [int((m & ~d).sum()) for m, d in zip(masks, dead)]
    total_w = sum(row.weights for row in rows)
    dense_f = sum(info.dense_flops for info in infos)
    nonzero = [groups.layer_group_nonzeros(info.layer) for info in infos]
    zero_w = sum(row.zero_weights for row in rows)
    zero_w += sum(int(n[d].sum()) for n, d in zip(nonzero, dead))

    def reached() -> bool:
        if metric == "flops":
            return graph.live_flops(infos, live) <= (1.0 - target) * dense_f * (1 + 1e-9)
        return zero_w >= math.ceil(target * total_w)

    if reached():
        return dead
    if ranking == "auto":
        ranking = "hybrid" if metric == "flops" else "rms"
    scores = group_scores(infos, norms, live, ranking)
    candidates = []
    for i, (info, score) in enumerate(zip(infos, scores)):
        if not info.protected:
            alive = np.flatnonzero(masks[i] & ~dead[i])
            for block in _blocks(alive[np.argsort(score[alive], kind="stable")], round_to):
                candidates.append((float(score[block].max()), i, block))
    candidates.sort(key=lambda c: c[:2])  # stable: a layer's blocks keep their order
    for _, i, block in candidates:
        if reached():
            break
        if live[i] - block.size < min_live_groups:
            continue
        dead[i][block] = True
        live[i] -= block.size
        zero_w += int(nonzero[i][block].sum())
    return dead


def _blocks(order: np.ndarray, round_to: int) -> list[np.ndarray]:
    """Groups in pruning order cut into blocks: the remainder first, then `round_to`
    at a time, so that every block pruned leaves a multiple of `round_to` live."""
    first = order.size % round_to
    return ([order[:first]] if first else []) + [
        order[k : k + round_to] for k in range(first, order.size, round_to)
    ]


def apply(model: keras.Model, infos: list[graph.LayerInfo], dead: list[np.ndarray], freeze: bool):
    """Zero the chosen groups (kernel slices and biases); with `freeze`, mask them.

    Traced train functions are reset where a new constraint (or, on JAX, a new
    mask value) must be seen by the next step.
    """
    retrace = False
    for info, new in zip(infos, dead):
        if not new.any():
            continue
        live = live_mask(info) & ~new
        for variable, axis, attr in _grouped_variables(info):
            mask = groups.broadcast_mask(
                ops.convert_to_tensor(live.astype("float32")), tuple(variable.shape), axis
            )
            variable.assign(variable.value * ops.cast(mask, variable.dtype))
            if freeze:
                retrace |= _install_mask(info.layer, variable, live, axis, attr)
        retrace |= freeze and keras.backend.backend() == "jax"  # jit bakes mask values in
    if retrace:
        reset_traced_functions(model)
    return retrace


def _grouped_variables(info: graph.LayerInfo) -> list[tuple]:
    """(variable, group axis, constraint attribute) of a layer's kernel and bias."""
    weight = groups.layer_weight(info.layer, info.spec)
    found = [(weight, info.spec.axis, info.spec.constraint_attr)]
    bias = getattr(info.layer, info.spec.bias, None) if info.spec.bias else None
    if bias is not None:
        found.append((bias, (-1,), "bias_constraint"))
    return found


def install_masks(model: keras.Model, infos: list[graph.LayerInfo]) -> bool:
    """Give every prunable, unprotected layer a `GroupMask` (its current live groups),
    so that later pruning only updates mask values and never needs a retrace on
    TensorFlow and PyTorch. True when one was newly installed (retrace once now)."""
    installed = False
    for info in infos:
        if info.protected:
            continue
        live = live_mask(info)
        for variable, axis, attr in _grouped_variables(info):
            installed |= _install_mask(info.layer, variable, live, axis, attr)
    if installed:
        reset_traced_functions(model)
    return installed


def _install_mask(layer, variable, live: np.ndarray, axis, attr: str) -> bool:
    """Set or update the GroupMask of `variable`; True when one was newly installed."""
    constraint = variable.constraint
    if isinstance(constraint, GroupMask):
        constraint.assign(live.astype("float32"))
        return False
    mask = GroupMask(
        live.astype("float32"), group_axis=groups.axis_to_config(axis), constraint=constraint
    )
    variable.constraint = mask
    setattr(layer, attr, mask)
    return True


def prune(
    model: keras.Model,
    target_sparsity: float | None = None,
    threshold: float = 0.0,
    metric: str = "weights",
    ranking: str = "rms",
    freeze: bool = True,
    min_live_groups: int = 1,
    round_to: int = 1,
    layers=None,
) -> SparsityReport:
    """Hard-prune whole groups of a trained model once, now.

    Args:
        model: a built Keras model.
        target_sparsity: fraction in [0, 1) of prunable kernel weights to zero
            (`metric="weights"`) or of FLOPs to remove (`metric="flops"`); None
            prunes by `threshold` only (default None).
        threshold: groups whose norm is at or below this are pruned (default 0).
        metric: `"weights"` or `"flops"` (default "weights").
        ranking: `"rms"`, `"norm"`, `"hybrid"`, `"flops"` or `"auto"` (default
            "rms"); see the module docstring.
        freeze: hold pruned groups at zero in later training (default True).
        min_live_groups: live groups every layer keeps (default 1).
        round_to: every pruned layer keeps a multiple of this many live groups
            (default 1: any count). CPU kernels compute channels in vectors of
            8 or 16: a convolution with 17 filters runs as slowly as one with 32,
            so `round_to=8` or `16` turns the same FLOPs into more speed once
            compacted (see the README's "Inference speed").
        layers: names or layer objects that may be pruned (default None: every
            prunable layer); the others still count in the target. The output
            layer's units are never pruned, named or not.

    Returns:
        The `SparsityReport` after pruning (exact zeros: threshold 0).

    Example:

    >>> import keras, keras_gss as gss
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16),
    ...                           keras.layers.Dense(2)])
    >>> gss.prune(model, target_sparsity=0.5).sparsity >= 0.5
    True
    >>> row = gss.prune(model, target_sparsity=0.6, round_to=4).rows[0]
    >>> (row.groups - row.zero_groups) % 4
    0
    """
    target = fraction("target_sparsity", target_sparsity)
    threshold = non_negative("threshold", threshold)
    check_choice("metric", metric, METRICS)
    check_choice("ranking", ranking, RANKINGS)
    min_live_groups = int_at_least("min_live_groups", min_live_groups, 1)
    round_to = int_at_least("round_to", round_to, 1)
    infos = graph.restrict(graph.describe(model), layers)
    rows, norms = measure(infos, threshold)
    dead = select(
        infos, rows, norms, threshold, None, target, metric, ranking, min_live_groups, round_to
    )
    apply(model, infos, dead, freeze)
    rows, _ = measure(infos, 0.0, check_finite=False)
    report = SparsityReport(rows=tuple(rows), threshold=0.0)
    if target is not None:
        reached = report.sparsity
        if metric == "flops":
            live = [row.groups - row.zero_groups for row in rows]
            reached = 1.0 - graph.flop_ratio(infos, live)
        if reached < target - 1e-9:
            warnings.warn(
                f"prune: target_sparsity={target} ({metric}) was not reached: {reached:.4f}. "
                f"Every layer it may prune is at its floor (min_live_groups="
                f"{min_live_groups}, round_to={round_to}); lower them or the target"
                + (", or name more `layers`." if layers is not None else "."),
                stacklevel=2,
            )
    return report


def magnitude_prune(
    model: keras.Model, target_sparsity: float, freeze: bool = True
) -> SparsityReport:
    """Unstructured baseline: zero the smallest-magnitude single weights.

    One global magnitude threshold over the grouped weights of every prunable
    layer except the output layer(s), chosen so that `target_sparsity` of all
    prunable kernel weights are zero. With `freeze`, an `ElementMask` holds them
    at zero during fine-tuning (remove it with `release_element_masks` before
    saving; the zeros stay).
    """
    target = fraction("target_sparsity", target_sparsity, allow_none=False)
    infos = graph.describe(model)
    weights = [groups.layer_weight(i.layer, i.spec) for i in infos]
    values = [np.abs(np.asarray(ops.convert_to_numpy(w.value))) for w in weights]
    total = sum(v.size for v in values)
    chosen = [k for k, info in enumerate(infos) if not info.protected]
    flat = np.concatenate([values[k].ravel() for k in chosen])
    count = min(flat.size, math.ceil(target * total))
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[:count]] = False
    offset = 0
    for k in chosen:
        size = values[k].size
        mask = keep[offset : offset + size].reshape(values[k].shape).astype("float32")
        offset += size
        weights[k].assign(weights[k].value * ops.cast(mask, weights[k].dtype))
        if freeze:
            weights[k].constraint = ElementMask(mask)
    reset_traced_functions(model)
    rows, _ = measure(infos, 0.0, check_finite=False)
    return SparsityReport(rows=tuple(rows), threshold=0.0)


def release_element_masks(model: keras.Model) -> keras.Model:
    """Remove `ElementMask` constraints (the zeros stay in the weights)."""
    for info in graph.describe(model):
        weight = groups.layer_weight(info.layer, info.spec)
        if isinstance(weight.constraint, ElementMask):
            weight.constraint = None
    reset_traced_functions(model)
    return model
