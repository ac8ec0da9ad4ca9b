"""Physical removal of dead units: `compact` turns a pruned model into a smaller one.

A dead output unit/filter of a prunable layer is removed together with its bias
entry, the per-channel weights of batch normalization layers it passes through,
and the input slices of the layers that consume it (through activations,
pooling, dropout, padding and Flatten, whose channels-last order puts channel
`c` of position `p` at row `p * C + c`; depthwise convolutions and the
depthwise half of separable convolutions are sliced too: with a
`depth_multiplier` m, input channel `c` owns outputs `c * m ... c * m + m - 1`).
Element-wise merges (Add, Multiply, ...) keep the union of the channels live in
any of their inputs; Concatenate offsets each input's kept channels.

Exactness comes first. A dead unit whose output is a non-zero constant (a
non-zero bias, an activation with `f(0) != 0`, a batch normalization that shifts
it) is removed only when that constant can be folded into the bias of every
consumer: Dense layers and convolutions without padding ('valid', or a kernel of
size 1), reached through per-channel layers (activations, batch normalization,
pooling, dropout, Flatten). Otherwise (a 'same'-padded convolution sees zeros at
the border) it is kept. Channels that reach anything that cannot be sliced (a
Reshape, a model output, an unknown layer) are kept, and such layers are copied
unchanged; nested Sequential and functional models are inlined first.

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


def register_compaction(
    layer_cls: type,
    size_arg: str,
    out_axis: int,
    in_axis: int,
    input_weights: dict[str, int] | None = None,
    in_repeat: str | None = None,
) -> None:
    """Declare how to shrink a layer type: its size argument and weight axes.

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
    _SLICEABLE[layer_cls] = {
        "size_arg": size_arg,
        "out_axis": out_axis,
        "in_axis": in_axis,
        "input_weights": dict(input_weights or {}),
        "in_repeat": in_repeat,
    }


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
    for cls in (L.SeparableConv1D, L.SeparableConv2D):
        register_compaction(cls, "filters", -1, -2, {"depthwise_kernel": -2}, "depth_multiplier")


_register_builtins()

_NONLOCAL_ACTIVATIONS = {"softmax", "log_softmax"}


def _merges(layer) -> bool:
    """Element-wise merges: output channel c depends on channel c of every input."""
    L = keras.layers
    return isinstance(layer, (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum))


def _maps_zero_to_zero(layer) -> bool:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return True
    name = getattr(activation, "__name__", "")
    if name in _NONLOCAL_ACTIVATIONS:
        return False
    return float(ops.convert_to_numpy(activation(ops.zeros((1, 1))))[0, 0]) == 0.0


def _bn_apply(layer, value: np.ndarray | float = 0.0) -> np.ndarray:
    """Inference output of a BatchNormalization layer for a per-channel constant input."""
    gamma = ops.convert_to_numpy(layer.gamma) if layer.gamma is not None else 1.0
    beta = ops.convert_to_numpy(layer.beta) if layer.beta is not None else 0.0
    mean = ops.convert_to_numpy(layer.moving_mean)
    var = ops.convert_to_numpy(layer.moving_variance)
    return beta + gamma * (value - mean) / np.sqrt(var + layer.epsilon)


def _blocks(channels: np.ndarray, m: int) -> np.ndarray:
    """Input channels of a depthwise multiplier `m` with any of their `m` outputs set."""
    return np.asarray(channels).reshape(-1, m).any(axis=1)


def _depthwise(layer, multiplier: bool = False) -> bool:
    """A depthwise convolution that maps input channel c to output channel c (with
    `multiplier`: to output channels c*m ... c*m + m - 1, m > 1)."""
    L = keras.layers
    if not isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        return False
    return layer.depth_multiplier > 1 if multiplier else layer.depth_multiplier == 1


