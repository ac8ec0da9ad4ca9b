"""What a group is: the one place that knows how a layer's weight splits into groups.

A *group* is every weight that feeds one output unit (Dense) or one output filter
(Conv); in a MultiHeadAttention layer, one head's slice of the output projection
(once it is zero, the head's query, key and value slices feed nothing). Each
supported layer type has a `GroupSpec` in a registry: which weight is grouped,
which of its axes index the output units, and which constructor arguments hold
that weight's regularizer and constraint. Everything else in keras-gss asks this
module; nothing else inspects layer types.

Example:

>>> import keras, keras_gss as gss
>>> layer = keras.layers.Conv2DTranspose(4, 3)
>>> gss.groups.get_spec(layer).axis
(-2,)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import keras
import numpy as np
from keras import ops

Axis = int | Sequence[int]


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """How one layer type is grouped.

    Args:
        weight: attribute name of the grouped variable (default `"kernel"`).
        axis: axes of that variable that index output units; their flattened
            (row-major) index is the group index (default `(-1,)`).
        prefix: prefix of the constructor arguments `<prefix>_regularizer` and
            `<prefix>_constraint` that hold what is attached to `weight`
            (default `"kernel"`).
        bias: attribute name of the bias indexed by the same groups, or `None`.
    """

    weight: str = "kernel"
    axis: tuple[int, ...] = (-1,)
    prefix: str = "kernel"
    bias: str | None = "bias"

    @property
    def regularizer_attr(self) -> str:
        return f"{self.prefix}_regularizer"

    @property
    def constraint_attr(self) -> str:
        return f"{self.prefix}_constraint"


_REGISTRY: dict[type, GroupSpec] = {}


def register_layer(
    layer_cls: type,
    weight: str = "kernel",
    axis: Axis = -1,
    prefix: str | None = None,
    bias: str | None = "bias",
) -> GroupSpec:
    """Declare how a layer type (and its subclasses) splits into groups.

    Args:
        layer_cls: a `keras.layers.Layer` subclass.
        weight: attribute holding the grouped variable (default `"kernel"`).
        axis: axis or axes of that variable that index output units (default -1).
        prefix: constructor-argument prefix for its regularizer/constraint
            (default: `weight`).
        bias: attribute of the bias indexed by the same groups (default `"bias"`).

    Example:

    >>> import keras, keras_gss as gss
    >>> class MyDense(keras.layers.Dense):
    ...     pass
    >>> gss.register_layer(MyDense).axis
    (-1,)
    """
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, keras.layers.Layer)):
        raise TypeError(
            "Invalid value for argument `layer_cls`. Expected a subclass of "
            f"keras.layers.Layer. Received: layer_cls={layer_cls!r}"
        )
    spec = GroupSpec(weight=weight, axis=as_axis_tuple(axis), prefix=prefix or weight, bias=bias)
    _REGISTRY[layer_cls] = spec
    return spec


def get_spec(layer: keras.layers.Layer) -> GroupSpec | None:
    """The `GroupSpec` of a layer (looked up along its class hierarchy), or None."""
    for cls in type(layer).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


def as_axis_tuple(axis: Axis) -> tuple[int, ...]:
    """Validate `axis` (an int or a sequence of ints) and return it as a tuple."""
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    if not axes or not all(
        isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes
    ):
        raise ValueError(
            "Invalid value for argument `group_axis`. Expected an int or a "
            f"non-empty list of ints. Received: group_axis={axis!r}"
        )
    if len(set(axes)) != len(axes):
        raise ValueError(
            f"Invalid value for argument `group_axis`: repeated axes. Received: group_axis={axis!r}"
        )
    return tuple(int(a) for a in axes)


def axis_to_config(axis: Axis) -> int | list[int]:
    """The JSON-native form of an axis argument: an int, or a list of ints."""
    axes = as_axis_tuple(axis)
    return axes[0] if len(axes) == 1 else list(axes)


def _positive_axes(axis: Sequence[int], shape: Sequence[int], what: str) -> tuple[int, ...]:
    rank = len(shape)
    if rank < 2:
        raise ValueError(
            f"{what} needs a weight of rank >= 2 (a kernel) to split into groups. "
            f"Received a tensor of shape {tuple(shape)}. Attach group regularizers "
            "to kernels, not to biases or scalars."
        )
    positive = []
    for a in axis:
        if not -rank <= a < rank:
            raise ValueError(
                f"{what}: `group_axis={a}` is out of range for a weight of shape {tuple(shape)}."
            )
        positive.append(a % rank)
    return tuple(positive)


def _group_sum(x, axis: Sequence[int], what: str):
    """Sum of `x` over everything but the group axes: shape (number of groups,).

    Reducing over the other axes directly (no transpose, no copy) keeps the cost
    of a regularizer to one pass over the kernel.
    """
    shape = tuple(x.shape)
    group_axes = _positive_axes(axis, shape, what)
    other = tuple(a for a in range(len(shape)) if a not in group_axes)
    num_groups = math.prod(shape[a] for a in group_axes)
    summed = ops.sum(x, axis=other) if other else x
    return ops.reshape(summed, (num_groups,))


def group_squared_norms(x, axis: Axis = -1, what: str = "group norm"):
    """Squared L2 norm of every group of `x`, in float32, shape (groups,)."""
    x = ops.cast(x, "float32")
    return _group_sum(ops.square(x), as_axis_tuple(axis), what)


def safe_norm(squared):
    """`sqrt(squared)` with a finite (zero) gradient where `squared` is 0.

    NaN stays NaN, so that garbage weights are never mistaken for a zero group.
    """
    positive = squared > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, squared, 1.0)), squared)


def group_norms(x, axis: Axis = -1, what: str = "group norm"):
    """L2 norm of every group of `x`, in float32, shape (groups,).

    Example:

    >>> import numpy as np, keras_gss as gss
    >>> np.asarray(gss.groups.group_norms(np.ones((4, 3)))).tolist()
    [2.0, 2.0, 2.0]
    """
    return safe_norm(group_squared_norms(x, axis, what))


def group_norms_numpy(x: np.ndarray, axis: Axis = -1) -> np.ndarray:
    """`group_norms` of a numpy array, in float64 (for analysis outside the graph)."""
    x = np.asarray(x, dtype=np.float64)
    group_axes = _positive_axes(as_axis_tuple(axis), x.shape, "group_norms_numpy")
    other = tuple(a for a in range(x.ndim) if a not in group_axes)
    return np.sqrt(np.square(x).sum(axis=other)).reshape(-1)


def group_shape(shape: Sequence[int], axis: Axis) -> tuple[int, int]:
    """`(number of groups, weights per group)` of a weight of this shape."""
    group_axes = _positive_axes(as_axis_tuple(axis), shape, "group_shape")
    groups = math.prod(shape[a] for a in group_axes)
    return groups, math.prod(shape) // max(groups, 1)


def broadcast_mask(mask, shape: Sequence[int], axis: Axis):
    """Reshape a per-group vector so it broadcasts against a weight of `shape`."""
    rank = len(shape)
    if rank == 1:
        return mask
    group_axes = _positive_axes(as_axis_tuple(axis), shape, "broadcast_mask")
    # Moving the group axes to the end and back would cost a transpose per step;
    # reshaping to the group axes' own sizes keeps row-major order when they are
    # contiguous, which holds for every registered layout.
    if list(group_axes) != list(range(group_axes[0], group_axes[0] + len(group_axes))):
        raise ValueError(f"Group axes must be contiguous. Received axes {group_axes}.")
    target = [1] * rank
    for a in group_axes:
        target[a] = shape[a]
    return ops.reshape(mask, target)


def layer_weight(layer: keras.layers.Layer, spec: GroupSpec | None = None):
    """The grouped variable of a layer (raises if the layer is not built)."""
    spec = spec or get_spec(layer)
    weight = layer
    for name in spec.weight.split("."):  # "output_dense.kernel": a sublayer's weight
        weight = getattr(weight, name, None)
    if weight is None:
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) has no built "
            f"`{spec.weight}`: build the model (call it on data or "
            "`model.build(input_shape)`) first."
        )
    return weight


def layer_group_norms(layer: keras.layers.Layer) -> np.ndarray:
    """Group norms of a layer's grouped weight, as a float64 numpy array."""
    spec = get_spec(layer)
    weight = layer_weight(layer, spec)
    norms = group_norms(weight.value, spec.axis, f"Layer '{layer.name}'")
    return np.asarray(ops.convert_to_numpy(norms), dtype=np.float64)


