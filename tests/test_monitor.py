import csv

import keras
import numpy as np
import pytest

import keras_gss as gss
from keras_gss.monitor import cubic_ramp
from tests.conftest import compile_classifier, mlp


def dead_groups(layer):
    return np.flatnonzero(np.linalg.norm(layer.kernel.numpy(), axis=0) == 0)


def test_cubic_ramp_formula():
    def reference(target, elapsed, begin, end):  # Zhu & Gupta (2017), eq. 1
        p = np.clip((elapsed - begin) / (end - begin), 0.0, 1.0)
        return target * (1 - (1 - p) ** 3)

    for elapsed in (0, 1, 2, 2.5, 3.75, 6, 9.9, 10, 20):
        assert cubic_ramp(0.9, elapsed, 2, 10) == pytest.approx(reference(0.9, elapsed, 2, 10))
    assert cubic_ramp(0.9, 2, 2, 10) == 0.0
    assert cubic_ramp(0.9, 10, 2, 10) == pytest.approx(0.9)
    assert cubic_ramp(0.5, 3, 4, 4) == 0.0 and cubic_ramp(0.5, 5, 4, 4) == 0.5


def test_update_freq_prunes_inside_epochs_and_end_epoch_finishes_early(toy_data):
    x, y = toy_data  # 768 examples, batch 64: 12 steps per epoch
    model = compile_classifier(gss.attach(mlp(), gss.GroupLasso(1e-3)))
    monitor = gss.SparsityMonitor(target_sparsity=0.7, end_epoch=1, update_freq=3, verbose=0)
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            sparsity = gss.sparsity_report(self.model, threshold=0.0).sparsity
            seen.append((self.epoch, batch, sparsity))

    model.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[monitor, Spy()])
    sparsity = [s for _, _, s in seen]
    assert all(b >= a for a, b in zip(sparsity, sparsity[1:]))  # pruned groups stay pruned
    assert seen[2][2] > 0 and seen[1][2] == 0  # first cut after 3 batches, not before
    for epoch, batch, s in seen:
        if (batch + 1) % 3 == 0 and batch + 1 < 12 and epoch < 2:
            assert s >= cubic_ramp(0.7, epoch + (batch + 1) / 12, 0, 2) - 1e-9
    assert seen[13][2] < 0.7  # still ramping in epoch 1
    final = [r["sparsity"] for r in monitor.history]
    assert 0.7 <= final[1] < 0.75  # the target is met at the end of end_epoch ...
    assert final[1] == final[2] == final[3]  # ... and nothing more is cut after it


def test_release_removes_the_regularizers_once_the_target_is_reached(toy_data):
    x, y = toy_data

    def fit(release):
        keras.utils.set_random_seed(0)
        model = compile_classifier(gss.attach(mlp(), gss.GroupLasso(0.3), proximal=1e-3))
        monitor = gss.SparsityMonitor(target_sparsity=0.5, end_epoch=0, release=release, verbose=0)
        model.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[monitor])
        return model, monitor

    released, monitor = fit(True)
    assert monitor.released_epoch == 0
    assert [r["released"] for r in monitor.history] == [True] * 4
    assert released.losses == []  # no regularization term left ...
    for layer in released.layers[:-1]:  # ... no proximal step, but the masks stay
        assert isinstance(layer.kernel.constraint, gss.GroupMask)
        assert layer.kernel.constraint.constraint is None
    assert [r["sparsity"] for r in monitor.history][1:] == [monitor.history[0]["sparsity"]] * 3
    kept, _ = fit(False)
    # the strong lasso keeps shrinking the kept groups unless it is released
    for a, b in zip(released.layers[:-1], kept.layers[:-1]):
        assert np.linalg.norm(a.kernel.numpy()) > 2 * np.linalg.norm(b.kernel.numpy())


def test_update_freq_without_known_steps_falls_back_to_epoch_ends(toy_data):
    x, y = toy_data

    def batches():
        for i in range(0, len(x), 64):
            yield x[i : i + 64], y[i : i + 64]

    model = compile_classifier(mlp())
    monitor = gss.SparsityMonitor(target_sparsity=0.5, update_freq=2, verbose=0)
    with pytest.warns(UserWarning, match="steps per epoch is unknown"):
        model.fit(batches(), epochs=1, verbose=0, callbacks=[monitor])
    assert monitor.history[-1]["sparsity"] >= 0.5


def test_end_epoch_after_the_fit_warns(toy_data):
    x, y = toy_data
    model = compile_classifier(mlp())
    monitor = gss.SparsityMonitor(target_sparsity=0.5, end_epoch=5, verbose=0)
    with pytest.warns(UserWarning, match="end_epoch=5"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[monitor])
    assert monitor.history[-1]["target"] == pytest.approx(0.5 * (1 - (1 - 2 / 6) ** 3))


