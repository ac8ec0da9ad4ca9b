import keras
import numpy as np
import pytest

import keras_gss as gss
from keras_gss import graph, pruning
from tests.conftest import mlp

L = keras.layers


def small_convnet():
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            L.Conv2D(4, 3, padding="same", name="c1"),  # 8x8 positions
            L.MaxPooling2D(2),
            L.Conv2D(6, 3, padding="valid", activation="relu", name="c2"),  # 2x2 positions
            L.Flatten(),
            L.Dense(5, name="d1"),
            L.Dense(3, name="out"),
        ]
    )


def test_graph_and_flops_match_hand_counts():
    model = small_convnet()
    infos = graph.describe(model)
    assert [i.is_output for i in infos] == [False, False, False, True]
    assert infos[0].inputs is not None and infos[0].removable.all()
    assert list(infos[1].inputs) == list(infos[0].coupled)  # c2 reads c1's 4 channels
    assert list(infos[2].inputs) == list(infos[1].coupled) * 4  # Flatten: 2x2 positions
    assert list(infos[3].inputs) == list(infos[2].coupled) and not infos[3].removable.any()
    flops = [2 * 3 * 3 * 2 * 4 * 64, 2 * 3 * 3 * 4 * 6 * 4, 2 * 24 * 5, 2 * 5 * 3]
    assert [i.dense_flops for i in infos] == flops
    stats = gss.model_stats(model)
    assert stats.flops == sum(flops) and stats.live_params == model.count_params()
    # kill c1 filter 0 and c2 filters 0,1: c2 loses an input channel, d1 loses 2*4 rows
    for name, ids in (("c1", [0]), ("c2", [0, 1])):
        layer = model.get_layer(name)
        kernel = layer.kernel.numpy()
        kernel[..., ids] = 0
        layer.kernel.assign(kernel)
    stats = gss.model_stats(model)
    live = flops[0] * 3 / 4 + flops[1] * (3 / 4) * (4 / 6) + flops[2] * (4 / 6) + flops[3]
    assert stats.live_flops == pytest.approx(live)
    # live kernels: c1 3 of 4 filters; c2 4 of 6 filters x 3 of 4 inputs; d1 4 of 6 channels
    removed = (72 - 54) + (216 - 9 * 3 * 4) + (120 - 4 * 4 * 5) + 1 + 2  # kernels, biases
    expected = model.count_params() - removed
    assert stats.live_params == round(expected)


def test_prune_reaches_target_and_spares_output_and_one_group():
    model = mlp(hidden=(40, 30))
    report = gss.prune(model, target_sparsity=0.8)
    assert 0.8 <= report.sparsity <= 0.8 + 40 / report.weights
    assert report["dense_2"].zero_groups == 0
    assert all(row.groups - row.zero_groups >= 1 for row in report.rows)
    report = gss.prune(mlp(), target_sparsity=0.99)
    assert all(row.groups - row.zero_groups >= 1 for row in report.rows)


def test_rms_ranking_prunes_weakest_groups_first():
    model = mlp(hidden=(10,), inputs=4)
    kernel = model.layers[0].kernel.numpy()
    kernel[:, :] = 1.0
    kernel[:, [2, 5, 7]] = 0.01
    model.layers[0].kernel.assign(kernel)
    gss.prune(model, target_sparsity=3 * 4 / (40 + 20) + 1e-6)
    dead = np.flatnonzero(np.linalg.norm(model.layers[0].kernel.numpy(), axis=0) == 0)
    assert set(dead) >= {2, 5, 7}


def test_flop_target_and_hybrid_ranking():
    model = small_convnet()
    gss.prune(model, target_sparsity=0.6, metric="flops", ranking="hybrid")
    assert gss.model_stats(model).flop_ratio <= 0.4 + 1e-9
    model = small_convnet()
    with pytest.warns(UserWarning, match="not reached"):  # 2 live each: 0.56 at most
        gss.prune(model, target_sparsity=0.6, metric="flops", ranking="rms", min_live_groups=2)
    report = gss.sparsity_report(model, threshold=0)
    assert all(r.groups - r.zero_groups >= 2 for r in report.rows)


