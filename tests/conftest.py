import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session()


@pytest.fixture
def toy_data():
    """A small classification task whose label depends on 4 of 24 inputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(768, 24)).astype("float32")
    y = (x[:, 0] + x[:, 1] - x[:, 2] * x[:, 3] > 0).astype("int32")
    return x, y


def mlp(hidden=(48, 32), inputs=24, outputs=2, name=None):
    layers = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(h, activation="relu") for h in hidden]
    layers.append(keras.layers.Dense(outputs))
    return keras.Sequential(layers, name=name)


def compile_classifier(model, lr=1e-2):
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def randomize(model, seed=0, scale=0.3):
    """Random weights, BatchNormalization variances in [0.5, 2) (positive)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 2.0, size=w.shape).astype("float32"))
        else:
            w.assign(rng.normal(scale=scale, size=w.shape).astype("float32"))


@pytest.fixture
def fake_clock(monkeypatch):
    """`(call, order)`: `call(name, seconds)` is a timed call that records `name` in
    `order` and advances `keras_gss.latency`'s clock by `seconds`, and only it."""
    from keras_gss import latency

    clock, order = [0.0], []

    def call(name, seconds):
        def run(x):
            order.append(name)
            clock[0] += seconds

        return run

    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock[0])
    return call, order
