"""`keras-gss inspect | compact | sensitivity`: the CLI verbs for a user's own `.keras` model.

    keras-gss inspect MODEL.keras [--latency TABLE.json | --profile litert|keras]
    keras-gss compact PRUNED.keras -o SMALL.keras [--litert SMALL.tflite]
    keras-gss sensitivity MODEL.keras --data DATA.npz [--levels 0.25 0.5 0.75]

A model that needs custom objects loads after `--import MODULE` (the module that
registers them with `keras.saving.register_keras_serializable`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
from pathlib import Path

import numpy as np


def add_parsers(sub) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("inspect", help="groups, coupled families, params, FLOPs and latency "
                       "of each prunable layer of a .keras model", formatter_class=fmt)  # fmt: skip
    _common(p)
    p.add_argument("--latency", help="a latency table (JSON) from `--profile ... --save`")
    p.add_argument("--profile", choices=["litert", "keras"], help="profile the latency now")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the latency")
    p.add_argument("--save", help="write the profiled latency table to this JSON file")

    p = sub.add_parser("compact", help="remove the dead channels of a pruned .keras model",
                       formatter_class=fmt)  # fmt: skip
    _common(p)
    p.add_argument("-o", "--output", required=True, help="the compact model (.keras)")
    p.add_argument("--litert", help="also export the compact model to this .tflite file")
    p.add_argument("--batch-size", type=int, default=32, help="batch of the exactness check "
                   "and of the latency measured")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")

    p = sub.add_parser("sensitivity", help="prune each family of coupled layers alone to "
                       "each level, evaluate, restore", formatter_class=fmt)  # fmt: skip
    _common(p)
    p.add_argument("--data", required=True, help=".npz with arrays x and y (labels)")
    p.add_argument("--levels", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--latency", help="a latency table (JSON) for the latency saved")
    p.add_argument("--tolerance", type=float, default=0.02, help="accuracy drop allowed "
                   "for a layer to be picked")  # fmt: skip
    p.add_argument("--out", help="write the table to this JSON file")
    p.add_argument("--plot", help="write a figure to this PNG file")


def _common(p) -> None:
    p.add_argument("model", help="a .keras file")
    p.add_argument("--import", dest="imports", action="append", default=[],
                   help="a module to import first (one that registers custom objects)")  # fmt: skip


def load(path: str, imports=()):
    """Load a `.keras` model for the CLI, or exit with a one-line reason."""
    import keras

    import keras_gss  # noqa: F401 - registers keras-gss objects

    for name in imports:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise SystemExit(f"--import {name}: {err}") from None
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"{path}: no such file")
    if file.suffix != ".keras":
        raise SystemExit(f"{path}: not a .keras file (save it with model.save('model.keras'))")
    try:
        return keras.saving.load_model(file)
    except (TypeError, ValueError) as err:
        text = str(err)
        if "custom" in text.lower() or "could not be deserialized" in text or "Unknown" in text:
            raise SystemExit(
                f"{path} needs custom objects to load: pass --import MODULE (the module "
                f"that registers them). Keras said: {text.splitlines()[0][:300]}"
            ) from None
        raise SystemExit(f"{path}: cannot load it as a Keras model: {text[:300]}") from None
    except Exception as err:  # noqa: BLE001 - a corrupt zip, a missing config, ...
        raise SystemExit(f"{path}: not a Keras model ({type(err).__name__}: {err})") from None


def _table(path: str | None):
    from keras_gss.latency import LatencyTable

    if path is None:
        return None
    try:
        return LatencyTable.load(path)
    except ValueError as err:
        raise SystemExit(f"--latency {path}: {err}") from None


def run_inspect(args) -> int:
    from keras_gss import graph, latency, report

    model = load(args.model, args.imports)
    table = _table(args.latency)
    if args.profile:
        table = latency.profile(model, args.batch_size, args.profile, verbose=1)
        if args.save:
            table.save(args.save)
    infos = graph.describe(model)
    if not infos:
        raise SystemExit(f"{args.model}: no prunable layer (Dense, Conv*, ...) in this model")
    units = graph.Units(infos)
    family_of = {}
    for u, members in enumerate(units.members):
        for i, _ in members:
            family_of.setdefault(i, set()).add(int(units.family[u]))
    rows = report.sparsity_report(model, threshold=0.0).rows
    none = np.zeros(graph.coupled_size(infos), dtype=bool)
    cost, _ = table.cost(infos) if table else (None, None)
    head = f"{'layer':24} {'type':18} {'groups':>6} {'zero':>5} {'family':>7} {'params':>9} "
    head += f"{'MFLOPs':>8}" + (f" {'ms':>8}" if table else "")
    print(head)
    print("-" * len(head))
    for k, (info, row) in enumerate(zip(infos, rows)):
        fam = ",".join(str(f) for f in sorted(family_of.get(k, ()))) or "-"
        fam = fam if any(units.prunable[units.family == f].any() for f in family_of.get(k, ())) \
            else "pinned"  # fmt: skip
        line = f"{info.layer.name[:24]:24} {row.type[:18]:18} {row.groups:6d} {row.zero_groups:5d} "
        line += f"{fam[:7]:>7} {info.layer.count_params():9d} {info.dense_flops / 1e6:8.2f}"
        if table:
            widths = table.widths(infos, none)[k]
            line += f" {cost(k, *widths):8.3f}"
        print(line)
    stats = report.model_stats(model)
    print(f"\n{len(infos)} prunable layers, {units.families} families of coupled layers, "
          f"{int(units.prunable.sum())} of {len(units)} coupled groups prunable")  # fmt: skip
    print(f"params {stats.params:,} (live {stats.live_params:,}); FLOPs per example "
          f"{stats.flops / 1e6:.2f} M (live {stats.live_flops / 1e6:.2f} M)")  # fmt: skip
    if table:
        predicted = table.predict(model)
        print(f"latency at batch {table.batch_size} ({table.runtime}): measured dense "
              f"{table.dense_ms:.3f} ms, predicted as it is {predicted:.3f} ms")  # fmt: skip
    return 0


def run_compact(args) -> int:
    import keras

    from keras_gss import latency, report
    from keras_gss.compact import compact

    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.output)
    if out.suffix != ".keras":
        raise SystemExit(f"-o {args.output}: the output must end in .keras")
    targets = [out] + ([Path(args.litert)] if args.litert else [])
    for target in targets:
        if target.exists() and not args.overwrite:
            raise SystemExit(f"{target} exists: pass --overwrite to replace it")
    model = load(args.model, args.imports)
    try:
        small = compact(model)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"compact: {err}") from None
    x = np.random.default_rng(0).normal(size=(args.batch_size, *model.inputs[0].shape[1:]))
    x = x.astype("float32")
    want = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
    got = np.asarray(keras.ops.convert_to_numpy(small(x, training=False)))
    diff = float(np.max(np.abs(want - got)) / max(float(np.max(np.abs(want))), 1e-12))
    if not diff <= 1e-4:
        raise SystemExit(f"compact: outputs differ (max relative difference {diff:.2e}); "
                         "nothing was written")  # fmt: skip
    from keras_gss.cli import _save

    out.parent.mkdir(parents=True, exist_ok=True)
    _save(small, out)
    dense, compact_stats = report.model_stats(model), report.model_stats(small)
    print(f"exact on {args.batch_size} random inputs: max relative difference {diff:.1e}")
    print(f"params {dense.params:,} -> {compact_stats.params:,}; FLOPs per example "
          f"{dense.flops / 1e6:.2f} M -> {compact_stats.flops / 1e6:.2f} M "
          f"({compact_stats.flops / max(dense.flops, 1):.1%})")  # fmt: skip
    runtime = "keras"
    if args.litert:
        path = Path(args.litert)
        path.parent.mkdir(parents=True, exist_ok=True)
        if keras.backend.backend() != "tensorflow":
            raise SystemExit("--litert exports through the TensorFlow backend: run with "
                             "KERAS_BACKEND=tensorflow")  # fmt: skip
        temporary = path.with_name(path.stem + ".tmp.tflite")
        small.export(str(temporary), format="litert", verbose=False)
        os.replace(temporary, path)
        runtime = "litert"
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    before, after = latency.compare_ms([model, small], args.batch_size, runtime)
    print(f"latency at batch {args.batch_size} ({runtime}): {before:.3f} ms -> {after:.3f} ms "
          f"({before / after:.2f}x)")  # fmt: skip
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


def run_sensitivity(args) -> int:
    from keras_gss.sensitivity import sensitivity

    for level in args.levels:
        if not (math.isfinite(level) and 0 < level < 1):
            raise SystemExit(f"--levels: each level must be in (0, 1), got {level}")
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise SystemExit(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    model = load(args.model, args.imports)
    x, y = _data(args.data, model)
    table = sensitivity(model, x, y, args.levels, latency_table=_table(args.latency))
    print(table)
    picked = table.auto_layers(tolerance=args.tolerance)
    print(f"\nworth pruning (drop <= {args.tolerance} at the middle level, saves >= 5 %): "
          f"{', '.join(picked) if picked else 'none'}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({**table.to_dict(), "auto_layers": picked}, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from keras_gss import plot

        fig, ax = plt.subplots(figsize=(6, 4))
        plot.sensitivity(ax, table)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    return 0


def _data(path: str, model):
    try:
        with np.load(path) as data:
            keys = set(data.files)
            xk = next((k for k in ("x", "x_val", "x_test") if k in keys), None)
            yk = next((k for k in ("y", "y_val", "y_test") if k in keys), None)
            if xk is None or yk is None:
                raise SystemExit(f"--data {path}: expected arrays named x and y, found "
                                 f"{sorted(keys)}")  # fmt: skip
            x, y = data[xk].astype("float32"), data[yk]
    except (OSError, ValueError) as err:
        raise SystemExit(f"--data {path}: not a readable .npz file ({err})") from None
    want = tuple(model.inputs[0].shape[1:])
    if tuple(x.shape[1:]) != want:
        raise SystemExit(f"--data {path}: x has examples of shape {tuple(x.shape[1:])}, the "
                         f"model takes {want}")  # fmt: skip
    if len(x) != len(y):
        raise SystemExit(f"--data {path}: {len(x)} examples in x but {len(y)} labels in y")
    return x, y


COMMANDS = {"inspect": run_inspect, "compact": run_compact, "sensitivity": run_sensitivity}


def main(args) -> int:
    return COMMANDS[args.command](args)
