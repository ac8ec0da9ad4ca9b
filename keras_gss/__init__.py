"""keras-gss: attention-based guided structured sparsity for Keras 3.

Example:

>>> import keras, keras_gss as gss
>>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16),
...                           keras.layers.Dense(2)])
>>> model = gss.attach(model)  # GuidedStructuredSparsity on every hidden layer
"""

import importlib

from keras_gss import dependency, graph, groups, latency, pruning, recipes
from keras_gss.attach import attach, detach
from keras_gss.compact import compact, register_compaction, strip
from keras_gss.constraints import GroupMask, ProximalGroupLasso
from keras_gss.dependency import register_handler
from keras_gss.groups import GroupSpec, register_layer
from keras_gss.monitor import SparsityMonitor
from keras_gss.pruning import prune
from keras_gss.regularizers import (
    ActivityAttention,
    GroupLasso,
    GroupVariance,
    GuidedStructuredSparsity,
)
from keras_gss.report import LayerSparsity, SparsityReport, model_stats, sparsity_report
from keras_gss.schedules import AttentionWarmup
from keras_gss.sensitivity import SensitivityTable, sensitivity

__version__ = "0.1.0"

__all__ = [
    "ActivityAttention",
    "AttentionWarmup",
    "GroupLasso",
    "GroupMask",
    "GroupSpec",
    "GroupVariance",
    "GuidedStructuredSparsity",
    "LayerSparsity",
    "ProximalGroupLasso",
    "SparsityMonitor",
    "SensitivityTable",
    "SparsityReport",
    "attach",
    "compact",
    "datasets",
    "dependency",
    "detach",
    "experiment",
    "graph",
    "groups",
    "latency",
    "model_stats",
    "models",
    "prune",
    "pruning",
    "recipes",
    "register_compaction",
    "register_handler",
    "register_layer",
    "sensitivity",
    "sparsity_report",
    "strip",
]


# The paper's experiment (its network, data loaders and training loop) is not the
# library: imported on first use, e.g. `gss.models.lenet()`.
_LAZY = ("datasets", "experiment", "models")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"keras_gss.{name}")
    raise AttributeError(f"module 'keras_gss' has no attribute {name!r}")
