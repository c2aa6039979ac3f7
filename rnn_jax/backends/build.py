"""Build, cache and load the FFI kernels of the CPU backends on first use.

Two kernels, one machinery (a ``Kernel`` names each):

- ``FUSED`` (``fused_rnn.cc``, ``backend="fused_cpu"``): rnn_jax's own sequence kernel, its
  products through oneDNN's sgemm, compiled with ``-O3 -march=native``.
- ``LINEAR`` (``fused_linear.cc``, ``backend="fused_cpu"`` for the linear cells): the linear
  recurrence, minGRU's gates fused in; no products, so no oneDNN (a compiler suffices).

``FUSED`` and ``LINEAR`` share ``fused_common.h`` (threads, denormal flushing, scratch
buffers, element-wise functions), part of their cache key.

Each is compiled by the system C++ compiler (``$CXX``, else ``g++``) against
``jax.ffi.include_dir()`` and (all but ``LINEAR``) the headers of the ``onednn-devel-cpu-gomp``
wheel, then cached
under ``$RNN_JAX_CACHE`` (default ``~/.cache/rnn_jax``; see ``rnn_jax.cache``) in a file
named by a hash of the source, the compile command, the compiler's version, the CPU's
feature flags (a ``-march=native`` build must not load on another CPU sharing the cache) and
the jaxlib version: any change builds anew, everything else loads the cached file. It is
written to a temporary name and renamed (``rnn_jax.atomic``), so two processes building at
once (pytest-xdist workers) each see either no file or a whole one.

Why on first use and not at install time (scikit-build-core): the package stays pure
Python for everyone who never asks for a fused CPU backend, and the library must match the
jaxlib that runs it, which a user may upgrade after installing rnn_jax.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import importlib.metadata
import os
import platform
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from rnn_jax.atomic import atomic_path

ONEDNN_PINS = ("onednn-cpu-gomp==2023.2.0", "onednn-devel-cpu-gomp==2023.2.0")
INSTALL_HINT = "pip install 'rnn_jax[onednn]' (that is: pip install " + " ".join(ONEDNN_PINS) + ")"
FUSED_FORWARD_TARGET = "rnn_jax_fused_forward"
FUSED_BACKWARD_TARGET = "rnn_jax_fused_backward"
FUSED_THREADS_ENV = "RNN_JAX_FUSED_THREADS"
LINEAR_FORWARD_TARGET = "rnn_jax_linear_forward"
LINEAR_BACKWARD_TARGET = "rnn_jax_linear_backward"


class BackendUnavailable(RuntimeError):
    """The fused backend cannot run here; the message says what to install."""


def threads_from_env(name: str) -> int:
    """The int >= 0 in ``$name`` (0 or unset: the backend's default thread count)."""
    text = os.environ.get(name, "0")
    if not text.isdigit():
        raise ValueError(f"{name} must be an int >= 0, got {text!r}")
    return int(text)


def _configure_fused(library: ctypes.CDLL) -> None:
    library.rnn_jax_fused_set_num_threads.argtypes = [ctypes.c_int]
    library.rnn_jax_fused_set_num_threads(threads_from_env(FUSED_THREADS_ENV))


def _configure_linear(library: ctypes.CDLL) -> None:
    library.rnn_jax_linear_set_num_threads.argtypes = [ctypes.c_int]
    library.rnn_jax_linear_set_num_threads(threads_from_env(FUSED_THREADS_ENV))


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One FFI kernel: its source, what it serves, its flags and its exported handlers."""

    backend: str  # the ``backend=`` it serves, for messages
    source: Path
    flags: tuple[str, ...]  # optimisation flags (the rest of the command is shared)
    targets: tuple[tuple[str, str], ...]  # (FFI target name, exported handler symbol)
    configure: Callable[[ctypes.CDLL], None]  # ctypes signatures, thread count from env
    onednn: bool = True  # compiled against and linked with oneDNN (its sgemm; OpenMP)
    headers: tuple[Path, ...] = ()  # included sources: part of the cache key


HERE = Path(__file__).parent
COMMON = HERE / "fused_common.h"  # threads, denormals, scratch, element-wise functions
# -fno-trapping-math lets g++ if-convert (and so vectorise) the clamps in the gate maths.
FUSED = Kernel(
    "fused_cpu", HERE / "fused_rnn.cc",
    ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math"),
    ((FUSED_FORWARD_TARGET, "RnnJaxFusedForward"), (FUSED_BACKWARD_TARGET, "RnnJaxFusedBackward")),
    _configure_fused, headers=(COMMON,),
)  # fmt: skip
# No products: no oneDNN (the base install and a compiler suffice).
LINEAR = Kernel(
    "fused_cpu", HERE / "fused_linear.cc",
    ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math"),
    ((LINEAR_FORWARD_TARGET, "RnnJaxLinearForward"),
     (LINEAR_BACKWARD_TARGET, "RnnJaxLinearBackward")),
    _configure_linear, onednn=False, headers=(COMMON,),
)  # fmt: skip


def _installed_file(distribution: str, suffix: str, backend: str) -> Path:
    """The file of an installed wheel whose path ends with ``suffix``."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise BackendUnavailable(
            f"backend={backend!r} needs oneDNN, but {distribution} is not installed: {INSTALL_HINT}"
        ) from None
    for file in files:
        if str(file).endswith(suffix):
            return Path(file.locate()).resolve()
    raise BackendUnavailable(f"{distribution} has no {suffix}; reinstall it: {INSTALL_HINT}")


