"""Train a small model with keras-gss on one or two devices; print the result as JSON.

Run by tests/test_distributed.py in a fresh process, because device counts must
be set before the backend starts:

    python tests/distributed_worker.py tensorflow 2   # MirroredStrategy, 2 logical CPUs
    python tests/distributed_worker.py jax 2          # DataParallel, 2 host devices
"""

from __future__ import annotations

import json
import os
import sys

backend, devices = sys.argv[1], int(sys.argv[2])
os.environ["KERAS_BACKEND"] = backend
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if backend == "jax":
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
if backend == "tensorflow":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_gss as gss  # noqa: E402


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 20)).astype("float32")
    w = rng.normal(size=(20, 3)).astype("float32")
    return x, np.argmax(x @ w, axis=1)


def build():
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((20,)),
            L.Dense(32, activation="relu", name="a"),
            L.Dense(32, activation="relu", name="b"),
            L.Dense(3, name="out"),
        ]
    )
    gss.attach(model, gss.GroupLasso(1e-3))
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def replicas(variable) -> list[np.ndarray]:
    """The copies of a variable on every device."""
    if backend == "tensorflow":
        values = getattr(variable.value, "values", None) or [variable.value]
        return [np.asarray(v.numpy()) for v in values]
    shards = variable.value.addressable_shards
    return [np.asarray(s.data) for s in shards]


def main() -> None:
    keras.utils.set_random_seed(0)
    x, y = data()
    if backend == "tensorflow":
        names = [f"/cpu:{i}" for i in range(devices)]
        strategy = (
            tf.distribute.MirroredStrategy(names)
            if devices > 1
            else tf.distribute.OneDeviceStrategy(names[0])
        )
        with strategy.scope():
            model = build()
        replica_count = strategy.num_replicas_in_sync
    else:
        cpus = keras.distribution.list_devices("cpu")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=cpus))
        model = build()
        replica_count = len(cpus)
    monitor = gss.SparsityMonitor(target_sparsity=0.5, verbose=0)
    model.fit(x, y, epochs=4, batch_size=64, callbacks=[monitor], verbose=0)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)  # more training: zeros must stay
    _, accuracy = model.evaluate(x, y, verbose=0)
    pattern, replicas_zero, replicas_equal = {}, True, True
    for layer in (model.get_layer("a"), model.get_layer("b")):
        copies = replicas(layer.kernel)
        dead = np.linalg.norm(copies[0], axis=0) == 0
        pattern[layer.name] = np.flatnonzero(dead).tolist()
        replicas_zero &= all(bool((c[:, dead] == 0).all()) for c in copies)
        replicas_equal &= all(np.array_equal(c, copies[0]) for c in copies)
    print(
        "RESULT "
        + json.dumps(
            {
                "replicas": replica_count,
                "copies": len(replicas(model.get_layer("a").kernel)),
                "sparsity": float(monitor.history[-1]["sparsity"]),
                "pattern": pattern,
                "accuracy": float(accuracy),
                "replicas_zero": replicas_zero,
                "replicas_equal": replicas_equal,
            }
        )
    )


main()
