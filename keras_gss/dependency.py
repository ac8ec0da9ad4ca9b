"""Coupled channel groups: every (layer, channel) slot that must be removed together.

The layer graph is walked once (nested models and plain `keras.ops` calls
included) and every channel of every tensor gets an id; ids that must go
together are joined (union-find). One *coupled group* is one id class: the
output slices of every kernel that writes the channel (all producers into a
residual `Add`, the squeeze-excite expansion that multiplies it), the
BatchNormalization and depthwise parameters of that channel, and the input
slices of every kernel that reads it (through pooling, Flatten rows,
Concatenate offsets, Reshape and element-wise `keras.ops`).

What a layer type does to channels is said by one *handler* per layer type
(`handler_for`; users add theirs with `register_handler`, or
`keras_gss.register_layer` / `register_compaction` for a new kernel layer).
Anything without a handler *pins* its channels: they are kept, never a crash.
Model inputs, model outputs, LayerNormalization over channels, softmax over
channels, grouped convolutions and `channels_first` tensors read on the wrong
axis pin too.

A group is *removable* when it is not pinned and every kernel that reads it
sees an exact zero, or a constant it can fold into its bias (a Dense layer, a
'valid' or 1x1 convolution); constants are propagated through the graph
(relu of a negative bias is an exact zero). `compact` removes exactly the
removable groups; `model_stats` and the pruners count exactly them.

Example:

>>> import keras, keras_gss as gss
>>> x = keras.Input((8, 8, 4))
>>> a = keras.layers.Conv2D(4, 3, padding="same", name="a")(x)
>>> b = keras.layers.Conv2D(4, 1, name="b")(x)
>>> y = keras.layers.Conv2D(2, 1, name="out")(keras.layers.Add()([a, b]))
>>> dep = gss.dependency.analyze(keras.Model(x, y))
>>> bool((dep.roots(dep.outputs_of("a")) == dep.roots(dep.outputs_of("b"))).all())
True
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from keras_gss import groups

L = keras.layers
_NONLOCAL_ACTIVATIONS = {"softmax", "log_softmax"}


@dataclasses.dataclass(eq=False)
class Chan:
    """The channels of one tensor: an id per position of its channel axis."""

    ids: np.ndarray
    axis: int  # the channel axis, counted with the batch axis
    shape: tuple  # the tensor's shape, batch included
    free: bool = False  # pinned whole (a model input, an unknown op): any axis may be read


@dataclasses.dataclass(eq=False)
class Call:
    """One call of an operation in the walked graph."""

    op: object
    handler: Handler
    ins: list[Chan]
    outs: list[Chan]
    node: object


def _channel_axis(layer, rank: int) -> int:
    if getattr(layer, "data_format", "channels_last") == "channels_first" and rank > 2:
        return 1
    return rank - 1


def _activation(layer, values: np.ndarray) -> np.ndarray:
    """`layer.activation` applied to a vector of per-channel constants."""
    activation = getattr(layer, "activation", None)
    if activation is None or not np.isfinite(values).any():
        return values
    finite = np.where(np.isfinite(values), values, 0.0).astype("float32")
    out = np.asarray(ops.convert_to_numpy(activation(ops.convert_to_tensor(finite[None]))))[0]
    return np.where(np.isfinite(values), out, np.nan)


def _nonlocal(layer) -> bool:
    name = getattr(getattr(layer, "activation", None), "__name__", "")
    return name in _NONLOCAL_ACTIVATIONS


def _numpy(variable) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(variable))


# -- handlers -------------------------------------------------------------------


class Handler:
    """What one layer type (or `keras.ops` operation) does to channels.

    `trace` maps the input channels to the output channels (joining ids that
    must go together, pinning what it cannot follow); `constant` maps per-channel
    constants (NaN: not constant); `flops` is the cost per example at the given
    live fractions of input and output channels; `config` and `weights` slice a
    layer for `compact`. The base class pins everything it sees. `rounds`: whether
    `round_to` applies to its groups (channels do; attention heads do not).
    """

    rounds = True

    def trace(self, dep: Dependency, op, node, ins: list[Chan]) -> list[Chan]:
        for chan in ins:
            dep.pin(chan)
        dep.pinned_nodes.add(id(node))
        return [dep.fresh(t, pinned=True) for t in node.output_tensors]

    def constant(self, dep: Dependency, call: Call, consts: list[np.ndarray], zeroed: bool):
        return [np.full(len(c.ids), np.nan) for c in call.outs]

    def flops(self, call: Call, in_frac: float, out_frac: float) -> float:
        return 0.0

    def grouped(self, dep: Dependency, call: Call) -> Chan | None:
        """The channels the layer's groups index (its output channels; heads)."""
        return call.outs[0] if call.outs else None

    def inner_constants(self, dep: Dependency, call: Call, zeroed: bool) -> list[tuple]:
        """`(Chan, constants)` of channels inside the layer (none but heads)."""
        return []

    def config(self, layer, config: dict, in_keep, out_keep, fold) -> dict:
        return config

    def weights(self, layer, weights: dict, in_keep, out_keep, fold) -> dict:
        return weights


