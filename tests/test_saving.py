import keras
import numpy as np

import keras_gss as gss
from tests.conftest import compile_classifier


def pruned_convnet(tmp_path):
    x = np.random.default_rng(0).normal(size=(128, 10, 10, 2)).astype("float32")
    y = (x[:, :5, :5, 0].mean((1, 2)) > 0).astype("int32")
    model = keras.Sequential(
        [
            keras.Input((10, 10, 2)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu", name="fc"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    compile_classifier(gss.attach(model))
    model.fit(
        x,
        y,
        epochs=2,
        batch_size=32,
        verbose=0,
        callbacks=[gss.SparsityMonitor(target_sparsity=0.6, verbose=0)],
    )
    return model, x, y


def dead(layer):
    kernel = layer.kernel.numpy()
    return set(np.flatnonzero(np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), axis=0) == 0))


def test_save_load_round_trip_keeps_everything(tmp_path):
    model, x, y = pruned_convnet(tmp_path)
    path = tmp_path / "pruned.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for name in ("conv", "fc"):
        assert dead(loaded.get_layer(name)) == dead(model.get_layer(name)) != set()
        assert isinstance(loaded.get_layer(name).kernel.regularizer, gss.GuidedStructuredSparsity)
        assert isinstance(loaded.get_layer(name).kernel.constraint, gss.GroupMask)
    assert float(sum(loaded.losses)) > 0
    # training continues and pruned groups stay exactly zero, without a monitor
    before = {name: dead(loaded.get_layer(name)) for name in ("conv", "fc")}
    loaded.fit(x, y, epochs=2, verbose=0)
    for name in ("conv", "fc"):
        assert before[name] <= dead(loaded.get_layer(name))
        bias = loaded.get_layer(name).bias.numpy()
        assert np.all(bias[list(before[name])] == 0)


def test_weights_only_round_trip(tmp_path):
    model, x, _ = pruned_convnet(tmp_path)
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)
    fresh = keras.models.clone_model(model)
    fresh.load_weights(path)
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), model.predict(x, verbose=0))
    assert dead(fresh.get_layer("conv")) == dead(model.get_layer("conv"))


def test_checkpoint_resume_keeps_pruned_groups_zero(tmp_path):
    model, x, y = pruned_convnet(tmp_path)
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)

    # a fresh model rebuilt by user code has no masks: only the saved weights
    def unconstrained(layer):
        config = layer.get_config()
        config.update({k: None for k in config if k.endswith("_constraint")})
        return type(layer).from_config(config)

    fresh = keras.Sequential(
        [keras.Input((10, 10, 2))] + [unconstrained(la) for la in model.layers]
    )
    fresh.load_weights(path)
    assert fresh.get_layer("conv").kernel.constraint is None
    compile_classifier(fresh)
    expected = dead(model.get_layer("conv"))
    fresh.fit(x, y, epochs=2, verbose=0, callbacks=[gss.SparsityMonitor(verbose=0)])
    assert expected <= dead(fresh.get_layer("conv"))
