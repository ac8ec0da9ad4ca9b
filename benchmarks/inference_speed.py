"""Inference speed: dense vs compact LeNet at several sparsity levels, in one process.

The paper's LeNet is trained briefly (or given with `--weights`, e.g. the
accuracy benchmark's recipe model), pruned by whole groups to each level,
compacted with `keras_gss.compact`, and both models are timed (median of
repeats after warm-up; dense and compact called alternately, so a change of
machine speed hits both) at batch 1 and batch 256 through two call paths:
Keras' `predict_on_batch`, and the forward pass compiled once for the backend
(what an exported model serves: a `tf.function`'s concrete function, `jax.jit`,
or `torch.no_grad`); on TensorFlow also a third, `litert`: the model exported by
`model.export(path, format="litert")` and run by the LiteRT interpreter. The
FLOP ratio (compact / dense) is the limit the speedup can reach; the time of a
call to a model that does nothing (`floor`) is the fixed cost no compaction
removes.

    python benchmarks/inference_speed.py --quick     # < 3 min on 2 cores
    KERAS_BACKEND=jax python benchmarks/inference_speed.py --quick

Prints a table last; writes results/inference_speed/<backend>.json and .md (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_gss as gss  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _meta  # noqa: E402

from keras_gss import datasets, experiment, latency  # noqa: E402

# (row, level, metric, ranking): weight levels ranked by rms, the FLOP level by the
# cost-aware ranking and by the one that also charges activation memory
LEVELS = [
    ("W50", 0.5, "weights", "rms"),
    ("W70", 0.7, "weights", "rms"),
    ("W90", 0.9, "weights", "rms"),
    ("W95", 0.95, "weights", "rms"),
    ("F85", 0.85, "flops", "hybrid"),
    ("F85-memory", 0.85, "flops", "memory"),
]


def compiled_forward(model):
    """The inference pass compiled once for the current backend (backend-specific,
    benchmark-only): returns a function of a numpy batch that returns numpy."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # the concrete function, as a SavedModel serving signature runs it: no
        # argument binding or retrace checks per call (tf.function costs ~0.1 ms more)
        spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), model.inputs[0].dtype)
        fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
        return lambda x: fn(tf.constant(x)).numpy()
    if backend == "jax":
        import jax

        # the weights as compile-time constants; Keras' own jitted calls (predict)
        # may donate these buffers, so make the function again after one of those
        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]
        fn = jax.jit(lambda x: model.stateless_call(trainable, frozen, x, training=False)[0])
        return lambda x: np.asarray(fn(x))
    if backend == "torch":
        import torch

        def call(x):
            with torch.no_grad():
                return keras.ops.convert_to_numpy(model(x, training=False))

        return call
    return model.predict_on_batch


def litert_forward(model):
    """The model exported by Keras (`model.export(path, format="litert")`) and run by
    the LiteRT (TensorFlow Lite) interpreter with its XNNPACK CPU kernels: what a
    CPU or edge deployment of a small model serves, without a framework's per-op
    dispatch (TensorFlow backend only, benchmark-only)."""
    import warnings

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # tensorflow still ships it (deprecated)
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        model.export(str(path), format="litert", verbose=False)
        content = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = Interpreter(model_content=content, num_threads=os.cpu_count())
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    shape: list = []

    def call(x):
        if list(x.shape) != shape:  # resized once per batch size, outside the timed loop
            interpreter.resize_tensor_input(inp, list(x.shape))
            interpreter.allocate_tensors()
            shape[:] = x.shape
        interpreter.set_tensor(inp, x)
        interpreter.invoke()
        return interpreter.get_tensor(out)

    return call


PATHS = {"predict": lambda model: model.predict_on_batch, "compiled": compiled_forward}
EXPORTED = {"litert"}
if keras.backend.backend() == "tensorflow":
    PATHS["litert"] = litert_forward


def paired_ms(call_a, call_b, x, repeats: int) -> tuple[float, float]:
    """Medians of `call_a(x)` and `call_b(x)` timed alternately, call by call, so a
    change of machine speed during the run hits both alike (the timing loop of
    `keras_gss.latency.compare_ms`: two untimed rounds, then `repeats` rounds)."""
    times = latency._round_times([call_a, call_b], x, repeats)
    return 1000 * float(np.median(times[:, 0])), 1000 * float(np.median(times[:, 1]))


def floor_model(input_shape) -> keras.Model:
    """A model that does nothing: the fixed cost of one call."""
    return keras.Sequential([keras.Input(input_shape), keras.layers.Identity()])


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


