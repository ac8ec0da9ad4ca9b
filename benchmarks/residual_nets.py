"""Accuracy of pruned residual nets: ResNet-20-style and MobileNetV2-style on Fashion-MNIST.

For each seed: train the dense net, then from its weights prune with coupled
groups to each FLOP level (the SparsityMonitor ramping the target over the
pruning epochs, FLOP metric, "memory" ranking, widths a multiple of 8) under
three regularizers: none (the monitor alone), a group lasso on the coupled
groups (`attach(..., coupled=True)`), and the paper's guided structured
sparsity (group lasso + the variance attention term) on the coupled groups;
then a short fine-tune with the regularizers removed, `compact`, test accuracy,
FLOPs of the compact model and its measured speedup (Keras compiled forward
pass, batch 32, median of repeats). The reference ("dense") is the dense net
trained on with the same schedule, unpruned: the drop is the pruning's cost, not
that of fewer epochs ("dense-start" is the net pruning started from).

    python benchmarks/residual_nets.py --quick     # < 10 min on 2 cores
    python benchmarks/residual_nets.py --seeds 3 --limit 0

Prints a table last; writes results.json and table.md to --out. The trained dense
nets and the dense reference rows are cached (git-ignored
`benchmarks/.cache/residual_nets/`), so a later run of other methods or levels on
the same seed starts from the same weights and skips the reference training.
"""

from __future__ import annotations

import argparse
import itertools
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
from inference_speed import compiled_forward, paired_ms  # noqa: E402

import keras_gss as gss  # noqa: E402

NETS = {"resnet20": gss.models.resnet20, "mobilenetv2": gss.models.mobilenet_v2_small}
METHODS = {
    "monitor": None,
    "lasso-coupled": lambda: gss.GroupLasso(2e-4),
    "gss-coupled": lambda: gss.GuidedStructuredSparsity(lasso=2e-4, variance=1e-2),
}
CACHE = Path(__file__).resolve().parent / ".cache" / "residual_nets"


def compiled(model, lr):
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def accuracy(model, x, y) -> float:
    logits = model.predict(x, batch_size=500, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == y))


def _cache_name(net, seed, args, n) -> str:
    return f"{net}-s{seed}-n{n}-e{args.epochs}-lr{args.lr:g}"


def dense_reference(net, seed, args, data, dense_weights) -> dict:
    """The dense net trained on with the pruned runs' schedule: the reference row,
    or the cached one (`benchmarks/.cache/residual_nets/`)."""
    (x, y), (xt, yt) = data
    saved = CACHE / f"{_cache_name(net, seed, args, len(x))}-ref-p{args.prune_epochs}.json"
    if saved.exists():
        return {**json.loads(saved.read_text()), "cached": True}
    start = time.time()
    keras.utils.set_random_seed(seed)
    model = compiled(NETS[net](), args.lr)
    model.set_weights(dense_weights)
    model.fit(x, y, batch_size=128, epochs=args.prune_epochs, verbose=0)
    compiled(model, args.lr / 10).fit(x, y, batch_size=128, epochs=1, verbose=0)
    row = {
        "net": net, "seed": seed, "level": 0.0, "method": "dense",
        "accuracy": accuracy(model, xt, yt), "flops": gss.model_stats(model).flops,
        "params": model.count_params(), "speedup_b32": 1.0, "seconds": time.time() - start,
    }  # fmt: skip
    CACHE.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(row))
    return row


def run_one(net, seed, args, data, dense_weights):
    """The dense reference, then each pruned run: a row each, yielded as it is done."""
    (x, y), (xt, yt) = data
    yield dense_reference(net, seed, args, data, dense_weights)
    for level in args.levels:
        for method, make in METHODS.items():
            if method not in args.methods:
                continue
            start = time.time()
            keras.utils.set_random_seed(seed)
            model = NETS[net]()
            model.set_weights(dense_weights)
            if make is not None:
                gss.attach(model, make(), coupled=True)
            monitor = gss.SparsityMonitor(
                target_sparsity=level, metric="flops", ranking="memory", min_live_groups=8,
                round_to=8, update_freq=args.update_freq, verbose=0,
            )  # fmt: skip
            compiled(model, args.lr)
            model.fit(x, y, batch_size=128, epochs=args.prune_epochs, verbose=0,
                      callbacks=[monitor])  # fmt: skip
            gss.detach(model)
            compiled(model, args.lr / 10)
            model.fit(x, y, batch_size=128, epochs=1, verbose=0)
            small = gss.compact(model)
            dense_model = NETS[net]()
            dense_model.set_weights(dense_weights)
            xb = xt[:32]
            d_ms, s_ms = paired_ms(
                compiled_forward(dense_model), compiled_forward(small), xb, args.repeats
            )
            stats = gss.model_stats(small)
            yield {
                "net": net, "seed": seed, "level": level, "method": method,
                "accuracy": accuracy(small, xt, yt),
                "accuracy_before_compact_1k": accuracy(model, xt[:1000], yt[:1000]),
                "flops": stats.flops, "params": small.count_params(),
                "speedup_b32": d_ms / s_ms, "seconds": time.time() - start,
            }  # fmt: skip


