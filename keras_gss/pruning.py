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
- `"latency"`: the mean vote of every layer that writes the group's channel or
  reads it (`layer_votes`: each its slice's rms over the median of its live
  slices), divided by the fraction of the predicted latency that one live
  output channel of the group's layer costs on average at its current live
  widths (a `keras_gss.latency.LatencyTable` is needed): importance per
  millisecond.
- `"auto"`: `"rms"` for weight targets, `"hybrid"` for FLOP targets (what the
  benchmark measured to work best for each), `"latency"` for latency targets.

Targets are a fraction of zero prunable kernel weights (`metric="weights"`), a
fraction of FLOPs removed (`metric="flops"`, FLOPs left <= 1 - target) or of the
predicted latency removed (`metric="latency"`, with a `LatencyTable`). Once a
latency target is reached, the blocks last pruned come back while it stays
reached: a layer's time moves in steps of its width, and channels cut on a flat
step save nothing.
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

RANKINGS = ("rms", "norm", "hybrid", "flops", "memory", "latency", "auto")
METRICS = ("weights", "flops", "latency")
# How groups are chosen, declared once: `prune`, `select`, `SparsityMonitor` and
# `recipes.Recipe` take their defaults from here (the recommended settings are the
# named recipes of `keras_gss.recipes`).
RANKING = "rms"
METRIC = "weights"
MIN_LIVE_GROUPS = 1
ROUND_TO = 1


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


def check_latency(metric: str, ranking: str, latency_table):
    """The latency table, checked: needed (only) by the latency metric and ranking."""
    if latency_table is not None and not hasattr(latency_table, "cost"):
        raise TypeError(
            "Invalid value for argument `latency_table`. Expected a "
            f"keras_gss.latency.LatencyTable. Received: {latency_table!r}"
        )
    if "latency" in (metric, ranking) and latency_table is None:
        raise ValueError(
            f"metric={metric!r}, ranking={ranking!r} needs `latency_table`: pass "
            "latency_table=keras_gss.latency.profile(model, batch_size=...)."
        )
    return latency_table


def unit_scores(
    infos: list[graph.LayerInfo], units: graph.Units, norms: list[np.ndarray], dead, ranking: str,
    latency_table=None,
) -> np.ndarray:  # fmt: skip
    """Score of every unit (lower is pruned first).

    A unit's norm is the L2 norm over the kernel slices of all its member groups
    (the producers of a residual stream, a depthwise channel); its rms divides that
    by the square root of their total size; costs sum over the members.
    """
    norm = np.sqrt(units.gather([n**2 for n in norms]))
    if ranking == "norm":
        return norm
    size = units.gather([np.full(info.groups, float(info.group_size)) for info in infos])
    rms = norm / np.sqrt(size)
    if ranking == "rms":
        return rms
    if ranking == "latency":
        charge = units.gather(latency_charge(infos, dead, latency_table))
        votes, count = layer_votes(infos, units, norms, dead)
        return votes / count / np.maximum(charge, 1e-30)
    total_w = sum(info.weights for info in infos)
    total_f = sum(info.dense_flops for info in infos) or 1.0
    total_a = sum(info.groups * info.activations for info in infos) or 1.0
    costs = []
    for info in infos:
        in_frac = info.in_fraction(dead)
        # The layer's own share only: charging a group for its consumers' input
        # slices too makes first layers look the most expensive and strips them.
        cost = info.dense_flops / info.groups * in_frac / total_f
        if ranking in ("hybrid", "memory"):
            cost += info.group_size * in_frac / total_w
        if ranking == "memory":
            cost += info.activations / total_a
        costs.append(np.full(info.groups, cost))
    cost = units.gather(costs)
    if ranking == "memory":
        rms = relative_rms(units, rms, norm)
    return rms / np.maximum(cost, 1e-30)