# element-wise layers without weights: a constant channel maps to f(constant)
_ELEMENTWISE_NAMES = ("Activation", "ReLU", "LeakyReLU", "ELU")
_CONSTANT_ELEMENTWISE = tuple(getattr(keras.layers, n) for n in _ELEMENTWISE_NAMES)
# built-in channel-preserving layers through which a constant channel stays the same
# constant at every position: not element-wise maps, BatchNormalization (an affine
# map), PReLU (weights) or padding (zeros at the border)
_CONSTANT_IDENTITY: tuple[type, ...] = tuple(
    getattr(keras.layers, n)
    for n in graph.BUILTIN_CHANNEL_PRESERVING
    if hasattr(keras.layers, n)
    and n not in _ELEMENTWISE_NAMES + ("PReLU", "BatchNormalization")
    and not n.startswith("ZeroPadding")
)
# layers that map a constant channel to a constant channel we can compute
_CONSTANT_MAPS = (*_CONSTANT_IDENTITY, *_CONSTANT_ELEMENTWISE, keras.layers.BatchNormalization)


def _folds_constants(layer) -> bool:
    """A consumer that sees a constant input channel as a constant at every kernel tap."""
    L = keras.layers
    if isinstance(layer, L.Dense):
        return True
    conv = (L.Conv1D, L.Conv2D, L.Conv3D)
    transpose = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
    if not isinstance(layer, conv) or isinstance(layer, transpose):
        return False
    return layer.padding == "valid" or (
        layer.padding == "same" and all(k == 1 for k in layer.kernel_size)
    )


def _inputs(layer) -> list | None:
    """The layers feeding `layer` (None when it is called more than once)."""
    tensors, _ = graph._node_tensors(layer)
    if tensors is None:
        return None
    histories = [getattr(t, "_keras_history", None) for t in tensors]
    return None if any(h is None for h in histories) else [h[0] for h in histories]


def _channels(layer) -> int:
    return int(layer.output.shape[-1])


