"""Mixed precision, reproducibility, interrupted training, and unusual models."""

import keras
import numpy as np
import pytest

import keras_gss as gss
from tests.conftest import compile_classifier, mlp


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_training_is_finite_and_sparse(policy, toy_data):
    x, y = toy_data
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = mlp()
        gss.attach(model, gss.GuidedStructuredSparsity(1e-3, 1e-3),
                   activity_regularizer=gss.ActivityAttention(1e-4))  # fmt: skip
        compile_classifier(model)
        monitor = gss.SparsityMonitor(target_sparsity=0.5, verbose=0)
        history = model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[monitor])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["gss_sparsity"][-1] >= 0.49


def test_same_seed_same_sparsity_pattern(toy_data):
    x, y = toy_data

    def run():
        keras.utils.set_random_seed(7)
        model = compile_classifier(gss.attach(mlp(), gss.GroupLasso(1e-3)))
        model.fit(x, y, epochs=2, batch_size=64, verbose=0, shuffle=False,
                  callbacks=[gss.SparsityMonitor(target_sparsity=0.6, verbose=0)])  # fmt: skip
        return [np.linalg.norm(layer.kernel.numpy(), axis=0) == 0 for layer in model.layers]

    first, second = run(), run()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_backup_and_restore_resumes_the_ramp_and_keeps_zeros(toy_data, tmp_path):
    x, y = toy_data
    model = compile_classifier(gss.attach(mlp(), gss.GroupLasso(1e-3)))

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    monitor = gss.SparsityMonitor(target_sparsity=0.8, verbose=0)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, epochs=4, verbose=0, callbacks=[monitor, backup, Interrupt()])
    reached = monitor.history[-1]["sparsity"]
    dead = [np.linalg.norm(layer.kernel.numpy(), axis=0) == 0 for layer in model.layers]
    # a new process would rebuild the model; BackupAndRestore reloads weights and epoch
    fresh = compile_classifier(gss.attach(mlp(), gss.GroupLasso(1e-3)))
    monitor2 = gss.SparsityMonitor(target_sparsity=0.8, verbose=0)
    fresh.fit(x, y, epochs=4, verbose=0, callbacks=[monitor2, backup])
    epochs = [r["epoch"] for r in monitor2.history]
    assert epochs[0] >= 1 and epochs[-1] == 3  # resumed, not restarted
    assert monitor2.history[0]["target"] >= monitor.history[0]["target"]
    assert monitor2.history[-1]["sparsity"] >= max(reached, 0.79)
    for before, layer in zip(dead, fresh.layers):
        now = np.linalg.norm(layer.kernel.numpy(), axis=0) == 0
        assert np.all(now[before])  # pruned groups stayed pruned


def _unusual_model():
    """A nested Sequential, a layer shared by two calls, a frozen and a LoRA layer."""
    L = keras.layers
    inner = keras.Sequential([keras.Input((16,)), L.Dense(16, activation="relu", name="inner")])
    shared = L.Dense(16, activation="relu", name="shared")
    frozen = L.Dense(16, activation="relu", name="frozen")
    inputs = keras.Input((24,))
    h = L.Dense(16, activation="relu", name="first")(inputs)
    h = inner(shared(shared(h)))
    h = L.Dense(16, activation="relu", name="lora")(frozen(h))
    model = keras.Model(inputs, L.Dense(2, name="out")(h))
    frozen.trainable = False
    return model


def test_nested_shared_frozen_and_lora_layers(toy_data):
    x, y = toy_data
    keras.utils.set_random_seed(0)
    model = _unusual_model()
    model.get_layer("lora").enable_lora(2)
    frozen_kernel = model.get_layer("frozen").kernel.numpy().copy()
    with pytest.warns(UserWarning, match="LoRA enabled.*lora"):
        gss.attach(model, gss.GroupLasso(1e-3))
    layers = {layer.name: layer for layer in gss.groups.iter_layers(model)}
    regularized = {n for n, layer in layers.items() if getattr(layer, "kernel_regularizer", None)}
    assert regularized == {"first", "shared", "inner"}  # nested: recursed; frozen, LoRA: not
    assert len(model.losses) == 3  # the shared layer counts once
    compile_classifier(model)
    monitor = gss.SparsityMonitor(target_sparsity=0.5, verbose=0)
    with pytest.warns(UserWarning, match="LoRA enabled are not measured"):
        model.fit(x, y, epochs=3, batch_size=64, callbacks=[monitor], verbose=0)
    report = {row.layer: row for row in gss.sparsity_report(model, threshold=0).rows}
    assert "lora" not in report and "frozen" in report  # frozen: reported
    assert report["frozen"].zero_groups == 0
    np.testing.assert_array_equal(model.get_layer("frozen").kernel.numpy(), frozen_kernel)
    assert report["inner"].zero_groups > 0 and report["shared"].zero_groups > 0
    assert monitor.history[-1]["sparsity"] >= 0.5 - 1e-6
    dead = report["inner"].zero_groups
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert gss.sparsity_report(model, threshold=0).rows[2].zero_groups == dead


