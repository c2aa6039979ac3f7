"""Tests for rnn_jax.train on a toy MLP softmax classifier (no recurrent cells)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnn_jax import checkpoint as ckpt
from rnn_jax import train as tr

IN, HIDDEN, CLASSES = 8, 16, 3
TEACHER = np.random.default_rng(1234).normal(size=(IN, CLASSES))


def init_mlp(key, dtype=jnp.float32):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (IN, HIDDEN), dtype) / math.sqrt(IN),
        "b1": jnp.zeros((HIDDEN,), dtype),
        "w2": jax.random.normal(k2, (HIDDEN, CLASSES), dtype) / math.sqrt(HIDDEN),
        "b2": jnp.zeros((CLASSES,), dtype),
    }


def apply_mlp(params, x, rng=None, dropout=0.0):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    if rng is not None and dropout > 0:
        keep = jax.random.bernoulli(rng, 1.0 - dropout, h.shape)
        h = jnp.where(keep, h / (1.0 - dropout), 0.0)
    return h @ params["w2"] + params["b2"]


def loss_fn(params, batch, rng):
    # Dropout makes the loss depend on the rng, so rng handling is tested too.
    logits = apply_mlp(params, batch["x"], rng, dropout=0.1)
    loss = tr.softmax_cross_entropy(logits, batch["y"])
    return loss, {"accuracy": tr.accuracy(logits, batch["y"])}


def make_data(rng, n):
    x = rng.normal(size=(n, IN)).astype(np.float32)
    y = np.argmax(x @ TEACHER, axis=-1).astype(np.int32)
    return {"x": x, "y": y}


def batch_fn(step, seed=0, batch_size=32):
    """The batch of a step: a pure function of (seed, step), so resuming is exact."""
    return make_data(np.random.default_rng([seed, step]), batch_size)


def fresh_state(seed=0, optimizer=None):
    optimizer = optimizer or tr.default_optimizer(1e-2)
    key = jax.random.key(seed)
    return tr.TrainState.create(init_mlp(key), optimizer, jax.random.fold_in(key, 1)), optimizer


def assert_trees_equal(a, b):
    """Bitwise equality of two pytrees (typed PRNG keys compared by their data)."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------- step


def test_train_step_reduces_loss():
    state, opt = fresh_state()
    step = tr.make_train_step(loss_fn, opt)
    held_out = make_data(np.random.default_rng(99), 512)

    def eval_loss(params):
        return float(tr.softmax_cross_entropy(apply_mlp(params, held_out["x"]), held_out["y"]))

    before = eval_loss(state.params)
    for s in range(150):
        state, _ = step(state, batch_fn(s))
    after = eval_loss(state.params)
    assert after < 0.5 * before, (before, after)
    assert int(state.step) == 150


def test_metrics_keys_and_values():
    state, opt = fresh_state()
    # Reference computed from the same state before the (donating) step.
    _, step_rng = jax.random.split(state.rng)
    batch = batch_fn(0)
    (ref_loss, ref_aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, step_rng
    )
    ref_norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in jax.tree.leaves(grads)))

    _, metrics = tr.make_train_step(loss_fn, opt)(state, batch)
    assert set(metrics) == {"loss", "accuracy", "grad_norm"}
    assert all(jnp.shape(v) == () for v in metrics.values())
    np.testing.assert_allclose(metrics["loss"], ref_loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], ref_aux["accuracy"], rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], ref_norm, rtol=1e-5)


def test_reserved_aux_key_rejected():
    state, opt = fresh_state()

    def bad_loss(params, batch, rng):
        loss, _ = loss_fn(params, batch, rng)
        return loss, {"loss": loss}

    with pytest.raises(ValueError, match="reserved"):
        tr.make_train_step(bad_loss, opt)(state, batch_fn(0))


def test_donation_and_reuse_of_returned_state():
    params = init_mlp(jax.random.key(0))
    opt = tr.default_optimizer(1e-2)
    state = tr.TrainState.create(params, opt, jax.random.key(1))
    step = tr.make_train_step(loss_fn, opt)
    new_state, _ = step(state, batch_fn(0))
    # The input state's buffers were donated (updated in place) ...
    assert state.params["w1"].is_deleted()
    # ... but the caller's own params array is untouched (create copies it) ...
    assert not params["w1"].is_deleted()
    np.testing.assert_array_equal(params["w1"], init_mlp(jax.random.key(0))["w1"])
    # ... and the returned state can be stepped again and again.
    for s in range(1, 4):
        new_state, metrics = step(new_state, batch_fn(s))
    assert int(new_state.step) == 4
    assert np.isfinite(float(metrics["loss"]))