def layer_group_nonzeros(layer: keras.layers.Layer) -> np.ndarray:
    """Number of non-zero entries in each group of a layer's grouped weight."""
    spec = get_spec(layer)
    weight = ops.cast(ops.not_equal(layer_weight(layer, spec).value, 0), "float32")
    counts = _group_sum(weight, spec.axis, f"Layer '{layer.name}'")
    return np.asarray(ops.convert_to_numpy(counts)).astype(np.int64)


def iter_layers(model: keras.layers.Layer) -> Iterable[keras.layers.Layer]:
    """Every layer inside `model`, nested models expanded, each once."""
    seen: set[int] = set()

    def walk(layer):
        for sub in getattr(layer, "layers", None) or []:
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if getattr(sub, "layers", None) is not None and isinstance(sub, keras.Model):
                yield from walk(sub)
            else:
                yield sub

    yield from walk(model)


def lora_enabled(layer: keras.layers.Layer) -> bool:
    """Whether `layer` runs with LoRA: its kernel is then `base + A @ B`, not a variable."""
    return bool(getattr(layer, "lora_enabled", False))


def prunable_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers of `model` that have a registered `GroupSpec` (LoRA layers excluded:
    their effective kernel is a sum that no group mask or regularizer reaches)."""
    return [
        layer
        for layer in iter_layers(model)
        if get_spec(layer) is not None and not lora_enabled(layer)
    ]


def lora_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers of `model` that keras-gss skips because LoRA is enabled on them."""
    return [layer for layer in iter_layers(model) if get_spec(layer) and lora_enabled(layer)]


