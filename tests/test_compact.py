import json
import warnings

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_gss as gss
from tests.conftest import randomize

L = keras.layers


def kill(layer, ids, bias=True):
    """Zero the groups `ids` of a layer (kernel slices and, if asked, bias entries)."""
    spec = gss.groups.get_spec(layer)
    weight = getattr(layer, spec.weight)
    mask = np.ones(gss.groups.group_shape(tuple(weight.shape), spec.axis)[0], "float32")
    mask[ids] = 0
    full = gss.groups.broadcast_mask(mask, tuple(weight.shape), spec.axis)
    weight.assign(keras.ops.multiply(weight.value, full))
    if bias and getattr(layer, "bias", None) is not None:
        layer.bias.assign(keras.ops.multiply(layer.bias.value, mask))


def assert_same_function(model, compact, input_shape):
    x = np.random.default_rng(1).normal(size=(6, *input_shape)).astype("float32")
    expected = model.predict(x, verbose=0)
    got = compact.predict(x, verbose=0)
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(got - expected).max() <= 1e-5 * scale


def test_lenet_exact_and_params_match_stats():
    model = gss.models.lenet()
    gss.prune(model, target_sparsity=0.9, min_live_groups=4)
    small = gss.compact(model)
    assert_same_function(model, small, (28, 28, 1))
    assert small.count_params() == gss.model_stats(model).live_params < model.count_params()
    assert small.get_layer("fc1").units < 512 and small.get_layer("logits").units == 10


def test_mlp_and_saving_without_keras_gss(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((12,)),
            L.Dense(16, activation="relu", name="a"),
            L.Dense(8, activation="tanh", name="b"),
            L.Dense(3, name="out"),
        ]
    )
    gss.attach(model)
    randomize(model)
    kill(model.get_layer("a"), [0, 3, 5])
    kill(model.get_layer("b"), [1])
    gss.prune(model, threshold=0.0)  # installs GroupMask constraints: they must not leak
    small = gss.compact(model)
    assert (small.get_layer("a").units, small.get_layer("b").units) == (13, 7)
    assert_same_function(model, small, (12,))
    assert "keras_gss" not in json.dumps(small.get_config())
    path = tmp_path / "small.keras"
    small.save(path)
    np.testing.assert_array_equal(
        keras.models.load_model(path).predict(np.ones((2, 12)), verbose=0),
        small.predict(np.ones((2, 12)), verbose=0),
    )


@pytest.mark.parametrize(
    "conv,shape",
    [(L.Conv1D, (12, 3)), (L.Conv3D, (6, 6, 6, 2))],
    ids=["conv1d", "conv3d"],
)
def test_conv1d_and_conv3d(conv, shape):
    model = keras.Sequential(
        [
            keras.Input(shape),
            conv(6, 3, activation="relu", name="c1"),
            conv(5, 3, name="c2"),
            L.Flatten(),
            L.Dense(4, name="out"),
        ]
    )
    randomize(model)
    kill(model.get_layer("c1"), [1, 2])
    kill(model.get_layer("c2"), [0])
    small = gss.compact(model)
    assert (small.get_layer("c1").filters, small.get_layer("c2").filters) == (4, 4)
    assert_same_function(model, small, shape)


def test_batchnorm_between_conv_and_activation():
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(6, 3, padding="same", use_bias=False, name="c1")(inputs)
    h = L.BatchNormalization(name="bn")(h)
    h = L.Activation("relu")(h)
    h = L.MaxPooling2D()(h)
    out = L.Dense(3, name="out")(L.Flatten()(h))
    model = keras.Model(inputs, out)
    randomize(model)
    bn = model.get_layer("bn")
    beta, mean = bn.beta.numpy(), bn.moving_mean.numpy()
    beta[[1, 4]] = 0.0  # channels 1 and 4: BN maps 0 -> 0, removable
    mean[[1, 4]] = 0.0
    bn.beta.assign(beta)
    bn.moving_mean.assign(mean)
    kill(model.get_layer("c1"), [1, 2, 4])  # channel 2: BN shifts it, folded into out's bias
    small = gss.compact(model)
    assert small.get_layer("c1").filters == 3 and small.get_layer("bn").gamma.shape == (3,)
    assert_same_function(model, small, (8, 8, 3))


