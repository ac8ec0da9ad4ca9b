"""keras-gss: attention-based guided structured sparsity for Keras 3.

Example:

>>> import keras, keras_gss as gss
>>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16),
...                           keras.layers.Dense(2)])
>>> model = gss.attach(model)  # GuidedStructuredSparsity on every hidden layer
"""

from keras_gss import groups
from keras_gss.attach import attach
from keras_gss.constraints import GroupMask
from keras_gss.groups import GroupSpec, register_layer
from keras_gss.monitor import SparsityMonitor
from keras_gss.regularizers import (
    ActivityAttention,
    GroupLasso,
    GroupVariance,
    GuidedStructuredSparsity,
)
from keras_gss.report import LayerSparsity, SparsityReport, sparsity_report

__version__ = "0.1.0"

__all__ = [
    "ActivityAttention",
    "GroupLasso",
    "GroupMask",
    "GroupSpec",
    "GroupVariance",
    "GuidedStructuredSparsity",
    "LayerSparsity",
    "SparsityMonitor",
    "SparsityReport",
    "attach",
    "groups",
    "register_layer",
    "sparsity_report",
]
