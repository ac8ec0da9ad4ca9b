"""Coupled groups on the blocks real architectures are made of: hand counts of the
groups, pruning then `compact` exact, and `model_stats` before compaction equal to
the compact model's real counts. Runs on every backend (the CI runs the suite on
TensorFlow, JAX and PyTorch)."""

import keras
import numpy as np
import pytest

import keras_gss as gss
from keras_gss import dependency, graph
from tests.conftest import randomize as _randomize

L = keras.layers


def randomize(model, seed=0):
    """BatchNormalization statistics away from 0/1: an unpruned BN would show."""
    _randomize(model, seed, scale=0.4)


def units_by_family(model):
    """{tuple of layer names: number of prunable units} of the model's coupled groups."""
    infos = graph.describe(model)
    units = graph.Units(infos)
    found = {}
    for members, prunable in zip(units.members, units.prunable):
        if prunable:
            key = tuple(sorted(infos[i].layer.name for i, _ in members))
            found[key] = found.get(key, 0) + 1
    return found


def prune_compact_and_check(model, shape, target=0.5):
    """Prune to `target` of FLOPs, then compact: exact, and the counts agree."""
    gss.prune(model, target_sparsity=target, metric="flops", ranking="memory")
    stats = gss.model_stats(model)
    assert stats.flop_ratio <= 1 - target + 1e-9
    small = gss.compact(model)
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
    # predict, not an eager call: TensorFlow's eager channels_first Conv2D is wrong when
    # its filters equal its output's width (Keras 3.15, TF 2.21; predict is right)
    expected = model.predict(x, verbose=0)
    got = small.predict(x, verbose=0)
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))
    assert small.count_params() == stats.live_params < model.count_params()
    small_stats = gss.model_stats(small)
    assert small_stats.flops == pytest.approx(stats.live_flops, rel=1e-9)
    assert small_stats.live_params == small.count_params()  # nothing left to remove
    return small


def residual_block():
    x = keras.Input((8, 8, 3))
    s = L.ReLU()(L.BatchNormalization(name="bn0")(L.Conv2D(6, 3, padding="same", name="stem")(x)))
    h = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(4, 3, padding="same", name="a")(s)))
    h = L.BatchNormalization(name="bn2")(L.Conv2D(6, 3, padding="same", name="b")(h))
    h = L.ReLU()(L.Add()([s, h]))
    return keras.Model(x, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h)))


def test_residual_block_couples_every_writer_of_the_stream():
    model = residual_block()
    randomize(model)
    infos = {i.layer.name: i for i in graph.describe(model)}
    assert list(infos["stem"].coupled) == list(infos["b"].coupled)  # one stream
    assert units_by_family(model) == {("b", "stem"): 6, ("a",): 4}
    prune_compact_and_check(model, (8, 8, 3))
    stem = model.get_layer("stem").kernel.numpy()
    dead = np.linalg.norm(stem.reshape(-1, 6), axis=0) == 0
    assert dead.any()  # the stream was thinned, and every member of a dead channel is zero
    b = model.get_layer("b").kernel.numpy()
    assert (np.linalg.norm(b.reshape(-1, 6), axis=0)[dead] == 0).all()
    for name in ("bn0", "bn2"):
        bn = model.get_layer(name)
        assert (bn.gamma.numpy()[dead] == 0).all() and (bn.beta.numpy()[dead] == 0).all()
        assert (bn.gamma.numpy()[~dead] != 0).all()


def inverted_residual():
    """MobileNetV2's block: expand 1x1, depthwise 3x3, project 1x1, Add."""
    x = keras.Input((8, 8, 3))
    s = L.BatchNormalization(name="bn0")(L.Conv2D(8, 3, padding="same", name="stem")(x))
    h = L.ReLU(6.0)(L.BatchNormalization(name="bn1")(L.Conv2D(24, 1, name="expand")(s)))
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = L.ReLU(6.0)(L.BatchNormalization(name="bn2")(h))
    h = L.BatchNormalization(name="bn3")(L.Conv2D(8, 1, name="project")(h))
    h = L.Add()([s, h])
    return keras.Model(x, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h)))


def test_inverted_residual_couples_expand_depthwise_and_the_stream():
    model = inverted_residual()
    randomize(model)
    assert units_by_family(model) == {("project", "stem"): 8, ("dw", "expand"): 24}
    small = prune_compact_and_check(model, (8, 8, 3))
    assert small.get_layer("dw").kernel.shape[-2] == small.get_layer("expand").filters