def test_residual_add_and_concatenate_stay_exact():
    inputs = keras.Input((6, 6, 4))
    a = L.Conv2D(4, 3, padding="same", name="a")(inputs)
    res = L.Add()([a, inputs])
    b = L.Conv2D(5, 1, name="b")(res)
    c = L.Conv2D(3, 1, name="c")(res)
    cat = L.Concatenate()([b, c])
    d = L.Conv2D(4, 1, activation="relu", name="d")(cat)
    out = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(d))
    model = keras.Model(inputs, out)
    randomize(model)
    for name, ids in (("a", [0]), ("b", [1]), ("c", [2]), ("d", [3])):
        kill(model.get_layer(name), ids)
    small = gss.compact(model)
    assert small.get_layer("a").filters == 4  # added to the model input: all channels stay
    assert small.get_layer("b").filters == 4 and small.get_layer("c").filters == 2  # offsets
    assert small.get_layer("d").filters == 3
    assert_same_function(model, small, (6, 6, 4))


def test_add_keeps_the_union_of_live_channels_and_dropout_after_flatten():
    inputs = keras.Input((6, 6, 2))
    a = L.Conv2D(5, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(5, 1, name="b")(inputs)
    h = L.Activation("relu")(L.Add()([a, b]))
    h = L.Dropout(0.3)(L.Flatten()(L.MaxPooling2D()(h)))
    out = L.Dense(3, name="out")(L.Dense(6, activation="relu", name="fc")(h))
    model = keras.Model(inputs, out)
    randomize(model)
    kill(model.get_layer("a"), [0, 1])
    kill(model.get_layer("b"), [1, 2])
    kill(model.get_layer("fc"), [4])
    small = gss.compact(model)
    assert small.get_layer("a").filters == 4 and small.get_layer("b").filters == 4  # 1 dead in both
    assert small.get_layer("fc").units == 5
    assert small.get_layer("fc").kernel.shape == (3 * 3 * 4, 5)
    assert_same_function(model, small, (6, 6, 2))


def test_separable_depthwise_and_transpose():
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2DTranspose(6, 3, activation="relu", name="up")(inputs)
    h = L.Conv2D(5, 1, name="mix")(h)
    h = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(h)
    h = L.SeparableConv2D(4, 3, name="sep")(h)
    out = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, out)
    randomize(model)
    kill(model.get_layer("up"), [0, 5])
    kill(model.get_layer("mix"), [2])
    kill(model.get_layer("sep"), [1])
    small = gss.compact(model)
    assert small.get_layer("up").filters == 4
    assert small.get_layer("mix").filters == 5  # feeds a depthwise conv: kept
    assert_same_function(model, small, (8, 8, 3))


def test_depthwise_and_separable_are_sliced():
    inputs = keras.Input((9, 9, 3))
    h = L.Conv2D(6, 3, activation="relu", name="c")(inputs)
    h = L.DepthwiseConv2D(3, activation="relu", name="dw")(h)
    h = L.SeparableConv2D(5, 3, depth_multiplier=2, name="sep")(h)
    h = L.Conv2D(4, 1, name="after")(h)
    out = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, out)
    randomize(model)
    kill(model.get_layer("c"), [0, 3])
    kill(model.get_layer("dw"), [3, 4])  # 3: dead in both; 4: only in the depthwise
    kill(model.get_layer("sep"), [1, 2])
    small = gss.compact(model)
    # 3: dead in both; 4: the depthwise writes relu(0) = 0 whatever c feeds it; 0: dead
    # in c alone, the depthwise writes relu(its bias), zero only if the bias is <= 0
    n = 6 - 2 - int(model.get_layer("dw").bias.numpy()[0] <= 0)
    assert small.get_layer("c").filters == n
    assert small.get_layer("dw").kernel.shape == (3, 3, n, 1)
    assert small.get_layer("sep").depthwise_kernel.shape == (3, 3, n, 2)
    assert small.get_layer("sep").pointwise_kernel.shape == (1, 1, 2 * n, 3)
    assert small.get_layer("after").kernel.shape == (1, 1, 3, 4)
    assert_same_function(model, small, (9, 9, 3))


