"""The named recipes, and the pruning settings declared once."""

import dataclasses
import inspect

import keras
import numpy as np
import pytest

import keras_gss as gss
from keras_gss import cli, pruning, recipes
from keras_gss.constraints import ProximalGroupLasso
from tests.conftest import compile_classifier, mlp


def _default(func, name):
    return inspect.signature(func).parameters[name].default


@pytest.mark.parametrize(
    "name, value",
    [("ranking", pruning.RANKING), ("metric", pruning.METRIC),
     ("min_live_groups", pruning.MIN_LIVE_GROUPS), ("round_to", pruning.ROUND_TO)],
)  # fmt: skip
def test_selection_defaults_are_declared_once(name, value):
    fields = {field.name: field.default for field in dataclasses.fields(recipes.Recipe)}
    defaults = [
        _default(pruning.prune, name),
        _default(pruning.select, name),
        _default(gss.SparsityMonitor.__init__, name),
        fields[name],
        getattr(gss.SparsityMonitor(verbose=0), name),
    ]
    assert defaults == [value] * 5


def test_the_cli_trains_with_the_weight_recipe_at_its_budget():
    args = cli.build_parser().parse_args(["train"])
    cli._check(args)
    steps = args.limit // args.batch_size * args.epochs
    expected = recipes.for_weights(args.target_sparsity, epochs=args.epochs, steps=steps)
    assert dataclasses.replace(cli._recipe(args), target=args.target_sparsity) == expected
    # the budget-scaled levers: proximal x steps = 0.009, about 36 pruning steps
    assert expected.proximal * steps == pytest.approx(recipes.PROXIMAL_BUDGET)
    assert expected.update_freq == 10 and expected.end_epoch == args.epochs - 2


@pytest.mark.parametrize("steps", [1, 7, 36, 179, 180, 300, 359, 540, 1800, 10**6])
def test_pruning_steps_scale_with_the_run(steps):
    recipe = recipes.for_weights(0.5, epochs=2, steps=steps)
    # every update_freq batches: about 36 pruning steps in the run, never 0
    assert recipe.update_freq >= 1
    assert steps / recipe.update_freq <= 36 * 2 or recipe.update_freq == 1
    assert steps / recipe.update_freq >= 18 or recipe.update_freq <= 10


def _live(model):
    return [
        int(np.sum(np.linalg.norm(keras.ops.convert_to_numpy(layer.kernel), axis=0) > 0))
        for layer in model.layers
    ]


def test_for_weights_attaches_the_lasso_and_prunes_to_the_target_while_training(toy_data):
    x, y = toy_data
    recipe = recipes.for_weights(0.6, epochs=3, steps=36)
    model = recipe.attach(mlp(hidden=(48, 32)))
    hidden = model.layers[:-1]
    assert all(isinstance(layer.kernel_regularizer, gss.GroupLasso) for layer in hidden)
    assert all(isinstance(layer.kernel.constraint, ProximalGroupLasso) for layer in hidden)
    assert model.layers[-1].kernel_regularizer is None
    (monitor,) = recipe.callbacks()
    assert monitor.target_sparsity == 0.6 and monitor.ranking == "auto"
    compile_classifier(model).fit(x, y, epochs=3, batch_size=64, callbacks=[monitor], verbose=0)
    # numpy count: zero weights of the prunable kernels over their total
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in hidden]
    zero = sum(int(np.sum(np.linalg.norm(k, axis=0) == 0)) * k.shape[0] for k in kernels)
    assert zero / sum(k.size for k in kernels) == pytest.approx(0.6, abs=0.03)
    assert min(_live(model)[:-1]) >= 4


def test_for_flops_prunes_with_the_monitor_alone_to_vector_widths(toy_data):
    x, y = toy_data
    recipe = recipes.for_flops(0.5, epochs=2, steps=24)
    model = recipe.attach(mlp(hidden=(48, 32)))
    assert all(layer.kernel_regularizer is None for layer in model.layers)
    assert recipe.regularizer() is None and recipe.metric == "flops"
    compile_classifier(model).fit(x, y, epochs=2, batch_size=64, callbacks=recipe.callbacks(),
                                  verbose=0)  # fmt: skip
    live = _live(model)
    # numpy FLOPs of the live Dense chain (2 x in x out per layer), dense 24-48-32-2
    dense = 2 * (24 * 48 + 48 * 32 + 32 * 2)
    flops = 2 * (24 * live[0] + live[0] * live[1] + live[1] * 2)
    stats = gss.model_stats(model)
    assert flops / dense <= 0.5 and (stats.flops, stats.live_flops) == (dense, flops)
    assert all(width % 8 == 0 for width in live[:-1]) and min(live[:-1]) >= 8


def test_paper_recipe_is_the_two_term_loss():
    recipe = recipes.paper(0.9)
    regularizer = recipe.regularizer()
    assert isinstance(regularizer, gss.GuidedStructuredSparsity)
    assert (regularizer.lasso, regularizer.variance) == (2e-3, 1e-2)


def test_recipe_round_trips_through_to_dict():
    recipe = recipes.for_flops(0.7, epochs=4, layers=["conv1", "conv2"])
    assert recipes.Recipe(**recipe.to_dict()) == recipe
    assert recipe.layers == ("conv1", "conv2") and recipe.end_epoch == 2


@pytest.mark.parametrize(
    "call, name",
    [(lambda: recipes.for_weights(1.0), "target"), (lambda: recipes.for_flops(-0.1), "target"),
     (lambda: recipes.for_weights(0.5, epochs=0), "epochs"),
     (lambda: recipes.for_flops(0.5, steps=0), "steps"),
     (lambda: recipes.for_flops(0.5, round_to=0), "round_to"),
     (lambda: recipes.Recipe("monitor", target=1.5), "target")],
)  # fmt: skip
def test_bad_recipe_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


def test_a_coupled_recipe_regularizes_the_residual_stream_as_one_group():
    from keras_gss.regularizers import CoupledRegularizer

    model = gss.models.resnet20()
    recipes.Recipe("group-lasso", lasso=1e-3, coupled=True).attach(model)
    found = [getattr(w, "regularizer", None) for w in model.weights]
    found = [r for r in found if isinstance(r, CoupledRegularizer)]
    stream = max(found, key=lambda r: len(r.members))
    assert len(stream.members) > 2  # the convolutions adding into one residual stream
    # numpy: one L2 norm per channel over every member kernel's slice
    squared = np.zeros(stream.units)
    for variable, axis, unit in stream.members:
        value = np.moveaxis(keras.ops.convert_to_numpy(variable.value), axis[0], -1)
        np.add.at(squared, unit, np.sum(value.reshape(-1, value.shape[-1]) ** 2, axis=0))
    expected = 1e-3 * np.sum(np.sqrt(squared))
    first = stream.members[0][0]
    got = float(keras.ops.convert_to_numpy(stream(first.value)))
    assert got == pytest.approx(expected, rel=1e-5)
