"""Models we did not write: `keras.applications` (weights=None, 32x32 inputs, nothing
to download). For each, the coupled groups are what the architecture's paper says,
pruning to half the FLOPs then `compact` is exact, and `model_stats` before
compaction equals the compact model's real counts. Runs on every backend, except
DenseNet121, EfficientNetB0 and NASNetMobile on JAX (built and called eagerly op by
op: minutes each on 2 cores) and NASNetMobile on PyTorch (Keras refuses it there).
(`benchmarks/applications.py` times ten of them; this checks correctness only.)"""

import keras
import numpy as np
import pytest

import keras_gss as gss
from tests.test_dependency import units_by_family

SIDE = 32
TARGET = 0.5  # share of the FLOPs to remove
BACKEND = keras.backend.backend()
slow_on_jax = pytest.mark.skipif(
    BACKEND == "jax", reason="minutes on JAX's eager path; TensorFlow and PyTorch run it"
)


def build(name: str, **kwargs) -> keras.Model:
    keras.utils.set_random_seed(0)
    kwargs.update(weights=None, input_shape=(SIDE, SIDE, 3), classes=10)
    if name != "NASNetMobile":  # NASNet has no classifier_activation argument
        kwargs["classifier_activation"] = None
    model = getattr(keras.applications, name)(**kwargs)
    rng = np.random.default_rng(0)
    for w in model.weights:  # BN statistics away from 0/1, so an unpruned BN would show
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 2.0, size=w.shape).astype("float32"))
        elif "moving_mean" in w.path:
            w.assign(rng.normal(scale=0.1, size=w.shape).astype("float32"))
        elif "layer_scale" in w.path:  # ConvNeXt's 1e-6: its blocks would barely count
            w.assign(np.ones(w.shape, "float32"))
    return model


def run(model, x) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


def prune_and_compact(model) -> None:
    """Half the FLOPs, then `compact`: exact, and the counts agree."""
    x = np.random.default_rng(1).normal(size=(2, SIDE, SIDE, 3)).astype("float32")
    dense_out = run(model, x)
    dense = gss.model_stats(model)
    gss.prune(model, TARGET, metric="flops", ranking="memory", min_live_groups=8, round_to=8)
    stats = gss.model_stats(model)
    pruned_out = run(model, x)
    assert not np.allclose(pruned_out, dense_out, atol=1e-6)  # pruning changed the function
    small = gss.compact(model)
    got = run(small, x)
    scale = max(1e-6, float(np.abs(pruned_out).max()))
    assert np.abs(got - pruned_out).max() <= 1e-5 * scale
    real = gss.model_stats(small)
    assert real.flops == pytest.approx(stats.live_flops, rel=1e-9)
    assert small.count_params() == stats.live_params
    removed = 1 - real.flops / dense.flops  # what compaction really removed
    assert removed >= 0.9 * TARGET  # at least 90 % of what was asked (the target)
    assert real.live_flops == real.flops  # nothing left to remove


def test_resnet50_residual_streams():
    model = build("ResNet50")
    expected = {("conv1_conv",): 64}
    for stage, blocks, width in [(2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512)]:
        stream = [f"conv{stage}_block1_0_conv"]  # the shortcut conv starts the stream
        for b in range(1, blocks + 1):
            expected[(f"conv{stage}_block{b}_1_conv",)] = width
            expected[(f"conv{stage}_block{b}_2_conv",)] = width
            stream.append(f"conv{stage}_block{b}_3_conv")
        expected[tuple(sorted(stream))] = 4 * width
    assert units_by_family(model) == expected
    prune_and_compact(model)


@slow_on_jax
def test_densenet121_concatenates():
    model = build("DenseNet121")
    expected = {("conv1_conv",): 64}
    channels = 64
    for stage, blocks in [(2, 6), (3, 12), (4, 24), (5, 16)]:
        for b in range(1, blocks + 1):  # each conv block appends 32 channels
            expected[(f"conv{stage}_block{b}_1_conv",)] = 128
            expected[(f"conv{stage}_block{b}_2_conv",)] = 32
        channels += 32 * blocks
        if stage < 5:  # the transition halves the channels
            channels //= 2
            expected[(f"pool{stage}_conv",)] = channels
    assert units_by_family(model) == expected
    prune_and_compact(model)


def test_mobilenetv2_inverted_residuals():
    model = build("MobileNetV2", alpha=0.35)
    filters = {layer.name: getattr(layer, "filters", None) for layer in model.layers}
    expected = {("Conv1", "expanded_conv_depthwise"): filters["Conv1"], ("Conv_1",): 1280}
    for b in range(1, 17):  # expansion conv and its depthwise conv: one group per channel
        expected[(f"block_{b}_depthwise", f"block_{b}_expand")] = filters[f"block_{b}_expand"]
    stages = [[0], [1, 2], [3, 4, 5], [6, 7, 8, 9], [10, 11, 12], [13, 14, 15], [16]]
    for blocks in stages:  # the projections of a stage share its residual stream
        names = ["expanded_conv_project" if b == 0 else f"block_{b}_project" for b in blocks]
        expected[tuple(sorted(names))] = filters[names[0]]
    assert units_by_family(model) == expected
    prune_and_compact(model)


@slow_on_jax
def test_efficientnetb0_squeeze_excite():
    model = build("EfficientNetB0")
    found = units_by_family(model)
    blocks = [layer.name[: -len("_se_expand")] for layer in model.layers
              if layer.name.endswith("_se_expand")]  # fmt: skip
    assert len(blocks) == 16
    for block in blocks:  # the SE gate multiplies the depthwise output channel by channel
        first = "stem_conv" if block == "block1a" else f"{block}_expand_conv"
        key = tuple(sorted([first, f"{block}_dwconv", f"{block}_se_expand"]))
        assert found[key] == model.get_layer(f"{block}_dwconv").output.shape[-1]
    prune_and_compact(model)


def test_convnext_tiny_layer_norm_pins_the_stream():
    model = build("ConvNeXtTiny")
    expected = {}  # LayerNormalization mixes the stream's channels: only the MLPs prune
    for stage, (blocks, dim) in enumerate([(3, 96), (3, 192), (9, 384), (3, 768)]):
        for b in range(blocks):
            expected[(f"convnext_tiny_stage_{stage}_block_{b}_pointwise_conv_1",)] = 4 * dim
    assert units_by_family(model) == expected
    prune_and_compact(model)


def test_mobilenetv3small_compacts_exactly():
    prune_and_compact(build("MobileNetV3Small", alpha=0.75))


@slow_on_jax
@pytest.mark.skipif(BACKEND == "torch", reason="Keras 3.15 has no NASNet on PyTorch")
def test_nasnetmobile_compacts_exactly():
    prune_and_compact(build("NASNetMobile"))