def depthwise_multiplier_model(follow=None, chain=False):
    """conv (6 filters) -> depthwise x2 -> [depthwise x3] -> [follow] -> 1x1 conv -> head;
    filters 1 and 4 of the first conv dead, the depthwise biases of their blocks zero."""
    x = keras.Input((11, 11, 3))
    h = L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="dw")(
        L.Conv2D(6, 3, activation="relu", name="c1")(x)
    )
    if chain:
        h = L.DepthwiseConv2D(3, depth_multiplier=3, name="dw2")(h)
    if follow == "bn":
        h = L.BatchNormalization()(h)
    if follow == "add":
        h = L.Add()([h, L.Conv2D(h.shape[-1], 5 if not chain else 7, name="side")(x)])
    h = L.Conv2D(5, 1, activation="relu", name="pw")(h)
    model = keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(h)))
    randomize(model)
    kill(model.get_layer("c1"), [1, 4])
    zero_bias = {"dw": [2, 3, 8, 9], "dw2": [6, 7, 8, 9, 10, 11, 24, 25, 26, 27, 28, 29]}
    for name, ids in zero_bias.items():
        if name == "dw2" and not chain:
            continue
        bias = keras.ops.convert_to_numpy(model.get_layer(name).bias).copy()
        bias[ids] = 0
        model.get_layer(name).bias.assign(bias)
    return model


@pytest.mark.parametrize(
    "follow, chain, widths",
    [
        (None, False, [4, 4, 8]),  # dead filters removed with their blocks of m outputs
        (None, True, [4, 4, 8, 24]),  # through a chain of multipliers
        ("bn", False, [4, 4, 8]),  # a BN shift makes them constant: folded into pw (1x1)
        ("add", False, [6, 6, 12, 12]),  # a merge in the multiplied space: kept
    ],
)
def test_depthwise_with_a_multiplier(follow, chain, widths):
    model = depthwise_multiplier_model(follow, chain)
    small = gss.compact(model)
    assert_same_function(model, small, (11, 11, 3))
    got = [w.shape[-2] if "dw" in w.path else w.shape[-1] for w in small.weights
           if w.path.endswith("kernel") and "pw" not in w.path and "out" not in w.path]  # fmt: skip
    got.append(small.get_layer("pw").kernel.shape[-2])
    assert got == widths


def test_constants_of_dead_units_fold_into_the_next_bias():
    model = keras.Sequential(
        [
            keras.Input((5,)),
            L.Dense(6, activation="relu", name="a"),
            L.Dense(4, activation="sigmoid", use_bias=False, name="s"),
            L.Dense(2, name="out"),
        ]
    )
    randomize(model)
    kill(model.get_layer("a"), [0, 1], bias=False)  # relu(bias) != 0 for some: constants
    kill(model.get_layer("s"), [3])  # sigmoid(0) = 0.5 at every input
    bias = model.get_layer("a").bias.numpy()
    bias[[0, 1]] = [0.7, -0.4]
    model.get_layer("a").bias.assign(bias)
    small = gss.compact(model)
    assert small.get_layer("a").units == 4 and small.get_layer("s").units == 3
    assert small.get_layer("s").use_bias  # the folded constants need one
    assert_same_function(model, small, (5,))


