"""Probe: which latency saving should the latency ranking divide importance by?

`ranking="latency"` scores a unit (a coupled group of channels) by its importance
over a share of the predicted latency. Three such shares:

- `own`: what one output channel fewer saves in the unit's own layers (what the
  library used). Where a layer's time does not move with its output width (on
  ResNet-20 at batch 32 a 3x3 convolution at 28x28 costs the same with 8 or 16
  output channels: XNNPACK's vector width) it is nothing, and the layer is
  never pruned;
- `total`: the table's exact saving, `own` plus the input slice of every layer
  that reads the unit;
- `mean`: the layer's predicted time over its live output channels, the mean
  cost of one (as the FLOP ranking charges FLOPs; what the library uses now).

`--importances` swaps what the charge divides instead: `rms` (what the library
used), `relative` (rms over its family's median), `group`, `gnorm` (with the
readers' input slices), `touch` (every layer that writes or reads a unit votes,
scale-free: the library's now), `touchsum` (see `_importance`).

Each net is pruned one-shot from the dense weights that `latency_budget.py`
cached (or trains them) to 1/2, 1/3 and 1/4 of the table's predicted latency
with each saving (its `latency-table` method), fine-tuned one epoch as there,
scored on the test set, and the compact models of a budget timed in turn with
the dense one through LiteRT (run it on a quiet machine).

    python benchmarks/probes/probe_latency_saved.py --nets resnet20 \
        --cache /tmp/lbr/cache --out benchmarks/results/latency_saved
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
from residual_nets import accuracy, compiled  # noqa: E402

import keras_gss as gss  # noqa: E402
from keras_gss import graph, latency, pruning  # noqa: E402

MEAN = pruning.latency_charge  # the library's charge, taken before the probe swaps it


def _priced(infos, dead, table):
    """`(cost, widths, total)`: the table's cost function, the live widths and the
    predicted latency they sum to (what every charge below divides by)."""
    cost, widths, total = table.priced(infos, dead)
    return cost, widths, max(total, 1e-30)


def own_saved(infos, dead, table) -> list[np.ndarray]:
    """The saving the library used before: the share of the predicted latency that
    one output channel fewer saves in the unit's own layers only."""
    cost, widths, total = _priced(infos, dead, table)
    out = []
    for k, (info, (cin, cout)) in enumerate(zip(infos, widths)):
        saved = cost(k, cin, cout) - cost(k, cin, max(cout - 1.0, 0.0))
        out.append(np.full(info.groups, max(saved, 0.0) / total))
    return out


def total_saved(infos, dead, table) -> list[np.ndarray]:
    """The table's exact saving: the own output slice (`own_saved`) plus, spread over
    the unit's member groups, the input slice of every layer that reads the unit."""
    out = own_saved(infos, dead, table)
    cost, widths, total = _priced(infos, dead, table)
    read: dict[int, float] = {}  # root -> ms its readers save
    for k, (info, (cin, cout)) in enumerate(zip(infos, widths)):
        live = np.array([], np.int64) if info.inputs is None else info.inputs[~dead[info.inputs]]
        own, base, steps = set(info.coupled.tolist()), cost(k, cin, cout), {}
        for root, count in zip(*np.unique(live, return_counts=True)):
            if int(root) in own:  # a depthwise layer: its own slice already
                continue
            if count not in steps:
                steps[count] = max(base - cost(k, cin * (live.size - count) / live.size, cout), 0)
            read[int(root)] = read.get(int(root), 0.0) + steps[count]
    units = graph.Units(infos)
    for root, members in zip(units.root.tolist(), units.members):
        share = read.get(root, 0.0) / sum(len(js) for _, js in members) / total
        for i, js in members:
            out[i][js] += share
    return out


SAVINGS = {"own": own_saved, "total": total_saved, "mean": MEAN}
SCORES = pruning.unit_scores  # the library's, taken before the probe swaps it


