"""Sensitivity analysis: numpy reference scores, exact restoration, the auto pick."""

import keras
import numpy as np
import pytest

import keras_gss as gss
from tests.conftest import randomize


def small_net():
    x = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="a")(x)
    return keras.Model(x, keras.layers.Dense(3, name="out")(h))


def numpy_accuracy(weights, x, y, dead):
    wa, ba, wo, bo = weights
    keep = np.ones(wa.shape[1])
    keep[dead] = 0
    h = np.maximum(x @ (wa * keep) + ba * keep, 0)
    return float(np.mean((h @ wo + bo).argmax(1) == y))


def test_scores_match_numpy_and_weights_come_back_exactly():
    model = small_net()
    randomize(model, seed=3, scale=1.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype("float32")
    y = rng.integers(0, 3, 200)
    before = [w.numpy().copy() for w in model.weights]
    table = gss.sensitivity(model, x, y, levels=(0.25, 0.5, 0.75), verbose=0)
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)
    assert table.baseline == pytest.approx(numpy_accuracy(before, x, y, []))
    order = np.argsort(np.linalg.norm(before[0], axis=0), kind="stable")
    assert [row["level"] for row in table.rows] == [0.25, 0.5, 0.75]
    for row in table.rows:
        count = int(round(row["level"] * 8))
        assert row["family"] == "a" and row["pruned"] == count
        assert row["score"] == pytest.approx(numpy_accuracy(before, x, y, order[:count]))
        assert row["drop"] == pytest.approx(table.baseline - row["score"])
        # the FLOPs a's removed units free: its own output slices and out's input rows
        assert row["flops_saved"] == pytest.approx(count * (6 + 3) / (6 * 8 + 8 * 3))


def test_restores_the_weights_when_the_score_fails():
    model = gss.models.resnet20()
    randomize(model, seed=1)
    before = [w.numpy().copy() for w in model.weights]
    calls = []

    def score(m):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("evaluation broke")
        return 0.5

    with pytest.raises(RuntimeError, match="evaluation broke"):
        gss.sensitivity(model, score=score, levels=(0.5,), verbose=0)
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_auto_layers_picks_lenets_convolutions():
    # what the LeNet benchmark found by hand: prune the two convolutions only (the
    # dense layers hold the weights but not the FLOPs); no drop limit here
    model = gss.models.lenet()
    x = np.random.default_rng(0).random((32, 28, 28, 1)).astype("float32")
    table = gss.sensitivity(model, x, np.arange(32) % 10, levels=(0.5,), verbose=0)
    assert table.auto_layers(tolerance=1.0) == ["conv1", "conv2"]
    worse = [dict(row, drop=0.5 if row["family"] == "conv1" else 0.0) for row in table.rows]
    assert gss.SensitivityTable(table.baseline, worse).auto_layers() == ["conv2"]


def test_residual_families_are_pruned_together_and_named():
    model = gss.models.resnet20()
    randomize(model, seed=2)
    table = gss.sensitivity(model, score=lambda m: 1.0, levels=(0.5,), layers=["s1b0_conv2"],
                            verbose=0)  # fmt: skip
    (row,) = table.rows
    assert set(row["layers"]) == {"s1b0_proj", "s1b0_conv2", "s1b1_conv2", "s1b2_conv2"}
    assert row["pruned"] == 16 and row["flops_saved"] > 0


def test_bad_arguments_are_named():
    model = small_net()
    x, y = np.zeros((4, 6), "float32"), np.zeros(4, "int32")
    with pytest.raises(ValueError, match="levels"):
        gss.sensitivity(model, x, y, levels=(0.5, 1.0), verbose=0)
    with pytest.raises(ValueError, match="needs `x` and `y`"):
        gss.sensitivity(model, verbose=0)
    with pytest.raises(ValueError, match="'nope' is not a prunable layer"):
        gss.sensitivity(model, x, y, layers=["nope"], verbose=0)
    with pytest.raises(ValueError, match="same length"):
        gss.sensitivity(model, x, np.zeros(5), verbose=0)
    with pytest.raises(TypeError, match="score"):
        gss.sensitivity(model, score=3, verbose=0)
