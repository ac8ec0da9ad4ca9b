"""Pruning to a measured latency budget against pruning to the same FLOP ratio.

For each net (the paper's LeNet, a ResNet-20-style and a MobileNetV2-style net on
Fashion-MNIST) and seed: train the dense net; profile its LiteRT latency at batch
1 and 32 (`keras_gss.latency.profile`); then for each budget of 1/2, 1/3 and 1/4
of the dense latency, prune one-shot from the dense weights (widths a multiple
of 8) to it: with `latency.prune_to_budget` (the table's prediction, `metric=
"latency"`, corrected by measuring the compact model: `latency`), with the
table alone (`latency-table`), and, for comparison, to the same nominal
reduction of FLOPs (`metric="flops"`, the cost-aware ranking: `flops`);
fine-tune with the masks held, compact, and measure the compact model through
LiteRT next to the dense one (alternating calls, medians).

Targets (issue 24): the compact model's measured latency within 10 % of the
budget; at equal measured latency, accuracy at least as high as FLOP-targeted
pruning; the table's prediction within 15 % of the measured compact model.

    python benchmarks/latency_budget.py --quick     # about 8 min on 2 cores (batch 32, 1/3)
    python benchmarks/latency_budget.py             # full data, 3 seeds

Prints a table; writes results.json, table.md and latency_budget.png to --out.
The latency tables and the trained dense nets are cached under --cache (not in
git; delete it after changing a net or the training).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _meta  # noqa: E402
from residual_nets import accuracy, compiled  # noqa: E402

import keras_gss as gss  # noqa: E402
from keras_gss import latency  # noqa: E402

NETS = {
    "lenet": gss.models.lenet,
    "resnet20": gss.models.resnet20,
    "mobilenetv2": gss.models.mobilenet_v2_small,
}
# latency: the table's prediction corrected by measured rounds (prune_to_budget);
# latency-table: the table's prediction alone; flops: the same share of FLOPs
METHODS = ("latency", "latency-table", "flops")


def run_net(net, seed, args, data, cache: Path) -> list[dict]:
    (x, y), (xt, yt) = data
    keras.utils.set_random_seed(seed)
    start = time.time()
    dense = compiled(NETS[net](), args.lr)
    # the trained dense net is cached too, so that a later run at another batch
    # size (or budget) starts from the same weights without training again
    saved = cache / f"{net}-seed{seed}-e{args.epochs}-n{len(x)}-lr{args.lr:g}.weights.h5"
    if saved.exists():
        dense.load_weights(saved)
        print(f"  {net} seed {seed}: trained weights loaded from {saved}", flush=True)
    else:
        dense.fit(x, y, batch_size=128, epochs=args.epochs, verbose=0)
        dense.save_weights(saved)
        print(f"  {net} seed {seed}: trained in {time.time() - start:.0f} s", flush=True)
    weights = dense.get_weights()
    dense_acc = accuracy(dense, xt, yt)
    tables = {}
    for batch in args.batches:
        start = time.time()
        path = cache / f"{net}-seed{seed}-b{batch}-{args.ladder_name}.json"
        tables[batch] = latency.profile(dense, batch, "litert", ladder=args.ladder,
                                        repeats=args.repeats, path=path, verbose=0)  # fmt: skip
        print(f"  {net} b{batch}: profiled in {time.time() - start:.0f} s", flush=True)
    dense_flops = gss.model_stats(dense).flops
    rows = []
    for k in args.budgets:
        target = 1.0 - 1.0 / k
        pruned = {}  # (method, batch) -> (model, accuracy); the FLOP one serves both batches
        for method in METHODS:
            for batch in args.batches if method != "flops" else args.batches[:1]:
                start = time.time()
                keras.utils.set_random_seed(seed)
                model = compiled(NETS[net](), args.lr / 10)
                model.set_weights(weights)
                if method == "latency":
                    result = latency.prune_to_budget(model, tables[batch], speedup=k,
                                                     round_to=8, repeats=args.repeats)  # fmt: skip
                    print(f"    {net} b{batch} 1/{k}: rounds " + ", ".join(
                        f"{r['target']:.3f}->{r['ms']:.3f} ms" for r in result.rounds))  # fmt: skip
                else:
                    table = tables[batch] if method == "latency-table" else None
                    gss.prune(model, target, metric=method.split("-")[0], ranking="auto",
                              round_to=8, latency_table=table)  # fmt: skip
                model.fit(x, y, batch_size=128, epochs=args.finetune_epochs, verbose=0)
                acc = accuracy(model, xt, yt)
                print(f"    {net} b{batch} 1/{k} {method}: pruned, fine-tuned and evaluated "
                      f"in {time.time() - start:.0f} s", flush=True)  # fmt: skip
                for b in args.batches if method == "flops" else [batch]:
                    pruned[(method, b)] = (model, acc)
        start = time.time()
        for batch in args.batches:
            # every compact model of this budget timed in turn with the dense one
            # (its export reused): the same conditions for all methods
            chosen = [(m, model, acc) for (m, b), (model, acc) in pruned.items() if b == batch]
            smalls = [gss.compact(model) for _, model, _ in chosen]
            times = latency.compare_ms([dense, *smalls], batch, "litert", None, args.repeats)
            for (method, model, acc), small, small_ms in zip(chosen, smalls, times[1:]):
                predicted = tables[batch].predict(model)
                rows.append({
                    "net": net, "seed": seed, "batch": batch, "budget": 1 / k,
                    "method": method, "accuracy": acc, "dense_accuracy": dense_acc,
                    "dense_ms": times[0], "ms": small_ms, "budget_ms": times[0] / k,
                    "predicted_ms": predicted,
                    "predicted_ratio": predicted / tables[batch].dense_ms,
                    "flop_ratio": gss.model_stats(small).flops / dense_flops,
                    "params": small.count_params(),
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
        print(f"    {net} 1/{k}: compact models timed in {time.time() - start:.0f} s", flush=True)
    return rows


def summarize(rows: list[dict]) -> str:
    """One line per net, batch, budget and method: means over the seeds (± sd when
    there are several), and in how many seeds the measured latency was within 10 %
    of the budget."""
    lines = [
        "| net | batch | budget | method | seeds | measured / budget | within 10 % | "
        "speedup | accuracy % (drop) | FLOPs left | predicted / measured ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def spread(values, fmt):
        text = format(np.mean(values), fmt)
        return text + (f" ± {np.std(values, ddof=1):{fmt}}" if len(values) > 1 else "")

    keys = sorted({(r["net"], r["batch"], -r["budget"], r["method"]) for r in rows})
    for net, batch, budget, method in keys:
        group = [r for r in rows if (r["net"], r["batch"], -r["budget"], r["method"]) ==
                 (net, batch, budget, method)]  # fmt: skip
        over = [r["ms"] / r["budget_ms"] for r in group]
        within = sum(abs(v - 1.0) <= 0.10 for v in over)
        speedup = np.mean([r["dense_ms"] / r["ms"] for r in group])
        acc = spread([100 * r["accuracy"] for r in group], ".2f")
        drop = np.mean([100 * (r["dense_accuracy"] - r["accuracy"]) for r in group])
        flops = np.mean([r["flop_ratio"] for r in group])
        # the predicted latency ratio against the measured one (paired with the dense
        # model), so that the machine's speed at profiling time does not enter
        pred = np.mean([r["predicted_ratio"] / (r["ms"] / r["dense_ms"]) for r in group])
        lines.append(
            f"| {net} | {batch} | 1/{round(-1 / budget)} | {method} | {len(group)} | "
            f"{spread(over, '.2f')} | {within} of {len(group)} | {speedup:.2f}x | "
            f"{acc} ({drop:+.2f}) | {flops:.2f} | {pred:.2f} |"
        )
    return "\n".join(lines)


def equal_latency(rows: list[dict]) -> str:
    """Accuracy at equal measured latency: each latency-targeted model against the
    FLOP-targeted models of the same net, seed and batch, their accuracy
    interpolated linearly in measured speedup (only inside the FLOP models' range)."""
    lines = [
        "| net | batch | method | compared | accuracy - FLOP target at equal speedup "
        "(mean, range) | faster than every FLOP-target model |",
        "|---|---|---|---|---|---|",
    ]
    for net, batch, method in sorted({(r["net"], r["batch"], r["method"]) for r in rows}):
        if method == "flops":
            continue
        diffs, faster, total = [], 0, 0
        for seed in sorted({r["seed"] for r in rows}):
            same = [r for r in rows if (r["net"], r["batch"], r["seed"]) == (net, batch, seed)]
            curve = sorted((r["dense_ms"] / r["ms"], 100 * r["accuracy"])
                           for r in same if r["method"] == "flops")  # fmt: skip
            for r in (r for r in same if r["method"] == method):
                total += 1
                speedup = r["dense_ms"] / r["ms"]
                if not curve:
                    continue
                if curve[0][0] <= speedup <= curve[-1][0]:
                    xs, ys = zip(*curve)
                    diffs.append(100 * r["accuracy"] - float(np.interp(speedup, xs, ys)))
                faster += speedup > curve[-1][0]
        spread = (f"{np.mean(diffs):+.2f} ({min(diffs):+.2f} to {max(diffs):+.2f})"
                  if diffs else "-")  # fmt: skip
        lines.append(f"| {net} | {batch} | {method} | {len(diffs)} of {total} | {spread} | "
                     f"{faster} of {total} |")  # fmt: skip
    return "\n".join(lines)


def report(rows: list[dict]) -> str:
    """The per-budget table, then the accuracy at equal measured latency."""
    return summarize(rows) + "\n\nAt equal measured latency:\n\n" + equal_latency(rows)


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = sorted({r["net"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(len(nets), len(batches), figsize=(5 * len(batches), 3.4 * len(nets)),
                             squeeze=False)  # fmt: skip
    for i, net in enumerate(nets):
        for j, batch in enumerate(batches):
            ax = axes[i][j]
            for method, marker in zip(METHODS, "o^s"):
                group = [r for r in rows if (r["net"], r["batch"], r["method"]) ==
                         (net, batch, method)]  # fmt: skip
                ax.scatter([r["dense_ms"] / r["ms"] for r in group],
                           [100 * r["accuracy"] for r in group], marker=marker,
                           label=f"{method} target")  # fmt: skip
            for r in rows:
                if (r["net"], r["batch"]) == (net, batch):
                    ax.axvline(1 / r["budget"], color="0.85", linewidth=0.8, zorder=0)
            ax.set(title=f"{net}, LiteRT batch {batch}", xlabel="measured speedup (x)",
                   ylabel="test accuracy %")  # fmt: skip
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def combine(paths: list[str], out: Path) -> int:
    """Table and figure of the rows of several results.json files, written to `out`."""
    rows, commands = [], []
    for path in paths:
        saved = json.loads(Path(path).read_text())
        rows += saved["rows"]
        commands.append(f"{_meta.header(saved['meta'])} ({path})")
    keys = [(r["net"], r["seed"], r["batch"], r["budget"], r["method"]) for r in rows]
    if len(set(keys)) != len(keys):
        raise SystemExit("--combine: the files hold the same row twice (net, seed, batch, "
                         "budget, method); combine runs of different seeds or nets.")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    text = report(rows)
    (out / "table.md").write_text("Combined from:\n\n" + "\n".join(f"- {c}" for c in commands)
                                  + f"\n\n{text}\n")  # fmt: skip
    figure(rows, out / "latency_budget.png")
    print(text)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2,000 training and test images, "
                   "1 epoch, 1 seed, batch 32, the budget 1/3, a 3-point ladder")  # fmt: skip
    p.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed+1, ...")
    p.add_argument("--combine", nargs="+", metavar="JSON",
                   help="no run: the table and figure of these results.json files' rows "
                   "(seeds run apart), written to --out")  # fmt: skip
    p.add_argument("--limit", type=int, default=0, help="training images (0: all 60,000)")
    p.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--budgets", type=int, nargs="+", default=[2, 3, 4], help="1/k of dense")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/latency_budget")
    p.add_argument("--cache", default="benchmarks/.cache/latency_budget")
    args = p.parse_args(argv)
    if args.combine:
        return combine(args.combine, Path(args.out))
    args.ladder, args.ladder_name = latency.LADDER, "full"
    if args.quick:
        args.limit, args.epochs, args.seeds, args.budgets = 2000, 1, 1, [3]
        args.batches = [32]
        args.repeats, args.ladder, args.ladder_name = 10, (0.25, 0.5, 1.0), "quick"
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("latency_budget.py measures LiteRT: run it with KERAS_BACKEND=tensorflow")
    (x, y), (xt, yt), source = gss.datasets.load(
        "fashion_mnist", limit=args.limit or None, return_source=True
    )
    if args.quick:  # a smoke run: the residual nets stay near chance after one epoch
        xt, yt = xt[:2000], yt[:2000]
    print(f"Data: {source.describe()}; {len(x)} training, {len(xt)} test images", flush=True)
    out, cache = Path(args.out), Path(args.cache)
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    meta = _meta.meta("latency_budget.py", argv, data=source.describe(), args=vars(args))
    start = time.time()
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for net in args.nets:
            rows += run_net(net, seed, args, ((x, y), (xt, yt)), cache)
            (out / "results.json").write_text(
                json.dumps({"meta": meta, "rows": rows}, indent=1, default=list)
            )
    text = report(rows)
    (out / "table.md").write_text(f"{_meta.header(meta)}, {time.time() - start:.0f} s\n\n{text}\n")
    figure(rows, out / "latency_budget.png")
    print(text)
    print(f"Done in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
