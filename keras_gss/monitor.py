"""`SparsityMonitor`: measure group sparsity at epoch ends, prune, and freeze.

Each epoch end: measure every prunable layer, choose the groups to prune (norm at
or below `threshold`, then lowest-ranked groups up to the ramped
`target_sparsity`), write exact zeros into their kernel slices and biases, and
install a `GroupMask` constraint so the optimizer cannot revive them.
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
from keras import ops

from keras_gss import groups
from keras_gss._validate import fraction, non_negative
from keras_gss.attach import reset_traced_functions
from keras_gss.constraints import GroupMask
from keras_gss.report import SparsityReport, measure_layer


def cubic_ramp(target: float, epoch: int, begin_epoch: int, epochs: int) -> float:
    """Sparsity to reach at the end of `epoch` (0-based), Zhu & Gupta (2017).

    ``s_t = target * (1 - (1 - p)^3)`` with ``p = (epoch - begin_epoch + 1) /
    (epochs - begin_epoch)`` clipped to [0, 1]: 0 before `begin_epoch`, `target`
    at the last epoch.
    """
    if epoch < begin_epoch:
        return 0.0
    progress = min(1.0, (epoch - begin_epoch + 1) / max(1, epochs - begin_epoch))
    return target * (1.0 - (1.0 - progress) ** 3)


class _LayerState:
    """What the monitor knows about one prunable layer during a fit."""

    def __init__(self, layer: keras.layers.Layer, is_output: bool):
        self.layer = layer
        self.spec = groups.get_spec(layer)
        self.is_output = is_output
        self.weight = groups.layer_weight(layer, self.spec)
        self.num_groups, self.group_size = groups.group_shape(
            tuple(self.weight.shape), self.spec.axis
        )

    @property
    def mask_constraint(self) -> GroupMask | None:
        constraint = self.weight.constraint
        return constraint if isinstance(constraint, GroupMask) else None

    def live(self) -> np.ndarray:
        constraint = self.mask_constraint
        if constraint is None:
            return np.ones(self.num_groups, dtype=bool)
        return constraint.live


class SparsityMonitor(keras.callbacks.Callback):
    """Measures, prunes and freezes zeroed groups at every epoch end.

    Writes `gss_sparsity` (fraction of zero kernel weights over all prunable
    layers), `gss_group_sparsity` and `gss/<layer>/zeroed_groups` into the epoch
    logs, so History, CSVLogger, the progress bar and TensorBoard (listed after
    this callback) receive them. `monitor.history` keeps one record per epoch.

    Pruning a group zeroes its kernel slice *and* the unit's bias, so a pruned
    unit outputs `activation(0)` (0 for relu) and can be removed from the model
    without changing it. With `freeze=True` both are held at zero by a
    `GroupMask` constraint, saved with the model. When a fit starts, groups that
    are already exactly zero (a reloaded or resumed model) are frozen too.

    With `target_sparsity`, the lowest-ranked live groups are pruned until that
    fraction of all prunable kernel weights is zero, ramped cubically from
    `begin_epoch` to the last epoch of `fit`. Groups of different layers are
    ranked against each other by their root-mean-square weight
    (`||W_g||_2 / sqrt(size of g)`), which does not favour small or large layers.
    The output layer's units are never pruned, and every layer keeps at least
    one live group.

    Args:
        threshold: a group whose L2 norm is at or below this is zero (default 1e-3).
        prune: set such groups to exactly zero (default True); False only measures.
        freeze: keep pruned groups at exactly zero for the rest of training and
            after saving (default True).
        target_sparsity: fraction of prunable kernel weights to zero by the end of
            `fit`, in [0, 1) (default None: threshold pruning only).
        begin_epoch: first epoch (0-based) of the target ramp (default 0).
        verbose: 1 prints a per-layer table at every epoch end, 0 is silent
            (default 1).

    Example:

    >>> import numpy as np, keras, keras_gss as gss
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16),
    ...                           keras.layers.Dense(2)])
    >>> model.compile("adam", "mse")
    >>> monitor = gss.SparsityMonitor(target_sparsity=0.5, verbose=0)
    >>> _ = model.fit(np.ones((32, 8)), np.ones((32, 2)), epochs=2, verbose=0,
    ...               callbacks=[monitor])
    >>> monitor.history[-1]["sparsity"] >= 0.5
    True
    """

    def __init__(
        self,
        threshold: float = 1e-3,
        prune: bool = True,
        freeze: bool = True,
        target_sparsity: float | None = None,
        begin_epoch: int = 0,
        verbose: int = 1,
    ):
        super().__init__()
        self.threshold = non_negative("threshold", threshold)
        self.target_sparsity = fraction("target_sparsity", target_sparsity)
        if not isinstance(begin_epoch, int) or isinstance(begin_epoch, bool) or begin_epoch < 0:
            raise ValueError(
                "Invalid value for argument `begin_epoch`. Expected an int >= 0. "
                f"Received: begin_epoch={begin_epoch!r}"
            )
        if self.target_sparsity is not None and not prune:
            raise ValueError(
                "`target_sparsity` needs `prune=True`: a monitor that only measures "
                f"cannot reach a target. Received: target_sparsity={target_sparsity}, "
                "prune=False"
            )
        self.prune = bool(prune)
        self.freeze = bool(freeze)
        self.begin_epoch = begin_epoch
        self.verbose = int(verbose)
        self.history: list[dict] = []
        self._states: list[_LayerState] = []

    # -- fit hooks ---------------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model
        outputs = {id(layer) for layer in groups.output_layers(model)}
        self._states = [
            _LayerState(layer, id(layer) in outputs) for layer in groups.prunable_layers(model)
        ]
        if not self._states:
            raise ValueError(
                f"SparsityMonitor: model '{model.name}' has no prunable layer "
                "(Dense, Conv*, ...): nothing to measure."
            )
        epochs = (self.params or {}).get("epochs")
        if self.target_sparsity is not None and epochs is not None and self.begin_epoch >= epochs:
            warnings.warn(
                f"SparsityMonitor: begin_epoch={self.begin_epoch} is not before the last "
                f"epoch of this fit (epochs={epochs}): the target ramp will not run.",
                stacklevel=2,
            )
        if self.prune and self.freeze:
            self._freeze_existing_zeros()

    def on_epoch_end(self, epoch, logs=None):
        self.model  # noqa: B018 - on JAX, reading `self.model` syncs trainer state
        rows, norms = self._measure(check_finite=self.prune)
        target = None
        if self.prune:
            target = self._target_at(epoch)
            dead = self._choose(rows, norms, target)
            if any(d.any() for d in dead):
                self._apply(dead)
                rows, norms = self._measure(check_finite=False)
        report = SparsityReport(rows=tuple(rows), threshold=self.threshold)
        record = {
            "epoch": int(epoch),
            "sparsity": report.sparsity,
            "group_sparsity": report.group_sparsity,
            "target": target,
            "layers": {row.layer: row.to_dict() for row in rows},
        }
        self.history.append(record)
        if logs is not None:
            logs["gss_sparsity"] = report.sparsity
            logs["gss_group_sparsity"] = report.group_sparsity
            for row in rows:
                logs[f"gss/{row.layer}/zeroed_groups"] = row.zero_groups
        if self.verbose:
            title = f"\nSparsityMonitor, epoch {epoch + 1}"
            if target is not None and self.target_sparsity is not None:
                title += f" (target {target:.1%})"
            print(f"{title}\n{report}", flush=True)

    # -- internals ---------------------------------------------------------

    def _target_at(self, epoch: int) -> float | None:
        if self.target_sparsity is None:
            return None
        epochs = (self.params or {}).get("epochs") or (epoch + 1)
        return cubic_ramp(self.target_sparsity, epoch, self.begin_epoch, epochs)

    def _measure(self, check_finite: bool):
        rows, norms = [], []
        for state in self._states:
            row, layer_norms = measure_layer(state.layer, self.threshold)
            if check_finite and not np.all(np.isfinite(layer_norms)):
                raise ValueError(
                    f"SparsityMonitor: layer '{state.layer.name}' holds NaN or inf weights "
                    "at the end of this epoch; nothing was pruned. Lower the learning rate "
                    "or the regularization strengths, or check the input data."
                )
            rows.append(row)
            norms.append(layer_norms)
        return rows, norms

    def _choose(self, rows, norms, target: float | None) -> list[np.ndarray]:
        """Boolean arrays of groups to prune now, one per layer."""
        dead = []
        for state, layer_norms in zip(self._states, norms):
            new = state.live() & (layer_norms <= self.threshold)
            if state.is_output:
                new[:] = False
            elif new.sum() >= state.live().sum():
                new[np.argmax(layer_norms)] = False  # keep the strongest group alive
            dead.append(new)
        if target is None:
            return dead
        total = sum(row.weights for row in rows)
        zero = sum(row.zero_weights for row in rows)
        for d, state in zip(dead, self._states):
            zero += int(d.sum()) * state.group_size  # upper bound: slices not yet all zero
        needed = math.ceil(target * total) - zero
        if needed <= 0:
            return dead
        candidates = []
        for i, (state, layer_norms) in enumerate(zip(self._states, norms)):
            if state.is_output:
                continue
            live = np.flatnonzero(state.live() & ~dead[i])
            score = layer_norms[live] / math.sqrt(state.group_size)
            candidates.extend((s, i, g) for s, g in zip(score, live))
        candidates.sort(key=lambda c: (c[0], c[1], c[2]))
        live_left = [int((s.live() & ~d).sum()) for s, d in zip(self._states, dead)]
        for _, i, g in candidates:
            if needed <= 0:
                break
            if live_left[i] <= 1:
                continue
            dead[i][g] = True
            live_left[i] -= 1
            needed -= self._states[i].group_size
        return dead

    def _apply(self, dead: list[np.ndarray]) -> None:
        retrace = keras.backend.backend() == "jax"  # jit bakes the mask values in
        for state, new in zip(self._states, dead):
            if not new.any():
                continue
            live = state.live() & ~new
            targets = [(state.weight, state.spec.axis, state.spec.constraint_attr)]
            bias = getattr(state.layer, state.spec.bias, None) if state.spec.bias else None
            if bias is not None:
                targets.append((bias, (-1,), "bias_constraint"))
            for variable, axis, attr in targets:
                mask = groups.broadcast_mask(
                    ops.convert_to_tensor(live.astype("float32")), tuple(variable.shape), axis
                )
                variable.assign(variable.value * ops.cast(mask, variable.dtype))
                if self.freeze:
                    retrace |= _install_mask(state.layer, variable, live, axis, attr)
        if retrace:
            reset_traced_functions(self.model)
            make = getattr(self.model, "make_train_function", None)
            if make is not None:
                make(force=True)

    def _freeze_existing_zeros(self) -> None:
        """Treat exactly-zero groups of a loaded or resumed model as pruned."""
        dead = []
        for state in self._states:
            norms = groups.layer_group_norms(state.layer)
            new = state.live() & (norms == 0)
            if state.is_output or new.all():
                new[:] = False
            dead.append(new)
        if any(d.any() for d in dead):
            self._apply(dead)


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
