import keras
import numpy as np
import pytest

from keras_gss import experiment
from keras_gss.constraints import ProximalGroupLasso
from keras_gss.report import model_stats, sparsity_report
from tests.conftest import mlp


def zero_fraction(model) -> float:
    return sparsity_report(model, threshold=0.0).sparsity


@pytest.mark.parametrize("metric", ["weights", "flops"])
def test_gradual_recipe_prunes_to_the_level_while_training(toy_data, metric):
    x, y = toy_data
    recipe = experiment.Recipe("group-lasso", lasso=1e-3, ranking="auto", metric=metric,
                               min_live_groups=2, gradual=True)  # fmt: skip
    keras.utils.set_random_seed(0)
    model = mlp(hidden=(48, 32))
    history = experiment.train(model, recipe, x, y, epochs=3, batch_size=64, lr=1e-2,
                               verbose=0, level=0.6)  # fmt: skip
    assert len(history.history["loss"]) == 3
    if metric == "weights":
        assert zero_fraction(model) == pytest.approx(0.6, abs=0.03)
    else:
        assert 0.37 <= model_stats(model).flop_ratio <= 0.4 + 1e-6
    # the pruned groups stay at exactly zero when training goes on (GroupMask installed)
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers[:-1]]
    dead = [np.linalg.norm(kernel, axis=0) == 0 for kernel in kernels]
    assert any(d.any() for d in dead)
    experiment.finetune(model, x, y, 1, batch_size=64, lr=1e-2, verbose=0)
    for layer, d in zip(model.layers[:-1], dead):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        assert np.all(kernel[:, d] == 0)


def test_one_shot_recipe_ignores_the_level_and_does_not_prune(toy_data):
    x, y = toy_data
    recipe = experiment.Recipe("group-lasso", lasso=1e-3)
    assert not recipe.gradual
    keras.utils.set_random_seed(0)
    model = mlp(hidden=(48, 32))
    experiment.train(model, recipe, x, y, epochs=1, batch_size=64, lr=1e-2, verbose=0, level=0.6)
    assert zero_fraction(model) < 0.05
    experiment.prune_to(model, recipe, 0.6)
    assert zero_fraction(model) == pytest.approx(0.6, abs=0.03)
    model = mlp(hidden=(48, 32))  # prune_to carries round_to
    experiment.prune_to(model, experiment.Recipe("group-lasso", round_to=8), 0.6)
    live = [r.groups - r.zero_groups for r in sparsity_report(model, threshold=0.0).rows]
    assert zero_fraction(model) >= 0.6 and live[0] % 8 == live[1] % 8 == 0 and live[0] < 48


def test_recipe_monitor_carries_the_levers():
    recipe = experiment.Recipe("gss", ranking="hybrid", metric="flops", min_live_groups=3,
                               gradual=True, end_epoch=2, update_freq=25, round_to=8,
                               release=True)  # fmt: skip
    monitor = recipe.monitor(0.8)
    assert monitor.round_to == 8 and monitor.release
    assert (monitor.target_sparsity, monitor.ranking, monitor.metric) == (0.8, "hybrid", "flops")
    assert (monitor.end_epoch, monitor.update_freq) == (2, 25)
    assert monitor.min_live_groups == 3 and monitor.threshold == 0.0
    with pytest.raises(ValueError, match="target_sparsity"):
        recipe.monitor(1.5)
    tuned = experiment.Recipe("group-lasso", gradual=True, threshold=1e-3, begin_epoch=1,
                              end_epoch=2)  # fmt: skip
    monitor = tuned.monitor(0.5)
    assert (monitor.threshold, monitor.begin_epoch, monitor.end_epoch) == (1e-3, 1, 2)
    assert tuned.to_dict()["threshold"] == 1e-3 and tuned.to_dict()["begin_epoch"] == 1
    measuring = tuned.monitor(None)  # no target: prunes at the threshold only
    assert measuring.target_sparsity is None and measuring.threshold == 1e-3
    convs = experiment.Recipe("group-lasso", layers=["conv1", "conv2"])
    assert convs.layers == ("conv1", "conv2") and convs.monitor(0.5).layers == convs.layers
    assert experiment.Recipe(**convs.to_dict()) == convs
    with pytest.raises(TypeError, match="layers"):
        experiment.Recipe("group-lasso", layers=[keras.layers.Dense(2)])


def test_prune_to_passes_the_recipes_layers(toy_data):
    model = mlp(hidden=(40, 30))
    experiment.prune_to(model, experiment.Recipe("group-lasso", layers=("dense_1",)), 0.3)
    norms = [np.linalg.norm(layer.kernel.numpy(), axis=0) for layer in model.layers]
    zero = [int((n == 0).sum()) for n in norms]
    assert zero[0] == zero[2] == 0 and zero[1] > 0


@pytest.mark.parametrize("regularize", ["all", "pruned"])
def test_train_attaches_the_regularizers_where_the_recipe_says(toy_data, regularize):
    x, y = toy_data
    model = mlp(hidden=(48, 32))
    first, second, output = model.layers
    recipe = experiment.Recipe("group-lasso", lasso=1e-3, proximal=1e-4, layers=(second.name,),
                               regularize=regularize)  # fmt: skip
    experiment.train(model, recipe, x[:128], y[:128], epochs=1, batch_size=64, lr=1e-2, verbose=0)
    chosen = [second] if regularize == "pruned" else [first, second]  # never the output
    assert [layer for layer in model.layers if layer.kernel.regularizer is not None] == chosen
    assert [layer for layer in model.layers
            if isinstance(layer.kernel.constraint, ProximalGroupLasso)] == chosen  # fmt: skip
    # the loss fit minimised beside the task: the group lasso of those kernels only
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in chosen]
    reference = sum(1e-3 * np.linalg.norm(kernel, axis=0).sum() for kernel in kernels)
    added = sum(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses)
    assert added == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"threshold": -1e-3}, "threshold"), ({"threshold": float("nan")}, "threshold"),
     ({"begin_epoch": -1}, "begin_epoch"), ({"begin_epoch": 2, "end_epoch": 1}, "end_epoch"),
     ({"lasso": -2e-4}, "lasso"), ({"variance": float("inf")}, "variance"),
     ({"proximal": -1e-5}, "proximal"), ({"keep": 1.0}, "keep"), ({"keep": 0}, "keep"),
     ({"attention": "softmax"}, "attention"), ({"ranking": "l1"}, "ranking"),
     ({"metric": "params"}, "metric"), ({"warmup": -1}, "warmup"), ({"warmup": 1.5}, "warmup"),
     ({"min_live_groups": 0}, "min_live_groups"), ({"round_to": 0}, "round_to"),
     ({"update_freq": 0}, "update_freq"), ({"update_freq": "batch"}, "update_freq"),
     ({"method": "ssl"}, "method"), ({"regularize": "convs"}, "regularize")],
)  # fmt: skip
def test_recipe_rejects_bad_levers_by_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        experiment.Recipe(**{"method": "group-lasso", "gradual": True, **kwargs})