def test_target_sparsity_rises_is_reached_and_stays_exactly_zero(toy_data, tmp_path):
    x, y = toy_data
    model = compile_classifier(gss.attach(mlp(), gss.GroupLasso(1e-3)))
    monitor = gss.SparsityMonitor(target_sparsity=0.7, verbose=0)
    seen = {}

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = {layer.name: dead_groups(layer) for layer in self.model.layers[:2]}
            for layer in self.model.layers[:2]:
                bias = layer.bias.numpy()
                assert np.all(bias[dead_groups(layer)] == 0)  # dead units lose their bias too

    log = tmp_path / "log.csv"
    history = model.fit(
        x,
        y,
        epochs=5,
        batch_size=64,
        verbose=0,
        callbacks=[monitor, Spy(), keras.callbacks.CSVLogger(str(log))],
    )
    sparsity = history.history["gss_sparsity"]
    assert all(b >= a for a, b in zip(sparsity, sparsity[1:])) and sparsity[0] > 0
    assert abs(sparsity[-1] - 0.7) <= 0.02
    assert history.history["gss_group_sparsity"][-1] > 0.3
    assert "gss/dense/zeroed_groups" in history.history
    assert history.history["gss/dense_2/zeroed_groups"][-1] == 0  # output units never pruned
    for epoch in range(1, 5):  # once dead, a group stays exactly zero
        for name, dead in seen[epoch - 1].items():
            assert set(dead) <= set(seen[epoch][name])
    with open(log) as f:
        assert "gss_sparsity" in next(csv.reader(f))
    assert [r["epoch"] for r in monitor.history] == list(range(5))
    assert monitor.history[-1]["layers"]["dense"]["groups"] == 48
    assert all(len(dead_groups(layer)) < layer.units for layer in model.layers)


class Shrink(keras.callbacks.Callback):
    """At the end of the first epoch, scale some groups of one layer under 1e-3."""

    def __init__(self, layer_index, group_ids):
        super().__init__()
        self.layer_index, self.group_ids = layer_index, group_ids

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            layer = self.model.layers[self.layer_index]
            kernel = layer.kernel.numpy()
            kernel[:, self.group_ids] *= 1e-6
            layer.kernel.assign(kernel)


def test_threshold_pruning_zeroes_and_freezes(toy_data):
    x, y = toy_data
    model = compile_classifier(mlp())
    monitor = gss.SparsityMonitor(threshold=1e-3, verbose=0)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[Shrink(0, list(range(10))), monitor])
    assert list(dead_groups(model.layers[0])) == list(range(10))
    assert monitor.history[0]["layers"]["dense"]["zero_groups"] == 10
    assert isinstance(model.layers[0].kernel.constraint, gss.GroupMask)


def test_without_freeze_pruned_groups_regrow(toy_data):
    x, y = toy_data
    model = compile_classifier(mlp())
    monitor = gss.SparsityMonitor(freeze=False, verbose=0)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[Shrink(0, list(range(6))), monitor])
    # zeroed at the end of epoch 1, then Adam's moments revive them in epoch 2
    assert monitor.history[0]["layers"]["dense"]["zero_weights"] == 6 * 24
    assert len(dead_groups(model.layers[0])) < 6


def test_prune_false_only_measures(toy_data):
    x, y = toy_data
    model = compile_classifier(mlp())
    monitor = gss.SparsityMonitor(prune=False, verbose=0)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[Shrink(0, [0, 1]), monitor])
    assert monitor.history[0]["layers"]["dense"]["zero_groups"] == 2
    assert len(dead_groups(model.layers[0])) == 0
    assert model.layers[0].kernel.constraint is None


def test_refit_freezes_existing_zero_groups(toy_data):
    """Resuming (a new fit on a model with zeroed groups) keeps them at zero."""
    x, y = toy_data
    model = compile_classifier(mlp())
    kernel = model.layers[1].kernel.numpy()
    kernel[:, 3:9] = 0.0
    model.layers[1].kernel.assign(kernel)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[gss.SparsityMonitor(verbose=0)])
    assert set(range(3, 9)) <= set(dead_groups(model.layers[1]))


def test_verbose_prints_table(toy_data, capsys):
    x, y = toy_data
    model = compile_classifier(mlp())
    model.fit(x, y, epochs=1, verbose=0, callbacks=[gss.SparsityMonitor(target_sparsity=0.3)])
    out = capsys.readouterr().out
    assert "SparsityMonitor, epoch 1" in out and "dense_1" in out and "total" in out


