"""Distributed training (issue: every backend, distributed) and cross-backend loading.

Each case runs in a fresh process (tests/distributed_worker.py, tests/load_worker.py):
device counts and the backend must be fixed before the backend starts. They run
once per suite, from the TensorFlow run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_gss as gss

HERE = Path(__file__).parent
once = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="starts its own backends in subprocesses; runs once, in the TensorFlow run",
)


def run_worker(*args: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=600
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@once
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_devices_match_one_and_every_replica_keeps_zeros(backend):
    pytest.importorskip(backend)
    worker = str(HERE / "distributed_worker.py")
    one = run_worker(worker, backend, "1")
    two = run_worker(worker, backend, "2")
    assert (one["replicas"], two["replicas"], two["copies"]) == (1, 2, 2)
    for result in (one, two):
        assert result["sparsity"] >= 0.49  # the monitor's target, 0.5 of the weights
        assert result["replicas_zero"] and result["replicas_equal"]
    for layer, dead in one["pattern"].items():
        a, b = set(dead), set(two["pattern"][layer])
        assert len(a & b) / max(1, len(a | b)) >= 0.8, (layer, a, b)
    assert abs(one["accuracy"] - two["accuracy"]) <= 0.03
    assert two["accuracy"] > 0.8


@once
def test_saved_on_tensorflow_loads_on_jax_and_torch(tmp_path):
    keras.utils.set_random_seed(3)
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            L.Conv2D(6, 3, activation="relu", name="c"),
            L.Flatten(),
            L.Dense(12, activation="relu", name="d"),
            L.Dense(3, name="out"),
        ]
    )
    gss.attach(model, gss.GuidedStructuredSparsity(), proximal=1e-4)
    gss.prune(model, target_sparsity=0.5)
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 2)).astype("float32")
    model.save(tmp_path / "pruned.keras")
    gss.compact(model).save(tmp_path / "compact.keras")
    np.save(tmp_path / "x.npy", x)
    expected = model.predict(x, verbose=0)
    for backend in ("jax", "torch"):
        pytest.importorskip(backend)
        result = run_worker(str(HERE / "load_worker.py"), backend, str(tmp_path))
        assert result["backend"] == backend
        for name in ("pruned", "compact"):
            got = np.asarray(result[name], "float32")
            assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
        assert result["zero_groups"] == gss.sparsity_report(model, threshold=0).zero_groups