def test_no_donation_keeps_input_state():
    state, opt = fresh_state()
    step = tr.make_train_step(loss_fn, opt, donate=False)
    step(state, batch_fn(0))
    assert not state.params["w1"].is_deleted()


def test_rng_advances_and_step_is_reproducible_from_state():
    state, opt = fresh_state()
    step = tr.make_train_step(loss_fn, opt, donate=False)
    batch = batch_fn(0)
    keys = [jax.random.key_data(state.rng)]
    s = state
    for _ in range(3):
        s, _ = step(s, batch)
        keys.append(jax.random.key_data(s.rng))
    assert len({tuple(np.asarray(k).ravel()) for k in keys}) == 4, "rng must change every step"

    # Same state, same batch -> same result; the rng lives in the state.
    a, ma = step(state, batch)
    b, mb = step(state, batch)
    assert_trees_equal(a, b)
    assert float(ma["loss"]) == float(mb["loss"])

    # Same params, different rng -> different dropout -> different loss.
    other = state.replace(rng=jax.random.key(12345))
    _, mo = step(other, batch)
    assert float(mo["loss"]) != float(ma["loss"])


def test_raw_uint32_key_also_works():
    opt = tr.default_optimizer(1e-2)
    state = tr.TrainState.create(init_mlp(jax.random.key(0)), opt, jax.random.PRNGKey(3))
    new, _ = tr.make_train_step(loss_fn, opt)(state, batch_fn(0))
    assert new.rng.dtype == jnp.uint32 and new.rng.shape == (2,)


# ------------------------------------------------------------------------- clipping


def _updates(opt, grads_seq):
    params = {"w": jnp.zeros(2)}
    opt_state = opt.init(params)
    out = []
    for g in grads_seq:
        u, opt_state = opt.update({"w": jnp.asarray(g, jnp.float32)}, opt_state, params)
        out.append(np.asarray(u["w"]))
    return out


def test_clip_value_clips_elementwise():
    # RMSProp normalises each update, so a clipped spike shows in the *next*
    # update: unclipped, the 1e6 spike inflates the running RMS and the
    # following unit gradient barely moves the weight.
    grads = [[1e6, 1.0], [1.0, 1.0]]
    plain = _updates(tr.default_optimizer(1.0), grads)
    clipped = _updates(tr.default_optimizer(1.0, clip_value=1.0), grads)
    assert abs(plain[1][0]) < 1e-4
    # clipped to [1, 1] both steps: second update is -1/sqrt(0.19) on both entries
    np.testing.assert_allclose(clipped[1], [-1 / math.sqrt(0.19)] * 2, rtol=1e-5)
    # a threshold that is never reached changes nothing
    loose = _updates(tr.default_optimizer(1.0, clip_value=1e9), grads)
    np.testing.assert_array_equal(loose[1], plain[1])


def test_clip_norm_clips_globally():
    grads = [[3e6, 4e6], [1.0, 1.0]]
    plain = _updates(tr.default_optimizer(1.0), grads)
    clipped = _updates(tr.default_optimizer(1.0, clip_norm=5.0), grads)
    assert np.all(np.abs(plain[1]) < 1e-4)
    # first gradient rescaled to norm 5: [3, 4]; nu = 0.1*[9, 16] -> 0.09*[9,16] + 0.1
    nu = 0.9 * 0.1 * np.array([9.0, 16.0]) + 0.1
    np.testing.assert_allclose(clipped[1], -1 / np.sqrt(nu), rtol=1e-5)
    loose = _updates(tr.default_optimizer(1.0, clip_norm=1e9), grads)
    np.testing.assert_array_equal(loose[1], plain[1])


def test_clip_arguments_validated():
    with pytest.raises(ValueError):
        tr.default_optimizer(clip_norm=0.0)
    with pytest.raises(ValueError):
        tr.default_optimizer(clip_value=-1.0)


# ----------------------------------------------------------------------------- losses


