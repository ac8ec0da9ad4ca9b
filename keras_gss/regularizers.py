"""The loss terms of guided structured sparsity, as Keras regularizers.

Kernel regularizers group a weight along `group_axis` (the output-unit axis):
`GroupLasso` (sparsity), `GroupVariance` (the paper's attention term) and their
sum `GuidedStructuredSparsity`. `ActivityAttention` is the attention term on a
layer's outputs. All compute in float32 whatever the input dtype, and stay
finite (value and gradient) when a group is exactly zero.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_gss import groups
from keras_gss._validate import non_negative, open_fraction

_register = keras.saving.register_keras_serializable(package="keras_gss")


class _GroupRegularizer(keras.regularizers.Regularizer):
    """Base: holds `group_axis` and turns a kernel into group norms."""

    def __init__(self, group_axis: groups.Axis = -1):
        self.group_axis = groups.as_axis_tuple(group_axis)

    def _squared_norms(self, x):
        return groups.group_squared_norms(x, self.group_axis, type(self).__name__)

    def get_config(self) -> dict:
        return {"group_axis": groups.axis_to_config(self.group_axis)}


def _lasso(squared_norms, strength: float):
    return strength * ops.sum(groups.safe_norm(squared_norms))


def _inverse_variance(squared_norms, strength: float, epsilon: float):
    if squared_norms.shape[0] < 2:
        # One group has no spread to reward: the term is defined as 0.
        return ops.zeros((), "float32")
    return strength / (ops.var(squared_norms) + epsilon)


def _scale_invariant_variance(squared_norms, strength: float, epsilon: float):
    if squared_norms.shape[0] < 2:
        return ops.zeros((), "float32")
    mean = ops.mean(squared_norms)
    return strength * ops.square(mean) / (ops.var(squared_norms) + epsilon)


def _fraction_attention(squared_norms, strength: float, epsilon: float, keep: float):
    count = squared_norms.shape[0]
    top = max(1, min(count - 1, round(keep * count)))
    if count < 2:
        return ops.zeros((), "float32")
    norms = groups.safe_norm(squared_norms)
    ranked = ops.sort(norms)  # ascending: the weakest first
    scale = ops.stop_gradient(ops.mean(ranked[count - top :])) + epsilon
    return strength * ops.sum(ranked[: count - top]) / scale


ATTENTIONS = ("variance", "scale_invariant", "fraction")


def attention_term(squared_norms, form: str, strength: float, epsilon: float, keep: float):
    """The attention term of one kernel, in the chosen form (see GuidedStructuredSparsity)."""
    if form == "variance":
        return _inverse_variance(squared_norms, strength, epsilon)
    if form == "scale_invariant":
        return _scale_invariant_variance(squared_norms, strength, epsilon)
    return _fraction_attention(squared_norms, strength, epsilon, keep)


@_register
class GroupLasso(_GroupRegularizer):
    """Group lasso: drives whole output units/filters to zero.

    ``loss = strength * sum_g ||W_g||_2``, where group `g` is every weight that
    feeds output unit `g` (the slices along `group_axis`).

    Args:
        strength: coefficient, a float >= 0 (default 1e-3).
        group_axis: axis or axes of the kernel that index output units
            (default -1; Conv*Transpose kernels use -2).

    Example:

    >>> import numpy as np, keras_gss as gss
    >>> float(gss.GroupLasso(0.1)(np.ones((4, 3))))  # 0.1 * 3 * sqrt(4)
    0.6000000238418579
    """

    def __init__(self, strength: float = 1e-3, group_axis: groups.Axis = -1):
        self.strength = non_negative("strength", strength)
        super().__init__(group_axis)

    def __call__(self, x):
        return self.from_squared_norms(self._squared_norms(x))

    def from_squared_norms(self, squared):
        """The loss given the squared norms of the groups, shape (groups,)."""
        return _lasso(squared, self.strength)

    def get_config(self) -> dict:
        return {"strength": self.strength, **super().get_config()}


@_register
class GroupVariance(_GroupRegularizer):
    """The paper's attention term: rewards a spread-out distribution of group norms.

    ``loss = strength / (var_g(||W_g||_2^2) + epsilon)``, population variance over
    the groups of one kernel. A kernel with a single group contributes 0.

    Args:
        strength: coefficient, a float >= 0 (default 1e-2).
        epsilon: added to the variance, a float > 0 (default 1e-8).
        group_axis: axis or axes of the kernel that index output units (default -1).

    Example:

    >>> import numpy as np, keras_gss as gss
    >>> w = np.array([[1.0, 0.0], [1.0, 0.0]])  # squared norms 2 and 0: variance 1
    >>> round(float(gss.GroupVariance(0.5)(w)), 6)
    0.5
    """

    def __init__(self, strength: float = 1e-2, epsilon: float = 1e-8, group_axis: groups.Axis = -1):
        self.strength = non_negative("strength", strength)
        self.epsilon = non_negative("epsilon", epsilon, strict=True)
        super().__init__(group_axis)

    def __call__(self, x):
        return self.from_squared_norms(self._squared_norms(x))

    def from_squared_norms(self, squared):
        """The loss given the squared norms of the groups, shape (groups,)."""
        return _inverse_variance(squared, self.strength, self.epsilon)

    def get_config(self) -> dict:
        return {"strength": self.strength, "epsilon": self.epsilon, **super().get_config()}


@_register
class GuidedStructuredSparsity(_GroupRegularizer):
    """Guided structured sparsity (Torfi & Shirvani 2018): group lasso + attention.

    ``loss = lasso * sum_g ||W_g||_2 + attention`` where, with ``n_g = ||W_g||_2``:

    - `attention="variance"` (the paper): ``variance / (var_g(n_g^2) + epsilon)``;
    - `"scale_invariant"`: ``variance * mean_g(n_g^2)^2 / (var_g(n_g^2) + epsilon)``,
      unchanged when the kernel is rescaled;
    - `"fraction"`: keep a chosen fraction of the groups clearly alive:
      ``variance * sum(weakest (1 - keep) of n_g) / stop_gradient(mean(strongest
      keep of n_g))``, a lasso on the weak tail only, relative to the live groups.

    Args:
        lasso: group-lasso coefficient, a float >= 0 (default 1e-3).
        variance: attention coefficient, a float >= 0 (default 1e-2).
        epsilon: added to denominators, a float > 0 (default 1e-8).
        group_axis: axis or axes of the kernel that index output units (default -1).
        attention: `"variance"`, `"scale_invariant"` or `"fraction"`
            (default "variance").
        keep: fraction of groups the `"fraction"` form keeps alive, in (0, 1)
            (default 0.25).

    Example:

    >>> import keras, keras_gss as gss
    >>> layer = keras.layers.Dense(8, kernel_regularizer=gss.GuidedStructuredSparsity())
    """

    def __init__(
        self,
        lasso: float = 1e-3,
        variance: float = 1e-2,
        epsilon: float = 1e-8,
        group_axis: groups.Axis = -1,
        attention: str = "variance",
        keep: float = 0.25,
    ):
        self.lasso = non_negative("lasso", lasso)
        self.variance = non_negative("variance", variance)
        self.epsilon = non_negative("epsilon", epsilon, strict=True)
        if attention not in ATTENTIONS:
            raise ValueError(
                f"Invalid value for argument `attention`. Expected one of {ATTENTIONS}. "
                f"Received: attention={attention!r}"
            )
        self.attention = attention
        self.keep = open_fraction("keep", keep)
        super().__init__(group_axis)

    def __call__(self, x):
        return self.from_squared_norms(self._squared_norms(x))

    def from_squared_norms(self, squared):
        """The loss given the squared norms of the groups, shape (groups,)."""
        loss = _lasso(squared, self.lasso)
        if self.variance:
            loss = loss + attention_term(
                squared, self.attention, self.variance, self.epsilon, self.keep
            )
        return loss

    def get_config(self) -> dict:
        return {
            "lasso": self.lasso,
            "variance": self.variance,
            "epsilon": self.epsilon,
            **super().get_config(),
            "attention": self.attention,
            "keep": self.keep,
        }


@_register
class ActivityAttention(keras.regularizers.Regularizer):
    """The attention term on neuron outputs.

    For outputs of shape (batch, ..., units): ``a_u = mean(|y[..., u]|)`` over all
    axes but the last, and ``loss = strength / (var_u(a_u) + epsilon)``, computed
    and returned in float32 (Keras divides activity losses by the batch size).

    Args:
        strength: coefficient, a float >= 0 (default 1e-4).
        epsilon: added to the variance, a float > 0 (default 1e-6).

    Example:

    >>> import keras, keras_gss as gss
    >>> layer = keras.layers.Dense(8, activity_regularizer=gss.ActivityAttention())
    """

    def __init__(self, strength: float = 1e-4, epsilon: float = 1e-6):
        self.strength = non_negative("strength", strength)
        self.epsilon = non_negative("epsilon", epsilon, strict=True)

    def __call__(self, x):
        x = ops.cast(x, "float32")
        if len(x.shape) < 2:
            raise ValueError(
                "ActivityAttention expects outputs of shape (batch, ..., units). "
                f"Received a tensor of shape {tuple(x.shape)}."
            )
        per_unit = ops.mean(ops.abs(x), axis=tuple(range(len(x.shape) - 1)))
        return self.strength / (ops.var(per_unit) + self.epsilon)

    def get_config(self) -> dict:
        return {"strength": self.strength, "epsilon": self.epsilon}


class CoupledRegularizer(keras.regularizers.Regularizer):
    """A group regularizer over coupled groups that span several layers.

    A coupled group (`keras_gss.dependency`) is one channel written by several
    kernels, e.g. every convolution that adds into one residual stream; its norm
    is ``sqrt(sum over member kernels of ||W_k[..., c]||^2)`` and `regularizer`'s
    loss is computed from those norms, once per family of coupled layers.
    `attach(..., coupled=True)` puts one on the first kernel of each family (Keras
    calls a regularizer with its own variable only: this one reads the other
    members' variables too). It is not saved with the model: attach again after
    loading.

    Args:
        regularizer: a `GroupLasso`, `GroupVariance` or `GuidedStructuredSparsity`
            whose strengths are used.
        members: `(variable, group axis, unit of each group)` per member kernel:
            group g of that kernel belongs to coupled group `unit[g]`.
        units: the number of coupled groups.
    """

    def __init__(self, regularizer: _GroupRegularizer, members: list, units: int):
        self.regularizer = regularizer
        self.members = [(v, groups.as_axis_tuple(a), np.asarray(u, "int32")) for v, a, u in members]
        self.units = int(units)

    def squared_norms(self, first=None):
        """Squared norm of every coupled group (`first`: the first member's value)."""
        total = None
        for k, (variable, axis, unit) in enumerate(self.members):
            value = first if k == 0 and first is not None else variable.value
            squared = groups.group_squared_norms(value, axis, "CoupledRegularizer")
            part = ops.segment_sum(squared, ops.convert_to_tensor(unit), num_segments=self.units)
            total = part if total is None else total + part
        return total

    def __call__(self, x):
        return self.regularizer.from_squared_norms(self.squared_norms(x))

    def get_config(self) -> dict:
        raise NotImplementedError(
            "CoupledRegularizer holds references to variables and is not saved; "
            "attach(model, ..., coupled=True) again after loading."
        )
