"""One-off probe: narrow LeNets at a FLOP ratio <= 0.15, trained from scratch with the
accuracy benchmark's full-mode protocol (full Fashion-MNIST, 3 epochs at lr 1e-3,
batch 100, then a quarter-epoch fine-tune at lr 1e-4), each seed's drop taken against
the benchmark's cached dense reference of the same seed (trained on as long).

    python benchmarks/probes/probe_scratch_shapes.py 20/48/512/256 16/60/512/256 --seeds 5
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_gss import datasets, experiment, models  # noqa: E402
from keras_gss.report import model_stats  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from accuracy_vs_sparsity import unpack_cache  # noqa: E402

RESULTS = Path("benchmarks/results/accuracy_vs_sparsity_finetune_lr")
unpack_cache(RESULTS)  # the benchmark's cache, committed packed (cache.json.gz)
CACHE = RESULTS / "cache" / "b6be46b136"

p = argparse.ArgumentParser()
p.add_argument("shapes", nargs="+")
p.add_argument("--seeds", type=int, default=5)
p.add_argument(
    "--out", default="benchmarks/results/accuracy_vs_sparsity_finetune_lr/probe_scratch_shapes.json"
)
args = p.parse_args()
(x, y), (xt, yt) = datasets.load("fashion_mnist")
dense_flops = model_stats(models.lenet()).flops
out = Path(args.out)
rows = json.loads(out.read_text()) if out.exists() else []
for shape in args.shapes:
    widths = [int(w) for w in shape.split("/")]
    for seed in range(args.seeds):
        if any(r["shape"] == shape and r["seed"] == seed for r in rows):
            continue
        keras.utils.set_random_seed(seed)
        model = models.lenet(filters=tuple(widths[:2]), units=tuple(widths[2:4]))
        experiment.train(model, experiment.Recipe("dense"), x, y, 3, 100, 1e-3, verbose=0)
        experiment.finetune(model, x, y, 0.25, 100, 1e-4, verbose=0)
        acc = experiment.accuracy(model, xt, yt)
        dense = json.loads((CACHE / f"dense-s{seed}.json").read_text())["accuracy_finetuned"]
        row = {
            "shape": shape,
            "seed": seed,
            "accuracy_finetuned": acc,
            "dense_accuracy_finetuned": dense,
            "drop_finetuned": 100 * (dense - acc),
            "flop_ratio": model_stats(model).flops / dense_flops,
        }
        rows.append(row)
        out.write_text(json.dumps(rows, indent=1))
        print(json.dumps(row), flush=True)
print("| shape | FLOP ratio | seeds | fine-tuned % | drop (points) | per seed |")
print("|---|---|---|---|---|---|")
for shape in args.shapes:
    mine = [r for r in rows if r["shape"] == shape]
    acc = np.array([100 * r["accuracy_finetuned"] for r in mine])
    drop = np.array([r["drop_finetuned"] for r in mine])
    per = ", ".join(f"{d:.2f}" for d in drop)
    print(
        f"| {shape} | {mine[0]['flop_ratio']:.3f} | {len(mine)} | {acc.mean():.2f} ± "
        f"{acc.std(ddof=1):.2f} | {drop.mean():.2f} ± {drop.std(ddof=1):.2f} | {per} |"
    )
sys.exit(0)
