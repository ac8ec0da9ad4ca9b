"""Put guided-structured-sparsity regularizers on an existing, built model."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import keras
import numpy as np

from keras_gss import graph, groups
from keras_gss._validate import non_negative
from keras_gss.constraints import GroupMask, ProximalGroupLasso
from keras_gss.regularizers import (
    ActivityAttention,
    CoupledRegularizer,
    GuidedStructuredSparsity,
    _GroupRegularizer,
)


def _resolve_layers(model: keras.Model, layers, skip_output: bool) -> list[keras.layers.Layer]:
    prunable = groups.prunable_layers(model)
    lora = groups.lora_layers(model)
    if layers is None:
        if lora:
            warnings.warn(
                f"attach: skipping layers with LoRA enabled ({', '.join(x.name for x in lora)}): "
                "their effective kernel is `kernel + lora_a @ lora_b`, which a group "
                "regularizer on the kernel does not reach. Merge or disable LoRA first.",
                stacklevel=3,
            )
        chosen = [layer for layer in prunable if layer.trainable]  # frozen: report only
        if skip_output:
            outputs = {id(layer) for layer in groups.output_layers(model)}
            chosen = [layer for layer in chosen if id(layer) not in outputs]
    else:
        known = list(groups.iter_layers(model))
        chosen = []
        for layer in graph.find_layers(known, layers, "layer", f"model '{model.name}'"):
            if groups.get_spec(layer) is None:
                raise ValueError(
                    f"Layer '{layer.name}' ({type(layer).__name__}) has no groups to "
                    "regularize. Supported: Dense, Conv*, Conv*Transpose, SeparableConv*, "
                    "DepthwiseConv*; add your own with `keras_gss.register_layer`."
                )
            if groups.lora_enabled(layer):
                raise ValueError(
                    f"Layer '{layer.name}' has LoRA enabled: its effective kernel is "
                    "`kernel + lora_a @ lora_b`, which a group regularizer on the kernel "
                    "does not reach. Merge or disable LoRA before attaching."
                )
            if not layer.trainable:
                raise ValueError(
                    f"Layer '{layer.name}' is frozen (trainable=False): a regularizer would "
                    "add a loss that training cannot lower. Set `trainable=True` first."
                )
            chosen.append(layer)
    if not chosen:
        raise ValueError(
            f"Model '{model.name}' has no prunable layer to attach to (the output layer "
            "is skipped unless `skip_output=False`). Supported: Dense, Conv*, "
            "Conv*Transpose, SeparableConv*, DepthwiseConv*, or types added with "
            "`keras_gss.register_layer`."
        )
    return chosen


def _for_layer(regularizer, spec: groups.GroupSpec):
    """A copy of `regularizer` grouped along this layer type's output axis."""
    if not hasattr(regularizer, "group_axis"):
        return regularizer
    config = regularizer.get_config()
    config["group_axis"] = groups.axis_to_config(spec.axis)
    return type(regularizer).from_config(config)


def reset_traced_functions(model: keras.Model) -> None:
    """Make the next fit/evaluate/predict retrace, so new losses and constraints count."""
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)