def relative_rms(units: graph.Units, rms: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """Each unit's rms over the median rms of its family's live units (`norm > 0`).
    A BatchNormalization after a convolution makes the scale of its kernel arbitrary,
    and a wide fan-in makes initial weights small, so plain rms is not comparable
    across layers."""
    out = rms.copy()
    for f in range(units.families):
        members = units.family == f
        out[members] = _over_median(rms[members], norm[members] > 0)
    return out


def _over_median(rms: np.ndarray, live: np.ndarray) -> np.ndarray:
    return rms / (float(np.median(rms[live])) if live.any() else 1.0)


def layer_votes(infos: list[graph.LayerInfo], units: graph.Units, norms: list[np.ndarray],
                dead) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per unit: the sum and the number of the votes of every layer that writes it
    (its output slice) or reads it (its input slice: a residual stream's channel
    is read by several). A layer votes with its slice's rms over the median of its
    live slices, so that no layer's scale (a BatchNormalization after it, its
    fan-in) weighs in. The latency ranking takes the mean vote."""
    votes = [_over_median(n / np.sqrt(float(i.group_size)), n > 0) for i, n in zip(infos, norms)]
    total, count = units.gather(votes), units.gather([np.ones(i.groups) for i in infos])
    at = {int(root): u for u, root in enumerate(units.root.tolist())}
    for info in infos:
        squares = info.input_squares()
        if squares is None:
            continue
        roots, index = np.unique(info.inputs, return_inverse=True)
        rms = np.sqrt(np.bincount(index, squares) / np.bincount(index))
        own = set(info.coupled.tolist())
        for root, vote in zip(roots.tolist(), _over_median(rms, (rms > 0) & ~dead[roots])):
            if root in at and root not in own:
                total[at[root]] += vote
                count[at[root]] += 1
    return total, count


def latency_charge(infos: list[graph.LayerInfo], dead, latency_table) -> list[np.ndarray]:
    """Per layer and group: the share of the predicted latency that one live output
    channel of the layer costs on average at its current live widths (the layer's
    predicted time over its live output width), as the FLOP ranking charges a
    group its layer's FLOPs over its groups. Not the step that one channel fewer
    saves: a layer's time moves in steps (a vector unit's width), and on a flat
    step that saving is nothing, so the layer would never be pruned."""
    cost, widths, total = latency_table.priced(infos, dead)
    total = max(total, 1e-30)
    return [np.full(info.groups, cost(k, cin, cout) / max(cout, 1.0) / total)
            for k, (info, (cin, cout)) in enumerate(zip(infos, widths))]  # fmt: skip


def group_scores(
    infos: list[graph.LayerInfo], norms: list[np.ndarray], dead, ranking: str, latency_table=None
) -> list[np.ndarray]:
    """Score of every group (its unit's score; lower is pruned first), one array per layer."""
    units = graph.Units(infos)
    return units.scatter(unit_scores(infos, units, norms, dead, ranking, latency_table), infos)


class _Budget:
    """Live counts, FLOPs and zero weights as units die, updated incrementally."""

    def __init__(self, infos, dead_roots: np.ndarray, cost=None):
        self.infos, self.dead, self.cost_fn = infos, dead_roots.copy(), cost
        self.out_of: dict[int, list[int]] = {}
        self.in_of: dict[int, list[int]] = {}
        for i, info in enumerate(infos):
            for root in info.coupled.tolist():
                self.out_of.setdefault(root, []).append(i)
            for root in [] if info.inputs is None else info.inputs.tolist():
                self.in_of.setdefault(root, []).append(i)
        self.out_live = [int((~dead_roots[i.coupled]).sum()) for i in infos]
        self.in_live = [
            None if i.inputs is None else int((~dead_roots[i.inputs]).sum()) for i in infos
        ]
        self.cost = [self._cost(k) for k in range(len(infos))]
        self.flops = sum(self.cost)

    def _cost(self, k: int) -> float:
        info = self.infos[k]
        if self.cost_fn is not None:
            return self.cost_fn(k, self.in_live[k], self.out_live[k])
        fin = 1.0 if info.inputs is None else self.in_live[k] / info.inputs.size
        fout = self.out_live[k] / info.groups
        return info.input_flops * fin + (info.dense_flops - info.input_flops) * fin * fout

    def kill(self, root: int) -> None:
        if not self.dead[root]:
            self._move(root, -1)

    def revive(self, root: int) -> None:
        if self.dead[root]:
            self._move(root, 1)

    def _move(self, root: int, sign: int) -> None:
        self.dead[root] = sign < 0
        touched = set()
        for k in self.out_of.get(root, []):
            self.out_live[k] += sign
            touched.add(k)
        for k in self.in_of.get(root, []):
            self.in_live[k] += sign
            touched.add(k)
        for k in touched:
            new = self._cost(k)
            self.flops += new - self.cost[k]
            self.cost[k] = new


def select(
    infos: list[graph.LayerInfo],
    rows,
    norms: list[np.ndarray],
    threshold: float,
    relative_threshold: float | None = None,
    target: float | None = None,
    metric: str = METRIC,
    ranking: str = RANKING,
    min_live_groups: int = MIN_LIVE_GROUPS,
    round_to: int = ROUND_TO,
    latency_table=None,
) -> list[np.ndarray]:
    """Boolean arrays of live groups to prune now, one per layer.

    Groups are pruned by unit (`Units`: the coupled groups; in a chain of layers,
    one group each). A live unit is pruned when its norm is at or below
    `threshold` (or below `relative_threshold` times the largest unit norm of its
    family); then, if `target` is set, the lowest-scored live units until the
    target is met. Units that cannot be removed (pinned by the model's outputs or
    inputs, an unknown layer, a frozen or excluded member) are never pruned, and
    every layer keeps `min_live_groups` live groups. With `round_to` r > 1 every
    family with dead units then also loses its weakest `live % r` units (unless
    that would leave fewer than `min_live_groups`), and the target prunes r units
    at a time, each block ranked by its strongest member: every live count stays a
    multiple of r (or the family's untouched full width).
    """
    masks = [live_mask(info) for info in infos]
    units = graph.Units(infos)
    unit_norm = np.sqrt(units.gather([n**2 for n in norms]))
    alive = units.gather(masks, np.any) & units.prunable
    live = [int(m.sum()) for m in masks]
    doomed = alive & (unit_norm <= threshold)
    if relative_threshold is not None:
        for f in range(units.families):
            members = units.family == f
            if members.any():
                top = unit_norm[members].max()
                doomed |= members & alive & (unit_norm <= relative_threshold * top)
    slots = [{i: len(js) for i, js in m} for m in units.members]

    def after(chosen: np.ndarray) -> list[int]:
        counts = list(live)
        for u in np.flatnonzero(chosen):
            for i, n in slots[u].items():
                counts[i] -= n
        return counts

    counts = after(doomed)
    for i in range(len(infos)):  # spare the strongest doomed groups of a layer under its floor
        keep = min(min_live_groups, live[i])
        if counts[i] >= keep:
            continue
        mine = [u for u in np.flatnonzero(doomed) if i in slots[u]]
        for u in sorted(mine, key=lambda u: -unit_norm[u]):
            if counts[i] >= keep:
                break
            doomed[u] = False
            for k, n in slots[u].items():
                counts[k] += n
    if round_to > 1:  # the remainder first: zeroed groups may have left any count
        for f in range(units.families):
            members = units.family == f
            rest = np.flatnonzero(members & alive & ~doomed)
            extra = rest.size % round_to if units.rounds[f] else 0
            pruned = rest.size < members.sum()  # a full width stays as it is
            if pruned and extra and rest.size - extra >= min_live_groups:
                weakest = rest[np.argsort(unit_norm[rest], kind="stable")[:extra]]
                if all(units.prunable[weakest]):
                    doomed[weakest] = True
    counts = after(doomed)
    dead_units = doomed.copy()
    if target is not None:
        _target(infos, units, rows, norms, masks, dead_units, counts, target, metric, ranking,
                min_live_groups, round_to, alive, latency_table)  # fmt: skip
    slots_dead = units.scatter(dead_units, infos, fill=False)
    return [d & m for d, m in zip(slots_dead, masks)]


def _target(infos, units, rows, norms, masks, dead_units, counts, target, metric, ranking,
            min_live_groups, round_to, alive, latency_table=None) -> None:  # fmt: skip
    """Add the lowest-scored live units to `dead_units` until `target` is met."""
    slot_masks = units.scatter(dead_units, infos, fill=False)
    dead_roots = graph.dead_groups(infos, [m & ~d for m, d in zip(masks, slot_masks)])
    if metric == "latency":
        cost, fixed = latency_table.cost(infos)
        budget = _Budget(infos, dead_roots, cost)
        dense_f = _Budget(infos, np.zeros_like(dead_roots), cost).flops + fixed
    else:
        budget = _Budget(infos, dead_roots)
        fixed = graph.fixed_flops(infos)
        dense_f = sum(info.dense_flops for info in infos) + fixed
    total_w = sum(row.weights for row in rows)
    nonzero = [groups.layer_group_nonzeros(info.layer) for info in infos]
    unit_nonzero = units.gather([n * m for n, m in zip(nonzero, masks)])
    zero_w = sum(row.zero_weights for row in rows) + int(unit_nonzero[dead_units].sum())

    def reached() -> bool:
        if metric in ("flops", "latency"):
            return budget.flops + fixed <= (1.0 - target) * dense_f * (1 + 1e-9)
        return zero_w >= math.ceil(target * total_w)

    if reached():
        return
    if ranking == "auto":
        ranking = {"flops": "hybrid", "latency": "latency"}.get(metric, "rms")
    scores = unit_scores(infos, units, norms, budget.dead, ranking, latency_table)
    candidates = []
    for f in range(units.families):
        rest = np.flatnonzero((units.family == f) & alive & ~dead_units)
        step = round_to if units.rounds[f] else 1
        for block in _blocks(rest[np.argsort(scores[rest], kind="stable")], step):
            candidates.append((float(scores[block].max()), f, block))
    candidates.sort(key=lambda c: c[:2])  # stable: a family's blocks keep their order
    taken = []
    for _, f, block in candidates:
        if reached():
            break
        lost: dict[int, int] = {}
        for u in block:
            for i, js in units.members[u]:
                lost[i] = lost.get(i, 0) + len(js)
        if any(counts[i] - n < min_live_groups for i, n in lost.items()):
            continue
        for i, n in lost.items():
            counts[i] -= n
        dead_units[block] = True
        zero_w += int(unit_nonzero[block].sum())
        for u in block:
            budget.kill(int(units.root[u]))
        taken.append((f, block, lost))
    if metric == "latency" and reached():
        _give_back(taken, units, budget, dead_units, counts, reached)


def _give_back(taken, units, budget, dead_units, counts, reached) -> None:
    """Revive the blocks last pruned, each family's latest first, while the target
    stays reached: a layer's time moves in steps (`latency.profile(steps=True)`),
    so channels pruned on a flat step, or before a step that another layer then
    took, save nothing and come back. A family whose latest block must stay keeps
    its earlier blocks pruned (they go in ranking order)."""
    stuck = set()
    for f, block, lost in reversed(taken):
        if f in stuck:
            continue
        roots = [int(units.root[u]) for u in block]
        for root in roots:
            budget.revive(root)
        if reached():
            dead_units[block] = False
            for i, n in lost.items():
                counts[i] += n
        else:
            for root in roots:
                budget.kill(root)
            stuck.add(f)


def _blocks(order: np.ndarray, round_to: int) -> list[np.ndarray]:
    """Groups in pruning order cut into blocks: the remainder first, then `round_to`
    at a time, so that every block pruned leaves a multiple of `round_to` live."""
    first = order.size % round_to
    return ([order[:first]] if first else []) + [
        order[k : k + round_to] for k in range(first, order.size, round_to)
    ]


def apply(model: keras.Model, infos: list[graph.LayerInfo], dead: list[np.ndarray], freeze: bool):
    """Zero the chosen groups (kernel slices and biases) and, for every coupled group
    now wholly dead, the BatchNormalization scale and shift of its channels, so the
    channel is exactly zero; with `freeze`, mask them.

    Traced train functions are reset where a new constraint (or, on JAX, a new
    mask value) must be seen by the next step.
    """
    retrace = False
    masks = []
    for info, new in zip(infos, dead):
        live = live_mask(info) & ~new
        masks.append(live)
        if not new.any():
            continue
        for variable, axis, attr in _grouped_variables(info):
            _zero(variable, live, axis)
            if freeze:
                retrace |= _install_mask(info.layer, variable, live, axis, attr)
        retrace |= freeze and keras.backend.backend() == "jax"  # jit bakes mask values in
    for layer, variable, live, attr in _follower_variables(infos, masks):
        if live.all() and not isinstance(variable.constraint, GroupMask):
            continue
        _zero(variable, live, (-1,))
        if freeze:
            retrace |= _install_mask(layer, variable, live, (-1,), attr)
    if retrace:
        reset_traced_functions(model)
    return retrace


def _zero(variable, live: np.ndarray, axis) -> None:
    mask = groups.broadcast_mask(
        ops.convert_to_tensor(live.astype("float32")), tuple(variable.shape), axis
    )
    variable.assign(variable.value * ops.cast(mask, variable.dtype))


def _follower_variables(infos: list[graph.LayerInfo], masks: list[np.ndarray]) -> list[tuple]:
    """(layer, variable, live channels, constraint attribute) of the per-channel scale
    and shift of BatchNormalization layers, live where their coupled group is."""
    dep = infos[0].dependency if infos else None
    if dep is None:
        return []
    dead = graph.dead_groups(infos, masks)
    found = []
    for layer, chan in dep.followers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        live = ~dead[dep.root[chan.ids]]
        for name in ("gamma", "beta"):
            variable = getattr(layer, name, None)
            if variable is not None:
                found.append((layer, variable, live, f"{name}_constraint"))
    return found


def _grouped_variables(info: graph.LayerInfo) -> list[tuple]:
    """(variable, group axis, constraint attribute) of a layer's kernel and bias."""
    weight = groups.layer_weight(info.layer, info.spec)
    found = [(weight, info.spec.axis, info.spec.constraint_attr)]
    bias = getattr(info.layer, info.spec.bias, None) if info.spec.bias else None
    if bias is not None:
        found.append((bias, (-1,), "bias_constraint"))
    return found


def freeze_zero_groups(model: keras.Model, infos: list[graph.LayerInfo], freeze=True) -> bool:
    """Mask the groups that are exactly zero (a reloaded, restored or resumed model
    whose masks were lost), unless a layer is all zero (an initializer, not
    pruning). True when a retrace is needed."""
    dead = []
    for info in infos:
        norms = groups.layer_group_norms(info.layer)
        new = live_mask(info) & (norms == 0)
        if info.protected or new.all():
            new[:] = False
        dead.append(new)
    if not any(d.any() for d in dead):
        return False
    return apply(model, infos, dead, freeze)


def install_masks(model: keras.Model, infos: list[graph.LayerInfo]) -> bool:
    """Give every prunable, unprotected layer a `GroupMask` (its current live groups),
    so that later pruning only updates mask values and never needs a retrace on
    TensorFlow and PyTorch. True when one was newly installed (retrace once now)."""
    installed = False
    masks = [live_mask(info) for info in infos]
    for info, live in zip(infos, masks):
        if info.protected:
            continue
        for variable, axis, attr in _grouped_variables(info):
            installed |= _install_mask(info.layer, variable, live, axis, attr)
    for layer, variable, live, attr in _follower_variables(infos, masks):
        if layer.trainable:
            installed |= _install_mask(layer, variable, live, (-1,), attr)
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
    metric: str = METRIC,
    ranking: str = RANKING,
    freeze: bool = True,
    min_live_groups: int = MIN_LIVE_GROUPS,
    round_to: int = ROUND_TO,
    layers=None,
    latency_table=None,
) -> SparsityReport:
    """Hard-prune whole groups of a trained model once, now.

    Args:
        model: a built Keras model.
        target_sparsity: fraction in [0, 1) of prunable kernel weights to zero
            (`metric="weights"`), of FLOPs to remove (`metric="flops"`) or of the
            predicted latency to remove (`metric="latency"`); None prunes by
            `threshold` only (default None).
        threshold: groups whose norm is at or below this are pruned (default 0).
        metric: `"weights"`, `"flops"` or `"latency"` (default "weights").
        ranking: `"rms"`, `"norm"`, `"hybrid"`, `"flops"`, `"memory"`, `"latency"`
            or `"auto"` (default "rms"); see the module docstring.
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
        latency_table: a `keras_gss.latency.LatencyTable` of this model, needed
            by `metric="latency"` and `ranking="latency"` (default None).

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
    check_latency(metric, ranking, latency_table)
    min_live_groups = int_at_least("min_live_groups", min_live_groups, 1)
    round_to = int_at_least("round_to", round_to, 1)
    infos = graph.restrict(graph.describe(model), layers)
    rows, norms = measure(infos, threshold)
    dead = select(infos, rows, norms, threshold, None, target, metric, ranking,
                  min_live_groups, round_to, latency_table)  # fmt: skip
    apply(model, infos, dead, freeze)
    rows, _ = measure(infos, 0.0, check_finite=False)
    report = SparsityReport(rows=tuple(rows), threshold=0.0)
    if target is not None:
        warn_if_unreached("prune", infos, report, target, metric, min_live_groups, round_to,
                          layers is not None, latency_table)  # fmt: skip
    return report


def dead_now(infos: list[graph.LayerInfo]) -> np.ndarray:
    """The coupled groups that are masked or exactly zero (what compact removes)."""
    _, norms = measure(infos, 0.0, check_finite=False)
    masks = [live_mask(info) & (n > 0) for info, n in zip(infos, norms)]
    return graph.dead_groups(infos, masks)


def reached(infos: list[graph.LayerInfo], report: SparsityReport, metric: str,
            latency_table=None) -> float:  # fmt: skip
    """The sparsity reached: of prunable weights, of FLOPs or of predicted latency
    (what compact removes)."""
    if metric == "flops":
        return 1.0 - graph.flop_ratio(infos, dead_now(infos))
    if metric == "latency":
        dead = dead_now(infos)
        dense = latency_table.predict_infos(infos, np.zeros_like(dead))
        return 1.0 - latency_table.predict_infos(infos, dead) / dense
    return report.sparsity


def warn_if_unreached(owner, infos, report, target, metric, min_live_groups, round_to,
                      named_layers: bool, latency_table=None) -> bool:  # fmt: skip
    """Warn (and return True) when `target` is above what was reached."""
    value = reached(infos, report, metric, latency_table)
    if value >= target - 1e-9:
        return False
    warnings.warn(
        f"{owner}: target_sparsity={target} ({metric}) was not reached: {value:.4f}. "
        f"Every layer it may prune is at its floor (min_live_groups="
        f"{min_live_groups}, round_to={round_to}), or its groups cannot be removed (the "
        "output layer, channels pinned by the model's inputs, outputs or unknown layers); "
        "lower the floors or the target" + (", or name more `layers`." if named_layers else "."),
        stacklevel=3,
    )
    return True


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
