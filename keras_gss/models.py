"""The network of the paper (Torfi & Shirvani 2018): a LeNet-like conv net."""

from __future__ import annotations

import keras


def lenet(
    input_shape: tuple[int, ...] = (28, 28, 1),
    num_classes: int = 10,
    dropout: float = 0.2,
    name: str = "lenet",
    filters: tuple[int, int] = (64, 128),
    units: tuple[int, int] = (512, 256),
) -> keras.Model:
    """Conv 5x5x64 'same' relu, maxpool 2, conv 5x5x128 'same' relu, maxpool 2,
    flatten, dense 512 relu, dropout, dense 256 relu, dropout, dense `num_classes`
    (logits).

    Args:
        input_shape: image shape, channels last (default (28, 28, 1)).
        num_classes: output units (default 10).
        dropout: dropout rate after each hidden dense layer (default 0.2).
        name: model name (default "lenet").
        filters: filters of the two convolutions (default (64, 128): the paper's).
        units: units of the two hidden dense layers (default (512, 256)); smaller
            widths give the shape `compact` leaves after pruning.

    Example:

    >>> import keras_gss as gss
    >>> gss.models.lenet().count_params()
    3552266
    """
    for arg, value in (("filters", filters), ("units", units)):
        if len(value) != 2 or any(not isinstance(v, int) or v < 1 for v in value):
            raise ValueError(
                f"Invalid value for argument `{arg}`. Expected two ints >= 1. Received: "
                f"{arg}={value!r}"
            )
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input(input_shape),
            L.Conv2D(filters[0], 5, padding="same", activation="relu", name="conv1"),
            L.MaxPooling2D(2, name="pool1"),
            L.Conv2D(filters[1], 5, padding="same", activation="relu", name="conv2"),
            L.MaxPooling2D(2, name="pool2"),
            L.Flatten(name="flatten"),
            L.Dense(units[0], activation="relu", name="fc1"),
            L.Dropout(dropout, name="drop1"),
            L.Dense(units[1], activation="relu", name="fc2"),
            L.Dropout(dropout, name="drop2"),
            L.Dense(num_classes, name="logits"),
        ],
        name=name,
    )


def resnet20(
    input_shape: tuple[int, ...] = (28, 28, 1),
    num_classes: int = 10,
    widths: tuple[int, ...] = (16, 32, 64),
    blocks: int = 3,
    name: str = "resnet20",
) -> keras.Model:
    """A ResNet-20-style net (He et al. 2016, CIFAR): a 3x3 stem, then per stage
    `blocks` basic blocks (conv-BN-relu-conv-BN + shortcut, relu); the first block
    of a later stage halves the resolution with a strided conv and a 1x1
    projection shortcut; global average pooling and a dense `num_classes` (logits).
    Every convolution writing into a stage's residual stream is coupled.

    Example:

    >>> import keras_gss as gss
    >>> gss.models.resnet20().count_params()
    273754
    """
    L = keras.layers
    inputs = keras.Input(input_shape)
    h = L.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem")(inputs)
    h = L.ReLU(name="stem_relu")(L.BatchNormalization(momentum=0.9, name="stem_bn")(h))
    for s, width in enumerate(widths):
        for b in range(blocks):
            stride = 2 if s > 0 and b == 0 else 1
            p = f"s{s}b{b}"
            r = L.Conv2D(width, 3, strides=stride, padding="same", use_bias=False,
                         name=f"{p}_conv1")(h)  # fmt: skip
            r = L.ReLU(name=f"{p}_relu1")(L.BatchNormalization(momentum=0.9, name=f"{p}_bn1")(r))
            r = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"{p}_conv2")(r)
            r = L.BatchNormalization(momentum=0.9, name=f"{p}_bn2")(r)
            if stride != 1 or h.shape[-1] != width:
                h = L.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{p}_proj")(h)
                h = L.BatchNormalization(momentum=0.9, name=f"{p}_proj_bn")(h)
            h = L.ReLU(name=f"{p}_out")(L.Add(name=f"{p}_add")([h, r]))
    h = L.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, L.Dense(num_classes, name="logits")(h), name=name)


def mobilenet_v2_small(
    input_shape: tuple[int, ...] = (28, 28, 1),
    num_classes: int = 10,
    stages: tuple[tuple[int, int, int], ...] = ((16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 2, 1)),
    expansion: int = 4,
    head: int = 128,
    name: str = "mobilenetv2_small",
) -> keras.Model:
    """A MobileNetV2-style net (Sandler et al. 2018) for small images: a 3x3 stem,
    inverted residual blocks (1x1 expand, BN, relu6, 3x3 depthwise, BN, relu6, 1x1
    project, BN, and an Add where shapes allow), a 1x1 head, global average pooling
    and a dense `num_classes` (logits). `stages` lists (width, blocks, stride).

    Example:

    >>> import keras_gss as gss
    >>> gss.models.mobilenet_v2_small().count_params()
    103706
    """
    L = keras.layers
    inputs = keras.Input(input_shape)
    h = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    h = L.ReLU(6.0, name="stem_relu")(L.BatchNormalization(momentum=0.9, name="stem_bn")(h))
    k = 0
    for width, blocks, stride in stages:
        for b in range(blocks):
            s = stride if b == 0 else 1
            p = f"block{k}"
            k += 1
            r = L.Conv2D(h.shape[-1] * expansion, 1, use_bias=False, name=f"{p}_expand")(h)
            r = L.BatchNormalization(momentum=0.9, name=f"{p}_bn1")(r)
            r = L.ReLU(6.0, name=f"{p}_relu1")(r)
            r = L.DepthwiseConv2D(3, strides=s, padding="same", use_bias=False,
                                  name=f"{p}_dw")(r)  # fmt: skip
            r = L.BatchNormalization(momentum=0.9, name=f"{p}_bn2")(r)
            r = L.ReLU(6.0, name=f"{p}_relu2")(r)
            r = L.Conv2D(width, 1, use_bias=False, name=f"{p}_project")(r)
            r = L.BatchNormalization(momentum=0.9, name=f"{p}_bn3")(r)
            h = L.Add(name=f"{p}_add")([h, r]) if s == 1 and h.shape[-1] == width else r
    h = L.Conv2D(head, 1, use_bias=False, name="head")(h)
    h = L.ReLU(6.0, name="head_relu")(L.BatchNormalization(momentum=0.9, name="head_bn")(h))
    h = L.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, L.Dense(num_classes, name="logits")(h), name=name)
