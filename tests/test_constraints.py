import json

import keras
import numpy as np
import pytest

import keras_gss as gss
from keras_gss.constraints import ElementMask


def test_group_mask_config_round_trip_and_inner_constraint():
    mask = gss.GroupMask([1, 0, 1], group_axis=-1, constraint=keras.constraints.NonNeg())
    config = mask.get_config()
    json.dumps(config)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(mask))
    assert restored.get_config() == config and config["mask"] == [1, 0, 1]
    w = np.array([[-1.0, 2.0, 3.0]], "float32")
    np.testing.assert_array_equal(np.asarray(restored(w)), [[0.0, 0.0, 3.0]])


def test_group_mask_rejects_bad_masks():
    with pytest.raises(ValueError, match="`mask`"):
        gss.GroupMask([0.5, 1])
    with pytest.raises(ValueError, match="`mask`"):
        gss.GroupMask([])
    with pytest.raises(ValueError, match="holds 2 groups"):
        gss.GroupMask([1, 0])(np.ones((3, 3), "float32"))


def np_prox(w, t, axis):
    w = np.moveaxis(w.astype(np.float64), axis, -1)
    flat = w.reshape(-1, w.shape[-1])
    norms = np.linalg.norm(flat, axis=0)
    step = t * np.sqrt(flat.shape[0])
    scale = np.where(norms > step, 1 - step / np.maximum(norms, 1e-300), 0.0)
    return np.moveaxis(w * scale, -1, axis)


@pytest.mark.parametrize("shape,axis", [((6, 5), -1), ((3, 3, 4, 2), -2), ((2, 3, 7), -1)])
def test_proximal_matches_numpy(shape, axis):
    w = np.random.default_rng(0).normal(scale=0.05, size=shape).astype("float32")
    t = 0.02
    out = np.asarray(gss.ProximalGroupLasso(t, group_axis=axis)(w))
    np.testing.assert_allclose(out, np_prox(w, t, axis), rtol=1e-5, atol=1e-7)
    assert gss.ProximalGroupLasso(t, axis).get_config() == {"strength": t, "group_axis": axis}


def test_proximal_creates_exact_zeros_in_training(toy_data):
    from tests.conftest import compile_classifier, mlp

    x, y = toy_data
    model = compile_classifier(gss.attach(mlp(), gss.GroupLasso(1e-3), proximal=5e-3))
    model.fit(x, y, epochs=3, verbose=0)
    norms = np.linalg.norm(model.layers[0].kernel.numpy(), axis=0)
    assert (norms == 0).sum() > 0 and (norms > 0).sum() > 0
    with pytest.raises(ValueError, match="`proximal`"):
        gss.attach(mlp(), proximal=-1.0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_proximal_on_low_precision_computes_in_float32_and_warns(dtype):
    import ml_dtypes

    np_dtype = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    w = np.random.default_rng(1).normal(scale=0.05, size=(16, 12)).astype(np_dtype)
    w[:, 0] = 1e-3  # under the step: zeroed whatever the dtype
    t = 0.002
    out = keras.ops.convert_to_numpy(gss.ProximalGroupLasso(t)(keras.ops.convert_to_tensor(w)))
    want = np_prox(w.astype("float32"), t, -1).astype(np_dtype)
    assert str(out.dtype) == dtype
    np.testing.assert_array_equal(out.astype("float32"), want.astype("float32"))
    assert (out[:, 0] == 0).all() and (out[:, 1:] != 0).any()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, dtype=dtype, name="half"),
                              keras.layers.Dense(2)])  # fmt: skip
    with pytest.warns(UserWarning, match="'half' keeps its kernel in " + dtype):
        gss.attach(model, gss.GroupLasso(1e-4), proximal=1e-4, skip_output=False)


def test_proximal_refuses_to_replace_a_user_constraint():
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(3, kernel_constraint=keras.constraints.NonNeg(),
                                                 name="nn"),
                              keras.layers.Dense(2)])  # fmt: skip
    with pytest.raises(ValueError, match="'nn' already has a kernel constraint"):
        gss.attach(model, proximal=1e-4)


def test_element_mask_is_not_serializable_but_releasable():
    mask = ElementMask(np.array([[1, 0], [0, 1]]))
    np.testing.assert_array_equal(np.asarray(mask(np.ones((2, 2), "float32"))), np.eye(2))
    with pytest.raises(NotImplementedError, match="release_element_masks"):
        mask.get_config()


def test_detach_keeps_masks_and_drops_regularizers(toy_data):
    from tests.conftest import mlp

    model = gss.attach(mlp(), proximal=1e-4)
    gss.prune(model, target_sparsity=0.5)
    constraint = model.layers[0].kernel.constraint
    assert isinstance(constraint, gss.GroupMask)
    assert isinstance(constraint.constraint, gss.ProximalGroupLasso)
    gss.detach(model)
    assert model.losses == [] and model.layers[0].kernel.constraint is constraint
    assert constraint.constraint is None
