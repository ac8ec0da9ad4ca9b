"""Probe: which estimator of a compact/dense latency ratio repeats best on this machine?

`latency.compare_ms` times two models in turn, call by call, and reports the
median of the per-round ratios. This probe repeats such a pairing 10 times for a
dense net and its compact copy at 50 % of FLOPs (LiteRT), and compares the spread
across pairings of four estimators: the median of per-round ratios, the ratio of
the medians, the ratio of the minima and the ratio of the 10th percentiles. Run it
once on a quiet machine and once beside other work (`--label`), or with the
LiteRT interpreter on one thread against all cores (`--threads 1`), or with
each timed sample lasting at least a few milliseconds (`--min-sample-ms`).

    python benchmarks/probes/probe_ratio_estimators.py --label quiet \\
        --out benchmarks/results/ratio_estimators
    python benchmarks/probes/probe_ratio_estimators.py --nets lenet --batches 1 \\
        --threads 1 --label lenet_b1_threads1 --out benchmarks/results/ratio_estimators
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _meta  # noqa: E402
from latency_budget import NETS  # noqa: E402

import keras_gss as gss  # noqa: E402
from keras_gss import latency  # noqa: E402

ESTIMATORS = {
    "median of ratios": lambda d, c: np.median(c / d),
    "ratio of medians": lambda d, c: np.median(c) / np.median(d),
    "ratio of minima": lambda d, c: c.min() / d.min(),
    "ratio of 10th percentiles": lambda d, c: np.percentile(c, 10) / np.percentile(d, 10),
    # not a ratio: how well the dense model's own median time repeats, in ms
    "dense median ms": lambda d, c: 1000.0 * np.median(d),
}


def pairings(net: str, batch: int, args) -> dict:
    keras.utils.set_random_seed(0)
    dense, pruned = NETS[net](), NETS[net]()
    pruned.set_weights(dense.get_weights())
    gss.prune(pruned, 0.5, metric="flops", ranking="auto", round_to=8)
    calls = [latency._litert_call(m, args.threads) for m in (dense, gss.compact(pruned))]
    x = np.random.default_rng(0).random((batch, *dense.inputs[0].shape[1:]), "float32")
    out = {name: [] for name in ESTIMATORS}
    for _ in range(args.pairings):  # each pairing as compare_ms times it (warm-up included)
        t = latency._round_times(calls, x, args.repeats, args.min_sample_ms / 1000)
        for name, estimate in ESTIMATORS.items():
            out[name].append(float(estimate(t[:, 0], t[:, 1])))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", default="quiet", help="what else ran (a name for the run)")
    p.add_argument("--nets", nargs="+", choices=list(NETS), default=["mobilenetv2", "resnet20"])
    p.add_argument("--batches", type=int, nargs="+", default=[32, 1])
    p.add_argument(
        "--threads", type=int, default=None, help="LiteRT interpreter threads (default: all cores)"
    )
    p.add_argument(
        "--min-sample-ms",
        type=float,
        default=0.0,
        help="repeat a faster call within each timed sample until it lasts this long",
    )
    p.add_argument("--pairings", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=None, help="write <label>.json and <label>.md here")
    args = p.parse_args(argv)
    rows = []
    for net, batch in [(net, batch) for net in args.nets for batch in args.batches]:
        found = pairings(net, batch, args)
        for name, values in found.items():
            v = np.array(values)
            rows.append({"net": net, "batch": batch, "estimator": name, "values": values,
                         "median": float(np.median(v)),
                         "spread": float((v.max() - v.min()) / np.median(v))})  # fmt: skip
            spread = rows[-1]["spread"]
            print(f"{net} b{batch} {name:26s} median {np.median(v):.3f}  range "
                  f"{v.min():.3f}-{v.max():.3f}  spread {spread:.2f}", flush=True)  # fmt: skip
    lines = ["| net | batch | estimator | median ratio | range | spread (range / median) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        low, high = min(r["values"]), max(r["values"])
        lines.append(f"| {r['net']} | {r['batch']} | {r['estimator']} | {r['median']:.3f} | "
                     f"{low:.3f}-{high:.3f} | {r['spread']:.2f} |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        _meta.write(args.out, "probes/probe_ratio_estimators.py", argv, args, rows, text,
                    stem=(args.label, args.label))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