def read_squares(infos, units) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: `(sum of squares, count)` of the weights of the input slices that its
    readers (layers that are not its members) hold for it."""
    at = {int(r): u for u, r in enumerate(units.root.tolist())}
    sq, size = np.zeros(len(units)), np.zeros(len(units))
    for info in infos:
        squares = info.input_squares()  # mean square per input channel
        if squares is None:
            continue
        per_in = info.weights / squares.size  # weights that read one input channel
        own = set(info.coupled.tolist())
        for root, value in zip(info.inputs.tolist(), squares):
            if root in at and root not in own:
                sq[at[root]] += value * per_in
                size[at[root]] += per_in
    return sq, size


def _importance(name):
    """A `pruning.unit_scores` whose latency ranking divides importance `name` by
    the charge: `rms` (what the library used), `relative` (rms over its family's
    median, as the memory ranking; what the library used next: a BatchNorm after a
    convolution makes its kernel's scale arbitrary), `group` (relative, with the
    readers' input slices counted in the unit's rms), `gnorm` (the L2 norm of all
    the unit's weights, readers' input slices included, as Torch-Pruning's group
    importance: a residual stream's channel, written by several layers and read by
    several, weighs more than a channel of one layer), `touch` (the mean vote of
    every layer that writes or reads the unit, each its slice's rms over its
    layer's median: `pruning.layer_votes`, the library's now), `touchsum` (their
    sum: a channel that more layers touch weighs more, as in `gnorm`, without the
    layers' scales)."""

    def unit_scores(infos, units, norms, dead, ranking, latency_table=None):
        if ranking != "latency" or name == "touch":
            return SCORES(infos, units, norms, dead, ranking, latency_table)
        if name == "rms":
            rms = SCORES(infos, units, norms, dead, "rms")
        elif name == "relative":
            norm = np.sqrt(units.gather([n**2 for n in norms]))
            rms = pruning.relative_rms(units, SCORES(infos, units, norms, dead, "rms"), norm)
        elif name == "touchsum":
            rms = pruning.layer_votes(infos, units, norms, dead)[0]
        else:  # readers' input slices counted too
            read_sq, read_size = read_squares(infos, units)
            sq = units.gather([n**2 for n in norms]) + read_sq
            if name == "gnorm":
                rms = np.sqrt(sq)
            else:
                size = units.gather([np.full(i.groups, float(i.group_size)) for i in infos])
                rms = pruning.relative_rms(units, np.sqrt(sq / (size + read_size)),
                                           units.gather(list(norms)))  # fmt: skip
        charge = units.gather(pruning.latency_charge(infos, dead, latency_table))
        return rms / np.maximum(charge, 1e-30)

    return unit_scores


IMPORTANCES = ("rms", "relative", "group", "gnorm", "touch", "touchsum")


def widths(small) -> list[int]:
    """The output widths of a compact model's convolutions and dense layers."""
    kept = [layer for layer in small.layers if hasattr(layer, "filters")
            or hasattr(layer, "units")]  # fmt: skip
    return [int(getattr(layer, "filters", None) or layer.units) for layer in kept]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", choices=list(NETS), default=["resnet20"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--budgets", type=int, nargs="+", default=[2, 3, 4], help="1/k of dense")
    p.add_argument("--savings", nargs="+", choices=list(SAVINGS), default=list(SAVINGS))
    p.add_argument("--importances", nargs="+", choices=IMPORTANCES, default=["touch"],
                   help="what the charge divides (touch: the library's)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--cache", default="benchmarks/.cache/latency_budget",
                   help="latency_budget.py's cache: trained weights and tables")  # fmt: skip
    p.add_argument("--out", default=None, help="write results.json and table.md here")
    args = p.parse_args(argv)
    (x, y), (xt, yt), source = gss.datasets.load("fashion_mnist", return_source=True)
    print(f"Data: {source.describe()}", flush=True)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for net in args.nets:
        keras.utils.set_random_seed(args.seed)
        dense = compiled(NETS[net](), args.lr)
        saved = cache / f"{net}-seed{args.seed}-e{args.epochs}-n{len(x)}-lr{args.lr:g}.weights.h5"
        if saved.exists():
            dense.load_weights(saved)
        else:
            dense.fit(x, y, batch_size=128, epochs=args.epochs, verbose=0)
            dense.save_weights(saved)
        weights = dense.get_weights()
        path = cache / f"{net}-seed{args.seed}-b{args.batch}-full.json"
        table = latency.profile(dense, args.batch, "litert", path=path, verbose=0)
        for k in args.budgets:
            smalls = []
            for name, imp in [(s, i) for i in args.importances for s in args.savings]:
                start = time.time()
                keras.utils.set_random_seed(args.seed)  # as latency_budget.py's latency-table
                model = compiled(NETS[net](), args.lr / 10)
                model.set_weights(weights)
                pruning.latency_charge = SAVINGS[name]
                pruning.unit_scores = _importance(imp)
                try:
                    gss.prune(model, 1.0 - 1.0 / k, metric="latency", ranking="auto",
                              round_to=8, latency_table=table)  # fmt: skip
                finally:
                    pruning.latency_charge, pruning.unit_scores = MEAN, SCORES
                # compacted once: the fine-tune below holds the masks, so the widths,
                # parameters and timing of this copy are the fine-tuned model's
                small = gss.compact(model)
                kept = widths(small)
                predicted = table.predict(model) / table.dense_ms
                smalls.append(small)
                model.fit(x, y, batch_size=128, epochs=1, verbose=0)
                rows.append({"net": net, "seed": args.seed, "batch": args.batch, "budget": 1 / k,
                             "saving": name, "importance": imp, "predicted_ratio": predicted,
                             "accuracy": accuracy(model, xt, yt),
                             "params": small.count_params(),
                             "widths": kept})  # fmt: skip
                r = rows[-1]
                print(f"  {net} 1/{k} {name} {imp}: predicted {predicted:.3f}, accuracy "
                      f"{100 * r['accuracy']:.2f} %, widths {kept} ({time.time() - start:.0f} s)",
                      flush=True)  # fmt: skip
            times = latency.compare_ms([dense, *smalls], args.batch, "litert")
            for r, ms in zip(rows[-len(smalls) :], times[1:]):
                r["measured_ratio"] = ms / times[0]
                print(f"  {net} 1/{k} {r['saving']} {r['importance']}: measured "
                      f"{ms / times[0]:.3f} of the dense {times[0]:.2f} ms",
                      flush=True)  # fmt: skip
    lines = ["| net | budget | saving | importance | predicted / dense | measured / dense | "
             "accuracy % | params | widths |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['net']} | 1/{round(1 / r['budget'])} | {r['saving']} | "
                     f"{r['importance']} | "
                     f"{r['predicted_ratio']:.3f} | {r['measured_ratio']:.3f} | "
                     f"{100 * r['accuracy']:.2f} | {r['params']} | "
                     f"{' '.join(map(str, r['widths']))} |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        _meta.write(args.out, "probes/probe_latency_saved.py", argv, args, rows, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
