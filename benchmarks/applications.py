"""Keras applications pruned to half their FLOPs: what `compact` removes, and the speed.

Each model (`keras.applications`, weights=None, small inputs: nothing to
download) is pruned one-shot with `keras_gss.prune` to a FLOP target over its
coupled groups (ranking "memory", at least 8 live channels per layer, widths a
multiple of 8), then compacted. Reported per model, side by side in one run:
FLOPs and parameters dense -> compact (counted by `keras_gss.model_stats` on the
compact model itself), the share of the asked FLOP reduction that compaction
really removed, the largest difference of the outputs (relative), and the
latency dense vs compact at batch 1 and 32 (median of repeats, the two called
alternately) through Keras' compiled forward pass and, on TensorFlow, LiteRT.
The speedup is shown next to the FLOP ratio's limit (dense / compact FLOPs).

    python benchmarks/applications.py --quick      # < 10 min on 2 cores
    python benchmarks/applications.py --models ResNet50 MobileNetV2

Weights are random, so the pruned channels are arbitrary; this measures the
structure (what can be removed, exactness, speed), not accuracy. Prints a table
last; writes results.json and table.md to --out.
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
from inference_speed import compiled_forward, litert_forward, paired_ms  # noqa: E402

import keras_gss as gss  # noqa: E402

MODELS = {  # name: input side (the smallest each accepts, or 64)
    "MobileNetV2": 64,
    "MobileNetV3Small": 64,
    "ResNet50": 64,
    "EfficientNetB0": 64,
    "DenseNet121": 64,
    "ConvNeXtTiny": 64,
    "Xception": 75,
    "InceptionV3": 75,
    "NASNetMobile": 64,
    "VGG16": 64,
}


def build(name: str, side: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    kwargs = {"weights": None, "input_shape": (side, side, 3), "classes": 10}
    if name != "NASNetMobile":
        kwargs["classifier_activation"] = None
    model = getattr(keras.applications, name)(**kwargs)
    rng = np.random.default_rng(0)
    for w in model.weights:  # BN statistics away from 0/1: constants would show
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 2.0, size=w.shape).astype("float32"))
        elif "moving_mean" in w.path:
            w.assign(rng.normal(scale=0.1, size=w.shape).astype("float32"))
    return model


def measure(name: str, side: int, args) -> dict:
    start = time.time()
    model = build(name, side)
    dense = gss.model_stats(model)
    gss.prune(model, args.target, metric="flops", ranking="memory", min_live_groups=8, round_to=8)
    predicted = gss.model_stats(model)
    small = gss.compact(model)
    real = gss.model_stats(small)
    x = np.random.default_rng(1).normal(size=(4, side, side, 3)).astype("float32")
    expected, got = model.predict(x, verbose=0), small.predict(x, verbose=0)
    row = {
        "model": name,
        "input": side,
        "flops_dense": dense.flops,
        "flops_compact": real.flops,
        "flops_predicted": predicted.live_flops,
        "params_dense": dense.params,
        "params_compact": small.count_params(),
        "flop_ratio": real.flops / dense.flops,
        "removed_vs_asked": (1 - real.flops / dense.flops) / args.target,
        "max_rel_diff": float(np.abs(got - expected).max() / max(1e-12, np.abs(expected).max())),
        "prune_compact_s": time.time() - start,
    }
    paths = {"keras": compiled_forward}
    if keras.backend.backend() == "tensorflow" and not args.no_litert:
        paths["litert"] = litert_forward
    for path, make in paths.items():
        call_dense, call_small = make(model), make(small)
        for batch in args.batches:
            xb = np.random.default_rng(2).normal(size=(batch, side, side, 3)).astype("float32")
            d_ms, s_ms = paired_ms(call_dense, call_small, xb, args.repeats)
            row[f"{path}_b{batch}_dense_ms"] = d_ms
            row[f"{path}_b{batch}_compact_ms"] = s_ms
            row[f"{path}_b{batch}_speedup"] = d_ms / s_ms
            row[f"{path}_b{batch}_share_of_limit"] = (d_ms / s_ms) * row["flop_ratio"]
    row["total_s"] = time.time() - start
    return row


def table(rows: list[dict], args) -> str:
    paths = ["keras"] + (["litert"] if any("litert_b1_speedup" in r for r in rows) else [])
    head = ["model", "GFLOPs dense -> compact", "params dense -> compact", "removed/asked",
            "max rel diff"]  # fmt: skip
    for path in paths:
        head += [f"{path} b{b} speedup (share of limit)" for b in args.batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error']} |")
            continue
        cells = [
            r["model"],
            f"{r['flops_dense'] / 1e9:.3f} -> {r['flops_compact'] / 1e9:.3f} "
            f"({r['flop_ratio']:.2f})",
            f"{r['params_dense'] / 1e6:.2f}M -> {r['params_compact'] / 1e6:.2f}M",
            f"{r['removed_vs_asked']:.0%}",
            f"{r['max_rel_diff']:.1e}",
        ]
        for path in paths:
            for b in args.batches:
                key = f"{path}_b{b}"
                cells.append(f"{r[key + '_speedup']:.2f}x ({r[key + '_share_of_limit']:.0%})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats (5), batches 1 and 32")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--target", type=float, default=0.5, help="FLOPs to remove (default 0.5)")
    p.add_argument("--repeats", type=int, help="timed repeats (default 20; quick 5)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--no-litert", action="store_true", help="skip the LiteRT timings")
    p.add_argument("--out", default="benchmarks/results/applications")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (5 if args.quick else 20)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        print(f"{name} ...", flush=True)
        try:
            row = measure(name, MODELS[name], args)
        except Exception as error:  # a crash is a result: reported, the others still run
            row = {"model": name, "error": f"{type(error).__name__}: {error}"[:300]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = _meta.meta("applications.py", argv, target=args.target, repeats=args.repeats)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = table(rows, args)
    (out / "table.md").write_text(f"{_meta.header(meta)}\n\n{text}\n")
    print(text)
    return 0 if not any("error" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
