import json

import keras
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import keras_gss as gss
from tests._autodiff import value_and_grad


def np_group_norms(w, group_axes):
    group_axes = tuple(a % w.ndim for a in group_axes)
    other = tuple(a for a in range(w.ndim) if a not in group_axes)
    return np.sqrt(np.sum(np.asarray(w, np.float64) ** 2, axis=other)).reshape(-1)


def np_lasso(w, strength, axes=(-1,)):
    return strength * np_group_norms(w, axes).sum()


def np_variance(w, strength, eps, axes=(-1,)):
    sq = np_group_norms(w, axes) ** 2
    if sq.size < 2:
        return 0.0
    return strength / (np.mean((sq - sq.mean()) ** 2) + eps)


def kernel_of(layer, input_shape):
    layer.build(input_shape)
    spec = gss.groups.get_spec(layer)
    return np.asarray(getattr(layer, spec.weight).numpy()), spec.axis


LAYERS = [
    (keras.layers.Dense(7), (None, 5)),
    (keras.layers.Conv1D(6, 3), (None, 10, 4)),
    (keras.layers.Conv2D(5, 3), (None, 8, 8, 3)),
    (keras.layers.Conv3D(4, 2), (None, 5, 5, 5, 2)),
    (keras.layers.Conv2DTranspose(6, 3), (None, 8, 8, 3)),
    (keras.layers.Conv1DTranspose(3, 3), (None, 8, 5)),
    (keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (None, 8, 8, 3)),
    (keras.layers.SeparableConv2D(4, 3), (None, 8, 8, 3)),
]


@pytest.mark.parametrize("layer,input_shape", LAYERS, ids=lambda v: getattr(v, "name", ""))
def test_values_match_numpy_on_real_kernels(layer, input_shape):
    w, axis = kernel_of(layer, input_shape)
    w = w + np.random.default_rng(0).normal(scale=0.3, size=w.shape).astype("float32")
    np.testing.assert_allclose(
        float(gss.GroupLasso(0.01, group_axis=axis)(w)), np_lasso(w, 0.01, axis), rtol=1e-5
    )
    np.testing.assert_allclose(
        float(gss.GroupVariance(0.02, 1e-8, group_axis=axis)(w)),
        np_variance(w, 0.02, 1e-8, axis),
        rtol=1e-4,
    )
    both = gss.GuidedStructuredSparsity(0.01, 0.02, 1e-8, group_axis=axis)(w)
    expected = np_lasso(w, 0.01, axis) + np_variance(w, 0.02, 1e-8, axis)
    np.testing.assert_allclose(float(both), expected, rtol=1e-4)


def test_transpose_kernel_groups_along_minus_two():
    w = np.zeros((3, 3, 4, 2), "float32")  # (kh, kw, out, in)
    w[:, :, 1, :] = 1.0
    norms = np.asarray(gss.groups.group_norms(w, -2))
    np.testing.assert_allclose(norms, [0, np.sqrt(18), 0, 0], rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=2, max_size=5),
    axis_pick=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
@example(shape=[2, 4, 2, 2, 4], axis_pick=2, seed=2)  # close norms: float32 conditioning
def test_property_random_shapes(shape, axis_pick, seed):
    axis = -1 - (axis_pick % len(shape))
    w = np.random.default_rng(seed).normal(size=shape).astype("float32")
    np.testing.assert_allclose(
        float(gss.GroupLasso(0.3, group_axis=axis)(w)), np_lasso(w, 0.3, (axis,)), rtol=1e-5
    )
    # float32 loses digits of a variance when the squared norms are close: allow
    # for that conditioning (largest squared norm over their standard deviation)
    squared = np_group_norms(w, (axis,)) ** 2
    conditioning = squared.max() / max(float(np.sqrt(np.var(squared))), 1e-12)
    np.testing.assert_allclose(
        float(gss.GroupVariance(0.1, 1e-3, group_axis=axis)(w)),
        np_variance(w, 0.1, 1e-3, (axis,)),
        rtol=max(1e-4, 1e-6 * conditioning),
        atol=1e-7,
    )


