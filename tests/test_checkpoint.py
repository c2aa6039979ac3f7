"""Tests for rnn_jax.checkpoint: exact round trips, atomic writes, pruning, clear errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import checkpoint as ckpt
from rnn_jax import train as tr


def toy_params(key, hidden=4):
    k1, k2 = jax.random.split(key)
    return {
        "dense": {"w": jax.random.normal(k1, (3, hidden)), "b": jnp.zeros((hidden,))},
        "out": jax.random.normal(k2, (hidden, 2), jnp.float32).astype(jnp.bfloat16),
    }


def toy_loss(params, batch, rng):
    h = jnp.tanh(batch["x"] @ params["dense"]["w"] + params["dense"]["b"])
    h = h + 0.01 * jax.random.normal(rng, h.shape)  # uses the rng
    logits = h @ params["out"].astype(jnp.float32)
    return tr.softmax_cross_entropy(logits, batch["y"]), {}


def trained_state(key_fn=jax.random.key, steps=3, hidden=4):
    """A TrainState with non-trivial rmsprop state, step and rng."""
    opt = tr.default_optimizer(1e-2, clip_norm=1.0)
    state = tr.TrainState.create(toy_params(jax.random.key(0), hidden), opt, key_fn(1))
    step = tr.make_train_step(toy_loss, opt)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = {
            "x": rng.normal(size=(8, 3)).astype(np.float32),
            "y": rng.integers(0, 2, 8).astype(np.int32),
        }
        state, _ = step(state, batch)
    return state, opt


def fresh_target(opt, key_fn=jax.random.key, hidden=4):
    return tr.TrainState.create(toy_params(jax.random.key(9), hidden), opt, key_fn(9))


def leaves_bitwise_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        # compare raw bytes, so even NaN payloads / -0.0 must survive
        assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("key_fn", [jax.random.key, jax.random.PRNGKey], ids=["typed", "raw"])
def test_round_trip_is_bitwise_exact(tmp_path, key_fn):
    state, opt = trained_state(key_fn)
    nu = state.opt_state[1][0].nu  # chain(clip_by_global_norm, rmsprop) -> rmsprop's nu
    assert float(jnp.abs(nu["dense"]["w"]).sum()) > 0, "opt state should be non-trivial"
    meta = {"config": {"hidden": 4, "lr": 0.01}, "vocab": ["a", "ß", "\n", "日"]}
    path = ckpt.save_checkpoint(tmp_path, state, step=3, metadata=meta)
    assert os.path.basename(path) == "checkpoint_00000003.msgpack"

    target = fresh_target(opt, key_fn)
    restored, got_meta = ckpt.restore_checkpoint(path, target)
    leaves_bitwise_equal(restored, state)
    assert got_meta == {**meta, "step": 3}
    assert isinstance(restored, tr.TrainState)
    assert restored.params["out"].dtype == jnp.bfloat16


def test_restored_state_trains_like_the_original(tmp_path):
    state, opt = trained_state()
    path = ckpt.save_checkpoint(tmp_path, state, step=3)
    restored, _ = ckpt.restore_checkpoint(path, fresh_target(opt))
    step = tr.make_train_step(toy_loss, opt, donate=False)
    batch = {"x": np.ones((8, 3), np.float32), "y": np.zeros(8, np.int32)}
    leaves_bitwise_equal(step(restored, batch)[0], step(state, batch)[0])


def test_save_is_atomic_when_the_rename_fails(tmp_path, monkeypatch):
    state, _ = trained_state()
    first = ckpt.save_checkpoint(tmp_path, state, step=1)
    before = open(first, "rb").read()

    def broken_replace(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(ckpt.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated crash"):
        ckpt.save_checkpoint(tmp_path, state, step=2)
    monkeypatch.undo()

    assert not os.path.exists(tmp_path / "checkpoint_00000002.msgpack")
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert open(first, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_00000001.msgpack"], "temp file cleaned"


def test_save_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    state, _ = trained_state()
    first = ckpt.save_checkpoint(tmp_path, state, step=1)

    def broken_fsync(fd):
        raise OSError("simulated disk full")

    # Overwriting the same step must not clobber the good file either.
    monkeypatch.setattr(ckpt.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, state, step=1)
    monkeypatch.undo()
    restored, meta = ckpt.restore_checkpoint(first, fresh_target(trained_state()[1]))
    leaves_bitwise_equal(restored, state)
    assert meta["step"] == 1


def test_leftover_temp_files_are_ignored(tmp_path):
    state, opt = trained_state()
    good = ckpt.save_checkpoint(tmp_path, state, step=5)
    # What a process killed mid-write leaves behind: a partial temp file for a
    # newer step (and a stray unrelated file).
    payload = open(good, "rb").read()
    (tmp_path / ".checkpoint_00000009.msgpack.abc123.tmp").write_bytes(payload[: len(payload) // 2])
    (tmp_path / "notes.txt").write_text("hello")
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [5]
    restored, _ = ckpt.restore_checkpoint(ckpt.latest_checkpoint(tmp_path), fresh_target(opt))
    leaves_bitwise_equal(restored, state)


@pytest.mark.parametrize("keep", [1, 3])
def test_keep_prunes_oldest(tmp_path, keep):
    state, _ = trained_state(steps=0)
    for step in [1, 2, 3, 4, 5, 10]:
        path = ckpt.save_checkpoint(tmp_path, state, step=step, keep=keep)
        assert os.path.isfile(path) and ckpt.latest_checkpoint(tmp_path) == path
    steps = [s for s, _ in ckpt.list_checkpoints(tmp_path)]
    assert steps == [1, 2, 3, 4, 5, 10][-keep:]
    assert ckpt.latest_checkpoint(tmp_path).endswith("checkpoint_00000010.msgpack")


@pytest.mark.parametrize("keep", [3, None])
def test_save_below_a_newer_checkpoint_is_refused_before_writing(tmp_path, keep):
    """Pruning by step used to delete the file just written (and return its path); kept, it
    would still not be the latest_checkpoint a resume reads. Refused, nothing changes."""
    state, _ = trained_state(steps=0)
    for step in (2, 10):
        ckpt.save_checkpoint(tmp_path, state, step=step, keep=keep)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(
        ValueError, match=r"step 5 is below the newest checkpoint in .* \(step 10, "
    ):
        ckpt.save_checkpoint(tmp_path, state, step=5, keep=keep)
    assert sorted(os.listdir(tmp_path)) == before
    # The newest step itself may be saved again (replaced atomically).
    path = ckpt.save_checkpoint(tmp_path, state, step=10, keep=keep)
    assert ckpt.latest_checkpoint(tmp_path) == path and sorted(os.listdir(tmp_path)) == before


def test_keep_none_keeps_all(tmp_path):
    state, _ = trained_state(steps=0)
    for step in range(5):
        ckpt.save_checkpoint(tmp_path, state, step=step, keep=None)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="keep"):
        ckpt.save_checkpoint(tmp_path, state, step=5, keep=0)


def test_latest_checkpoint_empty_or_missing(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert ckpt.latest_checkpoint(tmp_path / "does-not-exist") is None


def test_shape_and_structure_mismatch_is_named(tmp_path):
    state, opt = trained_state(hidden=4)
    path = ckpt.save_checkpoint(tmp_path, state, step=3)

    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.restore_checkpoint(path, fresh_target(opt, hidden=5))
    msg = str(err.value)
    assert "/params/dense/w: shape (3, 4) in checkpoint, (3, 5) in target" in msg
    assert "/opt_state" in msg  # the optimizer moments are named too

    other = fresh_target(opt).replace(params={"dense": {"w": jnp.zeros((3, 4))}})
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.restore_checkpoint(path, other)
    assert "/params/out: in checkpoint, not in target" in str(err.value)
    assert "/params/dense/b: in checkpoint, not in target" in str(err.value)

    as_f32 = fresh_target(opt)
    as_f32 = as_f32.replace(params={**as_f32.params, "out": as_f32.params["out"].astype("float32")})
    with pytest.raises(ckpt.CheckpointError, match="/params/out: dtype bfloat16 in checkpoint"):
        ckpt.restore_checkpoint(path, as_f32)


def test_corrupt_and_missing_files(tmp_path):
    state, opt = trained_state()
    path = ckpt.save_checkpoint(tmp_path, state, step=3)
    raw = open(path, "rb").read()
    target = fresh_target(opt)

    with pytest.raises(FileNotFoundError):
        ckpt.restore_checkpoint(tmp_path / "checkpoint_00000099.msgpack", target)

    truncated = tmp_path / "truncated.msgpack"
    truncated.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.restore_checkpoint(truncated, target)

    flipped = bytearray(raw)
    flipped[-20] ^= 0xFF  # inside the state bytes (the last field)
    bad = tmp_path / "flipped.msgpack"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.restore_checkpoint(bad, target)

    other = tmp_path / "other.msgpack"
    other.write_text(json.dumps({"not": "a checkpoint"}))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.restore_checkpoint(other, target)


def test_metadata_validation(tmp_path):
    state, _ = trained_state(steps=0)
    with pytest.raises(ValueError, match="step"):
        ckpt.save_checkpoint(tmp_path, state, step=1, metadata={"step": 1})
    with pytest.raises(TypeError):
        ckpt.save_checkpoint(tmp_path, state, step=1, metadata={"f": object()})
    assert os.listdir(tmp_path) == [], "nothing written for invalid metadata"


def test_restore_places_leaves_like_the_target(tmp_path):
    state, opt = trained_state()
    mesh = tr.make_mesh(1)
    target = tr.replicate(fresh_target(opt), mesh)
    path = ckpt.save_checkpoint(tmp_path, state, step=3)
    restored, _ = ckpt.restore_checkpoint(path, target)
    for r, t in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
        assert isinstance(r, jax.Array) and r.sharding == t.sharding
