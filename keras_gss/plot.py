"""Matplotlib figures shared by the CLI, the benchmark and the notebook.

matplotlib is imported inside each function, so the core library does not need
it (`pip install keras-gss[plot]`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("keras_gss.plot needs matplotlib: pip install 'keras-gss[plot]'") from e
    return plt


def group_sparsity_over_epochs(ax, history: Sequence[Mapping]) -> None:
    """Per-layer fraction of zero groups from `SparsityMonitor.history`."""
    if not history:
        return
    epochs = [record["epoch"] + 1 for record in history]
    for layer in history[0]["layers"]:
        values = [record["layers"][layer]["group_sparsity"] for record in history]
        ax.plot(epochs, values, marker="o", label=layer)
    ax.plot(epochs, [r["sparsity"] for r in history], "k--", label="all weights")
    ax.set(xlabel="epoch", ylabel="fraction of groups zero", ylim=(-0.02, 1.02))
    ax.set_title("Group sparsity per layer")
    ax.legend(fontsize="small")


def norm_histogram(ax, norms: Mapping[str, np.ndarray], floor: float = 1e-6) -> None:
    """Histogram (log scale) of root-mean-square group norms, one series per label.

    Exact zeros are drawn at `floor`.
    """
    values = {k: np.maximum(np.asarray(v, dtype=float), floor) for k, v in norms.items()}
    top = max(float(v.max()) for v in values.values())
    bins = np.logspace(np.log10(floor), np.log10(top * 1.5), 50)
    for label, v in values.items():
        ax.hist(v, bins=bins, alpha=0.55, label=label)
    ax.set_xscale("log")
    ax.annotate("exactly 0", (floor, 0), xytext=(0, -28), textcoords="offset points",
                ha="center", fontsize="small")  # fmt: skip
    ax.set(xlabel="group norm / sqrt(group size)", ylabel="groups")
    ax.set_title("Group norms (all prunable layers)")
    ax.legend(fontsize="small")


def training_figure(history: Sequence[Mapping], norms: Mapping[str, np.ndarray], path) -> str:
    """`sparsity.png` of the CLI: sparsity over epochs beside the norm histogram."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    group_sparsity_over_epochs(left, history)
    norm_histogram(right, norms)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def accuracy_drop_figure(rows: Sequence[Mapping], path, stage: str = "finetuned") -> str:
    """Grouped bars: accuracy drop (points) per sparsity level per method, with std.

    `rows` hold `method`, `level`, `drop_<stage>_mean` and `drop_<stage>_std`.
    """
    plt = _pyplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    levels = sorted({r["level"] for r in rows})
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(levels) + 2), 4.2))
    x = np.arange(len(levels))
    for k, method in enumerate(methods):
        by_level = {r["level"]: r for r in rows if r["method"] == method}
        means = [by_level[lv][f"drop_{stage}_mean"] if lv in by_level else np.nan for lv in levels]
        stds = [by_level[lv][f"drop_{stage}_std"] if lv in by_level else 0.0 for lv in levels]
        ax.bar(x + (k - (len(methods) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               label=method)  # fmt: skip
    ax.set_xticks(x, [f"{round(lv * 100)}%" for lv in levels])
    ax.set(xlabel="sparsity (fraction of prunable kernel weights zero)",
           ylabel="accuracy drop vs dense (points)")  # fmt: skip
    ax.set_title(f"Accuracy drop after pruning ({stage.replace('_', ' ')})")
    ax.axhline(0, color="k", lw=0.6)
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def dense_vs_compact(axes, rows: Mapping[str, Mapping[str, float]]) -> None:
    """One bar chart per quantity (e.g. parameters, FLOPs, latency), one bar per model.

    `rows` maps a model label to {quantity: value}; `axes` holds one axis per quantity.
    """
    labels = list(rows)
    quantities = list(next(iter(rows.values())))
    for ax, quantity in zip(np.atleast_1d(axes), quantities):
        values = [rows[label][quantity] for label in labels]
        bars = ax.bar(labels, values, color=["#8c8c8c", "#2a9d8f", "#e76f51"][: len(labels)])
        ax.bar_label(bars, fmt="%.3g", fontsize="small")
        ax.set_title(quantity)


def sensitivity(ax, table) -> None:
    """Score against the fraction of groups pruned, one line per family of coupled
    layers, from `keras_gss.sensitivity` (the dashed line: the unpruned score)."""
    families: dict[str, list] = {}
    for row in table.rows:
        families.setdefault(row["family"], []).append(row)
    for name, rows in families.items():
        rows = sorted(rows, key=lambda r: r["level"])
        levels = [0.0] + [r["level"] for r in rows]
        ax.plot(levels, [table.baseline] + [r["score"] for r in rows], marker="o", label=name)
    ax.axhline(table.baseline, color="k", linestyle="--", linewidth=0.8)
    ax.set(xlabel="fraction of the family's groups pruned", ylabel="score (accuracy)")
    ax.set_title("Sensitivity per family of coupled layers")
    ax.legend(fontsize="small")