def finite_difference(fn, w, eps=1e-3):
    grad = np.zeros_like(w, dtype=np.float64)
    for idx in np.ndindex(w.shape):
        plus, minus = w.astype(np.float64).copy(), w.astype(np.float64).copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (fn(plus) - fn(minus)) / (2 * eps)
    return grad


@pytest.mark.parametrize(
    "reg,ref",
    [
        (gss.GroupLasso(0.5), lambda w: np_lasso(w, 0.5)),
        (gss.GroupVariance(0.05, 1e-2), lambda w: np_variance(w, 0.05, 1e-2)),
    ],
    ids=["lasso", "variance"],
)
def test_gradient_matches_finite_differences(reg, ref):
    w = np.random.default_rng(3).normal(size=(4, 5)).astype("float32")
    _, grad = value_and_grad(reg, w)
    np.testing.assert_allclose(grad, finite_difference(ref, w), rtol=2e-2, atol=2e-3)


def test_zero_group_value_and_gradient_are_finite():
    w = np.random.default_rng(1).normal(size=(6, 4)).astype("float32")
    w[:, 2] = 0.0
    for reg in (gss.GroupLasso(0.1), gss.GroupVariance(0.1), gss.GuidedStructuredSparsity()):
        value, grad = value_and_grad(reg, w)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        np.testing.assert_array_equal(grad[:, 2], 0.0)
    value, grad = value_and_grad(gss.GroupLasso(0.1), np.zeros((3, 3), "float32"))
    assert value == 0.0 and np.all(grad == 0.0)


def test_computes_in_float32_for_float16_input():
    w = (np.random.default_rng(2).normal(size=(8, 6)) * 300).astype("float16")
    out = gss.GuidedStructuredSparsity(1e-3, 1e-2)(w)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    expected = np_lasso(w.astype("float32"), 1e-3) + np_variance(w.astype("float32"), 1e-2, 1e-8)
    np.testing.assert_allclose(float(out), expected, rtol=1e-3)  # float16 would overflow


def test_single_group_variance_is_zero():
    assert float(gss.GroupVariance()(np.ones((5, 1), "float32"))) == 0.0


def test_activity_attention_matches_numpy():
    y = np.random.default_rng(4).normal(size=(6, 5, 3)).astype("float32")
    per_unit = np.abs(y).reshape(-1, 3).mean(0)
    expected = 0.2 / (per_unit.var() + 1e-3)
    out = gss.ActivityAttention(0.2, 1e-3)(y)
    np.testing.assert_allclose(float(out), expected, rtol=1e-5)
    out16 = gss.ActivityAttention(0.2, 1e-3)(y.astype("float16"))
    assert keras.backend.standardize_dtype(out16.dtype) == "float32"


def test_activity_penalty_divided_by_batch_size_in_layer():
    layer = keras.layers.Dense(3, activity_regularizer=gss.ActivityAttention(0.5, 1e-2))
    x = np.random.default_rng(5).normal(size=(4, 6)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    per_unit = np.abs(y).mean(0)
    np.testing.assert_allclose(
        float(sum(layer.losses)), 0.5 / (per_unit.var() + 1e-2) / 4, rtol=1e-4
    )


ALL = [
    gss.GroupLasso(0.2, group_axis=-2),
    gss.GroupVariance(0.3, 1e-5, group_axis=[-2, -1]),
    gss.GuidedStructuredSparsity(0.1, 0.2, 1e-4),
    gss.ActivityAttention(1e-3, 1e-5),
]


@pytest.mark.parametrize("reg", ALL, ids=lambda r: type(r).__name__)
def test_config_round_trips(reg):
    config = reg.get_config()
    json.dumps(config)
    assert type(reg).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(reg))
    assert type(restored) is type(reg) and restored.get_config() == config
    assert keras.regularizers.get(keras.regularizers.serialize(reg)).get_config() == config