def dense_block():
    """DenseNet's: each layer reads the Concatenate of all before it, through BN."""
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(x)
    b = L.Conv2D(3, 3, padding="same", name="b")(L.ReLU()(L.BatchNormalization(name="bn_a")(a)))
    h = L.Concatenate()([a, b])
    h = L.ReLU()(L.BatchNormalization(name="bn_cat")(h))
    h = L.AveragePooling2D(2)(L.Conv2D(5, 1, name="c")(h))
    return keras.Model(x, L.Dense(3, name="out")(L.Flatten()(h)))


def test_densenet_concatenate_and_batchnorm_take_offsets():
    model = dense_block()
    randomize(model)
    assert units_by_family(model) == {("a",): 4, ("b",): 3, ("c",): 5}
    dep = dependency.analyze(model)
    cat = dep.outputs_of("bn_cat")
    a, b = dep.roots(dep.outputs_of("a")), dep.roots(dep.outputs_of("b"))
    assert list(dep.roots(cat)) == [*a, *b]
    small = prune_compact_and_check(model, (8, 8, 3))
    width = small.get_layer("a").filters + small.get_layer("b").filters
    assert small.get_layer("bn_cat").gamma.shape == (width,)


def squeeze_excite():
    x = keras.Input((8, 8, 3))
    h = L.ReLU()(L.BatchNormalization(name="bn")(L.Conv2D(8, 3, padding="same", name="conv")(x)))
    s = L.Reshape((1, 1, 8))(L.GlobalAveragePooling2D()(h))
    s = L.Conv2D(2, 1, activation="relu", name="reduce")(s)
    s = L.Conv2D(8, 1, activation="sigmoid", name="excite")(s)
    h = L.Multiply()([h, s])
    h = L.Conv2D(6, 1, name="after")(h)
    return keras.Model(x, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h)))


def test_squeeze_excite_couples_the_excitation_with_the_channel():
    model = squeeze_excite()
    randomize(model)
    assert units_by_family(model) == {("conv", "excite"): 8, ("reduce",): 2, ("after",): 6}
    small = prune_compact_and_check(model, (8, 8, 3))
    assert small.get_layer("excite").filters == small.get_layer("conv").filters


def ops_in_the_graph():
    """Plain keras.ops calls (MobileNetV3's hard-swish: x * relu6(x + 3) / 6)."""
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(6, 3, padding="same", name="a")(x)
    h = keras.ops.multiply(h, keras.ops.relu6(keras.ops.add(h, 3.0))) / 6.0
    h = L.Conv2D(5, 3, padding="same", name="b")(h)
    h = keras.ops.add(h, L.Conv2D(5, 1, name="side")(x))
    return keras.Model(x, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h)))


def test_keras_ops_calls_pass_channels_and_constants():
    model = ops_in_the_graph()
    randomize(model)
    assert units_by_family(model) == {("a",): 6, ("b", "side"): 5}
    prune_compact_and_check(model, (8, 8, 3))


def test_a_dead_channel_that_is_a_constant_after_relu_is_removed_before_same_conv():
    x = keras.Input((8, 8, 3))
    h = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same", name="a")(x))
    h = L.Conv2D(3, 3, padding="same", name="b")(L.ReLU()(h))
    model = keras.Model(x, L.Dense(2, name="out")(L.Flatten()(h)))
    randomize(model)
    a, bn = model.get_layer("a"), model.get_layer("bn")
    kernel = a.kernel.numpy()
    kernel[..., [1, 2]] = 0
    a.kernel.assign(kernel)
    bias = a.bias.numpy()
    bias[[1, 2]] = 0
    a.bias.assign(bias)
    beta, mean = bn.beta.numpy(), bn.moving_mean.numpy()
    beta[1], mean[1] = -1.0, 0.0  # relu(BN(0)) = relu(-1) = 0: removable
    beta[2], mean[2] = 1.0, 0.0  # relu(BN(0)) = 1 at every position: 'same' padding differs
    bn.beta.assign(beta)
    bn.moving_mean.assign(mean)
    small = gss.compact(model)
    assert small.get_layer("a").filters == 3
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        small.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )


def test_nested_sequential_is_followed_through():
    inner = keras.Sequential(
        [keras.Input((8, 8, 4)), L.Conv2D(6, 3, padding="same", name="in_a"), L.ReLU(),
         L.Conv2D(4, 3, padding="same", name="in_b")],
        name="inner",
    )  # fmt: skip
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", name="stem")(x)
    h = L.Add()([h, inner(h)])
    model = keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(h)))
    randomize(model)
    assert units_by_family(model) == {("in_a",): 6, ("in_b", "stem"): 4}
    prune_compact_and_check(model, (8, 8, 3))


