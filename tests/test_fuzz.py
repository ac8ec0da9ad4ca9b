"""Random small functional models (Conv, Dense, BatchNormalization, Add, Concatenate,
Flatten, shared layers; channels_last and channels_first), randomly pruned, then
`compact`: the same function and the counts `model_stats` predicted, or a clear
error naming the layer; never a crash inside Keras, never a silent difference."""

import keras
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keras_gss as gss

L = keras.layers


@st.composite
def models(draw):
    first = draw(st.booleans())
    fmt = "channels_first" if first else "channels_last"
    axis = 1 if first else -1
    x = keras.Input((3, 6, 6) if first else (6, 6, 3))
    tensors, convs = [x], []
    for i in range(draw(st.integers(2, 7))):
        kind = draw(st.sampled_from(["conv", "conv", "bn", "add", "concat", "relu", "shared"]))
        src = draw(st.sampled_from(tensors))
        width = src.shape[axis]
        if kind == "conv":
            layer = L.Conv2D(draw(st.integers(1, 5)), draw(st.sampled_from([1, 3])),
                             padding="same", data_format=fmt, name=f"conv{i}")  # fmt: skip
            convs.append(layer)
            tensors.append(layer(src))
        elif kind == "bn":
            tensors.append(L.BatchNormalization(axis=axis, name=f"bn{i}")(src))
        elif kind == "relu":
            tensors.append(L.ReLU(name=f"relu{i}")(src))
        elif kind == "add":
            same = [t for t in tensors if t.shape[axis] == width and t is not src]
            if same:
                tensors.append(L.Add(name=f"add{i}")([src, draw(st.sampled_from(same))]))
        elif kind == "concat":
            other = draw(st.sampled_from(tensors))
            tensors.append(L.Concatenate(axis=axis, name=f"cat{i}")([src, other]))
        else:  # a conv layer called again on a tensor of its input width
            fits = [c for c in convs if c.input.shape[axis] == width]
            if fits:
                tensors.append(draw(st.sampled_from(fits))(src))
    h = L.Flatten(name="flat")(tensors[-1])
    h = L.Dense(draw(st.integers(1, 6)), activation="relu", name="fc")(h)
    return keras.Model(x, L.Dense(2, name="out")(h))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=models(), seed=st.integers(0, 10_000), target=st.floats(0.0, 0.9))
def test_random_models_prune_and_compact_exactly(model, seed, target):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        low = 0.5 if "moving_variance" in w.path else -1.0
        w.assign(rng.uniform(low, 1.0, size=w.shape).astype("float32"))
    for layer in model.layers:  # some groups dead in one layer only: constants, couplings
        if isinstance(layer, L.Conv2D) and rng.random() < 0.5:
            kernel = layer.kernel.numpy()
            kernel[..., rng.random(kernel.shape[-1]) < 0.4] = 0
            layer.kernel.assign(kernel)
    gss.prune(model, target_sparsity=target, metric="flops", ranking="memory")
    stats = gss.model_stats(model)
    small = gss.compact(model)
    x = rng.normal(size=(3, *model.input.shape[1:])).astype("float32")
    expected, got = model.predict(x, verbose=0), small.predict(x, verbose=0)
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))
    assert small.count_params() == stats.live_params
    assert gss.model_stats(small).flops == np.float64(stats.live_flops) or np.isclose(
        gss.model_stats(small).flops, stats.live_flops, rtol=1e-9
    )
