"""Probe: do two identical compact models measure alike when timed in turn?

`latency.compare_ms` times several models in turn, call by call. The budget
benchmark times the dense net with three compact models this way, and at batch 1
two of them with the same widths measured 0.083 and 0.117 ms in one pairing.
This probe builds a net (untrained: the timing depends on the widths), profiles
it, prunes it twice to 1/3 of its predicted latency (the same widths both times)
and once to 1/3 of its FLOPs, and times the four models in turn `--pairings`
times for each `--min-sample-ms` (0: one call per timed sample; 5: a call
repeated back to back until the sample lasts 5 ms). The gap between the two
identical copies, and the spread across pairings, show what a measurement is worth.

    python benchmarks/probes/probe_identical_copies.py --nets resnet20 mobilenetv2 \\
        --batches 1 32 --out benchmarks/results/identical_copies
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _meta  # noqa: E402
from latency_budget import NETS  # noqa: E402

import keras_gss as gss  # noqa: E402
from keras_gss import latency  # noqa: E402


def models(net: str, batch: int):
    keras.utils.set_random_seed(0)
    dense = NETS[net]()
    with tempfile.TemporaryDirectory() as tmp:
        table = latency.profile(dense, batch, "litert", path=Path(tmp) / "t.json", verbose=0)

    def pruned(metric: str):
        model = NETS[net]()
        model.set_weights(dense.get_weights())
        gss.prune(model, 2 / 3, metric=metric, ranking="auto", round_to=8,
                  latency_table=table if metric == "latency" else None)  # fmt: skip
        return gss.compact(model)

    return dense, [pruned("latency"), pruned("latency"), pruned("flops")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", choices=list(NETS), default=["resnet20", "mobilenetv2"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--min-sample-ms", type=float, nargs="+", default=[0.0, 5.0])
    p.add_argument("--pairings", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=None, help="write results.json and table.md here")
    args = p.parse_args(argv)
    rows = []
    for net, batch in [(net, batch) for net in args.nets for batch in args.batches]:
        dense, smalls = models(net, batch)
        widths = [s.count_params() for s in smalls]
        assert widths[0] == widths[1], "the two latency-pruned copies differ"
        for sample in args.min_sample_ms:
            ratios, dense_ms, seconds = [], [], []
            for _ in range(args.pairings):
                start = time.perf_counter()
                t = latency.compare_ms([dense, *smalls], batch, "litert", None, args.repeats,
                                       min_sample_ms=sample)  # fmt: skip
                seconds.append(time.perf_counter() - start)
                dense_ms.append(t[0])
                ratios.append([v / t[0] for v in t[1:]])
            r = np.array(ratios)  # [pairing, model]
            gap = np.abs(r[:, 0] - r[:, 1]) / r[:, :2].mean(axis=1)
            spread = (r.max(axis=0) - r.min(axis=0)) / np.median(r, axis=0)
            rows.append({
                "net": net, "batch": batch, "min_sample_ms": sample, "params": widths,
                "ratios": r.tolist(), "dense_ms": dense_ms, "seconds": seconds,
                "copy_gap_max": float(gap.max()), "spread_max": float(spread.max()),
                "dense_spread": float(np.ptp(dense_ms) / np.median(dense_ms)),
            })  # fmt: skip
            print(f"{net} b{batch} min_sample_ms={sample:g}: copies apart by up to "
                  f"{gap.max():.2f}, ratios spread {spread.max():.2f}, dense "
                  f"{min(dense_ms):.4f}-{max(dense_ms):.4f} ms", flush=True)  # fmt: skip
    lines = ["| net | batch | min_sample_ms | copy A / dense (median) | copy B / dense (median) "
             "| FLOP-pruned / dense (median) | copies apart, most | spread across pairings, "
             "most | dense ms (range) | seconds per pairing |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        med = np.median(np.array(row["ratios"]), axis=0)
        lines.append(
            f"| {row['net']} | {row['batch']} | {row['min_sample_ms']:g} | {med[0]:.3f} | "
            f"{med[1]:.3f} | {med[2]:.3f} | {row['copy_gap_max']:.2f} | {row['spread_max']:.2f} "
            f"| {min(row['dense_ms']):.4f}-{max(row['dense_ms']):.4f} | "
            f"{np.median(row['seconds']):.1f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        _meta.write(args.out, "probes/probe_identical_copies.py", argv, args, rows, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
