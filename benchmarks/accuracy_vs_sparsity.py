"""Accuracy vs sparsity: the paper's comparison, plus an ablation of keras-gss' levers.

For each seed, each method is trained once with the same budget; the trained
model is then hard-pruned to each sparsity level (fraction of prunable kernel
weights zero; whole groups, lowest rank first, never the output units, for the
structured methods; single weights for magnitude pruning), evaluated, fine-tuned
with the pruned weights held at zero and the regularizers removed, and evaluated
again. Structured methods are also pruned to FLOP targets (`F85` = 85% of FLOPs
removed) for comparisons at equal FLOPs.

Every (method, seed, level) result is cached as JSON, so a rerun skips what is
done and the full mode can run in parts. The cache is committed as one file per
experiment, `cache.json.gz` beside results.json (unpacked into the git-ignored
`cache/` when a run starts, packed again when it ends):

    python benchmarks/accuracy_vs_sparsity.py --quick          # < 10 min, 2 cores
    python benchmarks/accuracy_vs_sparsity.py                  # full, resumable

Prints a markdown table last; writes results.json, table.md and accuracy_drop.png.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_gss import datasets, experiment, models, plot  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _meta  # noqa: E402

from keras_gss.report import model_stats, sparsity_report  # noqa: E402

R = experiment.Recipe
VARIANTS = {
    "dense": R("dense"),
    "magnitude": R("magnitude"),
    "ssl": R("group-lasso", lasso=2e-3),
    "gss": R("gss", lasso=2e-3, variance=1e-2),
    "gss-scale-invariant": R("gss", lasso=2e-3, variance=1e-3, attention="scale_invariant"),
    "gss-warmup": R("gss", lasso=2e-3, variance=1e-2, warmup=2),
    "gss-fraction": R("gss", lasso=2e-3, variance=2e-3, attention="fraction", keep=0.25),
    "ssl-proximal": R("group-lasso", lasso=2e-3, proximal=2e-5, min_live_groups=4),
    "ssl-auto": R("group-lasso", lasso=2e-3, ranking="auto", min_live_groups=4),
    "recipe": R("group-lasso", lasso=5e-4, proximal=1e-5, ranking="auto", min_live_groups=4),
    "recipe-strong": R("group-lasso", lasso=2e-3, proximal=2e-5, ranking="auto", min_live_groups=4),
    "recipe-weaker": R("group-lasso", lasso=2e-4, proximal=5e-6, ranking="auto", min_live_groups=4),
    "recipe-gradual": R(
        "group-lasso", lasso=5e-4, proximal=1e-5, ranking="auto", min_live_groups=4, gradual=True
    ),
    "recipe-gradual-weaker": R(
        "group-lasso", lasso=2e-4, proximal=5e-6, ranking="auto", min_live_groups=4, gradual=True
    ),
    # pruned in small steps (every 50 batches) and at the level one epoch before the end
    "recipe-steps": R(
        "group-lasso",
        lasso=2e-4,
        proximal=5e-6,
        ranking="auto",
        min_live_groups=4,
        gradual=True,
        end_epoch=1,
        update_freq=50,
    ),  # fmt: skip
    # the ranking that also charges activation memory (FLOP targets only: it has no
    # weight share, so at a weight target it would strip the convolutions)
    "recipe-memory": R(
        "group-lasso",
        lasso=2e-4,
        proximal=5e-6,
        ranking="memory",
        min_live_groups=4,
        gradual=True,
    ),  # fmt: skip
    # the fraction attention on top of the recipe: does an attention term add to it?
    "recipe-fraction": R(
        "gss",
        lasso=5e-4,
        variance=5e-4,
        attention="fraction",
        keep=0.25,
        proximal=1e-5,
        ranking="auto",
        min_live_groups=4,
    ),  # fmt: skip
}
# the same trained weights pruned with live widths a multiple of 8 (`round_to`):
# vector-friendly compact models; a one-shot prune, so no training of its own
VARIANTS["recipe-fraction-r8"] = R(**{**VARIANTS["recipe-fraction"].to_dict(), "round_to": 8})
# the recommended recipe ranked by "memory": few conv1 filters (7-8), many conv2
# filters; trained from scratch, its shape does no better (`scratch-steps-memory`)
VARIANTS["recipe-steps-memory"] = R(**{**VARIANTS["recipe-steps"].to_dict(), "ranking": "memory"})
# the same with a floor of 12 live groups per layer: conv1 keeps the 11-12 filters of
# `scratch-memory`'s shape instead of the 7-8 that `recipe-steps-memory` ends with
VARIANTS["recipe-steps-memory-min12"] = R(
    **{**VARIANTS["recipe-steps-memory"].to_dict(), "min_live_groups": 12}
)
# the FLOP target reached in the convolutions alone (fc1 and fc2 kept whole), conv1
# kept at >= 16 filters: the shape 16/60/512/256, which from scratch measured the best
# at F85 (probe_scratch_shapes.json: drop 0.50 +- 0.18 over 5 seeds)
VARIANTS["recipe-steps-memory-conv16"] = R(
    **{**VARIANTS["recipe-steps-memory"].to_dict(), "min_live_groups": 16,
       "layers": ("conv1", "conv2")}
)  # fmt: skip
# the same with the regularizers on conv1 and conv2 only: fc1 and fc2, never pruned,
# train on the task loss alone (probe_conv16_regularize_convs.json: drop 0.49 +- 0.16)
VARIANTS["recipe-steps-memory-conv16-regpruned"] = R(
    **{**VARIANTS["recipe-steps-memory-conv16"].to_dict(), "regularize": "pruned"}
)
# ablation: the same pruning with no regularizer at all (lasso 0, no proximal step):
# what do the group lasso and the proximal step buy in the best recipe?
VARIANTS["prune-steps-memory-conv16"] = R(
    **{**VARIANTS["recipe-steps-memory-conv16-regpruned"].to_dict(), "lasso": 0.0,
       "proximal": None}
)  # fmt: skip
# the same ablation of the recommended recipe (`recipe-steps`) at W90 and F85
VARIANTS["prune-steps"] = R(
    **{**VARIANTS["recipe-steps"].to_dict(), "lasso": 0.0, "proximal": None}
)
WEIGHTS_OF = {"magnitude": "dense", "recipe-fraction-r8": "recipe-fraction"}
# the dense network with the widths `compact` gives another method's pruned model
# at the same seed and level, trained from scratch with the same budget: how much
# of the drop is the smaller architecture itself (Liu et al. 2019)
SCRATCH = {
    "scratch": "recipe",
    "scratch-memory": "recipe-memory",
    "scratch-steps-memory": "recipe-steps-memory",
    "scratch-steps-memory-min12": "recipe-steps-memory-min12",
}
for _name in SCRATCH:
    VARIANTS[_name] = R("dense")
CORE = ["dense", "magnitude", "ssl", "gss", "recipe"]
ABLATION = [
    "recipe-gradual", "gss-fraction", "gss-scale-invariant", "gss-warmup", "ssl-proximal",
    "ssl-auto", "recipe-strong", "recipe-weaker", "scratch", "recipe-gradual-weaker",
    "recipe-fraction", "recipe-steps", "recipe-memory", "recipe-fraction-r8",
    "scratch-memory", "recipe-steps-memory", "scratch-steps-memory", "recipe-steps-memory-min12",
    "scratch-steps-memory-min12", "recipe-steps-memory-conv16",
    "recipe-steps-memory-conv16-regpruned", "prune-steps-memory-conv16", "prune-steps",
]  # fmt: skip
FLOP_ONLY = {
    "recipe-memory", "scratch-memory", "recipe-steps-memory", "scratch-steps-memory",
    "recipe-steps-memory-min12", "scratch-steps-memory-min12", "recipe-steps-memory-conv16",
    "recipe-steps-memory-conv16-regpruned", "prune-steps-memory-conv16",
}  # fmt: skip
HEADLINE = ["gss-fraction", "recipe-gradual", "scratch"]  # ablation run first for every seed
LEVELS = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
ABLATION_LEVELS = [0.8, 0.9, 0.95]
GRADUAL_LEVELS = [0.9]  # a gradual variant trains once per level: the target levels only
FLOP_LEVELS = [0.85]


def level_key(level: float, metric: str) -> str:
    return f"{'F' if metric == 'flops' else 'W'}{round(level * 100)}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small subset, 1 seed, core methods")
    p.add_argument("--dataset", default="fashion_mnist", choices=datasets.NAMES)
    p.add_argument("--limit", type=int, help="training images (default: all; quick: 4000)")
    p.add_argument("--test-limit", type=int, help="test images (default: all; quick: 2000)")
    p.add_argument("--epochs", type=int, help="training epochs (default 3; quick 2)")
    p.add_argument("--finetune", type=float, help="fine-tune epochs (default 0.25; quick 0.5)")
    p.add_argument("--seeds", type=int, help="number of seeds (default 3; quick 1)")
    p.add_argument("--methods", nargs="+", choices=list(VARIANTS), help="variants to run")
    p.add_argument("--levels", nargs="+", type=float, help="weight-sparsity levels")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--finetune-lr", type=float, help="Adam learning rate of the fine-tune (default: --lr)"
    )
    p.add_argument("--out", default=None, help="results folder")
    p.add_argument(
        "--weights",
        default=None,
        help="folder of trained weights, shared by runs that differ only in the fine-tune "
        "(default: OUT/weights)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the tables from the cached results; run nothing",
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.limit = args.limit if args.limit is not None else (4000 if quick else None)
    args.test_limit = args.test_limit if args.test_limit is not None else (2000 if quick else None)
    args.epochs = args.epochs or (2 if quick else 3)
    args.finetune = args.finetune if args.finetune is not None else (0.5 if quick else 0.25)
    args.seeds = args.seeds or (1 if quick else 3)
    args.methods = args.methods or (CORE if quick else CORE + ABLATION)
    args.levels = args.levels or LEVELS
    args.out = Path(
        args.out or f"benchmarks/results/accuracy_vs_sparsity{'_quick' if quick else ''}"
    )
    args.weights = Path(args.weights) if args.weights else args.out / "weights"
    return args


def _digest(args, keys) -> str:
    blob = json.dumps({k: getattr(args, k) for k in keys}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def config_id(args) -> str:
    """Names the result cache: everything that changes a result."""
    keys = ["dataset", "limit", "test_limit", "epochs", "finetune", "batch_size", "lr"]
    if args.finetune_lr is not None:  # the default keeps the ids of earlier runs
        keys.append("finetune_lr")
    return _digest(args, keys)


def train_id(args) -> str:
    """Names the weight cache: only what changes the trained (not fine-tuned) model."""
    return _digest(args, ["dataset", "limit", "epochs", "batch_size", "lr"])


def plan(args):
    """(seed, method, level, metric) jobs: every method for the first seed (so that one
    complete comparison exists early), then the core methods for the other seeds, then
    the ablation for them; an interrupted run resumes where it stopped."""
    order = [(0, CORE), (0, ABLATION)]
    order += [(seed, CORE) for seed in range(1, args.seeds)]
    order += [(seed, HEADLINE) for seed in range(1, args.seeds)]
    order += [(seed, ABLATION) for seed in range(1, args.seeds)]
    jobs = []
    for seed, phase in order:
        if seed >= args.seeds:
            continue
        for method in [m for m in args.methods if m in phase and m != "dense"]:
            levels = args.levels
            if phase is not CORE:
                levels = [lv for lv in args.levels if lv in ABLATION_LEVELS] or args.levels
            if VARIANTS[method].gradual or method in SCRATCH:
                levels = [lv for lv in levels if lv in GRADUAL_LEVELS] or levels
            if method not in FLOP_ONLY:
                jobs += [(seed, method, lv, "weights") for lv in levels]
            if VARIANTS[method].structured or method in SCRATCH:
                jobs += [(seed, method, lv, "flops") for lv in FLOP_LEVELS]
    return list(dict.fromkeys(jobs))  # a variant in two phases runs once


def live_units(model) -> dict:
    report = sparsity_report(model, threshold=0.0)
    return {row.layer: row.groups - row.zero_groups for row in report.rows}


PACK = "cache.json.gz"


def unpack_cache(out: Path) -> int:
    """Write the cached results of `out/cache.json.gz` into `out/cache/` where a file
    is missing; returns how many were written."""
    pack = out / PACK
    if not pack.exists():
        return 0
    written = 0
    for name, content in json.loads(gzip.decompress(pack.read_bytes())).items():
        file = out / "cache" / name
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(json.dumps(content, indent=1))
            written += 1
    return written


def pack_cache(out: Path) -> int:
    """Pack every JSON file under `out/cache/` into `out/cache.json.gz` (one
    committed file per experiment); returns how many were packed."""
    files = sorted((out / "cache").rglob("*.json"))
    data = {f.relative_to(out / "cache").as_posix(): json.loads(f.read_text()) for f in files}
    blob = json.dumps(data).encode()
    (out / PACK).write_bytes(gzip.compress(blob, mtime=0))
    return len(files)


def run(args) -> list[dict]:
    (x, y), (xt, yt), source = datasets.load(
        args.dataset, limit=args.limit, test_limit=args.test_limit, return_source=True
    )
    print(f"Data: {source.describe()}; {len(x)} train / {len(xt)} test", flush=True)
    cache = args.out / "cache" / config_id(args)
    weights_dir = args.weights / train_id(args)
    cache.mkdir(parents=True, exist_ok=True)
    weights_dir.mkdir(parents=True, exist_ok=True)
    fit = {"batch_size": args.batch_size, "lr": args.lr, "verbose": 0}
    tune = {**fit, "lr": args.lr if args.finetune_lr is None else args.finetune_lr}
    results = []
    if args.report_only:  # every seed with a cached dense result
        args.seeds = len(list(cache.glob("dense-s*.json")))
    jobs = plan(args)
    total = len(jobs) + args.seeds
    done = 0
    started = time.perf_counter()

    def progress(msg):
        elapsed = time.perf_counter() - started
        print(f"[{done}/{total} | {elapsed / 60:5.1f} min] {msg}", flush=True)

    def trained(method, seed, recipe=None, level=None, key=None):
        """A model of this method and seed, trained (from the weight cache if there).

        A gradual recipe is pruned to `level` while it trains: one model per level."""
        source = WEIGHTS_OF.get(method, method)
        recipe = recipe or VARIANTS[source]
        keras.utils.set_random_seed(seed)
        model = models.lenet()
        name = f"{source}-s{seed}" + (f"-{key}" if recipe.gradual else "")
        path = weights_dir / f"{name}.weights.h5"
        if path.exists():
            model.load_weights(path)
            return model, 0.0
        t0 = time.perf_counter()
        experiment.train(model, recipe, x, y, args.epochs, level=level, **fit)
        model.save_weights(path)
        return model, time.perf_counter() - t0

    def from_scratch(method, seed, level, metric, key):
        """A narrow LeNet of the widths `SCRATCH[method]` kept, trained from scratch."""
        source = cache / f"{SCRATCH[method]}-s{seed}-{key}.json"
        widths = list(json.loads(source.read_text())["live_units"].values())
        keras.utils.set_random_seed(seed)
        model = models.lenet(filters=tuple(widths[:2]), units=tuple(widths[2:4]))
        t0 = time.perf_counter()
        experiment.train(model, VARIANTS[method], x, y, args.epochs, **fit)
        seconds = time.perf_counter() - t0
        trained_accuracy = experiment.accuracy(model, xt, yt)
        experiment.finetune(model, x, y, args.finetune, **tune)
        dense = models.lenet()
        stats, dense_stats = model_stats(model), model_stats(dense)

        def kernels(m):
            return sum(int(np.prod(w.shape)) for w in m.weights if w.path.endswith("kernel"))

        return {
            "method": method, "seed": seed, "level": level, "metric": metric, "key": key,
            "recipe": {"shape_of": SCRATCH[method], "widths": widths},
            "sparsity": 1 - kernels(model) / kernels(dense),
            "accuracy_pruned": trained_accuracy,
            "accuracy_finetuned": experiment.accuracy(model, xt, yt),
            "flop_ratio": stats.flops / dense_stats.flops, "live_params": stats.params,
            "live_units": live_units(model), "train_seconds": seconds,
        }  # fmt: skip

    dense_results: dict[int, dict] = {}

    def dense_result(seed):
        nonlocal done
        if seed in dense_results:
            return dense_results[seed]
        file = cache / f"dense-s{seed}.json"
        if file.exists():
            dense = json.loads(file.read_text())
        elif args.report_only:
            raise SystemExit(f"--report-only: no cached dense result for seed {seed} in {cache}")
        else:
            model, seconds = trained("dense", seed)
            accuracy = experiment.accuracy(model, xt, yt)
            dense = {"method": "dense", "seed": seed, "accuracy": accuracy,
                     "train_seconds": seconds, **model_stats(model).to_dict()}  # fmt: skip
            file.write_text(json.dumps(dense, indent=1))
        if "accuracy_finetuned" not in dense:  # the same extra training, without pruning
            model, _ = trained("dense", seed)
            experiment.finetune(model, x, y, args.finetune, **tune)
            dense["accuracy_finetuned"] = experiment.accuracy(model, xt, yt)
            file.write_text(json.dumps(dense, indent=1))
        dense_results[seed] = dense
        done += 1
        progress(
            f"seed {seed} dense accuracy {dense['accuracy']:.4f}, "
            f"with the fine-tune budget {dense['accuracy_finetuned']:.4f}"
        )
        return dense

    for seed in range(args.seeds):
        dense_result(seed)
    for seed, method, level, metric in jobs:
        dense = dense_result(seed)
        key = level_key(level, metric)
        file = cache / f"{method}-s{seed}-{key}.json"
        if file.exists():
            row = json.loads(file.read_text())
        elif args.report_only:
            continue
        elif method in SCRATCH:
            row = from_scratch(method, seed, level, metric, key)
            file.write_text(json.dumps(row, indent=1))
        else:
            recipe = VARIANTS[method]
            if metric == "flops":
                recipe = experiment.Recipe(**{**recipe.to_dict(), "metric": "flops"})
            model, seconds = trained(method, seed, recipe, level, key)
            report = experiment.prune_to(model, recipe, level)
            pruned = experiment.accuracy(model, xt, yt)
            t0 = time.perf_counter()
            experiment.finetune(model, x, y, args.finetune, **tune)
            finetuned = experiment.accuracy(model, xt, yt)
            stats = model_stats(model)
            row = {
                "method": method, "seed": seed, "level": level, "metric": metric, "key": key,
                "recipe": recipe.to_dict(), "sparsity": report.sparsity,
                "accuracy_pruned": pruned, "accuracy_finetuned": finetuned,
                "dense_accuracy": dense["accuracy"],
                "drop_pruned": 100 * (dense["accuracy"] - pruned),
                "drop_finetuned": 100 * (dense["accuracy"] - finetuned),
                "flop_ratio": stats.flop_ratio, "live_params": stats.live_params,
                "live_units": live_units(model) if recipe.structured else None,
                "train_seconds": seconds, "finetune_seconds": time.perf_counter() - t0,
            }  # fmt: skip
            file.write_text(json.dumps(row, indent=1))
        # drops against dense trained with the same budget: fine-tuned vs fine-tuned
        row["dense_accuracy"] = dense["accuracy"]
        row["dense_accuracy_finetuned"] = dense["accuracy_finetuned"]
        row["drop_pruned"] = 100 * (dense["accuracy"] - row["accuracy_pruned"])
        row["drop_finetuned"] = 100 * (dense["accuracy_finetuned"] - row["accuracy_finetuned"])
        results.append(row)
        done += 1
        progress(
            f"seed {seed} {method:20s} {key}: pruned {row['accuracy_pruned']:.4f} "
            f"fine-tuned {row['accuracy_finetuned']:.4f} FLOPs {row['flop_ratio']:.3f}"
        )
    return results


def aggregate(results: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        groups.setdefault((row["method"], row["key"]), []).append(row)
    out = []
    for (method, key), rows in groups.items():
        agg = {"method": method, "key": key, "level": rows[0]["level"], "metric": rows[0]["metric"],
               "seeds": len(rows)}  # fmt: skip
        for field in ("accuracy_pruned", "accuracy_finetuned", "drop_pruned", "drop_finetuned",
                      "flop_ratio", "sparsity", "live_params"):  # fmt: skip
            values = np.array([r[field] for r in rows], dtype=float)
            agg[f"{field}_mean"] = float(values.mean())
            agg[f"{field}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        units = [r["live_units"] for r in rows if r.get("live_units")]
        if units:
            agg["live_units_mean"] = {k: float(np.mean([u[k] for u in units])) for k in units[0]}
        out.append(agg)
    return out


HEADER = ["method", "level", "seeds", "acc. pruned", "drop pruned", "acc. fine-tuned",
          "drop fine-tuned", "FLOPs left", "compact speedup", "live units per layer"]  # fmt: skip


def add_speedups(agg: list[dict], out: Path, repeats: int = 10) -> None:
    """Measured dense-vs-compact speedup (batch 256, compiled forward pass) for each
    structured result: a LeNet of the compact widths (mean live units over seeds)
    is timed against the dense one, alternately. Latency does not depend on weight values, and
    `compact` of a pruned LeNet has exactly these shapes (tests/test_compact.py).
    Cached by widths in speedups.json."""
    from inference_speed import compiled_forward, paired_ms

    file = out / "speedups.json"
    cache = json.loads(file.read_text()) if file.exists() else {}
    x = np.random.default_rng(0).random((256, 28, 28, 1), dtype=np.float32)
    dense = None
    for a in agg:
        units = a.get("live_units_mean")
        if not units:
            continue
        widths = [max(1, round(v)) for v in list(units.values())[:4]]
        key = "-".join(map(str, widths))
        if key not in cache:
            dense = dense or compiled_forward(models.lenet())
            narrow = models.lenet(filters=tuple(widths[:2]), units=tuple(widths[2:]))
            dense_ms, narrow_ms = paired_ms(dense, compiled_forward(narrow), x, repeats)
            cache[key] = dense_ms / narrow_ms
        a["speedup_b256"] = cache[key]
    file.write_text(json.dumps(cache, indent=1, sort_keys=True))


def _rows(agg: list[dict], methods: list[str], keys: set[str] | None = None) -> list[str]:
    order = {m: i for i, m in enumerate(VARIANTS)}
    chosen = [a for a in agg if a["method"] in methods and (keys is None or a["key"] in keys)]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for a in sorted(chosen, key=lambda a: (a["metric"], a["level"], order[a["method"]])):
        units = a.get("live_units_mean")
        units_s = "/".join(f"{v:.0f}" for v in units.values()) if units else "-"
        speedup = f"{a['speedup_b256']:.1f}x" if "speedup_b256" in a else "-"
        lines.append(
            f"| {a['method']} | {a['key']} | {a['seeds']} "
            f"| {100 * a['accuracy_pruned_mean']:.2f} ± {100 * a['accuracy_pruned_std']:.2f} "
            f"| {a['drop_pruned_mean']:.2f} "
            f"| {100 * a['accuracy_finetuned_mean']:.2f} ± {100 * a['accuracy_finetuned_std']:.2f} "
            f"| {a['drop_finetuned_mean']:.2f} ± {a['drop_finetuned_std']:.2f} "
            f"| {a['flop_ratio_mean']:.3f} | {speedup} | {units_s} |"
        )
    return lines


def summary(agg: list[dict], methods: list[str]) -> list[str]:
    """One line per method: fine-tuned accuracy (mean ± std over seeds), FLOPs left and
    measured compact speedup at 80, 90, 95 % of weights and at 85 % of FLOPs removed."""
    by = {(a["method"], a["key"]): a for a in agg}
    keys = ["W80", "W90", "W95", "F85"]
    lines = ["| method | seeds | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for method in methods:
        cells, seeds = [], 0
        for key in keys:
            a = by.get((method, key))
            if a is None:
                cells.append("-")
                continue
            seeds = max(seeds, a["seeds"])
            mean, std = 100 * a["accuracy_finetuned_mean"], 100 * a["accuracy_finetuned_std"]
            cell = f"{mean:.2f} ± {std:.2f}"
            extra = f"FLOPs {a['flop_ratio_mean']:.2f}"
            if "speedup_b256" in a:
                extra += f", {a['speedup_b256']:.1f}x"
            cells.append(f"{cell} ({extra})")
        if seeds:
            lines.append(f"| {method} | {seeds} | " + " | ".join(cells) + " |")
    return lines


def versus_ssl(agg: list[dict]) -> list[str]:
    """Each attention form, recipe and from-scratch baseline against plain group
    lasso, level by level."""
    by = {(a["method"], a["key"]): a for a in agg}
    keys = ["W80", "W90", "W95", "F85"]
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    contenders = [m for m in VARIANTS if m.startswith("gss") or m.startswith("ssl-")]
    recipes = [m for m in VARIANTS if m.startswith("recipe")]
    for method in [*contenders, *recipes, *SCRATCH]:
        cells = []
        for key in keys:
            a, b = by.get((method, key)), by.get(("ssl", key))
            if a is None or b is None:
                cells.append("-")
                continue
            gain = b["drop_finetuned_mean"] - a["drop_finetuned_mean"]
            spread = float(np.hypot(a["drop_finetuned_std"], b["drop_finetuned_std"]))
            cells.append(f"{gain:+.2f} ± {spread:.2f}")
        if any(c != "-" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def markdown(agg: list[dict], dense: list[dict], title: str) -> str:
    acc = np.array([d["accuracy"] for d in dense])
    acc_ft = np.array([d.get("accuracy_finetuned", np.nan) for d in dense])
    spread = 100 * (acc.std(ddof=1) if len(acc) > 1 else 0.0)
    lines = [
        f"### {title}",
        "",
        f"Dense: {100 * acc.mean():.2f} ± {spread:.2f} % ({len(acc)} seed(s)); trained on for "
        f"the fine-tune budget: {100 * acc_ft.mean():.2f} %. Drops are in points of test "
        "accuracy versus dense with the same training budget (pruned vs dense, fine-tuned vs "
        "dense trained on as long; mean ± std over seeds); `Wxx` = xx % of prunable kernel "
        "weights zero, `Fxx` = xx % of FLOPs removed; live units: conv1/conv2/fc1/fc2/out; "
        "compact speedup: dense / compact latency at batch 256, compiled forward pass, "
        f"{keras.backend.backend()} CPU (from speedups.json, measured when the table was made).",
        "",
        "#### Summary: fine-tuned accuracy, % (FLOPs left, measured compact speedup)",
        "",
        *summary(agg, [*CORE, *ABLATION]),
        "",
        "#### The paper's comparison",
        "",
        *_rows(agg, CORE),
        "",
        "#### Ablation of the levers (80, 90, 95 % and equal FLOPs)",
        "",
        *_rows(agg, ["ssl", "gss", "recipe", *ABLATION], {"W80", "W90", "W95", "F85"}),
        "",
        "#### Fine-tuned accuracy gained over plain group lasso (SSL), points (+ = better)",
        "",
        *versus_ssl(agg),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    unpack_cache(args.out)
    results = run(args)
    pack_cache(args.out)
    cache = args.out / "cache" / config_id(args)
    dense = [json.loads(f.read_text()) for f in sorted(cache.glob("dense-s*.json"))][: args.seeds]
    agg = aggregate(results)
    print("Timing compact widths (batch 256) ...", flush=True)
    add_speedups(agg, args.out)
    title = (f"Accuracy vs sparsity, {args.dataset}, {args.limit or 'all'} train images, "
             f"{args.epochs} epochs + {args.finetune} fine-tune"
             f"{'' if args.finetune_lr is None else f' at lr {args.finetune_lr:g}'}, "
             f"{args.seeds} seed(s)")  # fmt: skip
    table = markdown(agg, dense, title)
    command = "python benchmarks/accuracy_vs_sparsity.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    info = _meta.meta("accuracy_vs_sparsity.py", argv)
    commit = info["commit"]
    (args.out / "results.json").write_text(json.dumps(
        {"command": command.strip(), "commit": commit, "meta": info,
         "config": {k: str(v) for k, v in vars(args).items()},
         "dense": dense, "aggregate": agg, "results": results,
         "wall_seconds": time.perf_counter() - started}, indent=1))  # fmt: skip
    (args.out / "table.md").write_text(
        f"Command: `{command.strip()}` at {commit[:10]}\n\n{table}\n"
    )
    shown = [*CORE, "gss-fraction"]  # the paper's figure, plus the best levers
    weight_rows = [a for a in agg if a["metric"] == "weights" and a["method"] in shown]
    if weight_rows:
        plot.accuracy_drop_figure(weight_rows, args.out / "accuracy_drop.png")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
