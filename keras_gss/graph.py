"""How prunable layers feed each other, and what they cost.

For each prunable layer: the coupled group (`keras_gss.dependency`) of each of
its groups, the coupled groups of its input channels (through activations,
pooling, batch normalization, Flatten rows, Concatenate offsets, residual
Adds, ...), whether each group can be removed once zeroed, and its dense cost in
FLOPs (2 x multiply-adds per example; both halves of a separable convolution).
A coupled group removes the output slices of every layer that writes it and the
input slices of every layer that reads it: that is what compaction removes and
what FLOP counts and cost-aware ranking take into account.

Example:

>>> import keras_gss as gss
>>> infos = gss.graph.describe(gss.models.lenet())
>>> bool((infos[1].inputs == infos[0].coupled).all())  # conv2 reads conv1's groups
True
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from keras_gss import dependency, groups


@dataclasses.dataclass(eq=False)
class LayerInfo:
    """One prunable layer: its groups, graph position and dense cost."""

    layer: keras.layers.Layer
    spec: groups.GroupSpec
    groups: int
    group_size: int
    is_output: bool
    dense_flops: float
    frozen: bool = False  # trainable=False: measured, never pruned
    activations: int = 1  # values one group writes per example (its output positions)
    excluded: bool = False  # outside the `layers` a pruner was given: measured, never pruned
    coupled: np.ndarray | None = None  # the coupled group of each of its groups
    inputs: np.ndarray | None = None  # the coupled group of each input channel it reads
    removable: np.ndarray | None = None  # per group: can be removed once zeroed
    input_flops: float = 0.0  # part of dense_flops that scales with live inputs only
    rounds: bool = True  # `round_to` applies to its groups (not to attention heads)
    dependency: dependency.Dependency | None = None

    @property
    def weights(self) -> int:
        return self.groups * self.group_size

    @property
    def protected(self) -> bool:
        """Never pruned: the model's output units, a frozen or an excluded layer."""
        return self.is_output or self.frozen or self.excluded

    def out_fraction(self, dead: np.ndarray) -> float:
        """Share of its groups live when the coupled groups `dead` are removed."""
        return float(np.mean(~dead[self.coupled]))

    def in_fraction(self, dead: np.ndarray) -> float:
        """Share of its input channels live when the coupled groups `dead` are removed."""
        return 1.0 if self.inputs is None else float(np.mean(~dead[self.inputs]))

    def input_squares(self) -> np.ndarray | None:
        """Per input channel (aligned with `inputs`): the mean square of the kernel
        weights that read it, at their current values; None where it reads no
        traced channels."""
        calls = [] if self.dependency is None else self.dependency.calls_of(self.layer)
        if self.inputs is None or not calls:
            return None
        if not isinstance(calls[0].handler, dependency.Producer):
            return None
        squares = calls[0].handler.input_squares(self.layer)
        return squares if squares.size == self.inputs.size else None


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


def _positions(shape) -> int:
    return int(math.prod(d or 1 for d in shape[1:-1]))


def describe(model: keras.Model) -> list[LayerInfo]:
    """A `LayerInfo` for each prunable layer of `model`, in model order.

    Coupled groups are numbered once for the whole model (`dead` arrays passed to
    `live_flops` and the like are indexed by them). A subclassed model has no
    graph: each group is then its own coupled group and inputs are not followed.
    """
    layers = groups.prunable_layers(model)
    outputs = {id(layer) for layer in groups.output_layers(model)}
    try:
        dep = dependency.analyze(model)
        could_remove = dep.removable(zeroed=True)
    except TypeError:  # subclassed: no graph
        dep = None
    size = 0 if dep is None else len(dep.parent)
    infos = []
    for layer in layers:
        spec = groups.get_spec(layer)
        shape = tuple(groups.layer_weight(layer, spec).shape)
        count, group_size = groups.group_shape(shape, spec.axis)
        calls = [] if dep is None else dep.calls_of(layer)
        info = LayerInfo(
            layer=layer,
            spec=spec,
            groups=count,
            group_size=group_size,
            is_output=id(layer) in outputs,
            dense_flops=2.0 * math.prod(shape),
            frozen=not layer.trainable,
            dependency=dep,
        )
        out = calls[0].handler.grouped(dep, calls[0]) if calls else None
        if out is not None and len(out.ids) == count:
            info.coupled = dep.root[out.ids]
            info.removable = could_remove[out.ids]
            info.activations = _positions(out.shape[: out.axis] + out.shape[out.axis + 1 :] + (1,))
            if isinstance(calls[0].handler, dependency.Producer) and calls[0].ins:
                info.inputs = dep.root[calls[0].ins[0].ids]
            info.dense_flops = sum(c.handler.flops(c, 1.0, 1.0) for c in calls)
            info.input_flops = sum(c.handler.flops(c, 1.0, 0.0) for c in calls)
            info.rounds = calls[0].handler.rounds
        else:  # no graph, or a layer type whose groups are not its output channels
            info.coupled = np.arange(size, size + count)
            info.removable = np.full(count, dep is None)
            size += count
        infos.append(info)
    return infos


