"""Fused sequence backends for ``rj.unroll(..., backend=)``.

=========  =========================================================================
backend    what runs the sequence
=========  =========================================================================
"scan"     ``jax.lax.scan`` over the cell (default; every cell and option)
"onednn"   one oneDNN RNN primitive per sequence on CPU, fused backward (XLA FFI);
           Elman (tanh, relu), LSTM, GRU; needs ``pip install 'rnn_jax[onednn]'`` and g++
"cudnn"    cuDNN's LSTM through ``jax.experimental.rnn`` (GPU only); LSTM only
"auto"     the fused backend where it applies (cell, options, dtype, platform), else "scan"
=========  =========================================================================

The fused backends take the initial carry, batch- or time-major input and ``reverse``;
``lengths``, ``truncate``, ``remat`` and ``matmul_dtype`` are scan-only (an explicit fused
backend raises, ``"auto"`` falls back to scan). Parameters must be float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnn_jax.checks import as_cell

BACKENDS = ("scan", "onednn", "cudnn", "auto")
FUSED_CELLS = {"onednn": ("tanh", "relu", "lstm", "gru"), "cudnn": ("lstm",)}


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
def onednn_available() -> bool:
    """Whether ``backend="onednn"`` can run here (builds the kernel on the first call)."""
    from rnn_jax.backends import build

    return build.available()


def set_onednn_threads(num_threads: int) -> None:
    """OpenMP threads each oneDNN call uses from now on (default: ``$RNN_JAX_ONEDNN_THREADS``,
    else OpenMP's default, one per core); 0 restores OpenMP's default."""
    if not isinstance(num_threads, int) or num_threads < 0:
        raise ValueError(f"num_threads must be an int >= 0, got {num_threads!r}")
    from rnn_jax.backends import build

    build.load().rnn_jax_onednn_set_num_threads(num_threads)


def _platform_backend(kind: str) -> str | None:
    platform = jax.default_backend()
    if platform == "cpu" and onednn_available():
        return "onednn"
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
        if kind is None or used or dtype != jnp.float32:
            return "scan", None
        chosen = _platform_backend(kind)
        return (chosen, kind) if chosen else ("scan", None)
    if used:
        raise ValueError(
            f"backend={backend!r} does not support {used[0]}=; use backend='scan' "
            f"(or backend='auto', which falls back to scan for it)"
        )
    if kind not in FUSED_CELLS[backend]:
        name = getattr(as_cell(cell), "name", cell) if kind is None else kind
        raise ValueError(
            f"backend={backend!r} runs only the built-in cells {FUSED_CELLS[backend]}, "
            f"got {name!r}; use backend='scan' for it"
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
    it, batch- or time-major.
    """
    chosen, kind = resolve(backend, cell, params, options)
    if chosen == "scan":
        return None
    if min(xs.shape[:2]) == 0:
        if backend == "auto":
            return None
        raise ValueError(f"backend={chosen!r} needs at least one step and one row, got {xs.shape}")
    if chosen == "onednn":
        from rnn_jax.backends import onednn

        return onednn.unroll(kind, params, xs, carry, reverse=reverse, time_major=time_major)
    from rnn_jax.backends import cudnn

    return cudnn.unroll(params, xs, carry, reverse=reverse, time_major=time_major)