def test_frozen_or_lora_layers_named_explicitly_are_refused():
    model = _unusual_model()
    with pytest.raises(ValueError, match="'frozen' is frozen"):
        gss.attach(model, layers=["frozen"])
    model.get_layer("lora").enable_lora(2)
    with pytest.raises(ValueError, match="'lora' has LoRA enabled"):
        gss.attach(model, layers=["lora"])
    assert model.get_layer("frozen").kernel_regularizer is None  # nothing half-attached


def test_float16_kernels_are_regularized_in_float32(toy_data):
    x, y = toy_data
    layer = keras.layers.Dense(8, dtype="float16")
    layer.build((None, 24))
    kernel = layer.kernel.numpy().astype("float64")
    value = gss.GuidedStructuredSparsity(lasso=1e-2, variance=1e-3)(layer.kernel)
    norms = np.sqrt((kernel**2).sum(axis=0))
    expected = 1e-2 * norms.sum() + 1e-3 / (np.var(norms**2) + 1e-8)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    np.testing.assert_allclose(float(value), expected, rtol=1e-3)
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential(
        [keras.Input((24,)), L.Dense(16, activation="relu", dtype="float16"), L.Dense(2)]
    )
    gss.attach(model, gss.GroupLasso(1e-3))
    compile_classifier(model)
    monitor = gss.SparsityMonitor(target_sparsity=0.5, verbose=0)
    history = model.fit(x, y, epochs=3, batch_size=64, callbacks=[monitor], verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert monitor.history[-1]["sparsity"] >= 0.5 - 1e-6


class ZerosAfterBatches(keras.callbacks.Callback):
    """Records, after a few batches of the first epoch, which kernel columns are zero."""

    def __init__(self, batches=4):
        super().__init__()
        self.batches, self.zero = batches, None

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.batches and self.zero is None:
            self.zero = [
                np.linalg.norm(keras.ops.convert_to_numpy(layer.kernel), axis=0) == 0
                for layer in self.model.layers
            ]


@pytest.mark.parametrize("order", ["monitor first", "backup first"])
def test_restored_weights_keep_their_pruned_groups_whatever_the_callback_order(
    toy_data, tmp_path, order
):
    x, y = toy_data
    model = compile_classifier(mlp())
    gss.prune(model, target_sparsity=0.7)
    dead = [np.linalg.norm(layer.kernel.numpy(), axis=0) == 0 for layer in model.layers]
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    backup.set_model(model)
    backup._save_model()  # what a run killed after its first epoch left behind
    fresh = compile_classifier(mlp())  # a new process: the masks are gone
    monitor = gss.SparsityMonitor(verbose=0)
    callbacks = [monitor, backup] if order == "monitor first" else [backup, monitor]
    probe = ZerosAfterBatches()
    fresh.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[*callbacks, probe])
    for before, now in zip(dead, probe.zero):
        assert before.any() or not now.any()
        assert np.all(now[before])  # still exactly zero after 4 batches of training


def test_weights_loaded_into_a_fresh_model_stay_pruned_after_attach(toy_data, tmp_path):
    x, y = toy_data
    model = mlp()
    gss.prune(model, target_sparsity=0.7)
    model.save_weights(tmp_path / "pruned.weights.h5")
    dead = [np.linalg.norm(layer.kernel.numpy(), axis=0) == 0 for layer in model.layers]
    fresh = mlp()
    fresh.load_weights(tmp_path / "pruned.weights.h5")
    gss.attach(fresh, gss.GroupLasso(1e-4))
    compile_classifier(fresh).fit(x, y, epochs=1, batch_size=32, verbose=0)
    for before, layer in zip(dead, fresh.layers):
        assert np.all(np.linalg.norm(layer.kernel.numpy(), axis=0)[before] == 0)
    assert any(d.any() for d in dead)


def test_a_backup_listed_before_the_monitor_holds_the_epochs_pruning(toy_data, tmp_path):
    x, y = toy_data
    model = compile_classifier(mlp())
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)
    monitor = gss.SparsityMonitor(target_sparsity=0.7, end_epoch=0, verbose=0)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[backup, monitor])
    pruned = gss.sparsity_report(model, threshold=0).zero_groups
    assert pruned > 0

    class Restored(keras.callbacks.Callback):
        zero = None

        def on_train_begin(self, logs=None):
            Restored.zero = gss.sparsity_report(self.model, threshold=0).zero_groups

    fresh = compile_classifier(mlp())  # BackupAndRestore restores the saved weights
    backup2 = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    fresh.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[backup2, Restored()])
    assert Restored.zero == pruned