def test_softmax_cross_entropy_is_a_masked_mean():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(5, 4))
    mask = (rng.random((5, 4)) > 0.3).astype(np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(tr.softmax_cross_entropy(logits, labels), ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        tr.softmax_cross_entropy(logits, labels, mask), (ce * mask).sum() / mask.sum(), rtol=1e-5
    )
    correct = logits.argmax(-1) == labels
    np.testing.assert_allclose(tr.accuracy(logits, labels), correct.mean(), rtol=1e-6)
    np.testing.assert_allclose(
        tr.accuracy(logits, labels, mask), (correct * mask).sum() / mask.sum(), rtol=1e-6
    )


# ------------------------------------------------------------------------- evaluate


def metric_fn(params, batch):
    """Per-batch sums over valid examples plus the count (the evaluate contract)."""
    logits = apply_mlp(params, batch["x"])
    mask = tr.example_mask(batch)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
    correct = (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32)
    return {"loss": jnp.sum(ce * mask), "accuracy": jnp.sum(correct * mask), "count": mask.sum()}


def numpy_metrics(params, data):
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    logits = np.tanh(data["x"] @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -logp[np.arange(len(data["y"])), data["y"]]
    return {"loss": ce.mean(), "accuracy": (logits.argmax(-1) == data["y"]).mean()}


@pytest.mark.parametrize("padded", [False, True])
def test_evaluate_whole_split_with_partial_last_batch(padded):
    params = init_mlp(jax.random.key(3))
    data = make_data(np.random.default_rng(5), 103)  # 6 batches of 16 + 7
    bs = 16

    def batches():
        for i in range(0, 103, bs):
            b = {k: v[i : i + bs] for k, v in data.items()}
            yield tr.pad_batch(b, bs) if padded else b

    got = tr.evaluate(metric_fn, params, batches())
    want = numpy_metrics(params, data)
    assert got["count"] == 103
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["accuracy"], want["accuracy"], rtol=1e-6)


def test_evaluate_requires_count_and_batches():
    params = init_mlp(jax.random.key(3))
    with pytest.raises(KeyError, match="count"):
        tr.evaluate(lambda p, b: {"loss": jnp.sum(b["x"])}, params, [batch_fn(0)])
    with pytest.raises(ValueError, match="no batches"):
        tr.evaluate(metric_fn, params, [])


def test_pad_batch_and_example_mask():
    b = {"x": np.arange(6, dtype=np.float32).reshape(3, 2), "y": np.array([2, 0, 1])}
    p = tr.pad_batch(b, 5)
    np.testing.assert_array_equal(p["mask"], [1, 1, 1, 0, 0])
    assert p["x"].shape == (5, 2) and p["y"].shape == (5,)
    np.testing.assert_array_equal(p["x"][:3], b["x"])
    np.testing.assert_array_equal(p["y"][3:], [1, 1])  # padding repeats a real (valid) row
    np.testing.assert_array_equal(tr.example_mask(p), p["mask"])
    np.testing.assert_array_equal(tr.example_mask(b), np.ones(3))
    # re-padding keeps the old padding masked
    np.testing.assert_array_equal(tr.pad_batch(p, 6)["mask"], [1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="more than"):
        tr.pad_batch(b, 2)
    with pytest.raises(ValueError, match="leading .* dimension"):
        tr.pad_batch({"x": np.zeros((3, 2)), "y": np.zeros(2)}, 4)
    with pytest.raises(ValueError, match="no examples"):
        tr.pad_batch({"x": np.zeros((0, 2))}, 4)


# ----------------------------------------------------------------- NaN and resuming


def test_check_finite():
    tr.check_finite({"loss": jnp.float32(1.0), "grad_norm": jnp.float32(2.0)}, 3)
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 7"):
        tr.check_finite({"loss": jnp.float32(jnp.nan), "grad_norm": jnp.float32(1.0)}, 7)
    with pytest.raises(FloatingPointError, match=r"non-finite grad_norm inf at step 2"):
        tr.check_finite({"loss": jnp.float32(1.0), "grad_norm": jnp.float32(jnp.inf)}, 2)


def test_train_loop_stops_on_nan_and_keeps_last_good_checkpoint(tmp_path):
    bad_step = 5  # the 6th update sees a NaN input

    def poisoned(step):
        b = batch_fn(step)
        if step == bad_step:
            b["x"][0, 0] = np.nan
        return b

    state, opt = fresh_state()
    step = tr.make_train_step(loss_fn, opt)
    with pytest.raises(FloatingPointError, match=f"at step {bad_step + 1}"):
        tr.train_loop(
            step, state, poisoned, num_steps=10, checkpoint_dir=tmp_path, checkpoint_every=2
        )
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None
    target, _ = fresh_state(seed=7)
    restored, meta = ckpt.restore_checkpoint(latest, target)
    assert meta["step"] == 4 and int(restored.step) == 4

    # It is exactly the state after 4 clean steps.
    clean, _ = fresh_state()
    clean, _ = tr.train_loop(step, clean, batch_fn, num_steps=4)
    assert_trees_equal(restored, clean)


def test_resume_is_bit_exact(tmp_path):
    n, k = 10, 4
    state, opt = fresh_state()
    step = tr.make_train_step(loss_fn, opt)
    full, history = tr.train_loop(step, state, batch_fn, num_steps=n)
    assert len(history) == n

    state, _ = fresh_state()
    tr.train_loop(step, state, batch_fn, num_steps=k, checkpoint_dir=tmp_path)
    # A fresh target with different values, as a new process would build it.
    target, _ = fresh_state(seed=42)
    restored, meta = ckpt.restore_checkpoint(ckpt.latest_checkpoint(tmp_path), target)
    assert meta["step"] == k
    resumed, history2 = tr.train_loop(step, restored, batch_fn, num_steps=n)
    assert len(history2) == n - k
    assert_trees_equal(resumed, full)


def test_train_loop_with_iterator_and_checkpoint_schedule(tmp_path):
    state, opt = fresh_state()
    step = tr.make_train_step(loss_fn, opt)
    seen = []
    final, history = tr.train_loop(
        step,
        state,
        (batch_fn(s) for s in range(7)),  # runs out before num_steps
        num_steps=100,
        checkpoint_dir=tmp_path,
        checkpoint_every=3,
        keep=None,
        metadata={"lr": 1e-2},
        callback=lambda s, m, st: seen.append((s, int(st.step), m)),
    )
    assert int(final.step) == 7 and len(history) == 7
    # Each step's number, the state after it, and its metrics as in the history.
    assert seen == [(s, s, history[s - 1]) for s in range(1, 8)]
    steps = [s for s, _ in ckpt.list_checkpoints(tmp_path)]
    assert steps == [3, 6, 7]
    assert ckpt.read_metadata(ckpt.latest_checkpoint(tmp_path)) == {"lr": 1e-2, "step": 7}


def inject_inf_at(count, *, into):
    """An optax transformation that, at its ``count``-th update (0-based), puts inf into one
    element of the updates (``into="update"``, so the new params hold inf) or into its own
    state (``into="opt_state"``, params stay finite). The loss of that step is computed
    before the update, so it is finite either way."""

    def init(params):
        return {"count": jnp.zeros((), jnp.int32), "acc": jnp.zeros((), jnp.float32)}

    def update(updates, state, params=None):
        hit = state["count"] == count
        if into == "update":
            updates = {
                **updates,
                "b2": jnp.where(hit, updates["b2"].at[0].set(jnp.inf), updates["b2"]),
            }
        acc = jnp.where(hit & (into == "opt_state"), jnp.inf, state["acc"])
        return updates, {"count": state["count"] + 1, "acc": acc}

    return optax.GradientTransformation(init, update)


@pytest.mark.parametrize("into", ["update", "opt_state"])
@pytest.mark.parametrize("schedule", ["every", "end"])
def test_train_loop_never_saves_non_finite_state(tmp_path, into, schedule):
    """The metrics of step s come from the params *before* its update, so a finite loss says
    nothing about the state that would be saved as checkpoint s: it must be checked itself."""
    bad = 4  # the 4th update (count 3) makes the state non-finite; the state after step 4
    opt = optax.chain(inject_inf_at(bad - 1, into=into), optax.sgd(1e-2))
    state, _ = fresh_state(optimizer=opt)
    step = tr.make_train_step(loss_fn, opt)
    every, num_steps = (2, 10) if schedule == "every" else (0, bad)
    leaf = r"\['params'\]\['b2'\]" if into == "update" else r"\['opt_state'\]\[0\]\['acc'\]"
    with pytest.raises(FloatingPointError, match=rf"non-finite value in {leaf} after step {bad}\b"):
        tr.train_loop(
            step,
            state,
            batch_fn,
            num_steps=num_steps,
            checkpoint_dir=tmp_path,
            checkpoint_every=every,
        )
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == ([2] if schedule == "every" else [])