class Pin(Handler):
    """Unknown layers and operations: their channels stay."""


class Attention(Handler):
    """MultiHeadAttention: its input and output channels stay; its groups are its
    heads, each its own coupled group. A head whose slice of the output projection
    is zero adds nothing and goes whole: `num_heads` shrinks and its query, key,
    value and output slices are removed. FLOPs: the four projections and the
    attention itself (scores and the weighted sum), all in proportion to the heads.
    A layer with other weights (a gate) keeps its heads."""

    rounds = False  # round_to is for channel widths: heads are pruned one at a time
    size_arg = "num_heads"
    # where each weight indexes heads (its path inside the layer)
    _HEAD_AXIS = {"query/kernel": 1, "key/kernel": 1, "value/kernel": 1, "query/bias": 0,
                  "key/bias": 0, "value/bias": 0, "attention_output/kernel": 0}  # fmt: skip

    @staticmethod
    def _keys(layer) -> list[str]:
        return ["/".join(w.path.split("/")[-2:]) for w in layer.weights]

    def trace(self, dep, op, node, ins):
        for chan in ins:
            dep.pin(chan)
        outs = [dep.fresh(t, pinned=True) for t in node.output_tensors]
        if id(op) in dep.produced:  # a shared layer: the same heads
            return outs
        query = node.input_tensors[0]
        heads = dep.fresh(_Shape((*query.shape[:-1], op.num_heads)))
        known = set(self._HEAD_AXIS) | {"attention_output/bias"}
        if not set(self._keys(op)) <= known:
            dep.pin(heads)
        dep.produced[id(op)] = (None, heads)
        dep.readers.append((op, self, heads))  # removable where the head writes zero
        return outs

    def grouped(self, dep, call):
        return dep.produced[id(call.op)][1]

    def inner_constants(self, dep, call, zeroed):
        heads = self.grouped(dep, call)
        if zeroed:
            return [(heads, np.zeros(len(heads.ids)))]
        dead = groups.layer_group_norms(call.op) <= dep.threshold
        return [(heads, np.where(dead, 0.0, np.nan))]

    def folds(self, layer) -> bool:
        return False

    def flops(self, call, in_frac, out_frac):
        layer, tensors = call.op, call.node.input_tensors
        q_len = math.prod(d or 1 for d in tensors[0].shape[1:-1])
        kv_len = math.prod(d or 1 for d in tensors[min(1, len(tensors) - 1)].shape[1:-1])
        q, k, v, o = (
            getattr(layer, f"_{n}_dense").kernel.shape for n in ("query", "key", "value", "output")
        )
        heads, key_dim, value_dim = q[-2], q[-1], v[-1]
        total = math.prod(q) * q_len + (math.prod(k) + math.prod(v)) * kv_len
        total += math.prod(o) * q_len + q_len * kv_len * heads * (key_dim + value_dim)
        return 2.0 * total * out_frac

    def config(self, layer, config, in_keep, out_keep, fold):
        if out_keep is not None:
            config[self.size_arg] = int(out_keep.size)
        return config

    def weights(self, layer, weights, in_keep, out_keep, fold):
        if out_keep is None:
            return weights
        return {
            key: value if key not in self._HEAD_AXIS
            else np.take(value, out_keep, axis=self._HEAD_AXIS[key])
            for key, value in weights.items()
        }  # fmt: skip


@dataclasses.dataclass
class _Shape:
    """A shape that `Dependency.fresh` numbers like a tensor's (heads have no tensor)."""

    shape: tuple


def _same(dep: Dependency, chan: Chan, tensor, axis: int | None = None) -> Chan:
    shape = tuple(tensor.shape)
    return Chan(chan.ids, len(shape) - 1 if axis is None else axis, shape)


