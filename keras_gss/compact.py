"""Physical removal of dead units: `compact` turns a pruned model into a smaller one.

A dead output unit/filter of a prunable layer is removed together with its bias
entry, the per-channel weights of batch normalization layers it passes through,
and the input slices of the layers that consume it (through activations,
pooling, dropout, padding and Flatten, whose channels-last order puts channel
`c` of position `p` at row `p * C + c`). Exactness comes first: a unit is kept
when its output is not exactly zero (a non-zero bias, an activation with
`f(0) != 0`, a batch normalization that shifts it) or when it reaches anything
whose channels cannot be sliced (Add, Concatenate, Reshape, depthwise or
separable convolutions, a model output); such layers are copied unchanged.

The result holds only standard Keras layers (keras-gss regularizers and
constraints are dropped), so it loads where keras-gss is not installed.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_gss import graph, groups
from keras_gss._validate import non_negative

_SLICEABLE: dict[type, dict] = {}


def register_compaction(layer_cls: type, size_arg: str, out_axis: int, in_axis: int) -> None:
    """Declare how to shrink a layer type: its size argument and weight axes.

    Args:
        layer_cls: the layer class (subclasses included).
        size_arg: constructor argument holding the number of output units.
        out_axis: axis of the grouped weight indexing output units.
        in_axis: axis of the grouped weight indexing input channels.
    """
    _SLICEABLE[layer_cls] = {"size_arg": size_arg, "out_axis": out_axis, "in_axis": in_axis}


def _rule(layer):
    for cls in type(layer).__mro__:
        if cls in _SLICEABLE:
            rule = _SLICEABLE[cls]
            if getattr(layer, "groups", 1) != 1:  # grouped convolutions mix channel blocks
                return None
            return rule
    return None


def _register_builtins() -> None:
    L = keras.layers
    register_compaction(L.Dense, "units", -1, -2)
    for cls in (L.Conv1D, L.Conv2D, L.Conv3D):
        register_compaction(cls, "filters", -1, -2)
    for cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        register_compaction(cls, "filters", -2, -1)


_register_builtins()

_NONLOCAL_ACTIVATIONS = {"softmax", "log_softmax"}


def _node(layer):
    nodes = getattr(layer, "_inbound_nodes", None) or []
    return nodes[0] if len(nodes) == 1 else None


def _consumers(model: keras.Model) -> dict[int, list]:
    """For each layer id: the layers that take its output as input."""
    result: dict[int, list] = {}
    for layer in model.layers:
        node = _node(layer)
        if node is None:
            continue
        for tensor in keras.tree.flatten(node.input_tensors):
            history = getattr(tensor, "_keras_history", None)
            if history is not None:
                result.setdefault(id(history[0]), []).append(layer)
    return result


def _maps_zero_to_zero(layer) -> bool:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return True
    name = getattr(activation, "__name__", "")
    if name in _NONLOCAL_ACTIVATIONS:
        return False
    return float(ops.convert_to_numpy(activation(ops.zeros((1, 1))))[0, 0]) == 0.0


def _bn_shift(layer) -> np.ndarray:
    """Output of a BatchNormalization layer for a zero input, per channel."""
    gamma = ops.convert_to_numpy(layer.gamma) if layer.gamma is not None else 1.0
    beta = ops.convert_to_numpy(layer.beta) if layer.beta is not None else 0.0
    mean = ops.convert_to_numpy(layer.moving_mean)
    var = ops.convert_to_numpy(layer.moving_variance)
    return beta - gamma * mean / np.sqrt(var + layer.epsilon)


class _Plan:
    """Which output units each layer keeps, and which layers slice their inputs."""

    def __init__(self, model: keras.Model, threshold: float):
        self.infos = graph.describe(model)
        self.index = {id(info.layer): i for i, info in enumerate(self.infos)}
        consumers = _consumers(model)
        outputs = {id(getattr(t, "_keras_history", [None])[0]) for t in model.outputs}
        self.keep: dict[int, np.ndarray] = {}  # prunable layer id -> kept unit indices
        self.channel_layers: dict[int, int] = {}  # per-channel layer id -> producer index
        for i, info in enumerate(self.infos):
            norms = groups.layer_group_norms(info.layer)
            live = norms > threshold
            if info.is_output or _rule(info.layer) is None or live.all():
                continue
            live |= self._nonzero_output(info)
            path = self._walk(info.layer, consumers, outputs, i, live)
            if path is None or live.all():
                continue
            if not live.any():
                live[np.argmax(norms)] = True  # a layer keeps at least one unit
            self.keep[id(info.layer)] = np.flatnonzero(live)
            for layer in path:
                self.channel_layers[id(layer)] = i

    def _nonzero_output(self, info) -> np.ndarray:
        """Units whose output is not exactly zero even with a zero kernel slice."""
        bias = getattr(info.layer, info.spec.bias, None) if info.spec.bias else None
        keep = np.zeros(info.groups, dtype=bool)
        if bias is not None:
            keep |= np.asarray(ops.convert_to_numpy(bias)) != 0
        if not _maps_zero_to_zero(info.layer):
            keep[:] = True
        return keep

    def _walk(self, layer, consumers, outputs, producer, live):
        """Channel-preserving layers fed by `layer`, or None if its channels are pinned."""
        path, frontier = [], [layer]
        while frontier:
            current = frontier.pop()
            if id(current) in outputs:
                return None
            for consumer in consumers.get(id(current), []):
                if id(consumer) in self.index:
                    info = self.infos[self.index[id(consumer)]]
                    if info.producer != producer or _rule(consumer) is None:
                        return None
                    continue
                if not isinstance(consumer, graph._CHANNEL_PRESERVING) or _node(consumer) is None:
                    return None
                if not _maps_zero_to_zero(consumer):
                    return None
                if isinstance(consumer, keras.layers.BatchNormalization):
                    if consumer.axis not in (-1, len(consumer.input.shape) - 1):
                        return None
                    live |= _bn_shift(consumer) != 0
                path.append(consumer)
                frontier.append(consumer)
        return path


def _slice(array: np.ndarray, axis: int, index: np.ndarray) -> np.ndarray:
    return np.take(array, index, axis=axis)


def _input_rows(channels: np.ndarray, producer_groups: int, inputs: int) -> np.ndarray:
    """Input indices of a consumer that holds `inputs // producer_groups` copies of each
    producer channel, channels last (Flatten order)."""
    positions = inputs // producer_groups
    return (np.arange(positions)[:, None] * producer_groups + channels[None, :]).reshape(-1)


def _clean_config(config: dict) -> dict:
    """Drop keras-gss regularizers and constraints: the result is plain Keras."""
    for key, value in list(config.items()):
        if key.endswith(("_regularizer", "_constraint")) and isinstance(value, dict):
            if str(value.get("module", "")).startswith("keras_gss"):
                config[key] = None
    return config


def compact(model: keras.Model, threshold: float = 0.0) -> keras.Model:
    """A smaller copy of `model` without its dead units; the same function.

    Args:
        model: a built Sequential or functional Keras model.
        threshold: units whose group norm is at or below this are dead
            (default 0: exactly zero, as left by `SparsityMonitor` or `prune`).

    Returns:
        A new model of standard Keras layers whose outputs equal `model`'s.

    Example:

    >>> import keras_gss as gss
    >>> model = gss.models.lenet()
    >>> _ = gss.prune(model, target_sparsity=0.5)
    >>> gss.compact(model).count_params() < model.count_params()
    True
    """
    threshold = non_negative("threshold", threshold)
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Invalid value for argument `model`. Expected a keras.Model. Received: {model!r}"
        )
    graph_kinds = {"Functional", "Sequential"}
    if not any(cls.__name__ in graph_kinds for cls in type(model).__mro__):
        raise TypeError(
            f"compact supports Sequential and functional models; model '{model.name}' is "
            f"subclassed ({type(model).__name__}) and has no layer graph to rewrite. Build it "
            "functionally or with keras.Sequential."
        )
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise TypeError(
                f"compact does not support nested models yet: layer '{layer.name}' of model "
                f"'{model.name}' is a {type(layer).__name__}. Rebuild it as one functional model."
            )
    plan = _Plan(model, threshold)

    def clone(layer):
        config = _clean_config(layer.get_config())
        rule = _rule(layer)
        if id(layer) in plan.keep and rule is not None:
            config[rule["size_arg"]] = int(plan.keep[id(layer)].size)
        return type(layer).from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    for old_layer, new_layer in zip(model.layers, new.layers):
        new_layer.set_weights(_new_weights(old_layer, plan))
    return new


def _new_weights(layer, plan: _Plan) -> list[np.ndarray]:
    weights = [np.asarray(ops.convert_to_numpy(w)) for w in layer.weights]
    names = [w.path.split("/")[-1] for w in layer.weights]
    if id(layer) in plan.channel_layers:  # per-channel layer (e.g. BatchNormalization)
        producer = plan.infos[plan.channel_layers[id(layer)]].layer
        keep = plan.keep[id(producer)]
        return [_slice(w, -1, keep) if w.ndim == 1 else w for w in weights]
    if id(layer) not in plan.index:
        return weights
    info = plan.infos[plan.index[id(layer)]]
    rule = _rule(layer)
    if rule is None:
        return weights
    out_keep = plan.keep.get(id(layer))
    in_keep = None
    if info.producer is not None:
        producer = plan.infos[info.producer]
        channels = plan.keep.get(id(producer.layer))
        if channels is not None:
            kernel = weights[names.index(info.spec.weight)]
            inputs = kernel.shape[rule["in_axis"]]
            in_keep = _input_rows(channels, producer.groups, inputs)
    result = []
    for name, w in zip(names, weights):
        if name == info.spec.weight:
            if out_keep is not None:
                w = _slice(w, rule["out_axis"], out_keep)
            if in_keep is not None:
                w = _slice(w, rule["in_axis"], in_keep)
        elif name == info.spec.bias and out_keep is not None:
            w = _slice(w, 0, out_keep)
        result.append(w)
    return result