def test_conv_batchnorm_constants_fold_only_where_exact():
    def net(padding):
        inputs = keras.Input((8, 8, 2))
        h = L.Conv2D(5, 3, padding="same", use_bias=False, name="c1")(inputs)
        h = L.BatchNormalization(name="bn")(h)
        h = L.ReLU()(h)
        h = L.MaxPooling2D()(h)
        h = L.Conv2D(3, 3, padding=padding, activation="relu", name="c2")(h)
        out = L.Dense(2, name="out")(L.Flatten()(h))
        model = keras.Model(inputs, out)
        randomize(model)
        bn = model.get_layer("bn")
        bn.beta.assign(np.abs(bn.beta.numpy()) + 0.5)  # relu(BN(0)) > 0: a constant channel
        kill(model.get_layer("c1"), [1, 3])
        return model

    valid = net("valid")
    small = gss.compact(valid)
    assert small.get_layer("c1").filters == 3 and small.get_layer("bn").gamma.shape == (3,)
    assert_same_function(valid, small, (8, 8, 2))
    same = net("same")  # zeros at the border make the channel non-constant: kept
    small = gss.compact(same)
    assert small.get_layer("c1").filters == 5
    assert_same_function(same, small, (8, 8, 2))
    linear = keras.Sequential([keras.Input((6,)), L.Dense(4, name="a"), L.Dense(2, name="out")])
    randomize(linear)
    kill(linear.get_layer("a"), [0], bias=False)
    merged_in = keras.Input((6,))
    a = L.Dense(4, name="a")(merged_in)
    out = L.Dense(2, name="out")(L.Add()([a, L.Dense(4, name="b")(merged_in)]))
    merged = keras.Model(merged_in, out)
    randomize(merged)
    kill(merged.get_layer("a"), [0], bias=False)
    kill(merged.get_layer("b"), [0], bias=False)  # a constant through a merge: folded
    assert gss.compact(merged).get_layer("a").units == 3
    assert_same_function(merged, gss.compact(merged), (6,))
    assert gss.compact(linear).get_layer("a").units == 3
    assert_same_function(linear, gss.compact(linear), (6,))


def test_all_but_one_dead_and_a_constant_unit_folded():
    model = keras.Sequential(
        [
            keras.Input((5,)),
            L.Dense(6, activation="relu", name="a"),
            L.Dense(4, activation="sigmoid", name="s"),
            L.Dense(2, name="out"),
        ]
    )
    randomize(model)
    kill(model.get_layer("a"), [0, 1, 2, 3, 4])
    kill(model.get_layer("s"), [0], bias=False)  # sigmoid(bias): a constant, folded into out
    kernel = model.get_layer("a").kernel.numpy()
    small = gss.compact(model)
    assert small.get_layer("a").units == 1 and small.get_layer("s").units == 3
    assert np.abs(kernel[:, 5]).sum() > 0
    assert_same_function(model, small, (5,))


def test_unsupported_models_are_named():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.ones((1, 3), "float32"))
    with pytest.raises(TypeError, match="subclassed"):
        gss.compact(net)
    inputs = keras.Input((3,))
    outer = keras.Model(inputs, L.Dense(2)(net(L.Dense(3)(inputs))), name="outer")
    with pytest.raises(TypeError, match="nested in 'outer'.*subclassed"):
        gss.compact(outer)


def nested_model():
    """A functional model around a nested Sequential and a nested functional model
    whose layer names repeat the outer ones."""
    features = keras.Sequential(
        [keras.Input((10, 10, 3)), L.Conv2D(8, 3, activation="relu", name="dense"),
         L.MaxPooling2D(), L.Conv2D(6, 3, activation="relu", name="c2")],
        name="features",
    )  # fmt: skip
    head_in = keras.Input((2, 2, 6))
    head = keras.Model(head_in, L.Dense(5, activation="relu", name="dense")(L.Flatten()(head_in)),
                       name="head")  # fmt: skip
    x = keras.Input((10, 10, 3))
    return keras.Model(x, L.Dense(3, name="out")(head(features(x))), name="outer")