def test_channels_first_convolutions_batchnorm_and_flatten():
    x = keras.Input((3, 6, 6))
    h = L.Conv2D(5, 3, data_format="channels_first", name="a")(x)
    h = L.ReLU()(L.BatchNormalization(axis=1, name="bn")(h))
    h = L.Conv2D(4, 3, padding="same", data_format="channels_first", name="b")(h)
    h = L.MaxPooling2D(data_format="channels_first")(h)
    model = keras.Model(x, L.Dense(2, name="out")(L.Flatten()(h)))
    randomize(model)
    dep = dependency.analyze(model)
    dense_in = graph.describe(model)[-1].inputs
    b_roots = dep.roots(dep.outputs_of("b"))
    assert list(dense_in) == list(np.repeat(b_roots, 2 * 2))  # (C, H, W) rows: c * 4 + p
    assert units_by_family(model) == {("a",): 5, ("b",): 4}
    prune_compact_and_check(model, (3, 6, 6))


@keras.saving.register_keras_serializable(package="tests")
class Flip(L.Layer):
    """A layer keras-gss knows nothing about: it reverses the channels."""

    def call(self, t):
        return keras.ops.flip(t, axis=-1)


def test_what_cannot_be_followed_is_pinned_never_a_crash():
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", name="a")(x)
    h = L.LayerNormalization(name="ln")(h)  # mixes the channels: pinned
    h = L.Conv2D(6, 1, groups=2, name="grouped")(h)  # grouped: pinned
    h = L.Conv2D(5, 1, name="c")(h)
    h = Flip(name="flip")(h)  # unknown: pinned
    model = keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(h)))
    randomize(model)
    assert units_by_family(model) == {}
    gss.prune(model, threshold=10.0)  # would zero everything that may be pruned
    assert all(r.zero_groups == 0 for r in gss.sparsity_report(model, 0.0).rows)
    x_in = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    small = gss.compact(model)
    np.testing.assert_allclose(
        small.predict(x_in, verbose=0), model.predict(x_in, verbose=0), rtol=1e-5, atol=1e-5
    )


def test_flops_count_both_halves_of_a_separable_convolution():
    x = keras.Input((6, 6, 4))
    h = L.SeparableConv2D(5, 3, depth_multiplier=2, name="sep")(x)
    model = keras.Model(x, L.Dense(2, name="out")(L.Flatten()(h)))
    info = graph.describe(model)[0]
    positions = 4 * 4
    assert info.dense_flops == 2 * (3 * 3 * 4 * 2 + 4 * 2 * 5) * positions
    assert info.input_flops == 2 * 3 * 3 * 4 * 2 * positions


def test_input_squares_are_each_input_channels_mean_square_weight():
    x = keras.Input((9, 9, 4))
    h = L.Conv2D(6, 3, name="conv")(x)
    h = L.SeparableConv2D(5, 3, depth_multiplier=2, name="sep")(h)
    h = L.Conv2DTranspose(3, 3, name="up")(h)
    model = keras.Model(x, L.Dense(2, name="out")(L.Flatten()(h)))
    randomize(model)
    by = {info.layer.name: info for info in graph.describe(model)}
    conv = model.get_layer("conv").kernel.numpy()  # (3, 3, in 4, out 6)
    pointwise = model.get_layer("sep").pointwise_kernel.numpy()  # rows: input c, c's 2 taps
    up = model.get_layer("up").kernel.numpy()  # transposed: (3, 3, out 3, in 5)
    dense = model.get_layer("out").kernel.numpy()  # one row per flattened position
    expected = {
        "conv": (conv**2).mean(axis=(0, 1, 3)),
        "sep": (pointwise.reshape(1, 1, 6, 2, 5) ** 2).mean(axis=(0, 1, 3, 4)),
        "up": (up**2).mean(axis=(0, 1, 2)),
        "out": (dense**2).mean(axis=1),
    }
    for name, squares in expected.items():
        assert by[name].inputs.size == squares.size, name
        np.testing.assert_allclose(by[name].input_squares(), squares, rtol=1e-6, err_msg=name)


def test_register_handler_lets_a_custom_layer_pass_channels():
    class Scale(L.Layer):
        def call(self, t):
            return 2.0 * t

    x = keras.Input((6,))
    h = Scale(name="scale")(L.Dense(5, name="a")(x))
    model = keras.Model(x, L.Dense(2, name="out")(h))
    assert units_by_family(model) == {}  # unknown: pinned
    dependency.register_handler(Scale, dependency.PerChannel())
    try:
        assert units_by_family(model) == {("a",): 5}
    finally:
        del dependency._HANDLERS[Scale]
    with pytest.raises(TypeError, match="`handler`"):
        dependency.register_handler(Scale, "per-channel")


