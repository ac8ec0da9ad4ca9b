"""`SparsityMonitor`: measure group sparsity at epoch ends, prune, and freeze.

Each epoch end: measure every prunable layer, choose the groups to prune (norm at
or below `threshold`, then lowest-ranked groups up to the ramped
`target_sparsity`), write exact zeros into their kernel slices and biases, and
install a `GroupMask` constraint so the optimizer cannot revive them.
"""

from __future__ import annotations

import warnings

import keras

from keras_gss import graph, groups, pruning
from keras_gss._validate import check_update_freq, fraction, int_at_least, non_negative
from keras_gss.attach import detach
from keras_gss.report import SparsityReport


def cubic_ramp(target: float, elapsed: float, begin: float, end: float) -> float:
    """Sparsity to reach after `elapsed` epochs of training, Zhu & Gupta (2017).

    ``s = target * (1 - (1 - p)^3)`` with ``p = (elapsed - begin) / (end - begin)``
    clipped to [0, 1]: 0 until `begin` epochs are done, `target` once `end` are.
    `elapsed` may be fractional (2.5 = half-way through the third epoch).

    >>> round(cubic_ramp(0.9, elapsed=2, begin=0, end=4), 4)
    0.7875
    """
    if elapsed <= begin:
        return 0.0
    progress = min(1.0, (elapsed - begin) / max(end - begin, 1e-9))
    return target * (1.0 - (1.0 - progress) ** 3)


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
    fraction of all prunable kernel weights (or of FLOPs, `metric="flops"`, or of
    the predicted latency, `metric="latency"`) is gone, ramped cubically from the
    start of `begin_epoch` to the end of `end_epoch` (by default the last epoch of
    `fit`). With `update_freq=N` the ramp also advances every N batches, so the
    network adapts to many small cuts instead of a few large ones (Zhu & Gupta
    2017); ending the ramp before the last epoch leaves epochs to recover at the
    final sparsity. Groups of different layers are ranked against each other by
    `ranking`: by default their root-mean-square weight (`||W_g||_2 / sqrt(size of
    g)`), which favours neither small nor large layers; `"hybrid"` divides it by the
    share of weights and FLOPs the group frees (see `keras_gss.pruning`). The output
    layer's units are never pruned, and every layer keeps at least one live group.

    Args:
        threshold: a group whose L2 norm is at or below this is zero (default 1e-3).
        prune: set such groups to exactly zero (default True); False only measures.
        freeze: keep pruned groups at exactly zero for the rest of training and
            after saving (default True).
        target_sparsity: fraction to remove by the end of `fit`, in [0, 1)
            (default None: threshold pruning only).
        begin_epoch: first epoch (0-based) of the target ramp (default 0).
        end_epoch: epoch (0-based) at whose end the target is reached (default
            None: the last epoch of `fit`); at least `begin_epoch`.
        update_freq: `"epoch"` (default) prunes at epoch ends; an int N also
            prunes every N training batches, at the ramp's value for that point
            of the epoch (needs a known number of steps per epoch; on JAX each
            pruning step retraces the train step). History stays per epoch.
        verbose: 1 prints a per-layer table at every epoch end, 0 is silent
            (default 1).
        relative_threshold: also prune groups whose norm is at or below this
            fraction of the largest group norm of their layer (default None).
        ranking: `"rms"`, `"norm"`, `"hybrid"`, `"flops"`, `"memory"`, `"latency"` or
            `"auto"` (default "rms").
        metric: what `target_sparsity` counts, `"weights"`, `"flops"` or
            `"latency"` (the predicted latency, with `latency_table`) (default
            "weights").
        min_live_groups: live groups every non-output layer keeps (default 1).
        round_to: every pruned layer keeps a multiple of this many live groups
            (default 1; 8 or 16 suit CPU kernels, see `keras_gss.prune`).
        release: once the target is reached (the end of `end_epoch`), remove
            keras-gss regularizers and proximal steps (`keras_gss.detach`), so the
            epochs left train the kept groups on the task loss alone; pruned
            groups stay frozen (default False; needs `target_sparsity`).
        layers: names or layer objects that may be pruned (default None: every
            prunable layer but the output); the others are measured and count in
            the target, never pruned (e.g. `["conv1", "conv2"]` to reach a FLOP
            target in the convolutions alone). Regularizers are `attach`'s
            business: this only limits what the monitor prunes.
        latency_table: a `keras_gss.latency.LatencyTable` of this model (from
            `keras_gss.latency.profile`): needed by `metric="latency"` and
            `ranking="latency"`; with it the logs hold `gss_predicted_ms`.

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
        relative_threshold: float | None = None,
        ranking: str = pruning.RANKING,
        metric: str = pruning.METRIC,
        min_live_groups: int = pruning.MIN_LIVE_GROUPS,
        end_epoch: int | None = None,
        update_freq: str | int = "epoch",
        round_to: int = pruning.ROUND_TO,
        release: bool = False,
        layers=None,
        latency_table=None,
    ):
        super().__init__()
        self.layers = graph.check_layers(layers)
        self.threshold = non_negative("threshold", threshold)
        self.target_sparsity = fraction("target_sparsity", target_sparsity)
        self.relative_threshold = fraction("relative_threshold", relative_threshold)
        self.ranking = pruning.check_choice("ranking", ranking, pruning.RANKINGS)
        self.metric = pruning.check_choice("metric", metric, pruning.METRICS)
        self.latency_table = pruning.check_latency(metric, ranking, latency_table)
        int_at_least("begin_epoch", begin_epoch, 0)
        if end_epoch is not None:
            int_at_least("end_epoch", end_epoch, begin_epoch)
        check_update_freq(update_freq)
        if self.target_sparsity is not None and not prune:
            raise ValueError(
                "`target_sparsity` needs `prune=True`: a monitor that only measures "
                f"cannot reach a target. Received: target_sparsity={target_sparsity}, "
                "prune=False"
            )
        if release and self.target_sparsity is None:
            raise ValueError(
                "`release` needs `target_sparsity`: the regularizers are removed once the "
                "target is reached. Received: release=True, target_sparsity=None"
            )
        self.min_live_groups = int_at_least("min_live_groups", min_live_groups, 1)
        self.round_to = int_at_least("round_to", round_to, 1)
        self.prune = bool(prune)
        self.freeze = bool(freeze)
        self.begin_epoch = begin_epoch
        self.end_epoch = end_epoch
        self.update_freq = update_freq
        self.release = bool(release)
        self.released_epoch: int | None = None  # the epoch whose end released them
        self._warned = False  # the unreached target is said once per fit
        self._restored_check = False  # freeze zeros again once the first epoch begins
        self._epoch = 0
        self._next_batch = 0
        self.verbose = int(verbose)
        self.history: list[dict] = []
        self._infos: list[graph.LayerInfo] = []

    # -- fit hooks ---------------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model
        self.released_epoch = None
        self._warned = False
        self._restored_check = True
        self._infos = graph.restrict(graph.describe(model), self.layers)
        lora = groups.lora_layers(model)
        if lora:
            warnings.warn(
                "SparsityMonitor: layers with LoRA enabled are not measured or pruned "
                f"({', '.join(layer.name for layer in lora)}).",
                stacklevel=2,
            )
        if not self._infos:
            raise ValueError(
                f"SparsityMonitor: model '{model.name}' has no prunable layer "
                "(Dense, Conv*, ...): nothing to measure."
            )
        params = self.params or {}
        epochs = params.get("epochs")
        if self.target_sparsity is not None and epochs is not None:
            if self.begin_epoch >= epochs:
                warnings.warn(
                    f"SparsityMonitor: begin_epoch={self.begin_epoch} is not before the last "
                    f"epoch of this fit (epochs={epochs}): the target ramp will not run.",
                    stacklevel=2,
                )
            elif self.end_epoch is not None and self.end_epoch >= epochs:
                warnings.warn(
                    f"SparsityMonitor: end_epoch={self.end_epoch} is not an epoch of this fit "
                    f"(epochs={epochs}): the target will not be reached.",
                    stacklevel=2,
                )
        if self.update_freq != "epoch" and self.prune and not params.get("steps"):
            warnings.warn(
                "SparsityMonitor: the number of steps per epoch is unknown (pass "
                "`steps_per_epoch` to fit), so update_freq="
                f"{self.update_freq} falls back to pruning at epoch ends.",
                stacklevel=2,
            )
        if self.prune and self.freeze:
            self._freeze_existing_zeros()
            if pruning.install_masks(model, self._infos):  # later pruning: no retrace
                self._retrace()

    def on_epoch_begin(self, epoch, logs=None):
        if self._restored_check and self.prune and self.freeze:
            # after every callback's on_train_begin: weights that BackupAndRestore (or
            # any callback) restored, whatever the order the callbacks are listed in
            self.model  # noqa: B018 - on JAX, reading `self.model` syncs trainer state
            self._freeze_existing_zeros()
        self._restored_check = False
        self._epoch = epoch
        self._next_batch = self.update_freq if self.update_freq != "epoch" else 0

    def on_train_batch_end(self, batch, logs=None):
        steps = (self.params or {}).get("steps")
        if not self.prune or not steps:
            return
        if batch + 1 == steps:
            # the epoch's pruning, after its last batch and before any callback's
            # on_epoch_end: a BackupAndRestore listed first saves it too
            self.model  # noqa: B018 - on JAX, reading `self.model` syncs trainer state
            self._prune(self._target_at(self._epoch + 1))
            return
        if not self._next_batch or batch + 1 < self._next_batch:
            return
        self._next_batch = ((batch + 1) // self.update_freq + 1) * self.update_freq
        self.model  # noqa: B018 - on JAX, reading `self.model` syncs trainer state
        self._prune(self._target_at(self._epoch + (batch + 1) / steps))

    def on_epoch_end(self, epoch, logs=None):
        self.model  # noqa: B018 - on JAX, reading `self.model` syncs trainer state
        target = self._target_at(epoch + 1) if self.prune else None
        if self.prune:
            rows, norms = self._prune(target)
            if self.release and self.released_epoch is None and target == self.target_sparsity:
                detach(self.model)
                self._retrace()
                self.released_epoch = int(epoch)
        else:
            rows, norms = pruning.measure(self._infos, self.threshold, check_finite=False)
        report = SparsityReport(rows=tuple(rows), threshold=self.threshold)
        if target is not None and target == self.target_sparsity and not self._warned:
            self._warned = pruning.warn_if_unreached(
                "SparsityMonitor", self._infos, report, target, self.metric,
                self.min_live_groups, self.round_to, self.layers is not None, self.latency_table,
            )  # fmt: skip
        masks = [pruning.live_mask(i) & (n > self.threshold) for i, n in zip(self._infos, norms)]
        dead = graph.dead_groups(self._infos, masks)
        flop_ratio = graph.flop_ratio(self._infos, dead)
        predicted = None
        if self.latency_table is not None:
            predicted = self.latency_table.predict_infos(self._infos, dead)
        record = {
            "epoch": int(epoch),
            "sparsity": report.sparsity,
            "group_sparsity": report.group_sparsity,
            "flop_ratio": flop_ratio,
            "target": target,
            "predicted_ms": predicted,
            "released": self.released_epoch is not None,
            "layers": {row.layer: row.to_dict() for row in rows},
        }
        self.history.append(record)
        if logs is not None:
            logs["gss_sparsity"] = report.sparsity
            logs["gss_group_sparsity"] = report.group_sparsity
            if predicted is not None:
                logs["gss_predicted_ms"] = predicted
            for row in rows:
                logs[f"gss/{row.layer}/zeroed_groups"] = row.zero_groups
        if self.verbose:
            title = f"\nSparsityMonitor, epoch {epoch + 1}"
            if target is not None:
                title += f" (target {target:.1%} of {self.metric})"
            title += f", FLOPs left {flop_ratio:.1%}"
            if predicted is not None:
                title += f", predicted {predicted:.3g} ms/batch"
            if self.released_epoch == epoch:
                title += "; regularizers released"
            print(f"{title}\n{report}", flush=True)

    # -- internals ---------------------------------------------------------

    def _target_at(self, elapsed: float) -> float | None:
        """The ramp's target after `elapsed` epochs of this fit."""
        if self.target_sparsity is None:
            return None
        epochs = (self.params or {}).get("epochs") or int(elapsed)
        end = epochs if self.end_epoch is None else self.end_epoch + 1
        return cubic_ramp(self.target_sparsity, elapsed, self.begin_epoch, end)

    def _prune(self, target: float | None):
        """Prune to `target` (and the thresholds); `(rows, norms)` measured after."""
        rows, norms = pruning.measure(self._infos, self.threshold, check_finite=True)
        dead = pruning.select(
            self._infos, rows, norms, self.threshold, self.relative_threshold,
            target, self.metric, self.ranking, self.min_live_groups, self.round_to,
            self.latency_table,
        )  # fmt: skip
        if any(d.any() for d in dead):
            self._apply(dead)
            rows, norms = pruning.measure(self._infos, self.threshold, check_finite=False)
        return rows, norms

    def _apply(self, dead) -> None:
        if pruning.apply(self.model, self._infos, dead, self.freeze):
            self._retrace()

    def _retrace(self) -> None:
        make = getattr(self.model, "make_train_function", None)
        if make is not None:  # fit's loop calls the attribute: rebuild it now
            make(force=True)

    def _freeze_existing_zeros(self) -> None:
        """Treat exactly-zero groups of a loaded or resumed model as pruned."""
        if pruning.freeze_zero_groups(self.model, self._infos, self.freeze):
            self._retrace()