def output_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The prunable layers whose units are model outputs (never to be pruned).

    Walks back from each model output through non-prunable layers (activations,
    reshapes, ...) to the prunable layers that produce it. A subclassed model has
    no graph: one forward pass on zeros (at the shape it was built with) finds the
    prunable layer called last, which is taken as the output layer.
    """
    outputs = getattr(model, "outputs", None)
    if not outputs:
        return _last_called(model)
    found: list[keras.layers.Layer] = []
    seen: set[int] = set()
    stack = list(keras.tree.flatten(outputs))
    while stack:
        tensor = stack.pop()
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            continue
        op = history[0]
        if id(op) in seen:
            continue
        seen.add(id(op))
        if isinstance(op, keras.Model) and getattr(op, "outputs", None):
            found.extend(output_layers(op))
            continue
        if get_spec(op) is not None:
            found.append(op)
            continue
        if isinstance(op, keras.layers.InputLayer):
            continue
        node = op._inbound_nodes[history[1]]
        stack.extend(keras.tree.flatten(node.input_tensors))
    return found


def _last_called(model: keras.Model) -> list[keras.layers.Layer]:
    """The prunable layer a subclassed model calls last (one pass on zeros)."""
    layers = prunable_layers(model)
    if len(layers) < 2:
        return layers
    shapes = list((getattr(model, "_build_shapes_dict", None) or {}).values())
    order: list = []
    if len(shapes) == 1 and shapes[0] is not None:
        shape = tuple(1 if d is None else d for d in shapes[0])
        for layer in layers:  # record the order of calls (instance attributes, removed after)

            def wrapped(*args, _layer=layer, _call=layer.call, **kwargs):
                order.append(_layer)
                return _call(*args, **kwargs)

            object.__setattr__(layer, "call", wrapped)
        try:
            model(np.zeros(shape, dtype=model.compute_dtype or "float32"), training=False)
        except Exception:  # noqa: BLE001 - any failure means: not found
            order.clear()
        finally:
            for layer in layers:
                object.__delattr__(layer, "call")
    if not order:
        raise ValueError(
            f"keras-gss cannot find the output layer of subclassed model '{model.name}' "
            "(it is not built from a single input shape, or a call on zeros failed), so it "
            "cannot keep it from being pruned. Build the model functionally or with "
            "keras.Sequential, or call it once on a batch of data first."
        )
    return order[-1:]


def _register_builtins() -> None:
    L = keras.layers
    for cls in (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D):
        register_layer(cls)
    for cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        register_layer(cls, axis=-2)
    for cls in (L.SeparableConv1D, L.SeparableConv2D):
        register_layer(cls, weight="pointwise_kernel", prefix="pointwise")
    for cls in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        register_layer(cls, axis=(-2, -1), prefix="depthwise")
    # one group per attention head: its slice of the output projection, (heads,
    # value_dim, out), everything the head writes ("heads_*" is no constructor
    # argument: what is attached to it is not saved with the model)
    register_layer(L.MultiHeadAttention, "output_dense.kernel", axis=0, prefix="heads", bias=None)


_register_builtins()
