"""Build, cache and load the oneDNN FFI kernel (``onednn_rnn.cc``) on first use.

The shared library is compiled by the system C++ compiler against ``jax.ffi.include_dir()``
and the headers of the ``onednn-devel-cpu-gomp`` wheel, then cached under ``$RNN_JAX_CACHE``
(default ``~/.cache/rnn_jax``; see ``rnn_jax.cache``) in a file named by a hash of the source,
the compile command and the jaxlib version: a new jaxlib or an edited source builds anew,
everything else loads the cached file. It is written to a temporary name and renamed
(``rnn_jax.atomic``), so two processes building at once (pytest-xdist workers) each see
either no file or a whole one.

Why on first use and not at install time (scikit-build-core): the package stays pure
Python for everyone who never asks for ``backend="onednn"``, and the library must match the
jaxlib that runs it, which a user may upgrade after installing rnn_jax.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from rnn_jax.atomic import atomic_path

SOURCE = Path(__file__).with_name("onednn_rnn.cc")
ONEDNN_PINS = ("onednn-cpu-gomp==2023.2.0", "onednn-devel-cpu-gomp==2023.2.0")
INSTALL_HINT = "pip install 'rnn_jax[onednn]' (that is: pip install " + " ".join(ONEDNN_PINS) + ")"
FORWARD_TARGET = "rnn_jax_onednn_forward"
BACKWARD_TARGET = "rnn_jax_onednn_backward"
THREADS_ENV = "RNN_JAX_ONEDNN_THREADS"


class BackendUnavailable(RuntimeError):
    """The fused backend cannot run here; the message says what to install."""


def _installed_file(distribution: str, suffix: str) -> Path:
    """The file of an installed wheel whose path ends with ``suffix``."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise BackendUnavailable(
            f"backend='onednn' needs oneDNN, but {distribution} is not installed: {INSTALL_HINT}"
        ) from None
    for file in files:
        if str(file).endswith(suffix):
            return Path(file.locate()).resolve()
    raise BackendUnavailable(f"{distribution} has no {suffix}; reinstall it: {INSTALL_HINT}")


def _compiler() -> str:
    compiler = os.environ.get("CXX", "g++")
    found = shutil.which(compiler)
    if found is None:
        raise BackendUnavailable(
            f"backend='onednn' builds its kernel on first use with a C++17 compiler, but "
            f"{compiler!r} was not found: install one (e.g. apt-get install g++) or set CXX"
        )
    return found


def compile_command(output: Path) -> list[str]:
    import jax

    header = _installed_file("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp")
    library = _installed_file("onednn-cpu-gomp", "libdnnl.so.3")
    include_dir = header.parent.parent.parent  # .../include/oneapi/dnnl/dnnl.hpp
    return [
        _compiler(), "-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp",
        f"-I{jax.ffi.include_dir()}", f"-I{include_dir}", str(SOURCE), "-o", str(output),
        str(library), f"-Wl,-rpath,{library.parent}",
    ]  # fmt: skip


def cache_dir() -> Path:
    """``rnn_jax.cache.cache_dir()``: ``$RNN_JAX_CACHE``, else ``~/.cache/rnn_jax``."""
    from rnn_jax.cache import cache_dir as shared

    return shared()


def library_path() -> Path:
    """Where the library for this source, compiler command and jaxlib lives (built or not)."""
    import jaxlib

    placeholder = Path("OUTPUT")
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(shlex.join(compile_command(placeholder)).encode())
    key.update(jaxlib.__version__.encode())
    return cache_dir() / f"onednn_rnn-{jaxlib.__version__}-{key.hexdigest()[:16]}.so"


def build_library() -> Path:
    """Compile the library unless the cache already holds it; returns its path."""
    path = library_path()
    if path.exists():
        return path
    with atomic_path(path, mode=0o755) as tmp:
        result = subprocess.run(compile_command(tmp), capture_output=True, text=True)
        if result.returncode != 0:
            raise BackendUnavailable(
                f"building the oneDNN kernel failed ({shlex.join(compile_command(tmp))}):\n"
                f"{result.stderr[-4000:]}"
            )
    return path


@functools.cache
def load() -> ctypes.CDLL:
    """Build (once per cache), load and register the FFI targets; returns the library."""
    import jax

    library = ctypes.CDLL(str(build_library()))
    for target, symbol in (
        (FORWARD_TARGET, library.RnnJaxOnednnForward),
        (BACKWARD_TARGET, library.RnnJaxOnednnBackward),
    ):
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
    library.rnn_jax_onednn_workspace_bytes.restype = ctypes.c_int64
    library.rnn_jax_onednn_workspace_bytes.argtypes = [ctypes.c_int32] * 3 + [ctypes.c_int64] * 4
    library.rnn_jax_onednn_set_num_threads.argtypes = [ctypes.c_int]
    library.rnn_jax_onednn_set_num_threads(threads_from_env())
    return library


def threads_from_env() -> int:
    """``$RNN_JAX_ONEDNN_THREADS``: OpenMP threads per oneDNN call; 0 or unset = OpenMP's
    default (``OMP_NUM_THREADS``, else one per core)."""
    text = os.environ.get(THREADS_ENV, "0")
    if not text.isdigit():
        raise ValueError(f"{THREADS_ENV} must be an int >= 0, got {text!r}")
    return int(text)


def available() -> bool:
    """Whether ``backend="onednn"`` can run here (builds the library if needed)."""
    try:
        load()
    except BackendUnavailable:
        return False
    return True
