"""`keras-gss train`: the paper's experiment in one command (also `python -m keras_gss`).

`keras-gss inspect | compact | sensitivity` work on a model of your own
(`keras_gss.cli_model`).

Trains the paper's LeNet-like network on (Fashion-)MNIST with a chosen method,
prunes it to a target sparsity, fine-tunes it, and writes a run folder:
`pruned.keras` (with its masks: load it after `import keras_gss`),
`stripped.keras` (the same weights as plain Keras, loads anywhere),
`compact.keras` (dead units removed, plain Keras), `report.json`, `history.csv`
and `sparsity.png`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path

from keras_gss import cli_model, pruning, recipes

# The recipe's levers are `recipes.for_weights` at this budget (10,000 images x 3
# epochs at batch 100 = 300 steps), declared there once; picked by measurement
# (docs/cli.md, "keras-gss train").
LIMIT, EPOCHS, BATCH_SIZE = 10000, 3, 100
RECIPE = recipes.for_weights(0.9, epochs=EPOCHS, steps=LIMIT // BATCH_SIZE * EPOCHS)
_LEVERS = ("method", "lasso", "variance", "attention", "keep", "proximal", "threshold",
           "ranking", "metric", "begin_epoch", "update_freq", "round_to", "min_live_groups",
           "release", "layers", "regularize")  # fmt: skip
DEFAULTS = {
    "dataset": "fashion_mnist",
    "epochs": EPOCHS,
    "batch_size": BATCH_SIZE,
    "lr": 1e-3,
    **{name: getattr(RECIPE, name) for name in _LEVERS},
    "target_sparsity": RECIPE.target,
    "end_epoch": None,  # one epoch before the end, as the recipe (from --epochs)
    "finetune_epochs": 1.0,
    "finetune_lr": None,
    "limit": LIMIT,
    "seed": 0,
    "output": "runs/latest",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keras-gss", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "train",
        help="train, prune and fine-tune the paper's network",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=["fashion_mnist", "mnist"])
    p.add_argument("--method", choices=recipes.METHODS)
    p.add_argument("--epochs", type=int, help="regularized training epochs")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--lasso", type=float, help="group-lasso strength")
    p.add_argument("--variance", type=float, help="attention strength (gss)")
    p.add_argument("--attention", choices=["variance", "scale_invariant", "fraction"])
    p.add_argument("--keep", type=float, help="fraction kept alive by --attention fraction")
    p.add_argument("--proximal", type=float, help="proximal step strength; 0 disables")
    p.add_argument("--threshold", type=float, help="group norm at or below which a group is zero")
    p.add_argument("--target-sparsity", type=float, help="fraction of prunable weights to zero")
    p.add_argument("--ranking", choices=[r for r in pruning.RANKINGS if r != "latency"])
    p.add_argument("--metric", choices=[m for m in pruning.METRICS if m != "latency"],
                   help="what the target counts")  # fmt: skip
    p.add_argument("--begin-epoch", type=int, help="epoch (0-based) the pruning ramp starts at")
    p.add_argument("--end-epoch", type=int, help="epoch (0-based) at whose end the target "
                   "is reached (default: the one before the last, which trains at it)")  # fmt: skip
    p.add_argument("--update-freq", type=_update_freq, help="N: prune every N batches on the "
                   "ramp; 'epoch': only at epoch ends")  # fmt: skip
    p.add_argument("--round-to", type=int, help="pruned layers keep a multiple of this many "
                   "live units/filters (8 or 16: faster compact models on CPU)")  # fmt: skip
    p.add_argument("--min-live-groups", type=int, help="live units/filters every pruned "
                   "layer keeps (default 4; 12 with --ranking memory at FLOP targets)")  # fmt: skip
    p.add_argument("--release", action="store_true", help="remove the regularizers "
                   "once the target is reached (the rest trains on the task loss)")  # fmt: skip
    p.add_argument("--layers", nargs="+", help="names of the layers that may be pruned "
                   "(default: all but the output; e.g. conv1 conv2)")  # fmt: skip
    p.add_argument("--regularize", choices=["all", "pruned"], help="where the regularizers "
                   "go: every layer but the output, or only --layers (default all)")  # fmt: skip
    p.add_argument("--finetune-epochs", type=float, help="fine-tune epochs (0.25 = a quarter)")
    p.add_argument("--finetune-lr", type=float, help="Adam learning rate of the fine-tune "
                   "(default: --lr / 10 after pruning while training, --lr after magnitude "
                   "pruning)")  # fmt: skip
    p.add_argument("--limit", type=int, help="training images (0 = all)")
    p.add_argument("--seed", type=int)
    p.add_argument("--output", help="run folder (a non-empty one gets a numbered sibling "
                   "unless --overwrite)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --output")
    p.add_argument("--no-dense-baseline", action="store_true",
                   help="skip training the dense reference model")  # fmt: skip
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2])
    p.set_defaults(**DEFAULTS)
    cli_model.add_parsers(sub)
    return parser


def _update_freq(text: str) -> str | int:
    if text == "epoch":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'epoch' or an int >= 1, got {text!r}")
    return value


def _check(args) -> None:
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise SystemExit(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if args.command != "train":
        return
    for name in ("epochs", "batch_size", "round_to", "min_live_groups"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("lr", "lasso", "variance", "threshold", "finetune_epochs", "proximal"):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0")
    if args.finetune_lr is None:  # measured: see docs/cli.md
        args.finetune_lr = args.lr if args.method == "magnitude" else args.lr / 10
    elif args.finetune_lr <= 0:
        raise SystemExit("--finetune-lr must be > 0 (leave it out for the default)")
    if args.end_epoch is None:
        args.end_epoch = max(args.epochs - 2, args.begin_epoch)
    if not 0 <= args.begin_epoch <= args.end_epoch < args.epochs:
        raise SystemExit(
            f"--begin-epoch ({args.begin_epoch}) and --end-epoch ({args.end_epoch}) must "
            f"satisfy 0 <= begin <= end < --epochs ({args.epochs})"
        )
    if not 0 <= args.target_sparsity < 1:
        raise SystemExit("--target-sparsity must be in [0, 1)")
    if args.release and not args.target_sparsity:
        raise SystemExit("--release needs --target-sparsity > 0: the regularizers are removed "
                         "once the target is reached")  # fmt: skip
    if args.limit < 0:
        raise SystemExit("--limit must be >= 0 (0 = the whole training set)")
    try:  # the levers the checks above leave to the Recipe (--keep)
        _recipe(args)
    except ValueError as err:
        name = re.search(r"`(\w+)`", str(err))
        flag = f"--{name.group(1).replace('_', '-')}: " if name else ""
        raise SystemExit(f"{flag}{err}") from None
    if args.layers:  # names checked on the network itself, before any training
        from keras_gss import graph, models

        try:
            graph.restrict(graph.describe(models.lenet()), args.layers)
        except ValueError as err:
            raise SystemExit(f"--layers: {err}") from None


def _recipe(args):
    """The run's `Recipe`: the method and every lever the monitor prunes with."""
    import dataclasses

    names = {field.name for field in dataclasses.fields(recipes.Recipe)} - {"target"}
    levers = {name: getattr(args, name) for name in names if hasattr(args, name)}
    levers["proximal"] = args.proximal or None  # 0 disables it
    levers["gradual"] = args.method in ("gss", "group-lasso", "monitor")  # pruned while it trains
    return recipes.Recipe(**levers)


