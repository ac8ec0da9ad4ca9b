"""`keras-gss inspect | compact | sensitivity` end to end on a small model, and their errors."""

import json

import keras
import numpy as np
import pytest

import keras_gss as gss
from keras_gss.cli import main
from tests.conftest import randomize


@pytest.fixture
def files(tmp_path):
    model = gss.models.resnet20()
    randomize(model, seed=0)
    model.save(tmp_path / "dense.keras")
    gss.prune(model, 0.5, metric="flops", round_to=8)
    model.save(tmp_path / "pruned.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.random((40, 28, 28, 1), "float32"), y=np.arange(40) % 10)
    return tmp_path, model


def test_inspect_prints_every_layer_and_the_profiled_latency(files, capsys):
    path, model = files
    table = path / "table.json"
    assert main(["inspect", str(path / "pruned.keras"), "--profile", "keras", "--batch-size", "2",
                 "--save", str(table)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    infos = gss.graph.describe(model)
    for info in infos:
        assert info.layer.name in out
    stats = gss.model_stats(model)
    assert f"params {stats.params:,} (live {stats.live_params:,})" in out
    assert "families of coupled layers" in out and "latency at batch 2 (keras)" in out
    assert sorted(json.loads(table.read_text())["layers"]) == sorted(i.layer.name for i in infos)
    assert main(["inspect", str(path / "dense.keras"), "--latency", str(table)]) == 0
    assert "predicted as it is" in capsys.readouterr().out


def test_compact_writes_an_exact_smaller_model(files, capsys):
    path, model = files
    out = path / "small.keras"
    assert main(["compact", str(path / "pruned.keras"), "-o", str(out), "--batch-size", "4"]) == 0
    text = capsys.readouterr().out
    assert "exact on 4 random inputs" in text and "latency at batch 4" in text
    small = keras.saving.load_model(out)
    assert small.count_params() == gss.model_stats(model).live_params
    x = np.random.default_rng(1).random((3, 28, 28, 1), "float32")
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    with pytest.raises(SystemExit, match="exists: pass --overwrite"):
        main(["compact", str(path / "pruned.keras"), "-o", str(out)])
    if keras.backend.backend() == "tensorflow":
        lite = path / "small.tflite"
        assert main(["compact", str(path / "pruned.keras"), "-o", str(out), "--overwrite",
                     "--litert", str(lite), "--batch-size", "2"]) == 0  # fmt: skip
        assert lite.stat().st_size > 0 and "(litert)" in capsys.readouterr().out
    else:
        with pytest.raises(SystemExit, match="KERAS_BACKEND=tensorflow"):
            main(["compact", str(path / "pruned.keras"), "-o", str(out), "--overwrite",
                  "--litert", str(path / "small.tflite")])  # fmt: skip


def test_sensitivity_prints_the_table_and_writes_json_and_plot(files, capsys):
    path, _ = files
    report, figure = path / "sens.json", path / "sens.png"
    assert main(["sensitivity", str(path / "dense.keras"), "--data", str(path / "data.npz"),
                 "--levels", "0.5", "--out", str(report), "--plot", str(figure)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "baseline score" in out and "worth pruning" in out
    data = json.loads(report.read_text())
    assert len(data["rows"]) >= 10 and "auto_layers" in data
    assert figure.stat().st_size > 0


def test_bad_inputs_exit_with_one_line(files, tmp_path):
    path, _ = files
    (tmp_path / "notes.keras").write_text("not a zip")
    (tmp_path / "model.h5").write_text("")
    with pytest.raises(SystemExit, match="no such file"):
        main(["inspect", str(tmp_path / "missing.keras")])
    with pytest.raises(SystemExit, match="not a .keras file"):
        main(["inspect", str(tmp_path / "model.h5")])
    with pytest.raises(SystemExit, match="not a Keras model|cannot load"):
        main(["inspect", str(tmp_path / "notes.keras")])
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 32, 32, 1), "float32"), y=np.zeros(4))
    with pytest.raises(SystemExit, match=r"shape \(32, 32, 1\), the model takes \(28, 28, 1\)"):
        main(["sensitivity", str(path / "dense.keras"), "--data", str(tmp_path / "wrong.npz")])
    np.savez(tmp_path / "keys.npz", images=np.zeros((4, 28, 28, 1)))
    with pytest.raises(SystemExit, match="expected arrays named x and y"):
        main(["sensitivity", str(path / "dense.keras"), "--data", str(tmp_path / "keys.npz")])
    with pytest.raises(SystemExit, match="--levels"):
        main(["sensitivity", str(path / "dense.keras"), "--data", str(path / "data.npz"),
              "--levels", "1.5"])  # fmt: skip
    with pytest.raises(SystemExit, match="must end in .keras"):
        main(["compact", str(path / "pruned.keras"), "-o", str(tmp_path / "small.h5")])


@keras.saving.register_keras_serializable(package="test_cli_model")
class Doubler(keras.layers.Layer):
    def call(self, x):
        return 2 * x


def test_a_model_with_custom_objects_says_what_to_import(tmp_path):
    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(2)(Doubler(name="double")(x)))
    model.save(tmp_path / "custom.keras")
    registry = keras.saving.get_custom_objects()
    saved = registry.pop("test_cli_model>Doubler")
    try:
        with pytest.raises(SystemExit, match="needs custom objects to load: pass --import"):
            main(["inspect", str(tmp_path / "custom.keras")])
        with pytest.raises(SystemExit, match="--import no_such_module_here"):
            main(["inspect", str(tmp_path / "custom.keras"), "--import", "no_such_module_here"])
    finally:
        registry["test_cli_model>Doubler"] = saved
    assert main(["inspect", str(tmp_path / "custom.keras")]) == 0