def attach(
    model: keras.Model,
    regularizer: keras.regularizers.Regularizer | None = None,
    activity_regularizer: keras.regularizers.Regularizer | None = None,
    layers: Iterable[str | keras.layers.Layer] | None = None,
    skip_output: bool = True,
    proximal: float | None = None,
    coupled: bool = False,
) -> keras.Model:
    """Attach regularizers to the prunable layers of a built model, in place.

    Each chosen layer gets its own copy of `regularizer`, grouped along that layer
    type's output axis, on the grouped weight (what `fit` minimises) and in the
    layer config (what `model.save` writes). A model that was already compiled or
    trained retraces on its next `fit`, so the new terms count at once. Layers of
    nested models are included; a shared layer is regularized once; frozen layers
    (`trainable=False`) are left alone (still measured and reported) and layers
    with LoRA enabled are skipped with a warning.

    Args:
        model: a built Keras model (Sequential, functional or subclassed).
        regularizer: kernel regularizer (default `GuidedStructuredSparsity()`).
        activity_regularizer: optional activity regularizer, e.g.
            `ActivityAttention()` (default None: activity regularizers untouched).
        layers: names or layer objects to regularize (default: every prunable layer).
        skip_output: leave the model's output layer alone when `layers` is None
            (default True).
        proximal: if set, also a `ProximalGroupLasso(proximal)` constraint on each
            chosen kernel: exact zeros during training (default None).
        coupled: regularize coupled groups (`keras_gss.dependency`) as wholes:
            where kernels of several chosen layers write the same channels (every
            convolution adding into a residual stream, a squeeze-excite expansion),
            one `CoupledRegularizer` takes the norm of each channel over all of
            them (default False: each kernel on its own). Not saved with the
            model; the proximal step stays per kernel.

    The default regularizer is the paper's, which our benchmark measured worse
    than a weak plain group lasso with a proximal step: the recommended settings
    are `keras_gss.recipes.for_weights` (`recipe.attach(model)` calls this with
    them) and, for a FLOP target, `recipes.for_flops` (no regularizer at all).

    Groups that are already exactly zero (in a layer that has live ones) get a
    `GroupMask`, so a pruned model whose weights were loaded into a fresh model
    (`save_weights` / `load_weights` keep no masks) stays pruned.

    Returns:
        The same model.

    Example:

    >>> import keras, keras_gss as gss
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16),
    ...                           keras.layers.Dense(2)])
    >>> len(gss.attach(model).losses)
    1
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Invalid value for argument `model`. Expected a keras.Model. Received: {model!r}"
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built: call it on data or call "
            "`model.build(input_shape)` before `attach`."
        )
    if regularizer is None:
        regularizer = GuidedStructuredSparsity()
    if proximal is not None:
        proximal = non_negative("proximal", proximal)
    given = {"regularizer": regularizer, "activity_regularizer": activity_regularizer}
    for name, value in given.items():
        if value is not None and not isinstance(value, keras.regularizers.Regularizer):
            raise TypeError(
                f"Invalid value for argument `{name}`. Expected a "
                f"keras.regularizers.Regularizer instance. Received: {name}={value!r}"
            )
    chosen = _resolve_layers(model, layers, skip_output)
    if proximal is not None:
        for layer in chosen:
            existing = groups.layer_weight(layer).constraint
            if existing is not None and not isinstance(existing, (GroupMask, ProximalGroupLasso)):
                raise ValueError(
                    f"Layer '{layer.name}' already has a kernel constraint ({existing!r}); "
                    "`proximal` would replace it. Remove it or call attach without `proximal`."
                )
    for layer in chosen:
        existing = groups.layer_weight(layer).regularizer
        if existing is not None and not isinstance(
            existing, (_GroupRegularizer, CoupledRegularizer)
        ):
            raise ValueError(
                f"Layer '{layer.name}' already has a kernel regularizer ({existing!r}); "
                "attach would replace it. Remove it first, or leave the layer out with "
                "`layers=`."
            )
    _warn_flat_norms(chosen, regularizer)
    for layer in chosen:
        spec = groups.get_spec(layer)
        weight = groups.layer_weight(layer, spec)
        layer_regularizer = _for_layer(regularizer, spec)
        weight.regularizer = layer_regularizer
        setattr(layer, spec.regularizer_attr, layer_regularizer)
        if activity_regularizer is not None:
            layer.activity_regularizer = activity_regularizer
        if proximal is not None:
            _warn_low_precision(layer, weight)
            _set_proximal(layer, spec, weight, ProximalGroupLasso(proximal, spec.axis))
    if coupled:
        _couple(model, chosen, regularizer)
    from keras_gss import pruning  # pruning imports this module

    # groups that are exactly zero were pruned (weights loaded into a fresh model
    # lose their masks): hold them at zero again
    pruning.freeze_zero_groups(model, graph.describe(model))
    reset_traced_functions(model)
    return model


def _warn_low_precision(layer, weight) -> None:
    if weight.dtype in ("float16", "bfloat16"):
        warnings.warn(
            f"Layer '{layer.name}' keeps its kernel in {weight.dtype}: the proximal "
            "step's shrink is below that dtype's resolution (about 1e-3 relative), so "
            "only groups already under the step are zeroed. Keep variables in float32, "
            "e.g. keras.mixed_precision.set_dtype_policy('mixed_float16').",
            stacklevel=3,
        )


def _warn_flat_norms(chosen: list, regularizer) -> None:
    """The attention term is `strength / (var(norms^2) + epsilon)`: a kernel whose
    group norms are all equal (zero-initialized) makes it huge from the first step."""
    config = regularizer.get_config() if hasattr(regularizer, "from_squared_norms") else {}
    strength = config.get("variance", config.get("strength", 0.0))
    attention = type(regularizer).__name__ == "GroupVariance" or (
        config.get("variance") and config.get("attention") in ("variance", "scale_invariant")
    )
    if not attention or not strength:
        return
    for layer in chosen:
        spec = groups.get_spec(layer)
        norms = groups.layer_group_norms(layer)
        if norms.size > 1 and np.ptp(norms**2) == 0:
            warnings.warn(
                f"attach: every group of layer '{layer.name}' has the same norm "
                f"({norms[0]:.3g}; a zero or constant kernel): the attention term "
                f"{strength} / (variance + epsilon) starts at "
                f"{strength / config.get('epsilon', 1e-8):.3g} for it. Initialize its "
                f"`{spec.weight}` randomly (e.g. glorot_uniform) before training.",
                stacklevel=3,
            )


def _couple(model: keras.Model, chosen: list, regularizer) -> None:
    """Replace the per-kernel regularizers of each family of coupled chosen layers
    by one `CoupledRegularizer` on the family's first kernel."""
    if not hasattr(regularizer, "from_squared_norms"):
        raise TypeError(
            "`coupled=True` needs a GroupLasso, GroupVariance or GuidedStructuredSparsity "
            f"regularizer. Received: regularizer={regularizer!r}"
        )
    infos = graph.describe(model)
    units = graph.Units(infos)
    chosen_ids = {id(layer) for layer in chosen}
    families: dict[int, set] = {}  # layer index -> the families it belongs to
    for f, members in zip(units.family, units.members):
        for i, _ in members:
            families.setdefault(i, set()).add(int(f))
    for f in range(units.families):
        in_family = np.flatnonzero(units.family == f)
        layers = [i for i, _ in units.members[in_family[0]]]
        if len(layers) < 2 or any(
            id(infos[i].layer) not in chosen_ids or families[i] != {f} for i in layers
        ):
            continue  # one layer, or not all chosen, or tied to another family: per kernel
        local = {int(u): k for k, u in enumerate(in_family)}
        members = []
        for i in layers:
            unit = np.zeros(infos[i].groups, dtype=np.int32)
            for u in in_family:
                for k, js in units.members[u]:
                    if k == i:
                        unit[js] = local[int(u)]
            weight = groups.layer_weight(infos[i].layer, infos[i].spec)
            members.append((weight, infos[i].spec.axis, unit))
            weight.regularizer = None
            setattr(infos[i].layer, infos[i].spec.regularizer_attr, None)
        members[0][0].regularizer = CoupledRegularizer(regularizer, members, len(in_family))


