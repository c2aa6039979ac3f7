"""Batches as a pure function of (seed, step): shuffled, aligned, reproducible, complete."""

import itertools

import numpy as np
import pytest

from rnn_jax.data.batches import (
    batch_indices,
    batch_permutation,
    eval_batches,
    iterate_batches,
    steps_per_epoch,
)

N, B = 103, 10  # 10 steps per epoch, 3 examples dropped per epoch


def _aligned_arrays(n=N):
    """Images whose content determines the label, so misalignment is detectable."""
    images = np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)
    labels = (images[:, 0, 0].astype(np.int64) // 6) * 7 % 1000  # label == f(image)
    return images, labels


def test_batch_indices_shape_and_shuffled():
    idx = np.concatenate([batch_indices(0, N, B, s) for s in range(steps_per_epoch(N, B))])
    assert idx.shape == (100,) and np.issubdtype(idx.dtype, np.integer)
    assert not np.array_equal(idx, np.arange(100))  # really shuffled
    assert len(set(idx.tolist())) == 100  # no repeats within an epoch
    assert idx.min() >= 0 and idx.max() < N


def test_batch_indices_pure_and_seed_dependent():
    for step in (0, 5, 10, 37):
        np.testing.assert_array_equal(batch_indices(3, N, B, step), batch_indices(3, N, B, step))
    assert not np.array_equal(batch_indices(3, N, B, 0), batch_indices(4, N, B, 0))


def test_epochs_use_different_permutations():
    per = steps_per_epoch(N, B)
    epoch0 = np.concatenate([batch_indices(0, N, B, s) for s in range(per)])
    epoch1 = np.concatenate([batch_indices(0, N, B, s) for s in range(per, 2 * per)])
    assert not np.array_equal(epoch0, epoch1)
    np.testing.assert_array_equal(batch_permutation(0, N, 1)[:100], epoch1)
    # Dropped examples differ between epochs, so nothing is left out forever.
    dropped = [set(range(N)) - set(batch_permutation(0, N, e)[:100].tolist()) for e in range(4)]
    assert len(set(map(frozenset, dropped))) > 1


def test_iterate_batches_aligned_and_shuffled():
    images, labels = _aligned_arrays()
    batches = list(iterate_batches((images, labels), B, seed=1, num_steps=25))
    assert len(batches) == 25
    for x, y in batches:
        assert x.shape == (B, 2, 3) and y.shape == (B,)
        np.testing.assert_array_equal(y, (x[:, 0, 0].astype(np.int64) // 6) * 7 % 1000)
    first_epoch = np.concatenate([x[:, 0, 0] for x, _ in batches[:10]]) // 6
    assert not np.array_equal(first_epoch, np.arange(100))  # the shuffle is applied
    assert len(set(first_epoch.tolist())) == 100  # each example at most once per epoch


def test_iterate_batches_matches_batch_indices_and_resumes():
    images, labels = _aligned_arrays()
    full = list(iterate_batches((images, labels), B, seed=7, num_steps=30))
    for step, (x, _) in enumerate(full):
        np.testing.assert_array_equal(x, images[batch_indices(7, N, B, step)])
    resumed = list(iterate_batches((images, labels), B, seed=7, start_step=17, num_steps=13))
    for (xa, ya), (xb, yb) in zip(full[17:], resumed, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_iterate_batches_copies_and_is_infinite_by_default():
    images, labels = _aligned_arrays()
    gen = iterate_batches((images, labels), B, seed=0)
    batches = list(itertools.islice(gen, 35))  # runs past several epochs
    assert len(batches) == 35
    x, _ = batches[0]
    x[...] = -1
    assert images.min() >= 0  # yielded arrays are copies, not views


def test_argument_validation():
    images, labels = _aligned_arrays()
    with pytest.raises(ValueError, match=r"batch_size \(200\).*num_examples \(103\)"):
        batch_indices(0, N, 200, 0)
    with pytest.raises(ValueError, match=r"batch_size \(200\).*num_examples \(103\)"):
        next(iterate_batches((images, labels), 200, seed=0))
    with pytest.raises(ValueError, match="batch_size must be positive"):
        batch_indices(0, N, 0, 0)
    with pytest.raises(ValueError, match="step"):
        batch_indices(0, N, B, -1)
    with pytest.raises(ValueError, match="leading"):
        next(iterate_batches((images, labels[:-1]), B, seed=0))
    with pytest.raises(ValueError, match="tuple or dict"):
        next(iterate_batches(images, B, seed=0))


@pytest.mark.parametrize("batch_size", [1, 10, 103, 250])
def test_eval_batches_cover_split_once_in_order(batch_size):
    images, labels = _aligned_arrays()
    seen_x, seen_y = [], []
    for batch in eval_batches({"x": images, "y": labels}, batch_size):
        x, y, mask = batch["x"], batch["y"], batch["mask"]
        assert x.shape == (batch_size, 2, 3) and y.shape == (batch_size,)
        assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
        num_valid = int(mask.sum())
        assert 1 <= num_valid <= batch_size and np.all(mask[:num_valid] == 1)
        assert np.all(x[num_valid:] == images[-1]) and np.all(y[num_valid:] == labels[-1])
        seen_x.append(x[:num_valid])
        seen_y.append(y[:num_valid])
    np.testing.assert_array_equal(np.concatenate(seen_x), images)
    np.testing.assert_array_equal(np.concatenate(seen_y), labels)
    assert len(seen_x) == -(-N // batch_size)


def test_eval_batches_mask_weights_mean_correctly():
    """The mask gives the exact split mean even with a padded last batch."""
    values = np.arange(1, 24, dtype=np.float64)
    total, count = 0.0, 0
    for batch in eval_batches({"v": values}, 5):
        total += float((batch["v"] * batch["mask"]).sum())
        count += int(batch["mask"].sum())
    assert count == 23 and total / count == values.mean()


def test_eval_batches_refuse_a_tuple_and_an_empty_split():
    with pytest.raises(TypeError, match=r"dict of arrays.*got tuple"):
        next(eval_batches((np.arange(3),), 2))
    with pytest.raises(ValueError, match="no examples"):
        next(eval_batches({"x": np.zeros((0, 3))}, 2))


def test_dict_training_batches_match_the_tuple_ones():
    images, labels = _aligned_arrays()
    as_dicts = iterate_batches({"x": images, "y": labels}, 8, seed=3, num_steps=4)
    as_tuples = iterate_batches((images, labels), 8, seed=3, num_steps=4)
    for batch, (x, y) in zip(as_dicts, as_tuples, strict=True):
        np.testing.assert_array_equal(batch["x"], x)
        np.testing.assert_array_equal(batch["y"], y)