def table(backend: str, floor_ms: dict, rows: list[dict]) -> str:
    """The markdown table of a run: per level and call path, latency and speedup."""
    lines = [
        f"{backend}; fixed cost of a call (floor), ms: "
        + ", ".join(f"{k} {v:.3f}" for k, v in floor_ms.items()),
        "",
        "| level | FLOP ratio (limit) | params dense -> compact | .keras KB | path "
        "| ms b1 dense/compact | speedup b1 (share of limit; above floor) "
        "| ms b256 dense/compact | speedup b256 (share) |",
        "|" + "---|" * 9,
    ]
    for r in rows:
        for path in PATHS:
            b1, b256 = f"{path}_b1", f"{path}_b256"
            lines.append(
                f"| {r['level']} | {r['flop_ratio']:.3f} ({1 / r['flop_ratio']:.1f}x) "
                f"| {r['params_dense']:,} -> {r['params_compact']:,} "
                f"| {r['kb_dense']:.0f} -> {r['kb_compact']:.0f} | {path} "
                f"| {r['ms_dense_' + b1]:.2f} / {r['ms_compact_' + b1]:.2f} "
                f"| {r['speedup_' + b1]:.2f}x ({r['share_of_limit_' + b1]:.0%}; "
                f"{r['speedup_above_floor_' + b1]:.2f}x) "
                f"| {r['ms_dense_' + b256]:.1f} / {r['ms_compact_' + b256]:.1f} "
                f"| {r['speedup_' + b256]:.2f}x ({r['share_of_limit_' + b256]:.0%}) |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, help="timed repeats (default 30; quick 10)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument(
        "--weights",
        help="trained LeNet weights (.weights.h5) to prune instead of training briefly, e.g. "
        "the accuracy benchmark's recipe model",
    )
    p.add_argument("--limit", type=int, help="training images (default 10000; quick 2000)")
    p.add_argument("--out", help="JSON path (default: results/inference_speed/<backend>.json); "
                   "its table goes beside it as .md")  # fmt: skip
    p.add_argument(
        "--round-to", type=int, nargs="+", default=[1],
        help="prune each level once per value: live groups per layer a multiple of it "
        "(rows of r > 1 are suffixed -r<r>; default 1)",
    )  # fmt: skip
    args = p.parse_args(argv)
    backend = keras.backend.backend()
    args.out = args.out or f"benchmarks/results/inference_speed/{backend}.json"
    repeats = args.repeats or (10 if args.quick else 30)
    limit = args.limit or (2000 if args.quick else 10000)
    (x, y), (xt, _), source = datasets.load(
        "fashion_mnist", limit=limit, test_limit=256, return_source=True
    )
    print(f"Data: {source.describe()}", flush=True)
    if args.weights:
        base = gss.models.lenet()
        base.load_weights(args.weights)
        print(f"Weights: {args.weights}", flush=True)
    else:
        base = trained_lenet(args, x, y)
    weights = base.get_weights()
    batches = {"1": xt[:1], "256": xt[:256]}
    floor = floor_model(xt.shape[1:])
    floor_ms, dense_ms = {}, {}
    # an exported copy shares no buffers with the Keras model: export dense once
    exported = {path: make(base) for path, make in PATHS.items() if path in EXPORTED}
    for path, make in PATHS.items():
        call_floor = make(floor)
        for b, xb in batches.items():
            floor_ms[f"{path}_b{b}"], dense_ms[f"{path}_b{b}"] = paired_ms(
                call_floor, exported.get(path) or make(base), xb, repeats
            )
    rows = []
    plan = [(lv, r) for lv in LEVELS for r in args.round_to]
    for (key, level, metric, ranking), round_to in plan:
        key += f"-r{round_to}" if round_to > 1 else ""
        model = gss.models.lenet()
        model.set_weights(weights)
        gss.prune(
            model, level, metric=metric, ranking=ranking, min_live_groups=4, round_to=round_to
        )
        small = gss.compact(model)
        reference = model.predict_on_batch(xt)
        diff = float(np.abs(small.predict_on_batch(xt) - reference).max())
        stats = gss.model_stats(model)
        row = {
            "level": key,
            "round_to": round_to,
            "flop_ratio": stats.flop_ratio,
            "params_dense": int(model.count_params()),
            "params_compact": int(small.count_params()),
            "kb_dense": saved_kb(model),
            "kb_compact": saved_kb(small),
            "max_abs_diff": diff,
            "widths": [int(w.shape[-1]) for w in small.weights if w.path.endswith("kernel")],
        }
        for path, make in PATHS.items():
            call, call_dense = make(small), exported.get(path) or make(base)
            row[f"max_abs_diff_{path}"] = float(np.abs(call(xt) - reference).max())
            for b, xb in batches.items():
                k = f"{path}_b{b}"  # dense re-timed beside each compact model
                row[f"ms_dense_{k}"], compact_ms = paired_ms(call_dense, call, xb, repeats)
                row[f"ms_compact_{k}"] = compact_ms
                row[f"speedup_{k}"] = row[f"ms_dense_{k}"] / compact_ms
                row[f"share_of_limit_{k}"] = row[f"speedup_{k}"] * stats.flop_ratio
                # the speedup of the work compaction can remove: the fixed call cost aside
                work = (row[f"ms_dense_{k}"] - floor_ms[k]) / max(compact_ms - floor_ms[k], 1e-6)
                row[f"speedup_above_floor_{k}"] = work
        rows.append(row)
        print(
            f"{key}: FLOPs {stats.flop_ratio:.3f}, widths {row['widths']}, speedup b1 "
            f"{row['speedup_predict_b1']:.2f}x / {row['speedup_compiled_b1']:.2f}x compiled, "
            f"b256 {row['speedup_predict_b256']:.2f}x / {row['speedup_compiled_b256']:.2f}x"
            + "".join(
                f"; {path} b1 {row[f'speedup_{path}_b1']:.2f}x, b256 "
                f"{row[f'speedup_{path}_b256']:.2f}x"
                for path in PATHS
                if path in EXPORTED
            ),
            flush=True,
        )
    info = _meta.meta("inference_speed.py", argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "command": info["command"],
                "meta": info,
                "backend": backend,
                "weights": args.weights or f"trained {args.epochs} epoch(s) on {limit} images",
                "repeats": repeats,
                "floor_ms": floor_ms,
                "dense_ms": dense_ms,
                "rows": rows,
            },
            indent=1,
        )
    )
    text = table(backend, floor_ms, rows)
    Path(args.out).with_suffix(".md").write_text(f"{_meta.header(info)}\n\n{text}\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