def test_nested_models_are_inlined_and_stay_exact(tmp_path):
    model = nested_model()
    randomize(model)
    kill(model.get_layer("features").get_layer("dense"), [0, 3, 5])
    kill(model.get_layer("features").get_layer("c2"), [1, 4])
    kill(model.get_layer("head").get_layer("dense"), [2])
    small = gss.compact(model)
    assert_same_function(model, small, (10, 10, 3))
    assert not any(isinstance(layer, keras.Model) for layer in small.layers)
    widths = [layer.kernel.shape[-1] for layer in small.layers if hasattr(layer, "kernel")]
    assert widths == [5, 4, 4, 3]
    assert small.count_params() == gss.model_stats(model).live_params
    assert len({layer.name for layer in small.layers}) == len(small.layers)
    # it takes its input as the original does (one tensor, not a list of one): no warning
    assert isinstance(small.input, keras.KerasTensor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small(np.zeros((1, 10, 10, 3), "float32"))
    # the original is untouched, and the result is plain Keras
    assert model.get_layer("features").get_layer("dense").kernel.shape[-1] == 8
    small.save(tmp_path / "small.keras")
    restored = keras.models.load_model(tmp_path / "small.keras")
    assert_same_function(small, restored, (10, 10, 3))


def test_a_nested_model_used_twice_stays_exact():
    block = keras.Sequential([keras.Input((6,)), L.Dense(6, activation="relu")], name="block")
    x = keras.Input((6,))
    y = L.Dense(2)(L.Add()([block(x), block(L.Dense(6)(x))]))
    model = keras.Model(x, y)
    randomize(model)
    kill(block.layers[0], [1, 2])
    small = gss.compact(model)
    assert_same_function(model, small, (6,))


@settings(max_examples=8, deadline=None)
@given(
    kind=st.sampled_from(["dense", "conv"]),
    widths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    seed=st.integers(0, 1000),
)
def test_property_random_models_stay_exact(kind, widths, seed):
    rng = np.random.default_rng(seed)
    shape = (7,) if kind == "dense" else (6, 6, 2)
    layers = [keras.Input(shape)]
    for i, w in enumerate(widths):
        if kind == "dense":
            layers.append(L.Dense(w, activation="relu", name=f"h{i}"))
        else:
            layers.append(L.Conv2D(w, 3, padding="same", activation="relu", name=f"h{i}"))
    if kind == "conv":
        layers.append(L.Flatten())
    layers.append(L.Dense(2, name="out"))
    model = keras.Sequential(layers)
    randomize(model, seed)
    for i, w in enumerate(widths):
        dead = rng.choice(w, size=rng.integers(0, w + 1), replace=False)
        kill(model.get_layer(f"h{i}"), list(dead), bias=bool(rng.random() < 0.5))
    report = gss.sparsity_report(model, threshold=0.0)
    for row in report.rows:
        kernel = model.get_layer(row.layer).kernel.numpy()
        norms = np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), axis=0)
        assert row.zero_groups == int((norms == 0).sum())
        assert row.zero_weights == int((kernel == 0).sum())
    small = gss.compact(model)
    assert_same_function(model, small, shape)
    assert small.count_params() <= model.count_params()


def test_compact_lenet_has_the_shape_of_a_narrow_lenet():
    """The accuracy benchmark times narrow LeNets as stand-ins for compact models."""
    model = gss.models.lenet()
    gss.prune(model, target_sparsity=0.85, metric="flops", min_live_groups=4)
    live = {r.layer: r.groups - r.zero_groups for r in gss.sparsity_report(model, 0.0).rows}
    narrow = gss.models.lenet(
        filters=(live["conv1"], live["conv2"]), units=(live["fc1"], live["fc2"])
    )
    small = gss.compact(model)
    assert [tuple(w.shape) for w in small.weights] == [tuple(w.shape) for w in narrow.weights]
    with pytest.raises(ValueError, match="`filters`"):
        gss.models.lenet(filters=(0, 3))


def test_strip_keeps_the_zeros_and_loads_without_keras_gss(tmp_path):
    import os
    import subprocess
    import sys

    model = gss.attach(nested_model(), proximal=1e-4)
    randomize(model)
    gss.prune(model, target_sparsity=0.5)
    plain = gss.strip(model)
    assert "keras_gss" not in json.dumps(plain.get_config())
    assert not any(isinstance(layer, keras.Model) for layer in plain.layers)  # inlined
    x = np.random.default_rng(0).normal(size=(2, 10, 10, 3)).astype("float32")
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    assert gss.sparsity_report(plain, 0).zero_groups == gss.sparsity_report(model, 0).zero_groups
    plain.save(tmp_path / "plain.keras")
    np.save(tmp_path / "x.npy", x)
    code = (  # a fresh interpreter that never imports keras_gss
        "import sys, numpy as np, keras; m = keras.models.load_model(sys.argv[1]); "
        "np.save(sys.argv[2], m.predict(np.load(sys.argv[3]), verbose=0))"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "plain.keras"), str(tmp_path / "y.npy"),
         str(tmp_path / "x.npy")], capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), plain.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    with pytest.raises(TypeError, match="keras.Model"):
        gss.strip(["model.keras"])
