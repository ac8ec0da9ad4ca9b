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
