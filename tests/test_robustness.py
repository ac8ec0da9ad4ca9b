"""Mixed precision, reproducibility and interrupted training."""

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
