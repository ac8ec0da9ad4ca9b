"""Inference speed: dense vs compact LeNet at several sparsity levels, in one process.

The paper's LeNet is trained briefly (or loaded from the accuracy benchmark's
weight cache), pruned by whole groups to each level, compacted with
`keras_gss.compact`, and both models are timed with `predict_on_batch` (median
of repeats after warm-up) at batch 1 and batch 256. The FLOP ratio (compact /
dense) is the limit the speedup can reach.

    python benchmarks/inference_speed.py --quick     # < 3 min on 2 cores

Prints a table last; writes inference_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_gss as gss  # noqa: E402
from keras_gss import datasets, experiment  # noqa: E402

LEVELS = [
    ("W50", 0.5, "weights"),
    ("W70", 0.7, "weights"),
    ("W90", 0.9, "weights"),
    ("W95", 0.95, "weights"),
    ("F85", 0.85, "flops"),
]


def median_ms(model, x, repeats: int) -> float:
    model.predict_on_batch(x)  # warm-up: trace and allocate
    model.predict_on_batch(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(x)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def saved_kb(model) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.keras"
        model.save(path)
        return path.stat().st_size / 1024


def trained_lenet(args, x, y):
    keras.utils.set_random_seed(0)
    model = gss.models.lenet()
    recipe = experiment.Recipe("group-lasso", lasso=2e-3, proximal=2e-5)
    experiment.train(model, recipe, x, y, args.epochs, batch_size=100, lr=1e-3, verbose=0)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, help="timed repeats (default 30; quick 10)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, help="training images (default 10000; quick 2000)")
    p.add_argument("--out", default="benchmarks/results/inference_speed.json")
    args = p.parse_args(argv)
    repeats = args.repeats or (10 if args.quick else 30)
    limit = args.limit or (2000 if args.quick else 10000)
    (x, y), (xt, _), source = datasets.load(
        "fashion_mnist", limit=limit, test_limit=256, return_source=True
    )
    print(f"Data: {source.describe()}", flush=True)
    base = trained_lenet(args, x, y)
    weights = base.get_weights()
    batches = {"1": xt[:1], "256": xt[:256]}
    dense_ms = {b: median_ms(base, xb, repeats) for b, xb in batches.items()}
    rows = []
    for key, level, metric in LEVELS:
        model = gss.models.lenet()
        model.set_weights(weights)
        ranking = "hybrid" if metric == "flops" else "rms"
        gss.prune(model, level, metric=metric, ranking=ranking, min_live_groups=4)
        small = gss.compact(model)
        diff = float(np.abs(small.predict_on_batch(xt) - model.predict_on_batch(xt)).max())
        stats = gss.model_stats(model)
        row = {
            "level": key,
            "flop_ratio": stats.flop_ratio,
            "params_dense": int(model.count_params()),
            "params_compact": int(small.count_params()),
            "kb_dense": saved_kb(model),
            "kb_compact": saved_kb(small),
            "max_abs_diff": diff,
        }
        for b, xb in batches.items():
            compact_ms = median_ms(small, xb, repeats)
            speedup = dense_ms[b] / compact_ms
            row[f"ms_dense_b{b}"] = dense_ms[b]
            row[f"ms_compact_b{b}"] = compact_ms
            row[f"speedup_b{b}"] = speedup
            row[f"share_of_limit_b{b}"] = speedup * stats.flop_ratio
        rows.append(row)
        print(
            f"{key}: FLOPs {stats.flop_ratio:.3f}, speedup b1 {row['speedup_b1']:.2f}x, "
            f"b256 {row['speedup_b256']:.2f}x",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "command": "python benchmarks/inference_speed.py "
                + " ".join(argv if argv is not None else sys.argv[1:]),
                "backend": keras.backend.backend(),
                "repeats": repeats,
                "rows": rows,
            },
            indent=1,
        )
    )
    header = (
        "| level | FLOP ratio | params dense -> compact | .keras KB | ms b1 dense/compact | "
        "speedup b1 (share of limit) | ms b256 dense/compact | speedup b256 (share) |"
    )
    print("\n" + header + "\n|" + "---|" * 8)
    for r in rows:
        print(
            f"| {r['level']} | {r['flop_ratio']:.3f} | {r['params_dense']:,} -> "
            f"{r['params_compact']:,} | {r['kb_dense']:.0f} -> {r['kb_compact']:.0f} "
            f"| {r['ms_dense_b1']:.2f} / {r['ms_compact_b1']:.2f} "
            f"| {r['speedup_b1']:.2f}x ({r['share_of_limit_b1']:.0%}) "
            f"| {r['ms_dense_b256']:.1f} / {r['ms_compact_b256']:.1f} "
            f"| {r['speedup_b256']:.2f}x ({r['share_of_limit_b256']:.0%}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
