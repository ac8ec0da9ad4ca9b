"""Training overhead: the paper's LeNet with and without keras-gss, per backend.

For each backend (each in its own process), four copies of the network are
trained side by side, one `fit` epoch at a time in interleaved rounds, on the
same synthetic batches:

- `plain`: no regularizer;
- `gss`: `GuidedStructuredSparsity` on every prunable layer (`attach`);
- `gss+proximal`: the same plus the proximal group-lasso step (`attach(proximal=)`);
- `gss+monitor`: `gss` plus a `SparsityMonitor` pruning to 50 % of the weights.

Reported: seconds per train step (epoch time / steps, first round dropped: it
traces) as the median and the minimum over rounds, the overhead against `plain`
for both, and the monitor's epoch-end work as a share of an epoch (of this run,
and of a 60,000-image epoch of the paper's task). The minimum is the steadier
estimate on shared machines: a virtual machine whose neighbours steal CPU
alternates between two speeds (seen here: 135 and 258 ms per step for
the same model), which moves medians by tens of percent.

    python benchmarks/training_overhead.py --quick               # < 10 min, 2 cores, 3 backends
    python benchmarks/training_overhead.py --backends tensorflow jax torch

Prints a table last; writes results/training_overhead/results.json and .md (--out).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _meta  # noqa: E402

VARIANTS = ["plain", "gss", "gss+proximal", "gss+monitor"]


def measure(args) -> dict:
    """Run in the current process's backend; returns the timings."""
    import keras
    import numpy as np

    import keras_gss as gss

    class TimedMonitor(gss.SparsityMonitor):
        seconds: list[float] = []

        def on_epoch_end(self, epoch, logs=None):
            start = time.perf_counter()
            super().on_epoch_end(epoch, logs)
            self.seconds.append(time.perf_counter() - start)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, n)
    models, callbacks = {}, {}
    for variant in VARIANTS:
        model = gss.models.lenet()
        if variant != "plain":
            proximal = 1e-5 if variant == "gss+proximal" else None
            gss.attach(model, gss.GuidedStructuredSparsity(), proximal=proximal)
        model.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        models[variant] = model
        callbacks[variant] = (
            [TimedMonitor(target_sparsity=0.5, verbose=0)] if variant == "gss+monitor" else []
        )
    step_seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_ in range(args.rounds + 1):
        order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            start = time.perf_counter()
            models[variant].fit(
                x, y, batch_size=args.batch_size, epochs=1, verbose=0,
                shuffle=False, callbacks=callbacks[variant],
            )  # fmt: skip
            if round_ > 0:  # round 0 traces
                step_seconds[variant].append((time.perf_counter() - start) / args.steps)
        print(f"  round {round_}/{args.rounds} done", file=sys.stderr, flush=True)
    monitor = callbacks["gss+monitor"][0]
    epoch = float(np.median(step_seconds["gss+monitor"])) * args.steps
    result = {
        "backend": keras.backend.backend(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        "median_step_seconds": {v: float(np.median(s)) for v, s in step_seconds.items()},
        "min_step_seconds": {v: float(np.min(s)) for v, s in step_seconds.items()},
        "all_step_seconds": step_seconds,
        "monitor_epoch_end_seconds": float(np.median(monitor.seconds[1:] or monitor.seconds)),
        "final_sparsity": float(monitor.history[-1]["sparsity"]),
    }
    for stat in ("median", "min"):
        times = result[f"{stat}_step_seconds"]
        result[f"overhead_{stat}"] = {v: t / times["plain"] - 1 for v, t in times.items()}
    result["monitor_share_of_epoch"] = result["monitor_epoch_end_seconds"] / epoch
    # the same work against an epoch of the paper's task (60,000 images)
    full_epoch = 60000 / args.batch_size * result["min_step_seconds"]["gss+monitor"]
    result["monitor_share_of_60k_epoch"] = result["monitor_epoch_end_seconds"] / full_epoch
    return result


def table(results: list[dict]) -> str:
    lines = [
        f"| backend | variant | ms per step, batch {results[0]['batch_size']} (median / min) "
        "| overhead vs plain (median / min) | monitor epoch end |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for v in VARIANTS:
            end = "-"
            if v == "gss+monitor":
                end = (
                    f"{1000 * r['monitor_epoch_end_seconds']:.0f} ms: "
                    f"{r['monitor_share_of_epoch']:.2%} of this {r['steps']}-step epoch, "
                    f"{r['monitor_share_of_60k_epoch']:.3%} of a 60,000-image epoch"
                )
            lines.append(
                f"| {r['backend']} | {v} | {1000 * r['median_step_seconds'][v]:.1f} / "
                f"{1000 * r['min_step_seconds'][v]:.1f} | {100 * r['overhead_median'][v]:+.1f} % / "
                f"{100 * r['overhead_min'][v]:+.1f} % | {end} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    p.add_argument("--backends", nargs="+", help="default: every installed one")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--steps", type=int, help="steps per epoch (default 20; quick 10)")
    p.add_argument("--rounds", type=int, help="timed rounds (default 15; quick 6)")
    p.add_argument("--out", default="benchmarks/results/training_overhead/results.json",
                   help="JSON path; its table goes beside it as .md")  # fmt: skip
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps or (10 if args.quick else 20)
    args.rounds = args.rounds or (6 if args.quick else 15)
    if args.worker:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return 0
    modules = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    backends = args.backends or [b for b, m in modules.items() if importlib.util.find_spec(m)]
    results = []
    for backend in backends:
        print(f"{backend}: {args.rounds} rounds of {args.steps} steps x 4 variants", flush=True)
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        command = [sys.executable, __file__, "--worker", "--steps", str(args.steps),
                   "--rounds", str(args.rounds), "--batch-size", str(args.batch_size)]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode or not lines:
            print(f"{backend} failed:\n{done.stderr[-2000:]}", flush=True)
            continue
        results.append(json.loads(lines[-1][len("RESULT ") :]))
        r = results[-1]
        print(
            f"{backend}: gss {100 * r['overhead_min']['gss']:+.1f} % (min), monitor epoch end "
            f"{r['monitor_share_of_epoch']:.2%} of an epoch",
            flush=True,
        )
    if not results:
        return 1
    info = _meta.meta("training_overhead.py", argv, backend=", ".join(backends))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": info["command"], "meta": info, "results": results},
                              indent=1))  # fmt: skip
    out.with_suffix(".md").write_text(f"{_meta.header(info)}\n\n{table(results)}\n")
    print("\n" + table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
