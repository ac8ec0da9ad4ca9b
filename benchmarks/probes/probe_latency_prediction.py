"""Probe: how well a LatencyTable predicts the measured latency of compact models.

For each net (untrained: the prediction does not depend on the weights' values,
only on the widths pruning leaves), profile the dense model through LiteRT, then
prune it to several targets with several metrics (uniform-ish FLOP pruning, the
latency metric, and random non-uniform cuts per family), compact, and measure the
compact model next to the dense one (alternating calls). Prints, per model, the
predicted and the measured latency ratio (compact / dense) and their quotient.

    python benchmarks/probes/probe_latency_prediction.py --batches 1 32 \
        --out benchmarks/results/latency_prediction

Run it on a quiet machine: timings are what it compares. Writes results.json and
table.md to --out.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _meta  # noqa: E402
from latency_budget import NETS  # noqa: E402

import keras_gss as gss  # noqa: E402
from keras_gss import graph, latency, pruning  # noqa: E402


def random_cut(model, rng, share: float) -> None:
    """Zero a random share (0 to 2*share, capped) of every prunable family's free groups."""
    infos = graph.describe(model)
    units = graph.Units(infos)
    doomed = np.zeros(len(units), dtype=bool)
    for f in range(units.families):
        free = np.flatnonzero((units.family == f) & units.prunable)
        size = int((units.family == f).sum())
        cut = int(min(0.9, rng.uniform(0, 2 * share)) * size) // 8 * 8
        cut = min(cut, free.size, size - 8)
        if cut > 0:
            doomed[rng.choice(free, cut, replace=False)] = True
    pruning.apply(model, infos, units.scatter(doomed, infos, fill=False), freeze=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", choices=list(NETS), default=["resnet20", "mobilenetv2"])
    p.add_argument("--batches", type=int, nargs="+", default=[32])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--table-dir", default="/tmp/latency_probe")
    p.add_argument("--out", default=None, help="write results.json and table.md here")
    args = p.parse_args(argv)
    Path(args.table_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    for net, batch in [(n, b) for n in args.nets for b in args.batches]:
        keras.utils.set_random_seed(0)
        dense = NETS[net]()
        start = time.time()
        path = Path(args.table_dir) / f"{net}-b{batch}-t{args.threads}.json"
        table = latency.profile(dense, batch, "litert", threads=args.threads,
                                repeats=args.repeats, path=path, verbose=0)  # fmt: skip
        print(f"{net} b{batch}: profiled in {time.time() - start:.0f} s; fit {table.fit}; "
              f"calibration {table.calibration}", flush=True)  # fmt: skip
        weights = dense.get_weights()
        cases = [(m, t) for m in ("flops", "latency") for t in (0.5, 0.67, 0.75)]
        cases += [("random", s) for s in (0.2, 0.35, 0.5)]
        rng = np.random.default_rng(0)
        for metric, target in cases:
            model = NETS[net]()
            model.set_weights(weights)
            if metric == "random":
                random_cut(model, rng, target)
            else:
                gss.prune(model, target, metric=metric, ranking="auto", round_to=8,
                          latency_table=table if metric == "latency" else None)  # fmt: skip
            small = gss.compact(model)
            d_ms, s_ms = latency.compare_ms([dense, small], batch, "litert", args.threads,
                                            args.repeats)  # fmt: skip
            predicted = table.predict(model) / table.dense_ms
            measured = s_ms / d_ms
            flops = gss.model_stats(small).flops / gss.model_stats(dense).flops
            rows.append({"net": net, "batch": batch, "metric": metric, "target": target,
                         "flops": flops, "predicted": predicted, "measured": measured,
                         "dense_ms": d_ms, "table_dense_ms": table.dense_ms})  # fmt: skip
            print(f"  {metric:8s} {target:.2f}: FLOPs {flops:.2f}  predicted {predicted:.3f}  "
                  f"measured {measured:.3f}  pred/meas {predicted / measured:.2f}  "
                  f"(dense {d_ms:.3f} ms, table {table.dense_ms:.3f})", flush=True)  # fmt: skip
    text = summarize(rows)
    print(text)
    if args.out:
        _meta.write(args.out, "probes/probe_latency_prediction.py", argv, args, rows, text)
    return 0


def summarize(rows: list[dict]) -> str:
    lines = ["| net | batch | pruned by | target | FLOPs left | predicted ratio | measured ratio "
             "| predicted / measured |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['net']} | {r['batch']} | {r['metric']} | {r['target']:.2f} | "
                     f"{r['flops']:.2f} | {r['predicted']:.3f} | {r['measured']:.3f} | "
                     f"{r['predicted'] / r['measured']:.2f} |")  # fmt: skip
    q = np.array([r["predicted"] / r["measured"] for r in rows])
    lines.append(
        f"\nPredicted / measured: median {np.median(q):.2f}, range {q.min():.2f}-"
        f"{q.max():.2f}; within 15 %: {(np.abs(q - 1) <= 0.15).sum()} of {q.size}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