def test_memory_ranking_matches_numpy_reference():
    model = small_convnet()
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    kernel = model.get_layer("c1").kernel.numpy()
    kernel[..., 1] = 0  # a dead c1 filter: left out of c1's median, c2 has 3 of 4 inputs
    model.get_layer("c1").kernel.assign(kernel)
    infos = graph.describe(model)
    assert [i.activations for i in infos] == [64, 4, 1, 1]  # 8x8, 2x2 outputs, dense units
    kernels = [model.get_layer(n).kernel.numpy() for n in ("c1", "c2", "d1", "out")]
    norms = [np.linalg.norm(k.reshape(-1, k.shape[-1]), axis=0) for k in kernels]
    dead = graph.dead_groups(infos, [n > 0 for n in norms])  # c1's filter 1
    scores = pruning.group_scores(infos, norms, dead, "memory")
    flops = np.array([2 * 3 * 3 * 2 * 4 * 64, 2 * 3 * 3 * 4 * 6 * 4, 2 * 24 * 5, 2 * 5 * 3])
    count, values = np.array([4, 6, 5, 3]), np.array([64, 4, 1, 1])
    in_frac = [1.0, 3 / 4, 1.0, 1.0]
    for i, (k, n) in enumerate(zip(kernels, norms)):
        rms = n / np.sqrt(k.size / k.shape[-1])
        relative = rms / np.median(rms[n > 0])
        size = k.size / k.shape[-1]
        cost = size * in_frac[i] / sum(k.size for k in kernels)
        cost += flops[i] / count[i] * in_frac[i] / flops.sum() + values[i] / (count * values).sum()
        np.testing.assert_allclose(scores[i], relative / cost, rtol=1e-5)


def test_memory_ranking_also_thins_a_first_conv_of_large_weights():
    def lenet():
        keras.utils.set_random_seed(0)
        model = gss.models.lenet()
        conv1 = model.get_layer("conv1")
        conv1.kernel.assign(conv1.kernel * 10.0)  # one input channel: large weights
        return model

    live = {}
    for ranking in ("hybrid", "memory"):
        model = lenet()
        gss.prune(model, target_sparsity=0.85, metric="flops", ranking=ranking)
        assert gss.model_stats(model).flop_ratio <= 0.15 + 1e-9
        row = gss.sparsity_report(model, threshold=0.0)["conv1"]
        live[ranking] = row.groups - row.zero_groups
    assert live["hybrid"] == 64 and live["memory"] < 48


def test_relative_threshold_in_select():
    model = mlp(hidden=(6,), inputs=4)
    kernel = np.ones((4, 6), "float32")
    kernel[:, 0] = 0.05  # 5% of the largest norm
    model.layers[0].kernel.assign(kernel)
    infos = graph.describe(model)
    rows, norms = pruning.measure(infos, 0.0)
    dead = pruning.select(infos, rows, norms, 0.0, relative_threshold=0.1)
    assert list(np.flatnonzero(dead[0])) == [0]


def test_magnitude_prune_exact_fraction_and_frozen(toy_data):
    from tests.conftest import compile_classifier

    x, y = toy_data
    model = compile_classifier(mlp())
    report = pruning.magnitude_prune(model, 0.7)
    total = sum(r.weights for r in report.rows)
    assert report.zero_weights == int(np.ceil(0.7 * total))
    zeros = model.layers[0].kernel.numpy() == 0
    model.fit(x, y, epochs=1, verbose=0)
    assert np.all(model.layers[0].kernel.numpy()[zeros] == 0)
    assert np.all(model.layers[-1].kernel.numpy() != 0)  # output layer untouched
    pruning.release_element_masks(model)
    assert model.layers[0].kernel.constraint is None