def _compiler(backend: str) -> str:
    compiler = os.environ.get("CXX", "g++")
    found = shutil.which(compiler)
    if found is None:
        raise BackendUnavailable(
            f"backend={backend!r} builds its kernel on first use with a C++17 compiler, but "
            f"{compiler!r} was not found: install one (e.g. apt-get install g++) or set CXX"
        )
    return found


def compile_command(output: Path, kernel: Kernel = FUSED) -> list[str]:
    import jax

    command = [_compiler(kernel.backend), *kernel.flags, "-std=c++17", "-shared", "-fPIC",
               f"-I{jax.ffi.include_dir()}", f"-I{HERE}"]  # fmt: skip
    if not kernel.onednn:
        return [*command, str(kernel.source), "-o", str(output)]
    header = _installed_file("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp", kernel.backend)
    library = _installed_file("onednn-cpu-gomp", "libdnnl.so.3", kernel.backend)
    include_dir = header.parent.parent.parent  # .../include/oneapi/dnnl/dnnl.hpp
    return [
        *command, "-fopenmp", f"-I{include_dir}", str(kernel.source), "-o", str(output),
        str(library), f"-Wl,-rpath,{library.parent}",
    ]  # fmt: skip


def cache_dir() -> Path:
    """``rnn_jax.cache.cache_dir()``: ``$RNN_JAX_CACHE``, else ``~/.cache/rnn_jax``."""
    from rnn_jax.cache import cache_dir as shared

    return shared()


@functools.cache
def cpu_features() -> str:
    """The CPU's model name and feature flags (Linux ``/proc/cpuinfo``), else the platform's
    processor name: part of the cache key."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features")  # x86 / aarch64
    found = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in wanted:
            found.setdefault(key.strip(), value.strip())
    return " | ".join(f"{k}: {v}" for k, v in sorted(found.items())) or platform.machine()


@functools.cache
def _compiler_version(compiler: str) -> str:
    result = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    return result.stdout.splitlines()[0] if result.stdout else ""


def library_path(kernel: Kernel = FUSED) -> Path:
    """Where the library for this source, command, compiler, CPU and jaxlib lives (built or
    not)."""
    import jaxlib

    command = compile_command(Path("OUTPUT"), kernel)
    key = hashlib.sha256()
    key.update(kernel.source.read_bytes())
    for header in kernel.headers:
        key.update(header.read_bytes())
    key.update(shlex.join(command).encode())
    key.update(_compiler_version(command[0]).encode())
    key.update(cpu_features().encode())
    key.update(jaxlib.__version__.encode())
    stem = kernel.source.stem
    return cache_dir() / f"{stem}-{jaxlib.__version__}-{key.hexdigest()[:16]}.so"


def build_library(kernel: Kernel = FUSED) -> Path:
    """Compile the library unless the cache already holds it; returns its path."""
    path = library_path(kernel)
    if path.exists():
        return path
    with atomic_path(path, mode=0o755) as tmp:
        command = compile_command(tmp, kernel)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise BackendUnavailable(
                f"building the {kernel.backend} kernel failed ({shlex.join(command)}):\n"
                f"{result.stderr[-4000:]}"
            )
    return path


@functools.cache
def load(kernel: Kernel = FUSED) -> ctypes.CDLL:
    """Build (once per cache), load and register the FFI targets; returns the library."""
    import jax

    library = ctypes.CDLL(str(build_library(kernel)))
    for target, symbol in kernel.targets:
        jax.ffi.register_ffi_target(
            target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu"
        )
    kernel.configure(library)
    return library


def available(kernel: Kernel = FUSED) -> bool:
    """Whether the kernel's backend can run here (builds the library if needed)."""
    try:
        load(kernel)
    except BackendUnavailable:
        return False
    return True
