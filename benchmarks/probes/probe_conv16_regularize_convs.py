"""One-off probe: `recipe-steps-memory-conv16` with its regularizers (group lasso and
proximal step) attached to the pruned layers only (conv1, conv2) instead of every
layer: does regularizing the never-pruned dense layers cost the 0.2 point that the
pruned run loses against its shape trained from scratch?

The same steps as the benchmark's `experiment.train` + `prune_to` + `finetune`
(seeds, data, epochs, rates), only `attach(..., layers=["conv1", "conv2"])`:

    python benchmarks/probes/probe_conv16_regularize_convs.py 0 1 2
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402

from keras_gss import attach, datasets, experiment, models  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "accuracy_vs_sparsity_finetune_lr"
spec = importlib.util.spec_from_file_location("bench", HERE.parent / "accuracy_vs_sparsity.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
bench.unpack_cache(RESULTS)  # the benchmark's cache, committed packed (cache.json.gz)
CACHE = RESULTS / "cache" / "b6be46b136"
recipe = experiment.Recipe(
    **{**bench.VARIANTS["recipe-steps-memory-conv16"].to_dict(), "metric": "flops"}
)
(x, y), (xt, yt) = datasets.load("fashion_mnist")
out = RESULTS / "probe_conv16_regularize_convs.json"
rows = json.loads(out.read_text()) if out.exists() else []
for seed in [int(s) for s in sys.argv[1:]]:
    keras.utils.set_random_seed(seed)
    model = models.lenet()
    attach(model, recipe.regularizer(), proximal=recipe.proximal, layers=["conv1", "conv2"])
    experiment.compile_model(model, 1e-3)
    model.fit(x, y, epochs=3, batch_size=100, callbacks=[recipe.monitor(0.85)], verbose=0)
    experiment.prune_to(model, recipe, 0.85)
    pruned = experiment.accuracy(model, xt, yt)
    experiment.finetune(model, x, y, 0.25, 100, 1e-4, verbose=0)
    tuned = experiment.accuracy(model, xt, yt)
    dense = json.loads((CACHE / f"dense-s{seed}.json").read_text())["accuracy_finetuned"]
    base = json.loads((CACHE / f"recipe-steps-memory-conv16-s{seed}-F85.json").read_text())
    row = {"seed": seed, "accuracy_pruned": pruned, "accuracy_finetuned": tuned,
           "drop_finetuned": 100 * (dense - tuned),
           "conv16_accuracy_finetuned": base["accuracy_finetuned"],
           "live_units": bench.live_units(model)}  # fmt: skip
    rows.append(row)
    out.write_text(json.dumps(rows, indent=1))
    print(json.dumps(row), flush=True)