def test_bad_arguments():
    model = mlp()
    with pytest.raises(ValueError, match="`ranking`"):
        gss.prune(model, 0.5, ranking="random")
    with pytest.raises(ValueError, match="`metric`"):
        gss.prune(model, 0.5, metric="bytes")
    with pytest.raises(ValueError, match="`target_sparsity`"):
        gss.prune(model, 1.5)
    with pytest.raises(ValueError, match="`target_sparsity`"):
        pruning.magnitude_prune(model, None)


def test_target_counts_groups_that_are_already_zero_once():
    model = mlp(hidden=(40, 30))
    kernel = model.layers[0].kernel.numpy()
    kernel[:, :20] = 0.0  # half of the first layer is already exactly zero
    kernel[0, 25] = 0.0  # and one lone zero elsewhere
    model.layers[0].kernel.assign(kernel)
    report = gss.prune(model, target_sparsity=0.8)
    assert 0.8 <= report.sparsity <= 0.8 + 40 / report.weights


def _block_greedy_reference(kernels, target, round_to, min_live=1):
    """numpy: the zero columns and the weakest `live % round_to` of each hidden layer
    are dead; then whole blocks of `round_to`, ranked by their strongest member's
    rms, until `target` of all kernel weights is zero. Dead columns per layer."""
    total = sum(k.size for k in kernels)
    blocks, dead = [], []
    for i, k in enumerate(kernels[:-1]):
        rms = np.sqrt((k**2).mean(axis=0))
        order = [g for g in np.argsort(rms, kind="stable") if rms[g] > 0]
        rest = len(order) % round_to
        dead.append(set(np.flatnonzero(rms == 0)) | set(order[:rest]))
        cuts = [order[s : s + round_to] for s in range(rest, len(order), round_to)]
        blocks += [(max(rms[c]), i, c) for c in cuts]
    blocks.sort(key=lambda b: b[:2])
    zero = sum(len(d) * k.shape[0] for d, k in zip(dead, kernels))
    for _, i, cut in blocks:
        if zero >= np.ceil(target * total):
            break
        if kernels[i].shape[1] - len(dead[i]) - len(cut) >= min_live:
            dead[i] |= set(cut)
            zero += len(cut) * kernels[i].shape[0]
    return dead


@pytest.mark.parametrize("round_to", [1, 4, 8])
def test_round_to_prunes_whole_blocks_like_numpy_reference(round_to):
    model = mlp(hidden=(40, 32), inputs=12, outputs=3)
    rng = np.random.default_rng(round_to)
    for layer in model.layers:
        layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    kernel = model.layers[0].kernel.numpy()
    kernel[:, [3, 17, 30]] = 0.0  # 37 live: the first block is the weakest 37 % r
    model.layers[0].kernel.assign(kernel)
    kernels = [layer.kernel.numpy() for layer in model.layers]
    expected = _block_greedy_reference(kernels, 0.7, round_to)
    report = gss.prune(model, target_sparsity=0.7, round_to=round_to)
    assert report.sparsity >= 0.7
    for layer, want in zip(model.layers[:-1], expected):
        norms = np.linalg.norm(layer.kernel.numpy(), axis=0)
        assert set(np.flatnonzero(norms == 0)) == want
        assert len(want) > 3 and (norms.size - len(want)) % round_to == 0
    assert report.rows[-1].zero_groups == 0


def test_round_to_alone_drops_each_layers_weakest_remainder():
    model = mlp(hidden=(40, 30), inputs=12, outputs=3)  # 30: a full width stays whole
    kernel = model.layers[0].kernel.numpy()
    kernel[:, [3, 17, 30]] = 0.0
    kernel[:, 5] *= 1e-4  # the weakest live column, then column 9
    kernel[:, 9] *= 1e-3
    model.layers[0].kernel.assign(kernel)
    report = gss.prune(model, round_to=4)  # no target: 37 live -> 36
    dead = np.flatnonzero(np.linalg.norm(model.layers[0].kernel.numpy(), axis=0) == 0)
    assert set(dead) == {3, 17, 30, 5}
    assert [r.zero_groups for r in report.rows] == [4, 0, 0]


