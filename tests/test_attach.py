import keras
import numpy as np
import pytest

import keras_gss as gss
from tests.conftest import compile_classifier, mlp


def test_attaches_to_hidden_layers_and_losses_match_numpy():
    model = mlp()
    gss.attach(model, gss.GroupLasso(0.01))
    assert model.layers[-1].kernel.regularizer is None  # output skipped
    expected = sum(
        0.01 * np.linalg.norm(layer.kernel.numpy(), axis=0).sum() for layer in model.layers[:-1]
    )
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)
    for layer in model.layers[:-1]:
        assert layer.get_config()["kernel_regularizer"]["class_name"] == "GroupLasso"


def test_default_is_gss_with_layer_specific_axis():
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2DTranspose(4, 3, name="up")(inputs)
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(h)
    h = keras.layers.SeparableConv2D(5, 3, name="sep")(h)
    out = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    model = gss.attach(keras.Model(inputs, out))
    axes = {
        "up": model.get_layer("up").kernel.regularizer.group_axis,
        "dw": model.get_layer("dw").kernel.regularizer.group_axis,
        "sep": model.get_layer("sep").pointwise_kernel.regularizer.group_axis,
    }
    assert axes == {"up": (-2,), "dw": (-2, -1), "sep": (-1,)}
    assert isinstance(model.get_layer("sep").pointwise_regularizer, gss.GuidedStructuredSparsity)
    assert model.get_layer("head").kernel.regularizer is None
    assert all(np.isfinite(float(loss)) for loss in model.losses) and len(model.losses) == 3


def test_layers_argument_and_skip_output():
    model = mlp()
    gss.attach(model, layers=[model.layers[1].name])
    assert [layer.kernel.regularizer is not None for layer in model.layers] == [False, True, False]
    model = mlp()
    gss.attach(model, skip_output=False)
    assert all(layer.kernel.regularizer is not None for layer in model.layers)


def test_activity_regularizer_attached():
    model = gss.attach(mlp(), activity_regularizer=gss.ActivityAttention(1e-3))
    assert isinstance(model.layers[0].activity_regularizer, gss.ActivityAttention)
    assert "activity_regularizer" in str(model.layers[0].get_config())


def test_attach_after_fit_changes_the_training_loss(toy_data):
    x, y = toy_data
    model = compile_classifier(mlp())
    model.fit(x, y, epochs=1, verbose=0)
    before = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    gss.attach(model, gss.GroupLasso(1.0))
    penalty = float(sum(model.losses))
    after = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(after - before, penalty, rtol=1e-3)
    # fit minimises the new loss: strong lasso shrinks the kernels
    norm_before = np.linalg.norm(model.layers[0].kernel.numpy())
    history = model.fit(x, y, epochs=2, verbose=0)
    assert history.history["loss"][0] > 1.0  # the penalty is inside fit's loss
    assert np.linalg.norm(model.layers[0].kernel.numpy()) < norm_before


def test_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.a = keras.layers.Dense(6)
            self.b = keras.layers.Dense(2)

        def call(self, x):
            return self.b(self.a(x))

    model = Net()
    model(np.ones((1, 4), "float32"))
    gss.attach(model)
    assert model.a.kernel.regularizer is not None and model.b.kernel.regularizer is None


def test_bad_input():
    with pytest.raises(TypeError, match="`model`"):
        gss.attach("not a model")
    unbuilt = keras.Sequential([keras.layers.Dense(3), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not built"):
        gss.attach(unbuilt)
    no_prunable = keras.Sequential([keras.Input((4,)), keras.layers.Flatten()])
    with pytest.raises(ValueError, match="no prunable layer"):
        gss.attach(no_prunable)
    model = mlp()
    with pytest.raises(ValueError, match="'nope' is not a layer of model .*Its layers are"):
        gss.attach(model, layers=["nope"])
    for empty in ([], [3]):  # refused as a type, like prune's and the monitor's `layers`
        with pytest.raises(TypeError, match="`layers`"):
            gss.attach(model, layers=empty)
    assert not model.losses  # nothing attached by the refused calls
    with pytest.raises(ValueError, match="no groups"):
        gss.attach(
            keras.Sequential([keras.Input((4,)), keras.layers.Flatten(name="fl")]), layers=["fl"]
        )
    with pytest.raises(TypeError, match="`regularizer`"):
        gss.attach(model, regularizer=0.1)
    with pytest.raises(TypeError, match="`activity_regularizer`"):
        gss.attach(model, activity_regularizer="l2")
    assert model.layers[0].kernel.regularizer is None  # nothing half-attached


def test_attach_refuses_to_replace_a_users_own_regularizer_and_changes_nothing():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="own",
                              kernel_regularizer=keras.regularizers.L2(0.1)),
                              keras.layers.Dense(2)])  # fmt: skip
    with pytest.raises(ValueError, match="'own' already has a kernel regularizer"):
        gss.attach(model)
    assert isinstance(model.get_layer("own").kernel.regularizer, keras.regularizers.L2)
    gss.attach(model, layers=[model.layers[1]], skip_output=False)  # the other one is fine
    gss.attach(model, layers=[model.layers[1]], skip_output=False)  # and again: ours


def test_attach_warns_when_the_attention_term_starts_on_a_flat_kernel():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="zeros",
                              kernel_initializer="zeros"), keras.layers.Dense(2)])  # fmt: skip
    with pytest.warns(UserWarning, match="'zeros' has the same norm.*starts at 1e\\+06"):
        gss.attach(model, gss.GuidedStructuredSparsity(variance=1e-2))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        gss.attach(model, gss.GroupLasso(1e-3))  # no attention term: nothing to say


def test_a_subclassed_model_whose_output_layer_is_created_first_keeps_its_head():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.head = keras.layers.Dense(2, name="head")  # created first, called last
            self.hidden = keras.layers.Dense(8, activation="relu", name="hidden")

        def call(self, x):
            return self.head(self.hidden(x))

    model = Net()
    model(np.ones((1, 4), "float32"))
    gss.attach(model)
    assert model.head.kernel.regularizer is None and model.hidden.kernel.regularizer is not None
    report = gss.prune(model, target_sparsity=0.5)
    assert report["head"].zero_groups == 0 and report["hidden"].zero_groups > 0
    unbuilt = Net()  # never called: no shape to trace it with
    unbuilt.build((None, 4))
    unbuilt._build_shapes_dict = {}
    with pytest.raises(ValueError, match="cannot find the output layer of subclassed model"):
        gss.attach(unbuilt)