def test_coupled_group_lasso_takes_the_norm_over_the_whole_stream():
    model = residual_block()
    randomize(model)
    gss.attach(model, gss.GroupLasso(0.1), coupled=True)
    stem, a, b = (model.get_layer(n).kernel.numpy() for n in ("stem", "a", "b"))

    def norms(k):
        return np.linalg.norm(k.reshape(-1, k.shape[-1]), axis=0)

    expected = 0.1 * (np.sqrt(norms(stem) ** 2 + norms(b) ** 2).sum() + norms(a).sum())
    total = sum(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses)
    assert total == pytest.approx(expected, rel=1e-5)
    assert model.get_layer("b").kernel.regularizer is None  # counted once, on stem's kernel
    coupled = model.get_layer("stem").kernel.regularizer
    assert isinstance(coupled, gss.regularizers.CoupledRegularizer)
    model.compile("sgd", "mse")
    before = model.get_layer("b").kernel.numpy().copy()
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    y = model.predict(x, verbose=0)  # a zero task loss: only the regularizer moves b
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert not np.allclose(model.get_layer("b").kernel.numpy(), before)  # b gets gradients
    assert "keras_gss" not in str(model.get_layer("stem").get_config().get("kernel_regularizer"))
    gss.detach(model)
    assert not model.losses
    with pytest.raises(TypeError, match="coupled"):
        gss.attach(model, keras.regularizers.L2(0.1), coupled=True)


def test_flops_count_multi_head_attention_and_its_mlp_is_prunable():
    x = keras.Input((10, 16))
    h = L.LayerNormalization(name="ln")(x)
    h = L.Add()([x, L.MultiHeadAttention(4, 8, name="mha")(h, h)])
    m = L.Dense(32, activation="gelu", name="up")(L.LayerNormalization(name="ln2")(h))
    h = L.Add()([h, L.Dense(16, name="down")(m)])
    model = keras.Model(x, L.Dense(3, name="out")(L.GlobalAveragePooling1D()(h)))
    randomize(model)
    # the residual stream meets LayerNorms; the heads are groups of their own
    assert units_by_family(model) == {("up",): 32, ("mha",): 4}
    t, d, heads, key = 10, 16, 4, 8
    attention = 4 * t * d * heads * key + t * t * heads * (key + key)  # scores, weighted sum
    dense = t * d * 32 + t * 32 * d + d * 3
    assert gss.model_stats(model).flops == 2 * (attention + dense)
    prune_compact_and_check(model, (10, 16), target=0.2)


# value_dim != key_dim fails on JAX in Keras 3.15 (its fused dot-product attention
# reshapes the values to key_dim), even with no keras-gss involved
VALUE_DIM = 8 if keras.backend.backend() == "jax" else 5


def encoder_block(heads=8, gate=False, cross=False):
    """A pre-norm transformer encoder block (keras.io's layout) on a (6, 16) sequence;
    `cross`: the attention reads a second, 9-step input as key and value."""
    x = keras.Input((6, 16))
    inputs = [x]
    h = L.LayerNormalization(name="ln")(x)
    mha = L.MultiHeadAttention(heads, 8, value_dim=VALUE_DIM, use_gate=gate, name="mha")
    if cross:
        inputs.append(keras.Input((9, 12)))
        a = mha(h, inputs[1])
    else:
        a = mha(h, h)
    h = L.Add()([x, a])
    m = L.Dense(32, activation="gelu", name="up")(L.LayerNormalization(name="ln2")(h))
    h = L.Add()([h, L.Dense(16, name="down")(m)])
    y = L.Dense(3, name="out")(L.GlobalAveragePooling1D()(h))
    return keras.Model(inputs if cross else x, y)


def attention_flops(t, s, d_q, d_kv, heads, key, value, out):
    """numpy-free hand count: the four projections, scores and the weighted sum."""
    return 2 * (t * d_q * heads * key + s * d_kv * heads * (key + value)
                + t * heads * value * out + t * s * heads * (key + value))  # fmt: skip