class _Plan:
    """Which channels every layer output keeps.

    Layer outputs whose channels must be kept or removed together form a *space*
    (joined through channel-preserving layers and element-wise merges such as
    Add). A space keeps the union of the live units of the compactable layers
    that produce it, and everything when anything in it cannot be sliced.
    """

    def __init__(self, model: keras.Model, threshold: float):
        self.layers = list(model.layers)
        self.parent = {id(layer): id(layer) for layer in self.layers}
        self.by_id = {id(layer): layer for layer in self.layers}
        self.inputs = {id(layer): _inputs(layer) for layer in self.layers}
        infos = graph.describe(model)
        self.info = {id(i.layer): i for i in infos}
        outputs = {id(i.layer) for i in infos if i.is_output}
        model_outputs = {id(t._keras_history[0]) for t in keras.tree.flatten(model.outputs)}
        self.pinned: set[int] = set()
        self.live: dict[int, np.ndarray] = {}  # compactable layer -> units to keep
        self.kernel_live: dict[int, np.ndarray] = {}  # ... -> units with a live kernel
        self.passthrough: set[int] = set()  # channel-preserving layers that slice through
        self.depthwise: set[int] = set()  # depthwise convolutions sliced like passthrough
        # depthwise convolutions with depth_multiplier m > 1: the root of a space whose
        # channels are m copies of each channel of their input's space -> (input, m)
        self.derived: dict[int, tuple[int, int]] = {}
        # layer -> output channels that must stay whatever their owner's groups say:
        # those a BatchNormalization shifts off zero, those a derived block needs
        self.needs: dict[int, np.ndarray] = {}
        self.fold: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # consumer -> rows, constants
        self.consumers: dict[int, list] = {}  # layer -> the layers reading its output
        for layer in self.layers:
            for source in self.inputs[id(layer)] or []:
                self.consumers.setdefault(id(source), []).append(layer)
        for layer in self.layers:
            key, inputs = id(layer), self.inputs[id(layer)]
            if inputs is None or isinstance(layer, keras.layers.InputLayer):
                self.pinned.add(key)
                for source in inputs or []:
                    self._pin_inputs_of(source)
                continue
            if key in self.info and _rule(layer) is not None and key not in outputs:
                self._add_owner(key, threshold)
                continue
            if _depthwise(layer) and key not in outputs and _maps_zero_to_zero(layer):
                self._union(key, id(inputs[0]))
                self.passthrough.add(key)
                self.depthwise.add(key)
                self._add_owner(key, threshold, foldable=False)
                continue
            if (
                _depthwise(layer, multiplier=True)
                and key not in outputs
                and _maps_zero_to_zero(layer)
            ):
                m = int(layer.depth_multiplier)
                self.derived[key] = (id(inputs[0]), m)
                # a block with a non-zero constant output needs its input channel
                nonzero = self._nonzero_output(self.info[key]) if key in self.info else None
                if nonzero is None:
                    self._pin_inputs_of(inputs[0])
                else:
                    self._need(id(inputs[0]), _blocks(nonzero, m))
                continue
            if isinstance(layer, graph._CHANNEL_PRESERVING) and self._slices_through(layer):
                self._union(key, id(inputs[0]))
                self.passthrough.add(key)
                if isinstance(layer, keras.layers.BatchNormalization):
                    self._need(key, _bn_apply(layer) != 0)
                continue
            if _merges(layer):
                for source in inputs:
                    self._union(key, id(source))
                continue
            if isinstance(layer, keras.layers.Concatenate) and layer.axis in (
                -1,
                len(layer.output.shape) - 1,
            ):
                continue  # its own space: channels are offsets into its inputs
            # anything else (output layers, unknown or non-compactable layers) keeps
            # its own channels and needs all channels of its inputs
            self.pinned.add(key)
            if key not in self.info or _rule(layer) is None:  # an output layer slices inputs
                for source in inputs:
                    self._pin_inputs_of(source)
        for key in model_outputs:
            self._pin_inputs_of(self.by_id[key])
        self.keep_space = self._space_keeps()
        for layer in self.layers:  # in graph order: a derived space after its source
            if id(layer) in self.derived:
                source, m = self.derived[id(layer)]
                kept = self.keep(self.by_id[source])
                blocks = None if kept is None else (kept[:, None] * m + np.arange(m)).reshape(-1)
                self.keep_space[self._find(id(layer))] = blocks

    # -- union-find over spaces ---------------------------------------------

    def _find(self, key: int) -> int:
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def _union(self, a: int, b: int) -> None:
        self.parent[self._find(a)] = self._find(b)

    def _pin_inputs_of(self, layer) -> None:
        """`layer`'s output channels must all stay (and so must a Concatenate's parts)."""
        self.pinned.add(id(layer))
        if isinstance(layer, keras.layers.Concatenate):
            for source in self.inputs.get(id(layer)) or []:
                self._pin_inputs_of(source)

    def _slices_through(self, layer) -> bool:
        if not _maps_zero_to_zero(layer):
            return False
        if isinstance(layer, keras.layers.BatchNormalization):
            return layer.axis in (-1, len(layer.output.shape) - 1)
        return not layer.weights  # a per-channel weight we do not know how to slice

    def _add_owner(self, key: int, threshold: float, foldable: bool = True) -> None:
        """Record the live units of a layer whose groups decide a space's channels
        (and, if `foldable`, which of them are only a constant)."""
        live = groups.layer_group_norms(self.by_id[key]) > threshold
        if foldable:
            self.kernel_live[key] = live
        self.live[key] = live | self._nonzero_output(self.info[key])

    def _nonzero_output(self, info) -> np.ndarray:
        """Units whose output is not exactly zero even with a zero kernel slice."""
        bias = getattr(info.layer, info.spec.bias, None) if info.spec.bias else None
        keep = np.zeros(info.groups, dtype=bool)
        if bias is not None:
            keep |= np.asarray(ops.convert_to_numpy(bias)) != 0
        if not _maps_zero_to_zero(info.layer):
            keep[:] = True
        return keep

    def _need(self, key: int, channels: np.ndarray) -> None:
        self.needs[key] = self.needs.get(key, False) | channels

    def _derived_spaces(self, members: dict[int, list[int]]) -> None:
        """A space derived from a depthwise convolution with a multiplier keeps whole
        blocks of its input's kept channels: anything there that needs more (a pin,
        a merge, another owner) pins the input; a needed block needs its channel."""
        changed = True
        while changed:
            changed = False
            for key, (source, m) in reversed(self.derived.items()):  # needs flow upstream
                keys = members[self._find(key)]
                if source in self.pinned:
                    continue
                if any(k in self.pinned or k in self.live for k in keys if k != key) or any(
                    _merges(self.by_id[k]) for k in keys
                ):
                    self._pin_inputs_of(self.by_id[source])
                    changed = True
                    continue
                for k in keys:
                    if k in self.needs and k != source:
                        self._need(source, _blocks(self.needs[k], m))

    def _space_keeps(self) -> dict[int, np.ndarray | None]:
        members: dict[int, list[int]] = {}
        for key in self.parent:
            members.setdefault(self._find(key), []).append(key)
        self._derived_spaces(members)
        keeps: dict[int, np.ndarray | None] = {}
        for root, keys in members.items():
            owners = [k for k in keys if k in self.live]
            if not owners or any(k in self.pinned for k in keys):
                keeps[root] = None  # all channels
                continue
            live = np.zeros_like(self.live[owners[0]])
            for k in owners:
                live |= self.live[k]
            for k in keys:
                if k in self.needs:
                    live |= self.needs[k]
            constant = live & ~self.kernel_live.get(owners[0], live)
            if constant.any() and self._plan_folds(keys, owners, live & ~constant):
                live &= ~constant
            if not live.any():
                norms = groups.layer_group_norms(self.by_id[owners[0]])
                live[np.argmax(norms)] = True  # a layer keeps at least one unit
            keeps[root] = None if live.all() else np.flatnonzero(live)
        return keeps

    # -- folding constant channels into consumers' biases -------------------

    def _plan_folds(self, keys: list[int], owners: list[int], kept: np.ndarray) -> bool:
        """Whether the constant channels of a space can all be folded into its
        consumers' biases; if so, record for each consumer the rows it drops and
        their constant values."""
        if len(owners) != 1 or not kept.any():
            return False
        owner = self.by_id[owners[0]]
        if getattr(getattr(owner, "activation", None), "__name__", "") in _NONLOCAL_ACTIVATIONS:
            return False
        inside = set(keys)
        for k in keys:
            layer = self.by_id[k]
            if k != owners[0] and not isinstance(layer, _CONSTANT_MAPS):
                return False  # a merge, padding or depthwise convolution: not constant
        folds = {}
        for k in keys:
            for consumer in self.consumers.get(k, []):
                if id(consumer) in inside:
                    continue
                if not (_rule(consumer) and _folds_constants(consumer)):
                    return False
                if len(self.inputs[id(consumer)]) != 1:
                    return False
                folds[id(consumer)] = self._constants(owner, self.by_id[k], inside)
        if not folds:
            return False
        dropped = np.flatnonzero(~kept)
        for key, values in folds.items():
            consumer = self.by_id[key]
            width = int(consumer.input.shape[-1])
            rows = np.flatnonzero(np.isin(np.arange(width) % values.size, dropped))
            self.fold[key] = (rows, values[rows % values.size])
        return True

    def _constants(self, owner, end, inside: set[int]) -> np.ndarray:
        """Per channel, the value a dead unit of `owner` has at `end`'s output."""
        path = []
        while end is not owner:
            path.append(end)
            end = self.inputs[id(end)][0]
            if id(end) not in inside:  # _plan_folds admits single-input layers only
                raise RuntimeError(f"compact: '{end.name}' is outside the folded space")
        bias = getattr(owner, "bias", None)
        value = np.zeros(self.live[id(owner)].size, "float32")
        if bias is not None:
            value = np.asarray(ops.convert_to_numpy(bias), "float32")
        activation = getattr(owner, "activation", None)
        for layer in [activation, *reversed(path)]:
            if layer is None or isinstance(layer, _CONSTANT_IDENTITY):
                continue
            if isinstance(layer, keras.layers.BatchNormalization):
                value = _bn_apply(layer, value)
            else:
                value = np.asarray(ops.convert_to_numpy(layer(ops.convert_to_tensor(value[None]))))
                value = value[0]
        return value.astype("float32")

    # -- what each layer output keeps ---------------------------------------

    def keep(self, layer) -> np.ndarray | None:
        """Kept channel indices of `layer`'s output (None: all of them)."""
        key = id(layer)
        if key not in self.parent:  # the model's inputs
            return None
        if isinstance(layer, keras.layers.Concatenate) and key not in self.pinned:
            parts, offset, changed = [], 0, False
            for source in self.inputs[key]:
                width = _channels(source)
                kept = self.keep(source)
                changed |= kept is not None
                parts.append(offset + (np.arange(width) if kept is None else kept))
                offset += width
            return np.concatenate(parts) if changed else None
        if key in self.pinned or self.keep_space.get(self._find(key)) is None:
            return None
        if key in self.passthrough:
            source = self.inputs[key][0]
            kept = self.keep(source)
            if kept is None or not isinstance(layer, keras.layers.Flatten):
                return kept
            return _input_rows(kept, _channels(source), _channels(layer))
        return self.keep_space.get(self._find(key))

    def input_keep(self, layer) -> np.ndarray | None:
        inputs = self.inputs.get(id(layer))
        return self.keep(inputs[0]) if inputs and len(inputs) == 1 else None


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
        A new model of standard Keras layers whose outputs equal `model`'s. Nested
        Sequential or functional models are inlined: the result is one flat
        functional model.

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
    graph.graph_model(model)
    if graph.has_nested(model):
        model = graph.inline(model)
    plan = _Plan(model, threshold)

    def clone(layer):
        config = _clean_config(layer.get_config())
        rule = _rule(layer)
        kept = plan.keep(layer) if id(layer) in plan.live else None
        if rule is not None and kept is not None:
            config[rule["size_arg"]] = int(kept.size)
        if id(layer) in plan.fold and not config.get("use_bias", True):
            config["use_bias"] = True  # the folded constants need a bias
        return type(layer).from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    for old_layer, new_layer in zip(model.layers, new.layers):
        new_layer.set_weights(_new_weights(old_layer, plan))
    return new