@pytest.mark.parametrize(
    "make,arg",
    [
        (lambda: gss.GroupLasso(-1.0), "strength"),
        (lambda: gss.GroupLasso(float("nan")), "strength"),
        (lambda: gss.GroupLasso("0.1"), "strength"),
        (lambda: gss.GroupVariance(0.1, epsilon=0.0), "epsilon"),
        (lambda: gss.GroupVariance(float("inf")), "strength"),
        (lambda: gss.GuidedStructuredSparsity(lasso=-1e-3), "lasso"),
        (lambda: gss.GuidedStructuredSparsity(variance=-1.0), "variance"),
        (lambda: gss.GuidedStructuredSparsity(epsilon=-1.0), "epsilon"),
        (lambda: gss.ActivityAttention(-1.0), "strength"),
        (lambda: gss.GroupLasso(group_axis="last"), "group_axis"),
        (lambda: gss.GroupLasso(group_axis=[]), "group_axis"),
    ],
)
def test_bad_arguments_name_the_argument(make, arg):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        make()


def test_rank_below_two_is_rejected():
    with pytest.raises(ValueError, match="rank >= 2"):
        gss.GroupLasso()(np.ones((4,), "float32"))
    with pytest.raises(ValueError, match="out of range"):
        gss.GroupLasso(group_axis=-3)(np.ones((4, 2), "float32"))


def np_scale_invariant(w, strength, eps):
    sq = np_group_norms(w, (-1,)) ** 2
    return strength * sq.mean() ** 2 / (sq.var() + eps)


def np_fraction(w, strength, eps, keep):
    norms = np.sort(np_group_norms(w, (-1,)))
    top = max(1, min(len(norms) - 1, round(keep * len(norms))))
    return strength * norms[: len(norms) - top].sum() / (norms[len(norms) - top :].mean() + eps)


def test_attention_forms_match_numpy():
    w = np.random.default_rng(6).normal(size=(7, 12)).astype("float32")
    reg = gss.GuidedStructuredSparsity(lasso=0.0, variance=0.3, epsilon=1e-6,
                                       attention="scale_invariant")  # fmt: skip
    np.testing.assert_allclose(float(reg(w)), np_scale_invariant(w, 0.3, 1e-6), rtol=1e-4)
    reg = gss.GuidedStructuredSparsity(lasso=0.1, variance=0.3, epsilon=1e-6,
                                       attention="fraction", keep=0.25)  # fmt: skip
    expected = np_lasso(w, 0.1) + np_fraction(w, 0.3, 1e-6, 0.25)
    np.testing.assert_allclose(float(reg(w)), expected, rtol=1e-4)
    # scale invariance: rescaling the kernel leaves the term unchanged
    reg = gss.GuidedStructuredSparsity(lasso=0.0, variance=1.0, attention="scale_invariant")
    np.testing.assert_allclose(float(reg(w)), float(reg(w * 10)), rtol=1e-3)


def test_fraction_attention_gradient_only_hits_the_weak_tail():
    w = np.random.default_rng(7).normal(size=(5, 8)).astype("float32")
    w[:, :2] *= 10  # two clearly strong groups: keep=0.25 of 8
    reg = gss.GuidedStructuredSparsity(lasso=0.0, variance=1.0, attention="fraction", keep=0.25)
    _, grad = value_and_grad(reg, w)
    assert np.all(grad[:, :2] == 0) and np.all(np.abs(grad[:, 2:]).sum(axis=0) > 0)


def test_attention_arguments_validated():
    with pytest.raises(ValueError, match="`attention`"):
        gss.GuidedStructuredSparsity(attention="softmax")
    with pytest.raises(ValueError, match="`keep`"):
        gss.GuidedStructuredSparsity(keep=1.0)