class Producer(Handler):
    """A kernel layer that writes new channels from all of its input channels
    (Dense, Conv*, Conv*Transpose, SeparableConv*): the groups keras-gss prunes.

    Args:
        size_arg: the constructor argument holding the number of output channels.
        out_axis: kernel axis of output channels; in_axis: of input channels.
        input_weights: other weights indexed by input channels, `{name: axis}`.
        in_repeat: attribute holding how many kernel rows each input channel owns.
    """

    def __init__(self, size_arg, out_axis, in_axis, input_weights=None, in_repeat=None):
        self.size_arg, self.out_axis, self.in_axis = size_arg, out_axis, in_axis
        self.input_weights = dict(input_weights or {})
        self.in_repeat = in_repeat

    def _spec(self, layer):
        return groups.get_spec(layer) or groups.GroupSpec()

    def trace(self, dep, op, node, ins):
        (out,) = node.output_tensors
        axis = _channel_axis(op, len(out.shape))
        if len(ins) != 1 or getattr(op, "groups", 1) != 1:
            return super().trace(dep, op, node, ins)
        read = dep.read(ins[0], _channel_axis(op, len(ins[0].shape)))
        if read is None:  # channels on another axis: its inputs stay whole
            dep.pin(ins[0])
            read = ins[0]
        ins[0] = read  # the call reads its input along this axis
        key = id(op)
        if key in dep.produced:  # a shared layer: the same weights, the same channels
            first_in, first_out = dep.produced[key]
            if len(first_in.ids) != len(read.ids):
                return super().trace(dep, op, node, ins)
            dep.union(first_in.ids, read.ids)
            chan = Chan(first_out.ids, axis, tuple(out.shape))
        else:
            chan = dep.fresh(out, axis=axis, pinned=_nonlocal(op))
            dep.produced[key] = (read, chan)
        dep.readers.append((op, self, read))
        return [chan]

    def constant(self, dep, call, consts, zeroed):
        layer = call.op
        n = len(call.outs[0].ids)
        if zeroed:
            return [_activation(layer, np.zeros(n))]
        spec = self._spec(layer)
        kernel = _numpy(getattr(layer, spec.weight))
        dead = groups.group_norms_numpy(kernel, spec.axis) <= dep.threshold
        bias = getattr(layer, spec.bias, None) if spec.bias else None
        value = np.zeros(n) if bias is None else _numpy(bias).astype("float64")
        return [_activation(layer, np.where(dead, value, np.nan))]

    def input_squares(self, layer) -> np.ndarray:
        """Per input channel: the mean square of the kernel weights that read it."""
        kernel = np.moveaxis(_numpy(getattr(layer, self._spec(layer).weight)), self.in_axis, 0)
        repeat = int(getattr(layer, self.in_repeat)) if self.in_repeat else 1
        return (kernel.reshape(kernel.shape[0] // repeat, -1).astype("float64") ** 2).mean(axis=1)

    def folds(self, layer) -> bool:
        """Whether a constant input channel is the same constant at every kernel tap."""
        if isinstance(layer, L.Dense):
            return True
        if not isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)) or isinstance(
            layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
        ):
            return False
        return layer.padding == "valid" or all(k == 1 for k in layer.kernel_size)

    def flops(self, call, in_frac, out_frac):
        layer = call.op
        total = 0.0
        for name, _ in self.input_weights.items():  # a separable conv's depthwise half
            total += 2.0 * math.prod(getattr(layer, name).shape) * _positions(call, False)
        spec = self._spec(layer)
        kernel = math.prod(getattr(layer, spec.weight).shape)
        transpose = self.out_axis == -2
        return total * in_frac + 2.0 * kernel * _positions(call, transpose) * in_frac * out_frac

    def config(self, layer, config, in_keep, out_keep, fold):
        if out_keep is not None:
            config[self.size_arg] = int(out_keep.size)
        if fold is not None and not config.get("use_bias", True):
            config["use_bias"] = True  # the folded constants need a bias
        return config

    def weights(self, layer, weights, in_keep, out_keep, fold):
        spec = self._spec(layer)
        kernel = weights[spec.weight]
        bias = weights.get(spec.bias) if spec.bias else None
        if fold is not None:  # constants of removed inputs move into the bias
            rows, values = fold
            shape = [1] * kernel.ndim
            shape[self.in_axis] = values.size
            part = np.take(kernel, rows, axis=self.in_axis) * values.reshape(shape)
            axes = tuple(a for a in range(kernel.ndim) if a != self.out_axis % kernel.ndim)
            bias = (0.0 if bias is None else bias) + part.sum(axis=axes).astype(kernel.dtype)
        if out_keep is not None:
            kernel = np.take(kernel, out_keep, axis=self.out_axis)
            bias = None if bias is None else np.take(bias, out_keep, axis=0)
        if in_keep is not None:
            repeat = int(getattr(layer, self.in_repeat)) if self.in_repeat else 1
            rows = (in_keep[:, None] * repeat + np.arange(repeat)).reshape(-1)
            kernel = np.take(kernel, rows, axis=self.in_axis)
            for name, axis in self.input_weights.items():
                weights[name] = np.take(weights[name], in_keep, axis=axis)
        weights[spec.weight] = kernel
        if bias is not None:
            weights[spec.bias or "bias"] = bias
        return weights