class Units:
    """The coupled groups that the prunable layers' groups form: each *unit* is
    pruned whole (every member group of every layer at once).

    `members[u]` lists `(layer index, group indices)`; a unit's *family* is the
    set of layers it spans (one layer in a chain, every layer writing into a
    residual stream in a ResNet): floors and `round_to` apply per family (`rounds[f]`:
    whether `round_to` applies; not to attention heads).
    """

    def __init__(self, infos: list[LayerInfo]):
        by_root: dict[int, list[tuple[int, int]]] = {}
        for i, info in enumerate(infos):
            for j, root in enumerate(info.coupled.tolist()):
                by_root.setdefault(root, []).append((i, j))
        self.root = np.array(list(by_root), dtype=np.int64)
        self.members = []
        for slots in by_root.values():
            per_layer: dict[int, list[int]] = {}
            for i, j in slots:
                per_layer.setdefault(i, []).append(j)
            self.members.append([(i, np.array(js)) for i, js in per_layer.items()])
        keys = [tuple(i for i, _ in m) for m in self.members]
        index = {key: k for k, key in enumerate(dict.fromkeys(keys))}
        self.family = np.array([index[key] for key in keys], dtype=np.int64)
        self.families = len(index)
        self.rounds = np.array([all(infos[i].rounds for i in key) for key in index], dtype=bool)
        self.prunable = np.array(
            [
                all(not infos[i].protected and infos[i].removable[js].all() for i, js in m)
                for m in self.members
            ],
            dtype=bool,
        )

    def __len__(self) -> int:
        return len(self.members)

    def gather(self, per_layer: list[np.ndarray], reduce=np.sum) -> np.ndarray:
        """Per unit: `reduce` over the values of its member groups."""
        return np.array(
            [reduce(np.concatenate([per_layer[i][js] for i, js in m])) for m in self.members]
        )

    def scatter(self, values: np.ndarray, infos: list[LayerInfo], fill=0.0) -> list:
        """Per layer: each group gets its unit's value."""
        out = [np.full(info.groups, fill, dtype=np.asarray(values).dtype) for info in infos]
        for value, m in zip(values, self.members):
            for i, js in m:
                out[i][js] = value
        return out


def coupled_size(infos: list[LayerInfo]) -> int:
    """How many coupled-group ids `infos` use (the length of a `dead` array)."""
    sizes = [int(info.coupled.max()) + 1 for info in infos if info.coupled.size]
    if infos and infos[0].dependency is not None:
        sizes.append(len(infos[0].dependency.parent))
    return max(sizes, default=0)


def dead_groups(infos: list[LayerInfo], masks: list[np.ndarray]) -> np.ndarray:
    """Coupled groups removed once the layers' groups `masks` (True: live) are: those
    that can be removed and whose every member is dead."""
    live = np.zeros(coupled_size(infos), dtype=bool)
    seen = np.zeros_like(live)
    for info, mask in zip(infos, masks):
        np.logical_or.at(live, info.coupled, mask | ~info.removable)
        seen[info.coupled] = True
    return seen & ~live


def _live_cost(info: LayerInfo, dead: np.ndarray, dense: float, inputs_only: float) -> float:
    fin = info.in_fraction(dead)
    return inputs_only * fin + (dense - inputs_only) * fin * info.out_fraction(dead)


def live_flops(infos: list[LayerInfo], dead: np.ndarray) -> float:
    """FLOPs per example once the coupled groups `dead` are removed (their output
    slices and the input slices they fed)."""
    return sum(_live_cost(i, dead, i.dense_flops, i.input_flops) for i in infos)


def fixed_flops(infos: list[LayerInfo]) -> float:
    """FLOPs of the layers whose channels are never pruned (MultiHeadAttention)."""
    dep = infos[0].dependency if infos else None
    if dep is None:
        return 0.0
    prunable = {id(info.layer) for info in infos}
    return float(sum(c.handler.flops(c, 1.0, 1.0) for c in dep.calls if id(c.op) not in prunable))


def flop_ratio(infos: list[LayerInfo], dead: np.ndarray) -> float:
    """`live_flops` plus `fixed_flops` over all dense FLOPs: the share left."""
    fixed = fixed_flops(infos)
    total = sum(info.dense_flops for info in infos) + fixed
    return (live_flops(infos, dead) + fixed) / max(1.0, total)


def live_weights(infos: list[LayerInfo], dead: np.ndarray) -> float:
    """Grouped-weight entries left once the coupled groups `dead` are removed."""
    return sum(_live_cost(i, dead, i.weights, 0.0) for i in infos)


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
        if not isinstance(op, keras.layers.Layer):
            return op  # a keras.ops call: no weights, reused as it is
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
    # the inputs as the model takes them (one tensor, a list or a dict), so that calling
    # the flat model like the original raises no structure warning
    flat = keras.Model(keras.tree.pack_sequence_as(outer.input, inputs), outputs, name=model.name)
    for old, new in copies.values():
        new.set_weights([keras.ops.convert_to_numpy(w) for w in old.weights])
    return flat
