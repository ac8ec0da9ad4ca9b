"""Constraints that keep pruned groups at exactly zero.

Keras applies `variable.constraint` after every optimizer update, so a mask
constraint stops the optimizer (whose moments are not reset) from reviving a
pruned unit. The mask lives in a `keras.Variable` that is not a model weight:
it is saved in the layer config (a list of 0/1), so a saved and reloaded model
keeps its pruned groups frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from keras_gss import groups
from keras_gss._validate import non_negative

_register = keras.saving.register_keras_serializable(package="keras_gss")


@_register
class GroupMask(keras.constraints.Constraint):
    """Multiplies each group of a weight by a fixed 0/1 mask after every update.

    ``w = constraint(w) * mask[g]`` for each group `g` along `group_axis`.

    Args:
        mask: one value per group, 1 to keep the group and 0 to hold it at zero.
        group_axis: axis or axes that index the groups (default -1; a bias is
            masked along its only axis).
        constraint: an inner constraint applied first (default None), so that a
            user's own constraint survives pruning.

    Example:

    >>> import numpy as np, keras_gss as gss
    >>> np.asarray(gss.GroupMask([1, 0])(np.ones((2, 2)))).tolist()
    [[1.0, 0.0], [1.0, 0.0]]
    """

    def __init__(
        self,
        mask: Sequence[float],
        group_axis: groups.Axis = -1,
        constraint: keras.constraints.Constraint | dict | str | None = None,
    ):
        values = np.asarray(mask, dtype="float32").reshape(-1)
        if values.size == 0 or not np.all((values == 0) | (values == 1)):
            raise ValueError(
                "Invalid value for argument `mask`. Expected a non-empty list of 0/1 "
                f"values, one per group. Received: mask of size {values.size}"
            )
        self.group_axis = groups.as_axis_tuple(group_axis)
        self.constraint = keras.constraints.get(constraint)
        self.mask = keras.Variable(values, trainable=False, dtype="float32", name="gss_mask")

    @property
    def live(self) -> np.ndarray:
        """The mask as a numpy bool array (True = live group)."""
        return np.asarray(ops.convert_to_numpy(self.mask)) > 0

    def assign(self, mask: Sequence[float]) -> None:
        """Replace the mask values (same number of groups)."""
        self.mask.assign(np.asarray(mask, dtype="float32").reshape(self.mask.shape))

    def __call__(self, w):
        if self.constraint is not None:
            w = self.constraint(w)
        shape = tuple(w.shape)
        count = shape[0] if len(shape) == 1 else groups.group_shape(shape, self.group_axis)[0]
        if count != self.mask.shape[0]:
            raise ValueError(
                f"GroupMask holds {self.mask.shape[0]} groups but a weight of shape "
                f"{shape} has {count} along group_axis={self.group_axis}."
            )
        mask = groups.broadcast_mask(self.mask, shape, self.group_axis)
        return ops.multiply(w, ops.cast(mask, w.dtype))

    def get_config(self) -> dict:
        return {
            "mask": [int(v) for v in self.live],
            "group_axis": groups.axis_to_config(self.group_axis),
            "constraint": keras.constraints.serialize(self.constraint)
            if self.constraint is not None
            else None,
        }


@_register
class ProximalGroupLasso(keras.constraints.Constraint):
    """A proximal group-lasso step after every update: exact zeros, no jitter.

    ``W_g <- W_g * max(0, 1 - strength * sqrt(size of g) / ||W_g||_2)``: group
    soft-thresholding, scaled by the group size so that layers of different
    fan-in shrink alike. Groups whose norm falls under the step become exactly 0.
    The step is computed in float32; on a float16/bfloat16 variable a shrink
    smaller than the dtype's resolution (about 1e-3 relative) rounds away and
    only the zeroing acts, so `attach` warns: keep variables in float32
    (`mixed_float16` does).

    Args:
        strength: shrinkage per step and per sqrt(weight), a float >= 0
            (default 5e-5, measured on the paper's LeNet with Adam at lr 1e-3).
        group_axis: axis or axes that index the groups (default -1).

    Example:

    >>> import numpy as np, keras_gss as gss
    >>> w = np.array([[3.0, 1e-5], [4.0, 1e-5]], "float32")
    >>> np.asarray(gss.ProximalGroupLasso(0.1)(w), "float64").round(4).tolist()
    [[2.9151, 0.0], [3.8869, 0.0]]
    """

    def __init__(self, strength: float = 5e-5, group_axis: groups.Axis = -1):
        self.strength = non_negative("strength", strength)
        self.group_axis = groups.as_axis_tuple(group_axis)

    def __call__(self, w):
        shape = tuple(w.shape)
        _, size = groups.group_shape(shape, self.group_axis)
        norms = groups.group_norms(w, self.group_axis, "ProximalGroupLasso")
        step = self.strength * size**0.5
        scale = ops.maximum(0.0, 1.0 - step / ops.maximum(norms, step))
        scale = groups.broadcast_mask(scale, shape, self.group_axis)
        return ops.cast(ops.multiply(ops.cast(w, "float32"), scale), w.dtype)

    def get_config(self) -> dict:
        return {"strength": self.strength, "group_axis": groups.axis_to_config(self.group_axis)}


class ElementMask(keras.constraints.Constraint):
    """Holds individual weights at zero: the unstructured (magnitude) baseline.

    ``w = w * mask`` element by element. For in-memory fine-tuning only: the mask
    is as large as the weight, so it is not saved; `keras_gss.pruning.release_element_masks`
    removes these constraints (the zeros stay in the weights) before `model.save`.

    Args:
        mask: 0/1 array with the weight's shape.
    """

    def __init__(self, mask):
        self.mask = keras.Variable(
            np.asarray(mask, "float32"), trainable=False, name="gss_elements"
        )

    def __call__(self, w):
        return ops.multiply(w, ops.cast(self.mask, w.dtype))

    def get_config(self) -> dict:
        raise NotImplementedError(
            "ElementMask is not serializable: call "
            "keras_gss.pruning.release_element_masks(model) before saving."
        )