def _positions(call: Call, use_input: bool) -> int:
    """Spatial positions of a call's output (its input's for a transposed conv)."""
    chan = call.ins[0] if use_input else call.outs[0]
    return int(math.prod(d or 1 for i, d in enumerate(chan.shape) if i not in (0, chan.axis)))


class Depthwise(Handler):
    """DepthwiseConv*: input channel c owns outputs c*m ... c*m + m - 1, one group."""

    def trace(self, dep, op, node, ins):
        (out,) = node.output_tensors
        read = dep.read(ins[0], _channel_axis(op, len(ins[0].shape))) if len(ins) == 1 else None
        if read is None:
            return super().trace(dep, op, node, ins)
        ins[0] = read
        if id(op) in dep.produced:
            dep.union(dep.produced[id(op)][0].ids, read.ids)
        else:
            dep.produced[id(op)] = (read, None)
        m = int(op.depth_multiplier)
        return [Chan(np.repeat(read.ids, m), _channel_axis(op, len(out.shape)), tuple(out.shape))]

    def constant(self, dep, call, consts, zeroed):
        layer, m = call.op, int(call.op.depth_multiplier)
        n = len(call.outs[0].ids)
        if zeroed:
            return [_activation(layer, np.zeros(n))]
        kernel = _numpy(layer.kernel)
        dead = np.abs(kernel).reshape(-1, n).max(axis=0) <= 0
        dead |= np.repeat(consts[0] == 0, m)
        bias = np.zeros(n) if layer.bias is None else _numpy(layer.bias).astype("float64")
        return [_activation(layer, np.where(dead, bias, np.nan))]

    def flops(self, call, in_frac, out_frac):
        return 2.0 * math.prod(call.op.kernel.shape) * _positions(call, False) * out_frac

    def weights(self, layer, weights, in_keep, out_keep, fold):
        if in_keep is not None:
            weights["kernel"] = np.take(weights["kernel"], in_keep, axis=-2)
        if out_keep is not None and "bias" in weights:
            weights["bias"] = np.take(weights["bias"], out_keep, axis=0)
        return weights


class PerChannel(Handler):
    """Layers whose output channel c depends on input channel c only (activations,
    pooling, dropout, padding, normalization per channel, ...).

    Args:
        zero_preserving: whether a zero channel stays zero (False for padding
            with a non-zero constant: it is then not a constant any more).
        sliced: weights indexed by channel on their last axis, sliced by `compact`.
    """

    def __init__(self, sliced: tuple[str, ...] = ()):
        self.sliced = sliced

    def _axis(self, op, rank: int, current: int) -> int:
        """The channel axis it reads (and writes, at the output's rank); an
        element-wise layer (no `data_format`) takes its input's."""
        return _channel_axis(op, rank) if hasattr(op, "data_format") else current

    def trace(self, dep, op, node, ins):
        (out,) = node.output_tensors
        if len(ins) != 1:
            return super().trace(dep, op, node, ins)
        read = dep.read(ins[0], self._axis(op, len(ins[0].shape), ins[0].axis))
        if read is None:
            return super().trace(dep, op, node, ins)
        ins[0] = read  # the call reads its input along this axis
        if isinstance(op, L.Layer) and any(
            w.path.split("/")[-1] not in self.sliced for w in op.weights
        ):
            return super().trace(dep, op, node, ins)  # a weight we cannot slice
        if self.sliced:
            dep.followers.append((op, ins[0]))
        return [_same(dep, read, out, self._axis(op, len(out.shape), read.axis))]

    def constant(self, dep, call, consts, zeroed):
        return [self._map(call.op, consts[0], zeroed)]

    def _map(self, op, value, zeroed):
        return value

    def weights(self, layer, weights, in_keep, out_keep, fold):
        if in_keep is not None:
            for name in self.sliced:
                if name in weights:
                    weights[name] = np.take(weights[name], in_keep, axis=-1)
        return weights


class Elementwise(PerChannel):
    """Activation layers: a constant channel c maps to f(c)."""

    def _map(self, op, value, zeroed):
        if not np.isfinite(value).any():
            return value
        finite = np.where(np.isfinite(value), value, 0.0).astype("float32")
        out = np.asarray(ops.convert_to_numpy(op(ops.convert_to_tensor(finite[None]))))[0]
        return np.where(np.isfinite(value), out, np.nan)

    def trace(self, dep, op, node, ins):
        if isinstance(op, L.Activation) and _nonlocal(op):
            return Handler.trace(self, dep, op, node, ins)
        if isinstance(op, L.Softmax):
            return Handler.trace(self, dep, op, node, ins)
        return super().trace(dep, op, node, ins)