def run_train(args, state: dict | None = None) -> dict:
    """The run; `state` receives the run folder ("out") and the report as it grows
    ("report"), so that an interrupted run can still write what it has."""
    state = {} if state is None else state
    import keras

    from keras_gss import datasets, experiment, models, plot
    from keras_gss.groups import layer_group_norms
    from keras_gss.monitor import SparsityMonitor
    from keras_gss.report import model_stats, sparsity_report

    out = state["out"] = _output_folder(args)
    timer = experiment.Timer()
    with timer("load"):
        (x, y), (xt, yt), source = datasets.load(
            args.dataset, limit=args.limit or None, return_source=True
        )
    print(f"Data: {source.describe()}; {len(x)} train / {len(xt)} test images", flush=True)
    recipe = _recipe(args)
    verbose = {0: 0, 1: 1, 2: 2}[args.verbose]
    fit = {"batch_size": args.batch_size, "lr": args.lr, "verbose": verbose}
    report = state["report"] = {
        "dataset": {"name": args.dataset, **source.__dict__, "train": len(x), "test": len(xt)},
        "method": args.method,
        "recipe": recipe.to_dict(),
        "hyperparameters": {k: getattr(args, k) for k in DEFAULTS if k != "output"},
        "backend": keras.backend.backend(),
    }

    def fresh():
        keras.utils.set_random_seed(args.seed)
        return models.lenet()

    dense_accuracy = None
    if args.method in ("dense", "magnitude") or not args.no_dense_baseline:
        print("\n== Dense reference ==", flush=True)
        dense = fresh()
        with timer("dense_train"):
            experiment.train(dense, experiment.Recipe("dense"), x, y, args.epochs, **fit)
        dense_accuracy = experiment.accuracy(dense, xt, yt)
        print(f"Dense test accuracy: {dense_accuracy:.4f}", flush=True)
    report["dense_accuracy"] = dense_accuracy

    csv = keras.callbacks.CSVLogger(str(out / "history.csv"))
    monitor = None
    if recipe.structured:
        print(f"\n== {args.method} training, pruned to {args.target_sparsity:.0%} ==", flush=True)
        model = fresh()
        norms_before = _rms_norms(model, layer_group_norms)
        monitor = recipe.monitor(args.target_sparsity or None, verbose=verbose)
        with timer("train"):
            experiment.train(model, recipe, x, y, args.epochs, callbacks=[monitor, csv], **fit)
    else:
        model = dense if dense_accuracy is not None else fresh()
        norms_before = None
        if args.method == "magnitude" and args.target_sparsity:
            pruning.magnitude_prune(model, args.target_sparsity)
    report["pruned_accuracy"] = experiment.accuracy(model, xt, yt)

    if args.method != "dense" and args.finetune_epochs:
        tune = {**fit, "lr": args.finetune_lr}
        print(f"\n== Fine-tune ({args.finetune_epochs} epochs at lr {tune['lr']:g}, "
              "pruned weights frozen) ==")  # fmt: skip
        csv_ft = keras.callbacks.CSVLogger(str(out / "history.csv"), append=True)
        measure = [SparsityMonitor(prune=False, threshold=args.threshold, verbose=0)]
        with timer("finetune"):
            experiment.finetune(model, x, y, args.finetune_epochs, callbacks=[*measure, csv_ft],
                                **tune)  # fmt: skip
    final_accuracy = experiment.accuracy(model, xt, yt)
    pruning.release_element_masks(model)
    report["final_accuracy"] = final_accuracy
    if dense_accuracy is not None:
        report["accuracy_drop_points"] = 100 * (dense_accuracy - final_accuracy)
    sparsity = sparsity_report(model, threshold=args.threshold)
    report["sparsity"] = sparsity.to_dict()
    report["live_units"] = {r.layer: r.groups - r.zero_groups for r in sparsity.rows}
    report["model_stats"] = model_stats(model).to_dict()

    with timer("save"):
        _save(model, out / "pruned.keras")  # with its masks: loads after `import keras_gss`
        from keras_gss.compact import strip

        _save(strip(model), out / "stripped.keras")  # plain Keras, loads anywhere
    if args.method != "magnitude":
        from keras_gss.compact import compact

        with timer("compact"):
            small = compact(model)
            _save(small, out / "compact.keras")
        report["compact"] = {
            "params": int(small.count_params()),
            "dense_params": int(model.count_params()),
            "latency_ms_batch256": {
                "pruned": _latency_ms(model, xt[:256]),
                "compact": _latency_ms(small, xt[:256]),
            },
        }
        lat = report["compact"]["latency_ms_batch256"]
        print(f"Compact model: {small.count_params():,} parameters "
              f"(pruned model {model.count_params():,}); batch-256 latency "
              f"{lat['pruned']:.1f} -> {lat['compact']:.1f} ms")  # fmt: skip
    norms = {"after training": _rms_norms(model, layer_group_norms)}
    if norms_before is not None:
        norms = {"at initialization": norms_before, **norms}
    history = monitor.history if monitor is not None else []
    plot.training_figure(history, norms, out / "sparsity.png")
    report["monitor_history"] = history
    report["wall_seconds"] = timer.seconds
    _write_report(out, report)
    print(f"\n{sparsity}\n")
    print(
        f"Dense accuracy {_pct(dense_accuracy)} -> final {_pct(final_accuracy)}; "
        f"sparsity {sparsity.sparsity:.1%}; FLOPs left {report['model_stats']['flop_ratio']:.1%}"
    )
    print(f"Wrote {out}/: pruned.keras, stripped.keras, compact.keras, report.json, "
          "history.csv, sparsity.png")  # fmt: skip
    return report


