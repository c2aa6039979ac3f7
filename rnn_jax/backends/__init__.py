"""Fused sequence backends for ``rj.unroll(..., backend=)``.

=========  =========================================================================
backend    what runs the sequence
=========  =========================================================================
"scan"     ``jax.lax.scan`` over the cell (default; every cell and option)
"fused_cpu"  rnn_jax's own fused CPU kernel (XLA FFI): one call per sequence forward and one
           backward, products through oneDNN's sgemm; Elman (tanh, relu), LSTM, GRU; takes
           ``lengths`` too; needs ``pip install 'rnn_jax[onednn]'`` and g++. For the linear
           cells (a ``LinearForm``: ``rj.mingru`` with its gates fused in, ``rj.minlstm``, any
           real one) the linear-recurrence kernel (``fused_linear``) runs the scan in the
           parallel path, with ``lengths``, ``mask`` and ``resets``; needs g++ only
"cudnn"    cuDNN's LSTM through ``jax.experimental.rnn`` (GPU only); LSTM only
"auto"     the fused backend where it applies (cell, options, dtype, platform) and is measured
           faster: on the CPU "fused_cpu" for Elman, LSTM, GRU, minGRU and minLSTM; on a GPU
           "cudnn" for the LSTM; else "scan"
=========  =========================================================================

The fused backends take the initial carry, batch- or time-major input and ``reverse``
(``"fused_cpu"`` ``lengths`` too); ``truncate``, ``remat``, ``matmul_dtype``, ``mask``,
``resets``, regularisers and the other options they do not honour are scan-only (an
explicit fused backend raises naming it, ``"auto"`` falls back to scan). Parameters must be
float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnn_jax.checks import as_cell
from rnn_jax.options import BACKENDS
from rnn_jax.options import FUSED_DATA as FUSED_OPTIONS  # what a fused backend honours too

FUSED_CELLS = {
    "fused_cpu": ("tanh", "relu", "lstm", "gru"),
    "cudnn": ("lstm",),
}


def fused_kind(cell) -> str | None:
    """``"tanh"``, ``"relu"``, ``"lstm"`` or ``"gru"`` for the built-in cells a fused kernel
    implements (``rj.simple``, ``rj.simple.relu``, ``rj.lstm``, ``rj.gru``); None for any
    other cell, including a custom one that reuses a built-in name."""
    try:
        form = as_cell(cell).fused
    except TypeError:
        return None
    plain = form is not None and form.matmul_dtype is None and form.proj_size is None
    return form.kernel if plain else None


def check_backend(backend) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


@functools.cache
def fused_cpu_available() -> bool:
    """Whether ``backend="fused_cpu"`` can run here (builds the kernel on the first call)."""
    from rnn_jax.backends import build

    return build.available(build.FUSED)


@functools.cache
def fused_linear_available() -> bool:
    """Whether ``backend="fused_cpu"`` can run the linear cells here (g++; builds on first use)."""
    from rnn_jax.backends import build

    return build.available(build.LINEAR)


def set_fused_cpu_threads(num_threads: int) -> None:
    """Threads each ``backend="fused_cpu"`` call uses from now on, at most XLA's CPU
    thread-pool size (default: ``$RNN_JAX_FUSED_THREADS``, else the pool size, one per
    core); 0 restores the default."""
    from rnn_jax.backends import fused_cpu

    fused_cpu.set_threads(num_threads)


# What backend="auto" runs on the CPU, per cell: measured fastest here (train step, 2-core
# AMD EPYC, AVX2; docs/results/bench.md). None: the scan path.
AUTO_CPU = {"tanh": "fused_cpu", "relu": "fused_cpu", "lstm": "fused_cpu", "gru": "fused_cpu"}


# The linear cells backend="auto" runs through the linear-recurrence kernel on the CPU: those
# whose gate maths it fuses (train step 1.5x / 1.6x their parallel path at B16 T4096 H256,
# experiments/results/bench-2026-12-07-linear.md); the others keep the pure-JAX parallel path.
AUTO_LINEAR_CPU = ("mingru", "minlstm")


def linear_backend(backend: str, cell, arrays, *, defaults: bool) -> str:
    """``"fused_cpu"`` where the linear kernel runs a linear cell's parallel path (asked for,
    or ``"auto"``'s choice), else ``"scan"`` (the pure-JAX parallel path). ``arrays``: the
    params, inputs and carry (``"auto"`` takes float32 only); ``defaults``: no option other
    than the per-row data is set (``"auto"`` leaves an explicit ``gradient=`` or dropout to
    the path that has them)."""
    if backend != "auto":
        return backend
    form = as_cell(cell).linear
    if form is None or form.fused_gates not in AUTO_LINEAR_CPU or not defaults:
        return "scan"
    if any(leaf.dtype != jnp.float32 for leaf in jax.tree.leaves(arrays)):
        return "scan"
    on_cpu = jax.default_backend() == "cpu"
    return "fused_cpu" if on_cpu and fused_linear_available() else "scan"


def _platform_backend(kind: str) -> str | None:
    platform = jax.default_backend()
    if platform == "cpu":
        chosen = AUTO_CPU.get(kind)
        return chosen if chosen is not None and fused_cpu_available() else None
    if platform == "gpu" and kind in FUSED_CELLS["cudnn"]:
        return "cudnn"
    return None


def resolve(backend: str, cell, params, options: dict) -> tuple[str, str | None]:
    """``(backend to run, fused kind)``; ``options`` maps scan-only option names to their
    values (None = unset). An explicit fused backend raises for anything it cannot run."""
    backend = check_backend(backend)
    if backend == "scan":
        return "scan", None
    proj_size = getattr(as_cell(cell).fused, "proj_size", None)
    if proj_size is not None:  # no fused kernel here projects h (cuDNN's could; not wired)
        if backend == "auto":
            return "scan", None
        raise ValueError(
            f"backend={backend!r} does not support an LSTM with an output projection "
            f"(proj_size={proj_size}, params with w_hr); use backend='scan' (or backend='auto', "
            "which falls back to scan for it)"
        )
    kind = fused_kind(cell)
    used = [name for name, value in options.items() if value is not None]
    # Only the built-in cells' params are known to be dicts with a "w_x".
    dtype = None if kind is None else params["w_x"].dtype
    if backend == "auto":
        if kind is None or dtype != jnp.float32:
            return "scan", None
        chosen = _platform_backend(kind)
        if chosen is None or any(name not in FUSED_OPTIONS[chosen] for name in used):
            return "scan", None
        return chosen, kind
    unsupported = [name for name in used if name not in FUSED_OPTIONS[backend]]
    if unsupported:
        raise ValueError(
            f"backend={backend!r} does not support {unsupported[0]}=; use backend='scan' "
            f"(or backend='auto', which falls back to scan for it)"
        )
    if kind not in FUSED_CELLS[backend]:
        name = getattr(as_cell(cell), "name", cell) if kind is None else kind
        raise ValueError(
            f"backend={backend!r} runs only the built-in cells {FUSED_CELLS[backend]}"
            + (" and the linear cells (a LinearForm)" if backend == "fused_cpu" else "")
            + f", got {name!r}; use backend='scan' for it"
        )
    if dtype != jnp.float32:
        raise TypeError(f"backend={backend!r} runs float32 only, got params of dtype {dtype}")
    if backend == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(f"backend='cudnn' needs a GPU; JAX's default is {jax.default_backend()}")
    return backend, kind


def dispatch(backend: str, cell, params, xs, carry, *, reverse, time_major, options):
    """Run a fused backend and return ``(final_carry, hs)``, or None when the scan path
    should run (``backend="scan"``, or ``"auto"`` where no fused kernel applies).

    ``carry`` is the checked initial carry (zeros filled in); ``xs`` is as the caller gave
    it, batch- or time-major; ``options["lengths"]`` the checked lengths (or None).
    """
    if backend == "fused_cpu" and as_cell(cell).linear is not None:
        return None  # a linear cell: rj.unroll's parallel path runs the linear kernel
    chosen, kind = resolve(backend, cell, params, options)
    if chosen == "scan":
        return None
    if chosen == "fused_cpu":  # handles T = 0 and B = 0 itself (the initial carry back)
        from rnn_jax.backends import fused_cpu

        return fused_cpu.unroll(
            kind, params, xs, carry, options.get("lengths"), reverse=reverse,
            time_major=time_major,
        )  # fmt: skip
    if min(xs.shape[:2]) == 0:
        if backend == "auto":
            return None
        raise ValueError(f"backend={chosen!r} needs at least one step and one row, got {xs.shape}")
    from rnn_jax.backends import cudnn

    return cudnn.unroll(params, xs, carry, reverse=reverse, time_major=time_major)
