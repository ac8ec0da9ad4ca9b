"""Physical removal of dead channels: `compact` turns a pruned model into a smaller one.

What goes is decided by the coupled groups of `keras_gss.dependency`: a group is
removed when it is not pinned and every kernel that reads it sees an exact zero
or a constant it can fold into its bias (a Dense layer, a 'valid' or 1x1
convolution). Removing it slices every member at once: the output slices and
biases of the kernels that write it (all producers into a residual `Add`), the
BatchNormalization / PReLU / depthwise parameters of the channel, Reshape
targets, Concatenate offsets, and the input slices of every kernel that reads
it (Flatten rows included). Constants are propagated through the graph, so a
dead channel that is zero after its activation (relu of a negative constant)
goes even before a 'same' convolution; a non-zero constant is folded into the
bias of its readers, exactly.

The result holds only standard Keras layers (keras-gss regularizers and
constraints are dropped), so it loads where keras-gss is not installed.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_gss import dependency, graph
from keras_gss._validate import non_negative


def register_compaction(
    layer_cls: type,
    size_arg: str,
    out_axis: int,
    in_axis: int,
    input_weights: dict[str, int] | None = None,
    in_repeat: str | None = None,
) -> None:
    """Declare how to shrink a kernel layer type: its size argument and weight axes.

    The layer then writes new channels from all of its input channels, like Dense
    (a `keras_gss.dependency.Producer` handler).

    Args:
        layer_cls: the layer class (subclasses included).
        size_arg: constructor argument holding the number of output units.
        out_axis: axis of the grouped weight indexing output units.
        in_axis: axis of the grouped weight indexing input channels.
        input_weights: other weights indexed by input channels, as
            `{weight name: axis}` (e.g. a separable convolution's depthwise kernel).
        in_repeat: attribute holding how many consecutive rows of the grouped
            weight each input channel owns (a separable convolution's
            `depth_multiplier`); default one.

    Example:

    >>> import keras, keras_gss as gss
    >>> class MyDense(keras.layers.Dense):
    ...     pass
    >>> gss.register_compaction(MyDense, "units", out_axis=-1, in_axis=-2)
    """
    dependency.register_handler(
        layer_cls, dependency.Producer(size_arg, out_axis, in_axis, input_weights, in_repeat)
    )


@dataclasses.dataclass
class Plan:
    """What `compact` keeps: per layer its kept input and output channel positions
    (None: all) and the constants folded into its bias `(rows, values)`."""

    dependency: dependency.Dependency
    remove: np.ndarray  # per channel id: its coupled group goes
    slices: dict[int, tuple]  # id(layer) -> (in_keep, out_keep, fold)

    def keep(self, chan: dependency.Chan) -> np.ndarray | None:
        kept = ~self.remove[self.dependency.root[chan.ids]]
        return None if kept.all() else np.flatnonzero(kept)


def plan(model: keras.Model, threshold: float = 0.0) -> Plan:
    """The coupled groups `compact` would remove from `model`, and how every layer
    is sliced; `keras_gss.model_stats` counts the same plan."""
    dep = dependency.analyze(model, threshold)
    remove = dep.removable()
    consts = dep.constants()
    for call in dep.calls:  # every tensor (and attention layer) keeps a channel (head)
        grouped = call.handler.grouped(dep, call)
        for chan in call.outs + ([grouped] if grouped is not None else []):
            roots = dep.root[chan.ids]
            if roots.size and remove[roots].all():
                varies = np.flatnonzero(~np.isfinite(consts[id(chan)]))
                remove[roots[varies[0] if varies.size else 0]] = False
    result = Plan(dep, remove, {})
    for call in dep.calls:
        if not isinstance(call.op, keras.layers.Layer) or id(call.op) in result.slices:
            continue
        in_keep = result.keep(call.ins[0]) if call.ins else None
        grouped = call.handler.grouped(dep, call)
        out_keep = result.keep(grouped) if grouped is not None else None
        fold = None
        if isinstance(call.handler, dependency.Producer) and call.ins:
            chan = call.ins[0]
            value = consts.get(id(chan), np.full(len(chan.ids), np.nan))
            rows = np.flatnonzero(remove[dep.root[chan.ids]] & (value != 0))
            if rows.size:
                fold = (rows, value[rows].astype("float32"))
        result.slices[id(call.op)] = (in_keep, out_keep, fold)
    return result


def _clean_config(config: dict) -> dict:
    """Drop keras-gss regularizers and constraints: the result is plain Keras."""
    for key, value in list(config.items()):
        if key.endswith(("_regularizer", "_constraint")) and isinstance(value, dict):
            if str(value.get("module", "")).startswith("keras_gss"):
                config[key] = None
    return config


def _key(layer, variable) -> str:
    """A weight's path inside its layer ("kernel"; "query/kernel" in an attention layer)."""
    parts = variable.path.split("/")
    if layer.name in parts[:-1]:
        return "/".join(parts[parts.index(layer.name) + 1 :])
    return parts[-1]


def sliced_weights(layer, slices: tuple | None) -> dict[str, np.ndarray]:
    """A layer's weights by name, sliced as `compact` slices them."""
    weights = {_key(layer, w): np.asarray(ops.convert_to_numpy(w)) for w in layer.weights}
    if slices is None:
        return weights
    return dependency.handler_for(layer).weights(layer, weights, *slices)


def compact(model: keras.Model, threshold: float = 0.0) -> keras.Model:
    """A smaller copy of `model` without its dead channels; the same function.

    Args:
        model: a built Sequential or functional Keras model.
        threshold: kernel slices whose norm is at or below this count as zero
            (default 0: exactly zero, as left by `SparsityMonitor` or `prune`, and
            the outputs are equal). A threshold > 0 also removes weak groups that
            are not zero: the outputs then differ by what those groups added.

    Returns:
        A new model of standard Keras layers. Nested Sequential or functional
        models are inlined: the result is one flat functional model.

    Example:

    >>> import keras_gss as gss
    >>> model = gss.models.lenet()
    >>> _ = gss.prune(model, target_sparsity=0.5)
    >>> gss.compact(model).count_params() < model.count_params()
    True
    """
    threshold = non_negative("threshold", threshold)
    model = _flat(model)
    for layer in model.layers:
        for w in layer.weights:
            if not np.all(np.isfinite(ops.convert_to_numpy(w))):
                raise ValueError(
                    f"compact: layer '{layer.name}' holds NaN or inf weights "
                    f"('{w.path}'); a NaN group is neither live nor dead. Fix the weights."
                )
    return _rebuild(model, plan(model, threshold).slices)


def _flat(model) -> keras.Model:
    """`model` as one flat graph model (nested models inlined); TypeError otherwise."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Invalid value for argument `model`. Expected a keras.Model. Received: {model!r}"
        )
    graph.graph_model(model)
    return graph.inline(model) if graph.has_nested(model) else model


def _rebuild(model: keras.Model, slices: dict) -> keras.Model:
    """A copy of plain Keras layers, each sliced as `slices` says (id(layer) -> slices)."""

    def clone(op):
        if not isinstance(op, keras.layers.Layer):
            return op  # a keras.ops call: shape-agnostic, reused as it is
        config = _clean_config(op.get_config())
        if slices.get(id(op)) is not None:
            config = dependency.handler_for(op).config(op, config, *slices[id(op)])
        return type(op).from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    for old_layer, new_layer in zip(model.layers, new.layers):
        weights = sliced_weights(old_layer, slices.get(id(old_layer)))
        names = [_key(new_layer, w) for w in new_layer.weights]
        if not set(names) <= set(weights):  # unnamed weights (variable_N) renumber: by order
            names = list(weights)
        new_layer.set_weights([weights[name] for name in names])
    return new


def strip(model: keras.Model) -> keras.Model:
    """A plain Keras copy of a pruned model: the same weights (zeros included), with
    keras-gss regularizers, masks and proximal steps removed, so that its `.keras`
    file loads where keras-gss is not installed (like TF-MOT's `strip_pruning`).
    Nested models are inlined. Pruned groups are no longer held at zero: strip for
    deployment, not for more training.

    Example:

    >>> import json, keras_gss as gss
    >>> model = gss.attach(gss.models.lenet())
    >>> _ = gss.prune(model, target_sparsity=0.5)
    >>> "keras_gss" in json.dumps(gss.strip(model).get_config())
    False
    """
    return _rebuild(_flat(model), {})
