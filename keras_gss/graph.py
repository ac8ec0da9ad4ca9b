"""How prunable layers feed each other, and what they cost.

For each prunable layer: its *producer* (the prunable layer whose output
channels are its input channels, reached back through channel-preserving layers
such as activations, pooling, dropout, batch normalization and Flatten) and its
dense cost in FLOPs (2 x multiply-adds of its grouped weight per example). A
pruned group of a producer removes input channels of its consumers, which is
what compaction removes and what FLOP counts and cost-aware ranking take into
account. A path through anything else (Add, Concatenate, an unknown layer) has
no producer: its input channels are counted as all live.

Example:

>>> import keras_gss as gss
>>> infos = gss.graph.describe(gss.models.lenet())
>>> [(i.layer.name, i.producer) for i in infos][:3]
[('conv1', None), ('conv2', 0), ('fc1', 1)]
"""

from __future__ import annotations

import dataclasses
import math

import keras

from keras_gss import groups

_CHANNEL_PRESERVING: tuple[type, ...] = ()


def register_channel_preserving(*layer_classes: type) -> None:
    """Declare layer types whose output channel c depends only on input channel c."""
    global _CHANNEL_PRESERVING
    _CHANNEL_PRESERVING = _CHANNEL_PRESERVING + tuple(layer_classes)


# the built-in layers whose output channel c depends only on input channel c
BUILTIN_CHANNEL_PRESERVING = (
    "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Dropout",
    "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "BatchNormalization", "Flatten", "Identity",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
    "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D",
    "UpSampling3D",
)  # fmt: skip


def _builtin_channel_preserving() -> None:
    L = keras.layers
    names = BUILTIN_CHANNEL_PRESERVING
    register_channel_preserving(*(getattr(L, n) for n in names if hasattr(L, n)))


_builtin_channel_preserving()


@dataclasses.dataclass
class LayerInfo:
    """One prunable layer: its groups, graph position and dense cost."""

    layer: keras.layers.Layer
    spec: groups.GroupSpec
    groups: int
    group_size: int
    is_output: bool
    producer: int | None  # index into the describe() list
    dense_flops: float
    frozen: bool = False  # trainable=False: measured, never pruned
    activations: int = 1  # values one group writes per example (its output positions)
    excluded: bool = False  # outside the `layers` a pruner was given: measured, never pruned

    @property
    def weights(self) -> int:
        return self.groups * self.group_size

    @property
    def protected(self) -> bool:
        """Never pruned: the model's output units, a frozen or an excluded layer."""
        return self.is_output or self.frozen or self.excluded


def _node_tensors(layer):
    nodes = getattr(layer, "_inbound_nodes", None) or []
    if len(nodes) != 1:  # unused, or shared: no single well-defined position
        return None, None
    node = nodes[0]
    return keras.tree.flatten(node.input_tensors), keras.tree.flatten(node.output_tensors)


def _positions(layer, spec: groups.GroupSpec | None = None) -> int:
    """Spatial positions of the output (of the input for a transposed conv's
    FLOPs, whose grouped kernel meets every input position once)."""
    inputs, outputs = _node_tensors(layer)
    if not outputs:
        return 1
    transpose = spec is not None and spec.axis == (-2,)
    shape = (inputs[0] if transpose else outputs[0]).shape
    return int(math.prod(d or 1 for d in shape[1:-1]))


def _producer(layer, index_of: dict[int, int]) -> int | None:
    inputs, _ = _node_tensors(layer)
    while inputs is not None and len(inputs) == 1:
        history = getattr(inputs[0], "_keras_history", None)
        if history is None:
            return None
        op = history[0]
        if id(op) in index_of:
            return index_of[id(op)]
        if not isinstance(op, _CHANNEL_PRESERVING):
            return None
        inputs, _ = _node_tensors(op)
    return None


def check_layers(layers) -> tuple | None:
    """`layers` as a tuple of layer names or layer objects (None stays None)."""
    if layers is None:
        return None
    if isinstance(layers, (str, keras.layers.Layer)):
        layers = [layers]
    try:
        items = tuple(layers)
    except TypeError:
        items = None
    if not items or not all(isinstance(x, (str, keras.layers.Layer)) for x in items):
        raise TypeError(
            "Invalid value for argument `layers`. Expected None, or layer names or layer "
            f"objects (one or a non-empty list). Received: layers={layers!r}"
        )
    return items


def find_layers(candidates: list, layers, kind: str, owner: str) -> list:
    """The layers of `candidates` that `layers` names (layer names or objects), in
    the order given; an unknown item raises a ValueError naming it and the choices."""
    by_name = {layer.name: layer for layer in candidates}
    found = []
    for item in check_layers(layers):
        layer = by_name.get(item) if isinstance(item, str) else item
        if layer is None or not any(layer is known for known in candidates):
            raise ValueError(
                f"Invalid value in argument `layers`: {item!r} is not a {kind} of {owner}. "
                f"Its {kind}s are: {sorted(by_name)}."
            )
        found.append(layer)
    return found


def restrict(infos: list[LayerInfo], layers) -> list[LayerInfo]:
    """Mark every layer not named in `layers` as excluded (measured, never pruned)."""
    if layers is None:
        return infos
    found = find_layers([info.layer for info in infos], layers, "prunable layer", "this model")
    chosen = {id(layer) for layer in found}
    for info in infos:
        info.excluded = id(info.layer) not in chosen
    return infos


