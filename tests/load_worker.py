"""Load models saved by another backend and print their predictions as JSON.

python tests/load_worker.py jax DIR   # DIR holds pruned.keras, compact.keras, x.npy
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = sys.argv[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_gss as gss  # noqa: E402, F401  (registers keras-gss objects for pruned.keras)

folder = sys.argv[2]
x = np.load(os.path.join(folder, "x.npy"))
pruned = keras.models.load_model(os.path.join(folder, "pruned.keras"))
compact = keras.models.load_model(os.path.join(folder, "compact.keras"))
result = {
    "backend": keras.backend.backend(),
    "pruned": pruned.predict(x, verbose=0).tolist(),
    "compact": compact.predict(x, verbose=0).tolist(),
    "zero_groups": gss.sparsity_report(pruned, threshold=0).zero_groups,
}
print("RESULT " + json.dumps(result))