class Padding(PerChannel):
    """ZeroPadding*: a zero channel stays zero, any other constant does not."""

    def _map(self, op, value, zeroed):
        return np.where(value == 0, 0.0, np.nan)


class BatchNorm(PerChannel):
    """BatchNormalization over the channel axis: pruning zeroes gamma and beta."""

    def __init__(self):
        super().__init__(("gamma", "beta", "moving_mean", "moving_variance"))

    def _axis(self, op, rank, current):
        return op.axis % rank

    def _map(self, op, value, zeroed):
        if zeroed:
            return np.zeros_like(value)
        gamma = _numpy(op.gamma) if op.gamma is not None else np.ones_like(value)
        beta = _numpy(op.beta) if op.beta is not None else np.zeros_like(value)
        mean, var = _numpy(op.moving_mean), _numpy(op.moving_variance)
        out = beta + gamma * (value - mean) / np.sqrt(var + op.epsilon)
        return np.where(gamma == 0, beta, out)


class PReLUHandler(PerChannel):
    def __init__(self):
        super().__init__(("alpha",))

    def _axis(self, op, rank, current):
        return rank - 1

    def _map(self, op, value, zeroed):
        alpha = _numpy(op.alpha).reshape(-1, len(value))
        uniform = (alpha == alpha[0]).all(axis=0)
        return np.where(value >= 0, value, np.where(uniform, alpha[0] * value, np.nan))


class Routing(Handler):
    """Layers that move channel positions around (Flatten, Reshape, Concatenate):
    a constant moves with its channel."""

    def route(self, dep, op, node, ins) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(input number, input position) per output position, and the output axis."""
        raise NotImplementedError

    def trace(self, dep, op, node, ins):
        routed = self.route(dep, op, node, ins)
        if routed is None:
            return super().trace(dep, op, node, ins)
        source, position, axis = routed
        dep.routes[id(node)] = (source, position)
        ids = np.array([ins[s].ids[p] for s, p in zip(source, position)], dtype=np.int64)
        out = node.output_tensors[0]
        return [Chan(ids, axis, tuple(out.shape))]

    def constant(self, dep, call, consts, zeroed):
        source, position = dep.routes[id(call.node)]
        return [np.array([consts[s][p] for s, p in zip(source, position)], dtype=np.float64)]


class FlattenHandler(Routing):
    def route(self, dep, op, node, ins):
        (chan,) = ins
        dims = chan.shape[1:]
        if any(d is None for d in dims):
            return None
        index = np.zeros(dims, dtype=np.int64)
        shape = [1] * len(dims)
        shape[chan.axis - 1] = dims[chan.axis - 1]
        index = index + np.arange(dims[chan.axis - 1]).reshape(shape)
        if getattr(op, "_channels_first", False) and len(dims) > 1:
            index = np.moveaxis(index, 0, -1)
        position = index.reshape(-1)
        return np.zeros(position.size, dtype=np.int64), position, 1


class ReshapeHandler(Routing):
    def route(self, dep, op, node, ins):
        (chan,) = ins
        out = node.output_tensors[0]
        if chan.axis != len(chan.shape) - 1 or out.shape[-1] != chan.shape[-1]:
            return None
        n = len(chan.ids)
        return np.zeros(n, dtype=np.int64), np.arange(n), len(out.shape) - 1

    def config(self, layer, config, in_keep, out_keep, fold):
        if out_keep is not None:
            config["target_shape"] = [*config["target_shape"][:-1], int(out_keep.size)]
        return config


def _concat_axis(op) -> int:
    return int(getattr(op, "axis", -1))


class ConcatHandler(Routing):
    def route(self, dep, op, node, ins):
        out = node.output_tensors[0]
        axis = _concat_axis(op) % len(out.shape)
        if not ins or any(c.axis != ins[0].axis for c in ins):
            return None
        if axis == ins[0].axis:
            source = np.concatenate([np.full(len(c.ids), k) for k, c in enumerate(ins)])
            position = np.concatenate([np.arange(len(c.ids)) for c in ins])
            return source, position, axis
        if any(len(c.ids) != len(ins[0].ids) for c in ins):
            return None
        for chan in ins[1:]:  # joined along another axis: channel c is one channel
            dep.union(ins[0].ids, chan.ids)
        n = len(ins[0].ids)
        return np.zeros(n, dtype=np.int64), np.arange(n), ins[0].axis


class Merge(Handler):
    """Element-wise merges of tensors of one shape (Add, Multiply, ... and their
    `keras.ops` forms): channel c of every input is one channel."""

    def __init__(self, reduce):
        self.reduce = reduce

    def trace(self, dep, op, node, ins):
        joined = _join(dep, node.output_tensors[0], ins)
        return super().trace(dep, op, node, ins) if joined is None else [joined]

    def constant(self, dep, call, consts, zeroed):
        stacked = _stack(consts, len(call.outs[0].ids))
        value = self.reduce(stacked)
        if self.reduce is _product:  # a zero factor makes the product zero
            value = np.where((stacked == 0).any(axis=0), 0.0, value)
        return [value]


def _join(dep: Dependency, out, ins: list[Chan]) -> Chan | None:
    """Channel c of every input of an element-wise operation is one channel; an
    input broadcast along the channels (one channel) is read whole and pinned.
    None when the shapes do not line up on one channel axis."""
    shape = tuple(out.shape)
    full = [c for c in ins if len(c.ids) == shape[-1 if c.axis == len(shape) - 1 else c.axis]]
    if not ins or not full or len(shape) < 2:
        return None
    axis = full[0].axis
    for chan in ins:
        if len(chan.shape) != len(shape) or chan.axis != axis:
            return None
        if any(d not in (1, o) and o is not None for d, o in zip(chan.shape[1:], shape[1:])):
            return None
    for chan in ins:
        if len(chan.ids) == len(full[0].ids):
            dep.union(full[0].ids, chan.ids)
        else:
            dep.pin(chan)
    if len(full[0].ids) != shape[axis]:
        return None
    return Chan(full[0].ids, axis, shape)


def _stack(consts: list[np.ndarray], n: int) -> np.ndarray:
    """The inputs' constants, an input broadcast along the channels repeated."""
    return np.stack([np.broadcast_to(c, (n,)) for c in consts])


