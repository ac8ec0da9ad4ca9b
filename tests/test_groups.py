import keras
import numpy as np
import pytest

import keras_gss as gss
from keras_gss import groups

L = keras.layers


@pytest.mark.parametrize(
    "layer,weight,axis,prefix",
    [
        (L.Dense(3), "kernel", (-1,), "kernel"),
        (L.Conv1D(3, 2), "kernel", (-1,), "kernel"),
        (L.Conv2D(3, 2), "kernel", (-1,), "kernel"),
        (L.Conv3D(3, 2), "kernel", (-1,), "kernel"),
        (L.Conv1DTranspose(3, 2), "kernel", (-2,), "kernel"),
        (L.Conv2DTranspose(3, 2), "kernel", (-2,), "kernel"),
        (L.Conv3DTranspose(3, 2), "kernel", (-2,), "kernel"),
        (L.SeparableConv1D(3, 2), "pointwise_kernel", (-1,), "pointwise"),
        (L.SeparableConv2D(3, 2), "pointwise_kernel", (-1,), "pointwise"),
        (L.DepthwiseConv1D(2), "kernel", (-2, -1), "depthwise"),
        (L.DepthwiseConv2D(2), "kernel", (-2, -1), "depthwise"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, L.Layer) else str(v),
)
def test_builtin_specs(layer, weight, axis, prefix):
    spec = groups.get_spec(layer)
    assert (spec.weight, spec.axis, spec.prefix) == (weight, axis, prefix)
    assert hasattr(layer, spec.regularizer_attr) and hasattr(layer, spec.constraint_attr)


def test_unsupported_layers_have_no_spec():
    for layer in (L.Flatten(), L.BatchNormalization(), L.Embedding(4, 2), L.Dropout(0.1)):
        assert groups.get_spec(layer) is None


def test_depthwise_group_index_is_output_channel():
    layer = L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False)
    x = np.random.default_rng(0).normal(size=(1, 5, 5, 3)).astype("float32")
    layer(x)
    kernel = layer.kernel.numpy()
    kernel[:, :, 1, 0] = 0.0  # input channel 1, multiplier 0 -> output channel 2
    layer.kernel.assign(kernel)
    norms = groups.layer_group_norms(layer)
    assert norms[2] == 0 and np.all(np.delete(norms, 2) > 0)
    assert np.all(keras.ops.convert_to_numpy(layer(x))[..., 2] == 0)


def masked(w, mask, axis):
    full = groups.broadcast_mask(mask, w.shape, axis)
    return keras.ops.convert_to_numpy(keras.ops.multiply(w, full))


def test_broadcast_mask_zeroes_the_right_slices():
    w = np.ones((2, 3, 4), "float32")
    mask = np.array([1, 0, 1, 1], "float32")
    out = masked(w, mask, -1)
    assert out[..., 1].sum() == 0 and out[..., [0, 2, 3]].min() == 1
    w = np.ones((2, 5, 3), "float32")
    out = masked(w, np.array([0, 1, 1, 1, 0.0]), -2)
    assert out[:, [0, 4], :].sum() == 0 and out[:, 1:4, :].min() == 1


def test_group_shape():
    assert groups.group_shape((5, 5, 64, 128), -1) == (128, 1600)
    assert groups.group_shape((3, 3, 8, 2), (-2, -1)) == (16, 9)


def test_register_custom_layer_and_subclass_lookup():
    class Gated(L.Layer):
        def build(self, input_shape):
            self.gate = self.add_weight(shape=(input_shape[-1], 4), name="gate")

        def call(self, x):
            return x @ self.gate

    spec = gss.register_layer(Gated, weight="gate", bias=None)
    layer = Gated()
    layer(np.ones((1, 3), "float32"))
    assert groups.get_spec(layer) == spec
    assert groups.layer_group_norms(layer).shape == (4,)

    class MyDense(L.Dense):
        pass

    assert groups.get_spec(MyDense(2)).weight == "kernel"
    with pytest.raises(TypeError, match="layer_cls"):
        gss.register_layer(object)


def test_prunable_and_output_layers_of_nested_functional_model():
    inner = keras.Sequential([keras.Input((6,)), L.Dense(5, name="inner_dense")], name="inner")
    inputs = keras.Input((4,))
    h = L.Dense(6, name="first")(inputs)
    h = inner(h)
    out = L.Activation("softmax")(L.Dense(3, name="head")(L.Dropout(0.1)(h)))
    model = keras.Model(inputs, out)
    names = [layer.name for layer in groups.prunable_layers(model)]
    assert names == ["first", "inner_dense", "head"]
    assert [layer.name for layer in groups.output_layers(model)] == ["head"]


def test_output_layers_of_two_headed_model():
    inputs = keras.Input((4,))
    h = L.Dense(8, name="trunk")(inputs)
    model = keras.Model(inputs, [L.Dense(2, name="a")(h), L.Dense(3, name="b")(h)])
    assert sorted(layer.name for layer in groups.output_layers(model)) == ["a", "b"]


def test_nan_group_norm_stays_nan():
    w = np.ones((3, 2), "float32")
    w[0, 1] = np.nan
    norms = np.asarray(groups.group_norms(w))
    assert norms[0] == pytest.approx(np.sqrt(3)) and np.isnan(norms[1])