def dense_start(net, seed, args, train, test):
    """The dense net pruning starts from, trained, or loaded from the weight cache
    (`benchmarks/.cache/residual_nets/`, keyed by everything that changes it)."""
    (x, y), (xt, yt) = train, test
    name = _cache_name(net, seed, args, len(x))
    weights, saved = CACHE / f"{name}.weights.h5", CACHE / f"{name}.json"
    start = time.time()
    keras.utils.set_random_seed(seed)
    model = compiled(NETS[net](), args.lr)
    if weights.exists() and saved.exists():
        model.load_weights(weights)
        return model, {**json.loads(saved.read_text()), "cached": True}
    model.fit(x, y, batch_size=128, epochs=args.epochs, verbose=0)
    row = {
        "net": net, "seed": seed, "level": 0.0, "method": "dense-start",
        "accuracy": accuracy(model, xt, yt), "flops": gss.model_stats(model).flops,
        "params": model.count_params(), "speedup_b32": 1.0, "seconds": time.time() - start,
    }  # fmt: skip
    CACHE.mkdir(parents=True, exist_ok=True)
    model.save_weights(weights)
    saved.write_text(json.dumps(row))
    return model, row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2,000 images, 1 epoch each")
    p.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed+1, ...")
    p.add_argument("--limit", type=int, help="training images (0: all 60,000; default all)")
    p.add_argument("--epochs", type=int, default=4, help="dense training epochs (default 4)")
    p.add_argument("--prune-epochs", type=int, default=2, help="pruning epochs (default 2)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--update-freq", type=int, default=10, help="prune every N batches")
    p.add_argument("--out", default="benchmarks/results/residual_nets")
    args = p.parse_args(argv)
    if args.quick:
        args.limit, args.epochs, args.prune_epochs, args.seeds = 2000, 1, 1, 1
        args.repeats, args.levels = 3, [0.5]
    (x, y), (xt, yt), source = gss.datasets.load(
        "fashion_mnist", limit=args.limit or None, return_source=True
    )
    print(f"Data: {source.describe()}; {len(x)} training, {len(xt)} test images", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = _meta.meta("residual_nets.py", argv, data=source.describe(), args=vars(args))
    rows = []
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for seed in seeds:  # seed-major: partial results cover every net
        for net in args.nets:
            model, start = dense_start(net, seed, args, (x, y), (xt, yt))
            runs = run_one(net, seed, args, ((x, y), (xt, yt)), model.get_weights())
            for row in itertools.chain([start], runs):  # each written as it is done
                rows.append(row)
                print(json.dumps(row), flush=True)
                # after every row: a run stopped part way keeps what it finished
                (out / "results.json").write_text(
                    json.dumps({"meta": meta, "rows": rows}, indent=1)
                )
    text = summarize(rows)
    (out / "table.md").write_text(f"{_meta.header(meta)}\n\n{text}\n")
    print(text)
    return 0


def summarize(rows: list[dict]) -> str:
    lines = [
        "| net | FLOPs removed (target) | method | accuracy % (mean ± sd) | drop vs dense "
        "(points) | FLOPs left | speedup b32 |",
        "|---|---|---|---|---|---|---|",
    ]
    dense = {(r["net"], r["seed"]): r for r in rows if r["method"] == "dense"}
    rows = [r for r in rows if (r["net"], r["seed"]) in dense]  # an interrupted seed: left out
    keys = sorted({(r["net"], r["level"], r["method"]) for r in rows})
    for net, level, method in keys:
        group = [r for r in rows if (r["net"], r["level"], r["method"]) == (net, level, method)]
        acc = np.array([100 * r["accuracy"] for r in group])
        base = [dense[(net, r["seed"])] for r in group]
        drop = np.array([100 * (d["accuracy"] - r["accuracy"]) for d, r in zip(base, group)])
        flops = np.mean([r["flops"] / dense[(net, r["seed"])]["flops"] for r in group])
        speed = np.mean([r["speedup_b32"] for r in group])
        lines.append(
            f"| {net} | {level:.0%} | {method} | {acc.mean():.2f} ± {acc.std():.2f} | "
            f"{drop.mean():.2f} ± {drop.std():.2f} | {flops:.2f} | {speed:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