def _product(x):
    return np.prod(x, axis=0)


class OpElementwise(Handler):
    """A `keras.ops` call on one tensor (with Python scalars, or a second tensor
    of the same shape): channels pass through; constants are evaluated."""

    def trace(self, dep, op, node, ins):
        args = node.arguments
        for value in [*args.args, *args.kwargs.values()]:
            if not (_is_tensor(value) or isinstance(value, (int, float, bool, str, type(None)))):
                return super().trace(dep, op, node, ins)  # an array argument: unknown
        joined = _join(dep, node.output_tensors[0], ins)
        return super().trace(dep, op, node, ins) if joined is None else [joined]

    def constant(self, dep, call, consts, zeroed):
        stacked = _stack(consts, len(call.outs[0].ids))
        finite = np.isfinite(stacked).all(axis=0)
        values = iter(np.where(np.isfinite(stacked), stacked, 0.0).astype("float32"))
        args = call.node.arguments
        filled = {id(t): ops.convert_to_tensor(next(values)[None]) for t in args.keras_tensors}
        a, kw = args.fill_in(filled)
        out = np.asarray(ops.convert_to_numpy(call.op(*a, **kw)), dtype=np.float64).reshape(-1)
        value = np.where(finite, out, np.nan)
        if type(call.op).__name__ == "Multiply":
            value = np.where((stacked == 0).any(axis=0), 0.0, value)
        return [value]


def _is_tensor(value) -> bool:
    return isinstance(value, keras.KerasTensor)


_HANDLERS: dict[type, Handler] = {}
# keras.ops operations (by class name) that act element by element
_OP_ELEMENTWISE = {
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power",
    "Negative", "Abs", "Absolute", "Square", "Sqrt", "Exp", "Log", "Relu", "Relu6", "Sigmoid",
    "HardSigmoid", "HardSilu", "HardSwish", "Silu", "Swish", "Gelu", "Tanh", "Elu", "Selu",
    "LeakyRelu", "Softplus", "Clip", "Cast", "Mish", "Celu", "Sign",
}  # fmt: skip


def register_handler(layer_cls: type, handler: Handler) -> Handler:
    """Declare what a layer type (and its subclasses) does to channels.

    Example:

    >>> import keras, keras_gss as gss
    >>> class Scale(keras.layers.Layer):  # multiplies by a constant: channels pass
    ...     def call(self, x):
    ...         return 2.0 * x
    >>> _ = gss.dependency.register_handler(Scale, gss.dependency.PerChannel())
    """
    if not isinstance(layer_cls, type):
        raise TypeError(
            f"Invalid value for argument `layer_cls`. Expected a class. Received: {layer_cls!r}"
        )
    if not isinstance(handler, Handler):
        raise TypeError(
            "Invalid value for argument `handler`. Expected a keras_gss.dependency.Handler. "
            f"Received: {handler!r}"
        )
    _HANDLERS[layer_cls] = handler
    return handler