def describe(model: keras.Model) -> list[LayerInfo]:
    """A `LayerInfo` for each prunable layer of `model`, in model order."""
    layers = groups.prunable_layers(model)
    outputs = {id(layer) for layer in groups.output_layers(model)}
    index_of = {id(layer): i for i, layer in enumerate(layers)}
    infos = []
    for layer in layers:
        spec = groups.get_spec(layer)
        shape = tuple(groups.layer_weight(layer, spec).shape)
        count, size = groups.group_shape(shape, spec.axis)
        infos.append(
            LayerInfo(
                layer=layer,
                spec=spec,
                groups=count,
                group_size=size,
                is_output=id(layer) in outputs,
                producer=_producer(layer, index_of),
                dense_flops=2.0 * math.prod(shape) * _positions(layer, spec),
                frozen=not layer.trainable,
                activations=_positions(layer),
            )
        )
    for info in infos:  # the consumer's inputs must be whole copies of the producer's channels
        inputs, _ = _node_tensors(info.layer)
        if info.producer is not None:
            channels = inputs[0].shape[-1]
            if not channels or channels % infos[info.producer].groups:
                info.producer = None
    return infos


def _live_total(infos: list[LayerInfo], live: list[int], dense: list[float]) -> float:
    total = 0.0
    for info, n_live, cost in zip(infos, live, dense):
        fraction = n_live / info.groups
        if info.producer is not None:
            fraction *= live[info.producer] / infos[info.producer].groups
        total += cost * fraction
    return total


def live_flops(infos: list[LayerInfo], live: list[int]) -> float:
    """FLOPs per example once dead groups and the input channels they fed are removed."""
    return _live_total(infos, live, [info.dense_flops for info in infos])


def flop_ratio(infos: list[LayerInfo], live: list[int]) -> float:
    """`live_flops` over the dense FLOPs of the same layers: the share left."""
    return live_flops(infos, live) / max(1.0, sum(info.dense_flops for info in infos))


def live_weights(infos: list[LayerInfo], live: list[int]) -> float:
    """Grouped-weight entries left once dead groups and the inputs they fed are removed."""
    return _live_total(infos, live, [info.weights for info in infos])


def has_nested(model: keras.Model) -> bool:
    """Whether `model` calls another model as a layer."""
    return any(isinstance(layer, keras.Model) for layer in getattr(model, "layers", []))


def graph_model(model: keras.Model, owner: str = ""):
    """The functional graph of a Sequential or functional model (TypeError otherwise)."""
    kinds = {"Functional", "Sequential"}
    if not any(cls.__name__ in kinds for cls in type(model).__mro__):
        raise TypeError(
            f"compact rewrites Sequential and functional models; model '{model.name}'{owner} "
            f"is subclassed ({type(model).__name__}) and has no layer graph to rewrite. Build "
            "it functionally or with keras.Sequential."
        )
    functional = getattr(model, "_functional", None) or model  # a built Sequential's graph
    if not hasattr(functional, "_run_through_graph") or not functional.inputs:
        raise TypeError(
            f"compact: model '{model.name}'{owner} is not built with an Input; build it first."
        )
    return functional


def inline(model: keras.Model) -> keras.Model:
    """An equal flat functional model: nested models' layers called in place, each
    layer a fresh copy with the same weights (a shared layer stays shared).

    Example:

    >>> import keras
    >>> from keras_gss import graph
    >>> inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="inner")
    >>> x = keras.Input((4,))
    >>> flat = graph.inline(keras.Model(x, keras.layers.Dense(2)(inner(x))))
    >>> [type(layer).__name__ for layer in flat.layers]
    ['InputLayer', 'Dense', 'Dense']
    """
    # walks the graph with Keras' Function._run_through_graph (private, in every Keras
    # 3 release), which calls operation(op) for each node: nested models recurse
    copies: dict[int, tuple] = {}  # id(original) -> (original, copy)
    used = {layer.name for layer in model.layers if not isinstance(layer, keras.Model)}

    def operation(op, path: str):
        if isinstance(op, keras.Model):
            inner = graph_model(op, f" (nested in '{path}')")
            return lambda *args, **kwargs: inner._run_through_graph(
                args[0] if len(args) == 1 else list(args),
                lambda o: operation(o, f"{path}/{op.name}"),
            )
        if id(op) not in copies:
            config = op.get_config()
            if path != model.name:  # a nested layer: a unique name in the flat model
                name = base = config["name"]
                while name in used:
                    name = f"{path.split('/')[-1]}_{base}" if name == base else f"{name}_"
                config["name"] = name
                used.add(name)
            copies[id(op)] = (op, type(op).from_config(config))
        return copies[id(op)][1]

    outer = graph_model(model)
    inputs = [
        keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t._keras_history[0].name)
        for t in outer.inputs
    ]
    outputs = outer._run_through_graph(
        inputs[0] if len(inputs) == 1 else inputs, lambda op: operation(op, model.name)
    )
    flat = keras.Model(inputs, outputs, name=model.name)
    for old, new in copies.values():
        new.set_weights([keras.ops.convert_to_numpy(w) for w in old.weights])
    return flat
