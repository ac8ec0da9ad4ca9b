"""Probe: which monotone envelope makes a latency table's entries repeat best.

`latency.profile` times each layer at a ladder of widths, then makes every grid
monotone (more channels never take less time) with `latency._monotone`. It used
a running maximum from the narrowest width, which carries a single timing that
spikes upward (this machine is small and shared) to every wider entry of its row
and column; after this probe it uses the running minimum from the widest. This
probe profiles the same untrained nets `--profiles` times (latency does not
depend on the weights' values), keeps the raw grids, and compares envelopes of
one profile with the reference, the per-entry median of all the raw grids:

- `max-below`: the running maximum from the narrowest width (what profile did);
- `min-above`: the running minimum from the widest width (a spike is lowered to
  the wider timing; a spike at the widest width stays; what profile does now);
- `midpoint`: the mean of the two (monotone too);
- `raw`: no envelope (not monotone), for scale.

    python benchmarks/probes/probe_table_envelope.py --nets lenet resnet20 \
        --profiles 4 --out benchmarks/results/table_envelope

Run it on a quiet machine. Writes results.json and table.md to --out.
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

from keras_gss import latency  # noqa: E402


def max_below(g: np.ndarray) -> np.ndarray:
    return np.maximum.accumulate(np.maximum.accumulate(g, axis=0), axis=1)


_PROFILES_ENVELOPE = latency._monotone  # taken before raw_profiles swaps it out


def min_above(g: np.ndarray) -> np.ndarray:
    """The running minimum from the widest width: `latency._monotone` itself."""
    return np.asarray(_PROFILES_ENVELOPE(g))


ENVELOPES = {
    "raw": lambda g: g,
    "max-below": max_below,
    "min-above": min_above,
    "midpoint": lambda g: (max_below(g) + min_above(g)) / 2,
}


def raw_profiles(net: str, batch: int, count: int, repeats: int) -> list[list[np.ndarray]]:
    """`count` profiles of `net`, each the list of its raw (un-enveloped) grids."""
    keras.utils.set_random_seed(0)
    model = NETS[net]()
    seen: list = []
    kept = latency._monotone
    latency._monotone = lambda grid: seen.append(np.array(grid, float)) or grid.tolist()
    profiles = []
    try:
        for i in range(count):
            start = time.time()
            seen.clear()
            latency.profile(model, batch, "litert", repeats=repeats, verbose=0)
            profiles.append(list(seen))
            print(f"  {net} b{batch} profile {i + 1}/{count}: {time.time() - start:.0f} s",
                  flush=True)  # fmt: skip
    finally:
        latency._monotone = kept
    return profiles


def errors(profiles: list[list[np.ndarray]]) -> dict:
    """Per envelope: relative errors of every entry of every single profile against
    the per-entry median of all raw profiles."""
    reference = [np.median(np.stack(grids), axis=0) for grids in zip(*profiles)]
    out = {}
    for name, envelope in ENVELOPES.items():
        errs = [np.abs(envelope(g) - ref) / ref
                for grids in profiles for g, ref in zip(grids, reference)]  # fmt: skip
        out[name] = np.concatenate([e.ravel() for e in errs])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", choices=list(NETS), default=["lenet", "resnet20"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--profiles", type=int, default=4)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=None, help="write results.json and table.md here")
    args = p.parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("the probe times LiteRT: run it with KERAS_BACKEND=tensorflow")
    rows = []
    for net in args.nets:
        profiles = raw_profiles(net, args.batch, args.profiles, args.repeats)
        for name, e in errors(profiles).items():
            rows.append({"net": net, "batch": args.batch, "envelope": name, "entries": e.size,
                         "median": float(np.median(e)), "p90": float(np.quantile(e, 0.9)),
                         "over_25": float((e > 0.25).mean())})  # fmt: skip
    lines = ["| net | batch | envelope | entries | median error | 90th percentile | "
             "share over 25 % |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['net']} | {r['batch']} | {r['envelope']} | {r['entries']} | "
                     f"{r['median']:.3f} | {r['p90']:.3f} | {r['over_25']:.3f} |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        _meta.write(args.out, "probes/probe_table_envelope.py", argv, args, rows, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
