import json

import keras
import pytest

import keras_gss as gss


def test_counts_match_numpy():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(5, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(4, name="fc"),
        ]
    )
    conv = model.get_layer("conv").kernel.numpy()
    conv[..., [1, 3]] = 0.0
    conv[0, 0, 0, 0] = 0.0  # a lone zero weight counts as a zero weight, not a group
    conv[..., 4] *= 1e-5  # tiny group: under the threshold, not exactly zero
    model.get_layer("conv").kernel.assign(conv)
    report = gss.sparsity_report(model, threshold=1e-3)
    row = report["conv"]
    assert (row.groups, row.zero_groups, row.weights) == (5, 3, conv.size)
    assert row.zero_weights == int((conv == 0).sum())
    assert report["fc"].zero_groups == 0
    assert report.weights == conv.size + 4 * 4 * 5 * 4  # conv output 4x4x5 flattened
    assert report.sparsity == pytest.approx(row.zero_weights / report.weights)
    assert gss.sparsity_report(model, threshold=0.0)["conv"].zero_groups == 2


def test_table_and_dict():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    model.layers[0].trainable = False
    report = gss.sparsity_report(model)
    text = str(report)
    assert "d (frozen)" in text and "total" in text.splitlines()[-1]
    assert len({len(line) for line in text.splitlines()[:2]}) == 1  # aligned header and rule
    data = json.loads(json.dumps(report.to_dict()))
    assert data["total"]["weights"] == 6 and data["layers"][0]["layer"] == "d"


def test_bad_threshold():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="`threshold`"):
        gss.sparsity_report(model, threshold=-1)
