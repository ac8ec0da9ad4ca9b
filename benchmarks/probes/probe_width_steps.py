"""Probe: how does a convolution's LiteRT latency move with its width, 8 channels at a time?

The budget benchmark prunes with `round_to=8`. On LeNet at batch 32 its rounds
measured conv2 at 40 filters slower than at 48, and at 24 slower than at 32,
where the latency table (timed at a ladder of widths, linear between them)
predicted each step cheaper than the last. This probe builds LeNet with conv2 at
every multiple of 8 up to 128 (conv1 at 64; or conv1 at every multiple of 8 up to
64, conv2 at 128), times them in turn with the dense net in 5 ms samples,
`--pairings` times, and prints each width's median latency over the dense one's
next to the table's prediction, with `profile(steps=False)` (linear between the
ladder's widths) and with `steps=True` (every multiple of 8 timed too); with
`--out`, also width_steps.png. Untrained weights: the timing depends on the widths.

    python benchmarks/probes/probe_width_steps.py --batches 32 1 \\
        --out benchmarks/results/width_steps
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _meta  # noqa: E402

import keras_gss as gss  # noqa: E402
from keras_gss import graph, latency  # noqa: E402

FULL = (64, 128)


def predicted(table: latency.LatencyTable, dense: keras.Model, filters: tuple) -> float:
    """The table's ms for LeNet with these conv widths (the dense layers whole)."""
    infos = graph.describe(dense)
    cost, offset = table.cost(infos)
    cin = [None, filters[0], 49 * filters[1], None, None]  # conv1, conv2, dense x3
    cout = [filters[0], filters[1], None, None, None]
    total = offset
    for k, info in enumerate(infos):
        full_in, full_out = table.full[info.layer.name]
        total += cost(k, full_in if cin[k] is None else cin[k],
                      full_out if cout[k] is None else cout[k])  # fmt: skip
    return float(total)


def figure(rows: list[dict], path: Path) -> None:
    """Measured latency over the dense one against width, with both tables' lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["batch"], r["layer"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (batch, layer) in zip(axes[0], panels):
        mine = [r for r in rows if (r["batch"], r["layer"]) == (batch, layer)]
        w = [r["width"] for r in mine]
        ax.plot(w, [r["measured"] for r in mine], "ko-", label="measured (median)")
        ax.plot(w, [r["linear"] for r in mine], "--", label="table, linear")
        ax.plot(w, [r["steps"] for r in mine], ":", label="table, with steps")
        ax.set(title=f"LeNet {layer}, batch {batch}", xlabel=f"{layer} width",
               ylabel="latency / dense")  # fmt: skip
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[32])
    p.add_argument("--layers", nargs="+", choices=["conv1", "conv2"], default=["conv2", "conv1"])
    p.add_argument("--step", type=int, default=8)
    p.add_argument("--pairings", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=None, help="write results.json and table.md here")
    args = p.parse_args(argv)
    rows = []
    for batch in args.batches:
        keras.utils.set_random_seed(0)
        dense = gss.models.lenet()
        tables = {}
        for steps in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                tables[steps] = latency.profile(dense, batch, "litert", verbose=0, steps=steps,
                                                path=Path(tmp) / "t.json")  # fmt: skip
        for layer in args.layers:
            k = ["conv1", "conv2"].index(layer)
            widths = list(range(args.step, FULL[k] + 1, args.step))
            shapes = [tuple(w if j == k else FULL[j] for j in range(2)) for w in widths]
            models = [gss.models.lenet(filters=s) for s in shapes]
            ratios = []
            for _ in range(args.pairings):
                t = latency.compare_ms([dense, *models], batch, "litert", None, args.repeats)
                ratios.append([v / t[0] for v in t[1:]])
            med = np.median(np.array(ratios), axis=0)
            for w, s, r, spread in zip(widths, shapes, med, np.ptp(ratios, axis=0)):
                pred = [predicted(t, dense, s) / t.dense_ms for t in tables.values()]
                rows.append({"batch": batch, "layer": layer, "width": w, "measured": float(r),
                             "spread": float(spread), "linear": pred[0],
                             "steps": pred[1]})  # fmt: skip
                print(f"b{batch} {layer}={w}: measured {r:.3f} of dense (spread "
                      f"{spread:.3f}), table {pred[0]:.3f} linear, {pred[1]:.3f} with steps",
                      flush=True)  # fmt: skip
    lines = ["| batch | layer | width | measured / dense (median) | spread across pairings "
             "| table / dense, linear | table / dense, with steps "
             "| slower than the next width up |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, row in enumerate(rows):
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        same = nxt and nxt["batch"] == row["batch"] and nxt["layer"] == row["layer"]
        slower = "yes" if same and row["measured"] > nxt["measured"] else ""
        lines.append(f"| {row['batch']} | {row['layer']} | {row['width']} | {row['measured']:.3f} "
                     f"| {row['spread']:.3f} | {row['linear']:.3f} | {row['steps']:.3f} | "
                     f"{slower} |")  # fmt: skip
    for key in ("linear", "steps"):
        err = [abs(row[key] / row["measured"] - 1) for row in rows]
        near = sum(e <= 0.15 for e in err)
        lines.append(f"\nTable {key}: within 15 % of the measured ratio at {near} of "
                     f"{len(err)} widths, largest error {max(err):.2f}")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        _meta.write(args.out, "probes/probe_width_steps.py", argv, args, rows, text)
        figure(rows, Path(args.out) / "width_steps.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