def handler_for(op) -> Handler:
    """The handler of a layer or operation (looked up along its class hierarchy)."""
    for cls in type(op).__mro__:
        if cls in _HANDLERS:
            return _HANDLERS[cls]
    if not isinstance(op, L.Layer) and type(op).__name__ in _OP_ELEMENTWISE:
        return _OP
    if groups.get_spec(op) is not None and groups.get_spec(op).axis == (-1,):
        return _DEFAULT_PRODUCER  # a registered kernel layer, (..., in, out) like Dense
    return _PIN


_PIN = Pin()
_OP = OpElementwise()
_DEFAULT_PRODUCER = Producer("units", -1, -2)


def _register_builtins() -> None:
    register_handler(L.Dense, Producer("units", -1, -2))
    for cls in (L.Conv1D, L.Conv2D, L.Conv3D):
        register_handler(cls, Producer("filters", -1, -2))
    for cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        register_handler(cls, Producer("filters", -2, -1))
    for cls in (L.SeparableConv1D, L.SeparableConv2D):
        register_handler(
            cls, Producer("filters", -1, -2, {"depthwise_kernel": -2}, "depth_multiplier")
        )
    for cls in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        register_handler(cls, Depthwise())
    plain = PerChannel()
    names = (
        "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
        "GaussianDropout", "AlphaDropout", "Identity", "MaxPooling1D", "MaxPooling2D",
        "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
        "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
        "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
        "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D",
        "UpSampling3D", "ActivityRegularization",
    )  # fmt: skip
    for name in names:
        if hasattr(L, name):
            register_handler(getattr(L, name), plain)
    for name in ("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax"):
        register_handler(getattr(L, name), Elementwise())
    for name in ("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D"):
        register_handler(getattr(L, name), Padding())
    register_handler(L.BatchNormalization, BatchNorm())
    register_handler(L.MultiHeadAttention, Attention())
    register_handler(L.PReLU, PReLUHandler())
    register_handler(L.Flatten, FlattenHandler())
    register_handler(L.Reshape, ReshapeHandler())
    register_handler(L.Concatenate, ConcatHandler())
    register_handler(L.Add, Merge(lambda x: x.sum(axis=0)))
    register_handler(L.Subtract, Merge(lambda x: x[0] - x[1]))
    register_handler(L.Average, Merge(lambda x: x.mean(axis=0)))
    register_handler(L.Maximum, Merge(lambda x: x.max(axis=0)))
    register_handler(L.Minimum, Merge(lambda x: x.min(axis=0)))
    register_handler(L.Multiply, Merge(_product))
    register_handler(keras.src.ops.numpy.Concatenate, ConcatHandler())


# -- the analysis ---------------------------------------------------------------


