"""Results at a glance: one table and one figure from the committed benchmark results.

Runs nothing: reads the JSON that `accuracy_vs_sparsity.py` (LeNet, full
Fashion-MNIST, 3-5 seeds), `residual_nets.py` (ResNet-20) and `applications.py`
(ten Keras applications) wrote under `benchmarks/results/`, and writes
`benchmarks/results/at_a_glance/` (table.md, results.json, at_a_glance.png) with
the commit it ran at. The README shows the table and the figure.

    python benchmarks/at_a_glance.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _meta  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LENET = RESULTS / "accuracy_vs_sparsity_finetune_lr"
# benchmark method name -> what a user runs (keras_gss.recipes and the baselines)
METHODS = {
    "recipe-steps": "keras-gss `recipes.for_weights`",
    "prune-steps-memory-conv16": "keras-gss `recipes.for_flops`, convs only",
    "ssl": "SSL (group lasso 2e-3, Wen et al. 2016)",
    "gss": "the paper's GSS (lasso 2e-3 + attention 1e-2)",
    "magnitude": "magnitude (TF-MOT's method: single weights)",
}
# published by TF-MOT for its own (unstructured) pruning on ImageNet: accuracy kept,
# but dense shapes (no FLOPs removed in a dense kernel); tensorflow.org/model_optimization
RESNET = {
    "monitor": "keras-gss monitor alone",
    "lasso-coupled": "keras-gss + coupled group lasso",
    "gss-coupled": "keras-gss + the paper's GSS, coupled",
}
TF_MOT = [
    ("MobileNetV1 224, ImageNet", "50 % of weights", "71.04 -> 70.84 top-1"),
    ("InceptionV3, ImageNet", "50 / 75 / 87.5 % of weights", "78.1 -> 78.0 / 76.1 / 74.6 top-1"),
]


NOTE = (
    "Wxx: xx % of the prunable weights zero; Fxx: xx % of the FLOPs removed. LeNet rows: "
    "`accuracy_vs_sparsity.py` (3 epochs + a quarter-epoch fine-tune; drop vs dense trained "
    "as long), benchmark names `recipe-steps` = `for_weights(0.9, epochs=3, steps=1800)` "
    '(threshold 0), `prune-steps-memory-conv16` = `for_flops(0.85, layers=["conv1", '
    '"conv2"], min_live_groups=16, round_to=1, steps=1800)`, `ssl`, `gss`, `magnitude`; '
    "speedup of the compact model at batch 256. ResNet-20 and MobileNetV2 rows: "
    '`residual_nets.py` (full data, coupled groups, `ranking="memory"`, `round_to=8`).'
)


def lenet_rows() -> list[dict]:
    """The methods at the two targets the benchmark set: 90 % of the weights (W90)
    and 85 % of the FLOPs (F85)."""
    data = json.loads((LENET / "results.json").read_text())
    speed = json.loads((LENET / "speedups.json").read_text())  # by mean live widths
    rows = []
    for agg in data["aggregate"]:
        if agg["method"] not in METHODS or agg["key"] not in ("W90", "F85"):
            continue
        if agg["method"] in ("recipe-steps", "magnitude") and agg["key"] != "W90":
            continue  # the weight recipe and magnitude pruning at their weight target
        runs = [r for r in data["results"] if r["method"] == agg["method"]]
        runs = [r for r in runs if r["key"] == agg["key"] and r.get("live_units")]
        key = None
        if runs:
            names = ("conv1", "conv2", "fc1", "fc2")
            widths = [max(1, round(np.mean([r["live_units"][n] for r in runs]))) for n in names]
            key = "-".join(map(str, widths))
        rows.append({
            "model": "LeNet", "method": agg["method"], "label": METHODS[agg["method"]],
            "target": agg["key"], "seeds": agg["seeds"],
            "drop": agg["drop_finetuned_mean"], "drop_sd": agg["drop_finetuned_std"],
            "flops_left": agg["flop_ratio_mean"], "speedup": speed.get(key),
            "speedup_runtime": "Keras b256",
        })  # fmt: skip
    return rows


NETS = {"resnet20": "ResNet-20", "mobilenetv2": "MobileNetV2"}


def residual_rows() -> list[dict]:
    """Full-data residual nets, every seed run so far, mean and sd per net,
    method and level (drop against the dense net of the same seed)."""
    found: dict = {}
    for path in sorted((RESULTS / "residual_nets_full").rglob("results.json")):
        for r in json.loads(path.read_text())["rows"]:
            # a run repeated on the same seed (a cached start) counts once: the first in path order
            found.setdefault((r["net"], r["seed"], r["level"], r["method"]), r)
    rows = list(found.values())
    dense = {(r["net"], r["seed"]): r for r in rows if r["method"] == "dense"}
    out = []
    for net, method in [(n, m) for n in NETS for m in RESNET]:  # by net, then method
        mine = [r for r in rows if (r["net"], r["method"]) == (net, method)]
        for level in sorted({r["level"] for r in mine}):
            group = [r for r in mine if r["level"] == level]
            base = [dense[(net, r["seed"])] for r in group]
            drops = [100 * (d["accuracy"] - r["accuracy"]) for d, r in zip(base, group)]
            out.append({
                "model": NETS[net], "method": method, "label": RESNET[method],
                "target": f"F{round(100 * level)}", "seeds": len(group),
                "drop": float(np.mean(drops)), "drop_sd": float(np.std(drops)),
                "flops_left": float(np.mean([r["flops"] / d["flops"]
                                             for d, r in zip(base, group)])),
                "speedup": float(np.mean([r["speedup_b32"] for r in group])),
                "speedup_runtime": "Keras b32",
            })  # fmt: skip
    return out


def application_rows() -> list[dict]:
    data = json.loads((RESULTS / "applications" / "results.json").read_text())
    return [
        {"model": r["model"], "flops_left": r["flop_ratio"], "speedup": r["litert_b32_speedup"]}
        for r in data["rows"]
    ]


def _row(model, r) -> str:
    speed = "none: dense shapes"
    if r["speedup"]:
        speed = f"{r['speedup']:.2f}x ({r['speedup_runtime']})"
    drop = f"{r['drop']:.2f}" + (f" ± {r['drop_sd']:.2f}" if r["seeds"] > 1 else "")
    return f"| {model} | {r['label']} | {r['target']} | {r['seeds']} | {drop} | " + (
        f"{r['flops_left']:.2f} | {speed} |"
    )


def table(lenet, resnet, apps) -> str:
    lines = [
        "| model (Fashion-MNIST) | method | target | seeds | accuracy drop (points) "
        "| FLOPs left | measured speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    order = list(METHODS)
    for r in sorted(lenet, key=lambda r: (r["target"][0] == "F", order.index(r["method"]))):
        lines.append(_row("LeNet", r))
    lines += [_row(r["model"], r) for r in resnet]
    speeds = [a["speedup"] for a in apps]
    left = [a["flops_left"] for a in apps]
    lines.append(
        f"| {len(apps)} Keras applications (random weights) | `prune(0.5, "
        f'metric="flops")` + `compact` | F50 | - | (not trained) | '
        f"{min(left):.2f}-{max(left):.2f} | {min(speeds):.1f}-{max(speeds):.1f}x (LiteRT b32) |"
    )
    lines += ["", "TF-MOT, published for its own magnitude pruning (ImageNet, dense shapes "
              "kept):", "", "| model | sparsity | accuracy |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {m} | {s} | {a} |" for m, s, a in TF_MOT]
    lines += ["", NOTE]
    return "\n".join(lines)


def _errorbar(ax, rows, fmt, label):
    """Mean drop with its seed sd, the lower bar clipped above zero (log axis)."""
    drops = np.array([r["drop"] for r in rows])
    sd = np.array([r["drop_sd"] for r in rows])
    ax.errorbar([r["flops_left"] for r in rows], drops, yerr=[np.minimum(sd, 0.9 * drops), sd],
                fmt=fmt, capsize=3, ms=8, label=label)  # fmt: skip
    for r in rows:
        ax.annotate(r["target"], (r["flops_left"], r["drop"]), textcoords="offset points",
                    xytext=(6, -3), fontsize=7)  # fmt: skip


def figure(lenet, resnet, apps, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = dict(zip(METHODS, "o*s^x"))
    for method, label in METHODS.items():
        rows = [r for r in lenet if r["method"] == method]
        _errorbar(left, rows, markers[method], f"LeNet, {label}")
        fast = [r for r in rows if r["speedup"]]
        if fast:
            right.plot([r["flops_left"] for r in fast], [r["speedup"] for r in fast],
                       markers[method], ms=8, label=f"LeNet, {label}")  # fmt: skip
    for net, fmt in zip(NETS.values(), "DP"):
        rows = [r for r in resnet if r["model"] == net and r["method"] == "monitor"]
        if rows:
            _errorbar(left, rows, fmt, f"{net}, keras-gss monitor alone (coupled groups)")
    left.set_yscale("log")
    left.set_xlabel("FLOPs left (fraction of dense)")
    left.set_ylabel("accuracy drop after fine-tune (points, log)")
    left.set_title("Accuracy lost: lower is better")
    left.legend(fontsize=7)
    right.plot([a["flops_left"] for a in apps], [a["speedup"] for a in apps], "v",
               label="Keras applications, LiteRT b32")  # fmt: skip
    grid = np.linspace(0.1, 1.0, 50)
    right.plot(grid, 1 / grid, "k:", label="FLOP limit (1 / FLOPs left)")
    right.set_yscale("log")
    right.set_xlabel("FLOPs left (fraction of dense)")
    right.set_ylabel("measured compact speedup vs dense")
    right.set_title("Speed of the compact model: higher is better")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(RESULTS / "at_a_glance"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lenet, resnet, apps = lenet_rows(), residual_rows(), application_rows()
    commit = _meta.commit()
    command = "python benchmarks/at_a_glance.py " + " ".join(argv or sys.argv[1:])
    text = table(lenet, resnet, apps)
    (out / "table.md").write_text(f"Command: `{command.strip()}` at {commit[:10]}\n\n{text}\n")
    (out / "results.json").write_text(json.dumps(
        {"meta": {"command": command.strip(), "commit": commit},
         "lenet": lenet, "residual_nets": resnet, "applications": apps}, indent=1))  # fmt: skip
    figure(lenet, resnet, apps, out / "at_a_glance.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
