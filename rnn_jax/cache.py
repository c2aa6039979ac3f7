"""The one folder rnn_jax caches in: parsed datasets (``rnn_jax.data``) and compiled fused
kernels (``rnn_jax.backends``).

``$RNN_JAX_CACHE``, else ``$XDG_CACHE_HOME/rnn_jax``, else ``~/.cache/rnn_jax``. The older
name ``$RNN_JAX_CACHE_DIR`` (once read by the kernel build alone) still works, with a
``DeprecationWarning``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

ENV = "RNN_JAX_CACHE"
DEPRECATED_ENV = "RNN_JAX_CACHE_DIR"


def cache_dir() -> Path:
    """The cache folder (module docstring); not created here.

    Examples:
      >>> import os
      >>> from rnn_jax.cache import cache_dir
      >>> os.environ["RNN_JAX_CACHE"] = "/tmp/my-cache"
      >>> cache_dir().as_posix()
      '/tmp/my-cache'
      >>> del os.environ["RNN_JAX_CACHE"]
    """
    if env := os.environ.get(ENV):
        return Path(env).expanduser()
    if env := os.environ.get(DEPRECATED_ENV):
        message = (f"${DEPRECATED_ENV} is deprecated: set ${ENV} instead (one folder for "
                   "datasets and compiled kernels)")  # fmt: skip
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "rnn_jax"