class Dependency:
    """The coupled groups of a model; build it with `analyze`."""

    def __init__(self, threshold: float = 0.0):
        self.threshold = threshold
        self.parent: list[int] = []
        self.pinned_ids: list[np.ndarray] = []
        self.calls: list[Call] = []
        self.produced: dict[int, tuple] = {}  # id(layer) -> (input Chan, output Chan)
        self.readers: list[tuple] = []  # (layer, handler, input Chan) of kernel layers
        self.followers: list[tuple] = []  # (layer, Chan) of per-channel weights
        self.routes: dict[int, tuple] = {}
        self.pinned_nodes: set[int] = set()  # calls whose handler pinned them instead
        self._calls_of: dict[int, list[Call]] = {}

    # union-find over channel ids
    def fresh(self, tensor, axis: int | None = None, pinned: bool = False) -> Chan:
        shape = tuple(tensor.shape)
        axis = len(shape) - 1 if axis is None else axis
        n = shape[axis] if len(shape) > 1 and shape[axis] is not None else 1
        start = len(self.parent)
        ids = np.arange(start, start + n, dtype=np.int64)
        self.parent.extend(ids.tolist())
        chan = Chan(ids, axis, shape)
        if pinned or len(shape) < 2 or shape[axis] is None:
            self.pin(chan)
            chan.free = True
        return chan

    def read(self, chan: Chan, axis: int) -> Chan | None:
        """`chan` read along `axis`: itself, a pinned reading of a wholly pinned tensor,
        or None where the channels lie on another axis."""
        if chan.axis == axis:
            return chan
        if not chan.free or not 0 < axis < len(chan.shape) or chan.shape[axis] is None:
            return None
        start = len(self.parent)
        ids = np.arange(start, start + chan.shape[axis], dtype=np.int64)
        self.parent.extend(ids.tolist())
        self.pinned_ids.append(ids)
        return Chan(ids, axis, chan.shape, free=True)

    def pin(self, chan: Chan) -> None:
        self.pinned_ids.append(chan.ids)

    def _find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        if len(a) != len(b):
            raise ValueError(f"channel counts differ: {len(a)} and {len(b)}")
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self._find(x), self._find(y)
            if rx != ry:
                self.parent[rx] = ry

    def finish(self) -> None:
        self.root = np.array([self._find(i) for i in range(len(self.parent))], dtype=np.int64)
        self.pinned = np.zeros(len(self.parent), dtype=bool)
        for ids in self.pinned_ids:
            self.pinned[self.root[ids]] = True

    def roots(self, chan: Chan) -> np.ndarray:
        """The coupled group (its root id) of every position of `chan`."""
        return self.root[chan.ids]

    # the walk
    def trace(self, model, ins: list[Chan]) -> list[Chan]:
        functional = getattr(model, "_functional", None) or model
        chans = {id(t): c for t, c in zip(functional.inputs, ins)}
        for depth in sorted(functional._nodes_by_depth, reverse=True):
            for node in functional._nodes_by_depth[depth]:
                if node.is_input or not node.operation:
                    continue
                op = node.operation
                node_ins = [chans[id(t)] for t in node.input_tensors]
                if isinstance(op, keras.Model) and _is_graph(op):
                    outs = self.trace(op, node_ins)
                else:
                    handler = handler_for(op)
                    outs = handler.trace(self, op, node, node_ins)
                    call = Call(op, handler, node_ins, outs, node)
                    self.calls.append(call)
                    self._calls_of.setdefault(id(op), []).append(call)
                for t, c in zip(node.output_tensors, outs):
                    chans[id(t)] = c
        return [chans[id(t)] for t in functional.outputs]

    def calls_of(self, layer) -> list[Call]:
        return self._calls_of.get(id(layer), [])

    def outputs_of(self, name: str) -> Chan:
        """The output channels of the (first call of the) layer called `name`."""
        for call in self.calls:
            if getattr(call.op, "name", None) == name:
                return call.outs[0]
        raise KeyError(name)

    # constants and what can be removed
    def constants(self, zeroed: bool = False) -> dict[int, np.ndarray]:
        """Per-channel constant of every tensor (NaN: varies). With `zeroed`, as if
        every kernel slice, bias and BN scale and shift were zero."""
        consts: dict[int, np.ndarray] = {id(c): np.full(len(c.ids), np.nan) for c in self.inputs}
        for call in self.calls:
            ins = [consts.get(id(c), np.full(len(c.ids), np.nan)) for c in call.ins]
            handler = _PIN if id(call.node) in self.pinned_nodes else call.handler
            for chan, value in zip(call.outs, handler.constant(self, call, ins, zeroed)):
                consts[id(chan)] = np.asarray(value, dtype=np.float64)
            for chan, value in handler.inner_constants(self, call, zeroed):
                consts[id(chan)] = np.asarray(value, dtype=np.float64)
        return consts

    def removable(self, zeroed: bool = False) -> np.ndarray:
        """Per channel id: its group can be removed with the model's function kept
        (`zeroed`: could be, once pruned)."""
        consts = self.constants(zeroed)
        bad = self.pinned.copy()
        for layer, handler, chan in self.readers:
            value = consts.get(id(chan), np.full(len(chan.ids), np.nan))
            folds = handler.folds(layer) and len(self.calls_of(layer)) == 1  # one bias each
            ok = (value == 0) | (np.isfinite(value) & folds)
            bad[self.root[chan.ids[~ok]]] = True
        return ~bad[self.root]


def _is_graph(model) -> bool:
    functional = getattr(model, "_functional", None) or model
    return hasattr(functional, "_nodes_by_depth") and bool(getattr(functional, "inputs", None))


def analyze(model: keras.Model, threshold: float = 0.0) -> Dependency:
    """The coupled groups of a built Sequential or functional model.

    Args:
        model: the model (nested Sequential and functional models are followed).
        threshold: kernel slices whose norm is at or below this count as zero
            when deciding what can be removed (default 0: exact zeros).
    """
    dep = Dependency(threshold)
    if not _is_graph(model):
        raise TypeError(
            f"Model '{model.name}' is subclassed ({type(model).__name__}) and has no layer "
            "graph to follow. Build it functionally or with keras.Sequential."
        )
    functional = getattr(model, "_functional", None) or model
    dep.inputs = [dep.fresh(t, pinned=True) for t in functional.inputs]
    for chan in dep.trace(model, dep.inputs):
        dep.pin(chan)
    dep.finish()
    return dep


_register_builtins()