def test_round_to_keeps_whole_blocks_at_the_floor_and_on_convolutions():
    model = mlp(hidden=(40, 32))
    with pytest.warns(UserWarning, match="not reached"):
        report = gss.prune(model, target_sparsity=0.99, round_to=8)
    assert [r.groups - r.zero_groups for r in report.rows] == [8, 8, 2]
    with pytest.warns(UserWarning, match="not reached"):
        report = gss.prune(mlp(hidden=(40, 32)), 0.99, round_to=8, min_live_groups=9)
    assert [r.groups - r.zero_groups for r in report.rows] == [16, 16, 2]
    model = small_convnet()  # 4 and 6 filters, 5 units: remainders 0, 0, 1
    gss.prune(model, target_sparsity=0.5, metric="flops", ranking="hybrid", round_to=2)
    assert gss.model_stats(model).flop_ratio <= 0.5 + 1e-9
    live = [r.groups - r.zero_groups for r in gss.sparsity_report(model, threshold=0).rows]
    assert all(n % 2 == 0 or n == full for n, full in zip(live[:3], (4, 6, 5)))
    assert live[3] == 3


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "8"])
def test_round_to_rejects_non_positive_integers(bad):
    model = mlp()
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError, match="`round_to`"):
        gss.prune(model, 0.5, round_to=bad)
    with pytest.raises(ValueError, match="`round_to`"):
        gss.SparsityMonitor(target_sparsity=0.5, round_to=bad)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))


def test_prune_warns_when_the_floors_keep_the_target_out_of_reach():
    with pytest.warns(UserWarning, match="round_to=2"):
        gss.prune(small_convnet(), 0.6, metric="flops", ranking="hybrid", round_to=2)
    model = mlp(hidden=(40, 32))
    with pytest.warns(UserWarning, match="not reached"):
        report = gss.prune(model, 0.99, min_live_groups=20)
    assert [r.groups - r.zero_groups for r in report.rows] == [20, 20, 2]
    model = mlp(hidden=(40, 32))
    with pytest.warns(UserWarning, match="name more `layers`"):  # one layer cannot reach it
        gss.prune(model, 0.9, layers=[model.layers[0]])


def test_layers_restricts_pruning_and_the_rest_still_counts_like_numpy_reference():
    model = mlp(hidden=(40, 30))
    before = [layer.kernel.numpy().copy() for layer in model.layers]
    report = gss.prune(model, target_sparsity=0.3, layers=["dense_1"])
    # numpy reference: the weakest-rms units of dense_1 go first until 30 % of all
    # kernel weights (24*40 + 40*30 + 30*2 = 2220) are zero; each unit holds 40 weights
    k1 = before[1]
    rms = np.linalg.norm(k1, axis=0) / np.sqrt(k1.shape[0])
    need = int(np.ceil(0.3 * 2220 / k1.shape[0]))
    expected = set(np.argsort(rms, kind="stable")[:need])
    dead = set(np.flatnonzero(np.linalg.norm(model.layers[1].kernel.numpy(), axis=0) == 0))
    assert dead == expected and report.sparsity >= 0.3
    for i in (0, 2):  # excluded layers untouched, the output too
        np.testing.assert_array_equal(model.layers[i].kernel.numpy(), before[i])
    layer = model.layers[0]  # a layer object works as well as its name
    gss.prune(model, target_sparsity=0.5, layers=[layer])
    assert np.linalg.norm(layer.kernel.numpy(), axis=0).min() == 0


def test_layers_rejects_unknown_names_and_bad_types_and_prunes_nothing():
    model = mlp()
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError, match="'fc9' is not a prunable layer.*dense"):
        gss.prune(model, target_sparsity=0.5, layers=["fc9"])
    with pytest.raises(TypeError, match="layers"):
        gss.prune(model, target_sparsity=0.5, layers=[3])
    with pytest.raises(TypeError, match="layers"):
        gss.prune(model, target_sparsity=0.5, layers=[])
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)