def _new_weights(layer, plan: _Plan) -> list[np.ndarray]:
    weights = [np.asarray(ops.convert_to_numpy(w)) for w in layer.weights]
    if id(layer) in plan.derived:  # kernel (..., channels, m): input channels; bias: blocks
        in_keep, out_keep = plan.input_keep(layer), plan.keep(layer)
        if in_keep is None:
            return weights
        return [_slice(w, -2, in_keep) if w.ndim > 1 else _slice(w, 0, out_keep) for w in weights]
    if isinstance(layer, keras.layers.BatchNormalization) or id(layer) in plan.depthwise:
        kept = plan.keep(layer)  # per-channel weights, channels last
        if kept is None:
            return weights
        return [_slice(w, -2 if w.ndim > 1 else -1, kept) for w in weights]
    info, rule = plan.info.get(id(layer)), _rule(layer)
    if info is None or rule is None:
        return weights
    names = [w.path.split("/")[-1] for w in layer.weights]
    out_keep = plan.keep(layer) if id(layer) in plan.live else None
    in_keep = plan.input_keep(layer)
    by_name = dict(zip(names, weights))
    bias = by_name.get(info.spec.bias) if info.spec.bias else None
    if id(layer) in plan.fold:  # constants of removed inputs move into the bias
        rows, values = plan.fold[id(layer)]
        kernel = by_name[info.spec.weight]
        shape = [1] * kernel.ndim
        shape[rule["in_axis"]] = values.size
        part = _slice(kernel, rule["in_axis"], rows) * values.reshape(shape)
        axes = tuple(a for a in range(kernel.ndim) if a != rule["out_axis"] % kernel.ndim)
        bias = (0.0 if bias is None else bias) + part.sum(axis=axes)
    result = []
    for name, w in zip(names, weights):
        if name == info.spec.weight:
            if out_keep is not None:
                w = _slice(w, rule["out_axis"], out_keep)
            if in_keep is not None:
                repeat = int(getattr(layer, rule["in_repeat"])) if rule["in_repeat"] else 1
                rows = (in_keep[:, None] * repeat + np.arange(repeat)).reshape(-1)
                w = _slice(w, rule["in_axis"], rows)
        elif name in rule["input_weights"] and in_keep is not None:
            w = _slice(w, rule["input_weights"][name], in_keep)
        elif name == info.spec.bias:
            w = bias if out_keep is None else _slice(bias, 0, out_keep)
        result.append(w)
        if name == info.spec.weight and info.spec.bias not in names and id(layer) in plan.fold:
            result.append(bias if out_keep is None else _slice(bias, 0, out_keep))
    return result
