"""Minibatches as a pure function of (seed, step), so a resumed run sees bit-identical batches.

Training batches: each epoch is a fresh permutation drawn from ``np.random.default_rng([seed,
epoch])``; step ``s`` takes slice ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``'s
permutation. The last ``num_examples % batch_size`` examples of each permutation are dropped
(different ones every epoch), so every training batch has the same shape and jit compiles once.

Evaluation batches: the whole split in order, the last batch padded to ``batch_size``, so eval
also runs one compiled shape and nothing is dropped. A batch is a dict of arrays plus
``"mask"`` ``(batch_size,)`` (1.0 a real example, 0.0 padding): the one batch convention of
``rnn_jax.train`` (``evaluate``, ``example_mask``, ``pad_batch``) and ``rnn_jax.distributed``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "steps_per_epoch",
    "batch_permutation",
    "batch_indices",
    "iterate_batches",
    "eval_batches",
    "rows_with_mask",
]


def count_examples(arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> int:
    """Common leading dimension of ``arrays``; ValueError when they disagree or none given."""
    if isinstance(arrays, np.ndarray) or len(arrays) == 0:
        raise ValueError(
            "arrays must be a non-empty tuple or dict of arrays, e.g. (images, labels)"
        )
    shapes = [np.shape(a) for a in (arrays.values() if isinstance(arrays, Mapping) else arrays)]
    if any(len(s) == 0 for s in shapes):
        raise ValueError(f"arrays must have a leading example dimension, got shapes {shapes}")
    sizes = [s[0] for s in shapes]
    if len(set(sizes)) != 1:
        raise ValueError(f"arrays must share their leading (example) dimension, got {sizes}")
    if sizes[0] == 0:
        raise ValueError(f"arrays have no examples: shapes {shapes}")
    return sizes[0]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch (the remainder is dropped).

    Examples:
      >>> from rnn_jax.data import steps_per_epoch
      >>> steps_per_epoch(60_000, 128)  # 60000 = 468 * 128 + 96: the 96 left over are dropped
      468
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size ({batch_size}) is larger than num_examples ({num_examples}): "
            f"not even one full batch per epoch"
        )
    return num_examples // batch_size


def batch_indices(seed: int, num_examples: int, batch_size: int, step: int) -> np.ndarray:
    """Example indices of training batch ``step``: int64 array of shape (batch_size,).

    Pure: the same (seed, num_examples, batch_size, step) always gives the same indices, with no
    state to save in a checkpoint beyond ``step``. Within an epoch no index repeats.

    Examples:
      >>> from rnn_jax.data import batch_indices
      >>> first = batch_indices(seed=0, num_examples=10, batch_size=4, step=0)
      >>> second = batch_indices(seed=0, num_examples=10, batch_size=4, step=1)
      >>> len(set(first.tolist()) | set(second.tolist()))  # no index repeats within an epoch
      8
      >>> batch_indices(0, 10, 4, step=1).tolist() == second.tolist()  # pure in (seed, step)
      True
    """
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    epoch, within = divmod(step, steps_per_epoch(num_examples, batch_size))
    perm = batch_permutation(seed, num_examples, epoch)
    return perm[within * batch_size : (within + 1) * batch_size]


def iterate_batches(
    arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    batch_size: int,
    seed: int,
    start_step: int = 0,
    num_steps: int | None = None,
) -> Iterator[tuple[np.ndarray, ...] | dict[str, np.ndarray]]:
    """Yield shuffled training batches ``(a[idx] for a in arrays)``, each (batch_size, ...);
    a dict of arrays gives dict batches (what ``rnn_jax.train``'s loss functions read).

    Steps ``start_step, start_step + 1, ...``; ``num_steps=None`` runs forever. Batch ``k``
    equals what ``batch_indices(seed, N, batch_size, start_step + k)`` selects, so resuming from
    a checkpointed step continues the exact sequence. Each yielded array is a fresh copy (fancy
    indexing), never a view of the inputs.

    Examples:
      >>> import numpy as np
      >>> from rnn_jax.data import batch_indices, iterate_batches
      >>> x, y = np.arange(10) * 10, np.arange(10)
      >>> batches = list(iterate_batches((x, y), batch_size=4, seed=0, start_step=3, num_steps=2))
      >>> xb, yb = batches[0]  # step 3, as a resumed run sees it
      >>> bool((xb == 10 * yb).all()), bool((yb == batch_indices(0, 10, 4, 3)).all())
      (True, True)
    """
    n = count_examples(arrays)
    per_epoch = steps_per_epoch(n, batch_size)
    if start_step < 0:
        raise ValueError(f"start_step must be non-negative, got {start_step}")
    if num_steps is not None and num_steps < 0:
        raise ValueError(f"num_steps must be non-negative or None, got {num_steps}")
    # One permutation per epoch, not per step (the batches of an epoch are consecutive).
    permutation = functools.lru_cache(maxsize=1)(functools.partial(batch_permutation, seed, n))
    for step in itertools.islice(itertools.count(start_step), num_steps):
        epoch, within = divmod(step, per_epoch)
        idx = permutation(epoch)[within * batch_size : (within + 1) * batch_size]
        if isinstance(arrays, Mapping):
            yield {name: np.asarray(a)[idx] for name, a in arrays.items()}
        else:
            yield tuple(np.asarray(a)[idx] for a in arrays)


def batch_permutation(seed: int, num_examples: int, epoch: int) -> np.ndarray:
    """Epoch ``epoch``'s permutation of ``range(num_examples)``: int64 (num_examples,).

    Examples:
      >>> from rnn_jax.data import batch_permutation
      >>> sorted(batch_permutation(seed=0, num_examples=5, epoch=2).tolist())
      [0, 1, 2, 3, 4]
    """
    if seed < 0 or epoch < 0:  # default_rng rejects negative entropy anyway; say which
        raise ValueError(f"seed and epoch must be non-negative, got {seed}, {epoch}")
    # Seeding with [seed, epoch] gives independent, reproducible streams per epoch without
    # replaying earlier epochs' draws, so resuming at any step costs one permutation.
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def eval_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict]:
    """Yield batches covering the whole split in order, each ``rows_with_mask`` of
    ``batch_size`` rows: ``{name: (batch_size, ...), "mask": (batch_size,)}``.

    Only the last batch has padding (mask 0). Feed them to ``rnn_jax.train.evaluate``, or
    weight per-example results by ``batch["mask"]``. Unlike training, ``batch_size`` may
    exceed the split size (one padded batch).

    Examples:
      >>> import numpy as np
      >>> from rnn_jax.data import eval_batches
      >>> [(b["x"].tolist(), b["mask"].tolist()) for b in eval_batches({"x": np.arange(5)}, 3)]
      [([0, 1, 2], [1.0, 1.0, 1.0]), ([3, 4, 4], [1.0, 1.0, 0.0])]
    """
    if not isinstance(arrays, Mapping):
        raise TypeError(
            "eval_batches takes a dict of arrays, e.g. {'x': images, 'y': labels}, got "
            f"{type(arrays).__name__}"
        )
    num_examples = count_examples(arrays)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, num_examples, batch_size):
        yield rows_with_mask(arrays, start + np.arange(batch_size))


def rows_with_mask(arrays: Mapping[str, np.ndarray], rows: np.ndarray) -> dict:
    """Rows ``rows`` of every array plus ``"mask"``: rows past the end read the last example
    (a valid input for any model, so padding cannot make NaNs) with mask 0.0; fresh copies.

    Examples:
      >>> import numpy as np
      >>> from rnn_jax.data.batches import rows_with_mask
      >>> batch = rows_with_mask({"y": np.array([7, 8])}, np.arange(1, 4))
      >>> batch["y"].tolist(), batch["mask"].tolist()
      ([8, 8, 8], [1.0, 0.0, 0.0])
    """
    num_examples = count_examples(arrays)
    rows = np.asarray(rows)
    batch = {name: np.asarray(a)[np.minimum(rows, num_examples - 1)] for name, a in arrays.items()}
    return {**batch, "mask": (rows < num_examples).astype(np.float32)}