def _set_proximal(layer, spec: groups.GroupSpec, weight, proximal) -> None:
    existing = weight.constraint
    if isinstance(existing, GroupMask):  # pruned groups stay masked, after the step
        existing.constraint = proximal
        return
    weight.constraint = proximal
    setattr(layer, spec.constraint_attr, proximal)


def detach(model: keras.Model) -> keras.Model:
    """Remove keras-gss regularizers and proximal steps; keep the pruning masks.

    Use it before fine-tuning a pruned model: the loss is the task loss alone,
    and pruned groups stay frozen at zero.

    Example:

    >>> import keras, keras_gss as gss
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16),
    ...                           keras.layers.Dense(2)])
    >>> len(gss.detach(gss.attach(model)).losses)
    0
    """
    for layer in groups.prunable_layers(model):
        spec = groups.get_spec(layer)
        weight = groups.layer_weight(layer, spec)
        if isinstance(weight.regularizer, (_GroupRegularizer, CoupledRegularizer)):
            weight.regularizer = None
            setattr(layer, spec.regularizer_attr, None)
        if isinstance(getattr(layer, "activity_regularizer", None), ActivityAttention):
            layer.activity_regularizer = None
        constraint = weight.constraint
        if isinstance(constraint, ProximalGroupLasso):
            weight.constraint = None
            setattr(layer, spec.constraint_attr, None)
        elif isinstance(constraint, GroupMask) and isinstance(
            constraint.constraint, ProximalGroupLasso
        ):
            constraint.constraint = None
    reset_traced_functions(model)
    return model