@pytest.mark.parametrize("cross", [False, True])
def test_attention_heads_are_groups_removed_whole(cross):
    model = encoder_block(cross=cross)
    randomize(model)
    infos = {i.layer.name: i for i in graph.describe(model)}
    mha = model.get_layer("mha")
    assert infos["mha"].groups == 8 and infos["mha"].removable.all()
    assert units_by_family(model) == {("up",): 32, ("mha",): 8}  # each head its own group
    s, d_kv = (9, 12) if cross else (6, 16)
    per_head = attention_flops(6, s, 16, d_kv, 1, 8, VALUE_DIM, 16)
    assert infos["mha"].dense_flops == 8 * per_head
    kernel = mha.output_dense.kernel.numpy().copy()
    kernel[[1, 4, 6]] = 0.0  # three heads write nothing
    mha.output_dense.kernel.assign(kernel)
    stats = gss.model_stats(model)
    shapes = [(4, 6, 16)] + ([(4, 9, 12)] if cross else [])
    xs = [np.random.default_rng(k).normal(size=sh).astype("float32") for k, sh in enumerate(shapes)]
    small = gss.compact(model)
    assert small.get_layer("mha").num_heads == 5
    # the kept heads' slices, in order, in all four projections
    keep = [0, 2, 3, 5, 7]
    assert np.array_equal(small.get_layer("mha").query_dense.kernel.numpy(),
                          mha.query_dense.kernel.numpy()[:, keep])  # fmt: skip
    assert np.array_equal(small.get_layer("mha").output_dense.kernel.numpy(), kernel[keep])
    expected = model.predict(xs if cross else xs[0], verbose=0)
    got = small.predict(xs if cross else xs[0], verbose=0)
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))
    assert small.count_params() == stats.live_params
    assert stats.flops - stats.live_flops == pytest.approx(3 * per_head, rel=1e-9)
    assert gss.model_stats(small).flops == pytest.approx(stats.live_flops, rel=1e-9)
    kernel[:] = 0.0  # no head writes: one stays (a layer keeps a head)
    mha.output_dense.kernel.assign(kernel)
    assert gss.compact(model).get_layer("mha").num_heads == 1


def test_a_gated_attention_keeps_its_heads():
    model = encoder_block(heads=4, gate=True)
    randomize(model)
    infos = {i.layer.name: i for i in graph.describe(model)}
    assert not infos["mha"].removable.any()  # its gate is indexed by heads too: pinned
    assert units_by_family(model) == {("up",): 32}
    small = prune_compact_and_check(model, (6, 16), target=0.2)
    assert small.get_layer("mha").num_heads == 4


def test_heads_are_pruned_one_at_a_time_and_group_lasso_sums_their_norms():
    model = encoder_block(heads=6)
    randomize(model)
    prune_compact_and_check(model, (6, 16), target=0.5)
    # round_to=8 rounds channel widths; six heads would allow no cut at all
    model = encoder_block(heads=6)
    randomize(model)
    gss.prune(model, target_sparsity=0.5, metric="flops", round_to=8)
    zero = int((gss.groups.layer_group_norms(model.get_layer("mha")) == 0).sum())
    small = gss.compact(model)
    assert zero >= 1  # heads were pruned although 6 is no multiple of 8
    assert small.get_layer("mha").num_heads == 6 - zero  # every zero head removed, no other
    assert small.get_layer("up").units % 8 == 0
    fresh = encoder_block(heads=6)
    gss.attach(fresh, gss.GroupLasso(0.01), layers=["mha"])
    kernel = fresh.get_layer("mha").output_dense.kernel.numpy().astype("float64")
    expected = 0.01 * np.sqrt((kernel**2).sum(axis=(1, 2))).sum()
    (loss,) = fresh.losses
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_a_shared_layer_couples_the_inputs_of_its_calls():
    x = keras.Input((6,))
    a, b = L.Dense(5, name="a")(x), L.Dense(5, name="b")(x)
    shared = L.Dense(4, activation="relu", name="shared")
    h = L.Add()([shared(a), shared(b)])  # fed by two pruned producers
    chain = L.Dense(4, name="twice")
    h = chain(chain(h))  # applied twice in a chain: its input is its output
    model = keras.Model(x, L.Dense(2, name="out")(h))
    randomize(model)
    # a and b feed one kernel: one channel; `twice` reads its own output and
    # shared's, so its input, its output and shared's output are one channel too
    assert units_by_family(model) == {("a", "b"): 5, ("shared", "twice"): 4}
    prune_compact_and_check(model, (6,), target=0.2)


def test_compact_refuses_nan_weights_and_model_stats_counts_them_live():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="a"), L.Dense(2, name="out")])
    kernel = model.get_layer("a").kernel.numpy()
    kernel[:, 1] = np.nan
    kernel[:, 2] = 0.0
    model.get_layer("a").kernel.assign(kernel)
    stats = gss.model_stats(model)
    assert stats.live_params == model.count_params() - (4 + 1 + 2)  # only column 2 goes
    with pytest.raises(ValueError, match="'a' holds NaN"):
        gss.compact(model)