def _output_folder(args) -> Path:
    """The run folder, checked writable before any training. A non-empty one is
    not overwritten unless asked: the run goes to the first free `<name>-N`."""
    out = Path(args.output)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        k = 2
        while Path(f"{out}-{k}").exists():
            k += 1
        print(f"{out} is not empty: writing to {out}-{k} (--overwrite writes into it)")
        out = Path(f"{out}-{k}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise SystemExit(f"--output {out} is not writable: {err.strerror or err}") from None
    return out


def _save(model, path: Path) -> None:
    """`model.save(path)`, whole or not at all (a temporary file, then a rename)."""
    temporary = path.with_name(f"{path.stem}.tmp.keras")
    model.save(temporary)
    os.replace(temporary, path)


def _write_report(out: Path, report: dict) -> None:
    """report.json, written whole or not at all (a temporary file, then a rename)."""
    temporary = out / "report.json.tmp"
    temporary.write_text(json.dumps(report, indent=2, default=float))
    os.replace(temporary, out / "report.json")


def _latency_ms(model, x, repeats: int = 7) -> float:
    """Median wall time of one forward pass on `x`, after a warm-up call."""
    model(x[:1], training=False)
    model(x, training=False)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x, training=False)
        times.append(1000 * (time.perf_counter() - start))
    return float(sorted(times)[len(times) // 2])


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _rms_norms(model, layer_group_norms):
    import numpy as np

    from keras_gss import graph

    parts = [layer_group_norms(i.layer) / np.sqrt(i.group_size) for i in graph.describe(model)]
    return np.concatenate(parts)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    _check(args)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    start = time.perf_counter()
    if args.command in cli_model.COMMANDS:
        return cli_model.main(args)
    if args.command == "train":
        state: dict = {}
        try:
            run_train(args, state)
        except KeyboardInterrupt:
            if "out" in state:
                _write_report(state["out"], {**state.get("report", {}), "interrupted": True})
            where = f" ({state['out']}/report.json)" if "out" in state else ""
            print(f"\nInterrupted: the report so far is written{where}.", file=sys.stderr)
            return 130
    print(f"Done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