def test_nan_weights_stop_with_the_layer_name(toy_data):
    x, y = toy_data
    model = compile_classifier(mlp())

    class Poison(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):  # before the monitor's epoch pruning
            if batch + 1 < self.params["steps"]:
                return
            kernel = self.model.layers[1].kernel.numpy()
            kernel[0, 0] = np.nan
            self.model.layers[1].kernel.assign(kernel)

    monitor = gss.SparsityMonitor(target_sparsity=0.5, verbose=0)
    with pytest.raises(ValueError, match="'dense_1' holds NaN"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[Poison(), monitor])
    assert len(dead_groups(model.layers[0])) == 0  # nothing pruned from garbage


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        ({"threshold": -1e-3}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"target_sparsity": 1.0}, "target_sparsity"),
        ({"target_sparsity": -0.1}, "target_sparsity"),
        ({"begin_epoch": -1}, "begin_epoch"),
        ({"begin_epoch": 2, "end_epoch": 1}, "end_epoch"),
        ({"update_freq": 0}, "update_freq"),
        ({"update_freq": "batch"}, "update_freq"),
        ({"update_freq": True}, "update_freq"),
        ({"min_live_groups": 0}, "min_live_groups"),
        ({"round_to": 0}, "round_to"),
        ({"ranking": "best"}, "ranking"),
        ({"metric": "bytes"}, "metric"),
        ({"relative_threshold": 1.5}, "relative_threshold"),
        ({"target_sparsity": 0.5, "prune": False}, "target_sparsity"),
        ({"release": True}, "release"),
    ],
)
def test_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        gss.SparsityMonitor(**kwargs)


def test_model_without_prunable_layers_is_rejected():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Flatten()])
    model.compile("adam", "mse")
    with pytest.raises(ValueError, match="no prunable layer"):
        model.fit(np.ones((4, 4)), np.ones((4, 4)), verbose=0, callbacks=[gss.SparsityMonitor()])


def test_flop_target_with_hybrid_ranking(toy_data):
    x, y = toy_data
    model = compile_classifier(gss.attach(mlp(), gss.GroupLasso(1e-3)))
    monitor = gss.SparsityMonitor(target_sparsity=0.6, metric="flops", ranking="hybrid", verbose=0)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[monitor])
    assert gss.model_stats(model).flop_ratio <= 0.4 + 1e-9
    assert monitor.history[-1]["flop_ratio"] <= 0.4 + 1e-9


def test_relative_threshold(toy_data):
    x, y = toy_data
    model = compile_classifier(mlp())

    class Weaken(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            kernel = self.model.layers[0].kernel.numpy()
            kernel[:, [4, 9]] *= 0.2  # well under half of the largest group norm
            self.model.layers[0].kernel.assign(kernel)

    monitor = gss.SparsityMonitor(relative_threshold=0.5, verbose=0)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[Weaken(), monitor])
    assert list(dead_groups(model.layers[0])) == [4, 9]


def test_round_to_prunes_whole_blocks_at_every_step(toy_data):
    x, y = toy_data  # 12 steps per epoch: a cut every 3 batches
    model = compile_classifier(gss.attach(mlp(), gss.GroupLasso(1e-3)))
    monitor = gss.SparsityMonitor(
        threshold=0.0, target_sparsity=0.7, update_freq=3, round_to=8, verbose=0
    )
    live_counts = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            rows = gss.sparsity_report(self.model, threshold=0.0).rows
            live_counts.append([r.groups - r.zero_groups for r in rows])

    model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[monitor, Spy()])
    assert live_counts[-1][:2] != [48, 32] and live_counts[-1][2] == 2
    assert all(n % 8 == 0 for counts in live_counts for n in counts[:2])
    assert monitor.history[-1]["sparsity"] >= 0.7


def test_layers_limits_the_monitor_to_the_named_layers(toy_data):
    x, y = toy_data
    model = compile_classifier(gss.attach(mlp(), gss.GroupLasso(1e-3)))
    monitor = gss.SparsityMonitor(target_sparsity=0.3, layers="dense_1", verbose=0)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[monitor])
    report = gss.sparsity_report(model, threshold=0.0)
    assert report["dense"].zero_groups == 0 and report["dense_2"].zero_groups == 0
    assert report["dense_1"].zero_groups > 0 and monitor.history[-1]["sparsity"] >= 0.3
    unknown = compile_classifier(mlp())
    before = [w.numpy().copy() for w in unknown.weights]
    wrong = gss.SparsityMonitor(target_sparsity=0.3, layers=["conv1"])
    with pytest.raises(ValueError, match="'conv1' is not a prunable layer"):
        unknown.fit(x, y, epochs=1, verbose=0, callbacks=[wrong])
    for w, b in zip(unknown.weights, before):  # refused before any step
        np.testing.assert_array_equal(w.numpy(), b)
    with pytest.raises(TypeError, match="layers"):
        gss.SparsityMonitor(layers=5)


@pytest.mark.parametrize(
    "kwargs, layers",
    [
        ({"min_live_groups": 30}, None),  # the floors keep it out of reach
        ({}, ["dense_2"]),  # only the output layer named: nothing may be pruned
    ],
)
def test_an_unreachable_target_is_said_once(toy_data, kwargs, layers):
    x, y = toy_data
    model = compile_classifier(mlp(hidden=(40, 32)))
    monitor = gss.SparsityMonitor(target_sparsity=0.95, verbose=0, layers=layers, **kwargs)
    said = "SparsityMonitor: target_sparsity=0.95.*not reached"
    with pytest.warns(UserWarning, match=said) as got:
        model.fit(x, y, epochs=2, batch_size=256, verbose=0, callbacks=[monitor])
    assert sum("not reached" in str(w.message) for w in got) == 1
    assert monitor.history[-1]["sparsity"] < 0.95
