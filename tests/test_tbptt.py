"""Chunked truncated BPTT (rnn_jax.tbptt): exact forward across chunks, truncated gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnn_jax as rj
from rnn_jax.models import language_model
from rnn_jax.tbptt import evaluate_stream, make_chunk_step, zero_carry
from rnn_jax.train import TrainState

V, H, E, B, L, CHUNKS = 11, 16, 6, 3, 5, 3


def setup(cell=rj.lstm, gradient="autodiff", seed=0):
    model = language_model(cell, V, H, embed_size=E, gradient=gradient)
    params = model.init(jax.random.key(seed))
    stream = jnp.asarray(np.random.default_rng(seed).integers(0, V, (B, CHUNKS * L + 1)), jnp.int32)
    return model, params, stream


def chunk(stream, k):
    """Chunk k of the stream: (inputs, targets), each (B, L)."""
    return stream[:, k * L : (k + 1) * L], stream[:, k * L + 1 : (k + 1) * L + 1]


def lm_loss(model):
    def loss_fn(params, carry, chunk, rng):
        inputs, targets = chunk
        logits, new_carry = model.apply(params, inputs, carry)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        return loss, (new_carry, {"ppl": jnp.exp(loss)})

    return loss_fn


def start_carry(model, params, stream):
    return zero_carry(lambda p, t: model.apply(p, t)[1], params, stream[:, :L])


def tree_max_diff(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in pairs)


def test_zero_carry_matches_none():
    model, params, stream = setup()
    carry = start_carry(model, params, stream)
    assert jax.tree.structure(carry) == jax.tree.structure(model.apply(params, stream)[1])
    assert all(float(jnp.abs(leaf).max()) == 0 for leaf in jax.tree.leaves(carry))
    logits_none, _ = model.apply(params, stream[:, :L])
    logits_zero, _ = model.apply(params, stream[:, :L], carry)
    np.testing.assert_array_equal(logits_none, logits_zero)


def test_forward_is_exact_across_chunks():
    """With updates switched off, the carry handed on after k chunks is the state of reading the
    whole prefix at once, and the chunk losses average to the whole stream's loss."""
    model, params, stream = setup()
    optimizer = optax.set_to_zero()
    step = make_chunk_step(lm_loss(model), optimizer)
    state = TrainState.create(params, optimizer, jax.random.key(1))
    carry = start_carry(model, params, stream)
    losses = []
    for k in range(CHUNKS):
        state, carry, metrics = step(state, carry, chunk(stream, k))
        losses.append(float(metrics["loss"]))
        assert set(metrics) == {"loss", "ppl", "grad_norm"}
        _, whole = model.apply(params, stream[:, : (k + 1) * L])
        assert tree_max_diff(carry, whole) < 1e-5
    logits, _ = model.apply(params, stream[:, :-1])
    full = optax.softmax_cross_entropy_with_integer_labels(logits, stream[:, 1:]).mean()
    np.testing.assert_allclose(np.mean(losses), float(full), rtol=1e-5)
    assert int(state.step) == CHUNKS


@pytest.mark.parametrize("gradient", ["autodiff", "manual"])
def test_chunk_gradient_holds_incoming_carry_constant(gradient):
    """The update of chunk k is -lr * jax.grad of chunk k's loss with the carry reached after
    chunks 0..k-1 held constant, and differs from the untruncated gradient."""
    model, params, stream = setup(gradient=gradient)
    lr = 1.0
    optimizer = optax.sgd(lr)
    step = make_chunk_step(lm_loss(model), optimizer, donate=False)
    k = 2
    carry_in = model.apply(params, stream[:, : k * L])[1]  # the forward state, exact
    state = TrainState.create(params, optimizer, jax.random.key(1))
    new_state, _, _ = step(state, carry_in, chunk(stream, k))
    step_grad = jax.tree.map(lambda p, q: (p - q) / lr, params, new_state.params)

    def chunk_loss(p, carry):
        return lm_loss(model)(p, carry, chunk(stream, k), None)[0]

    truncated = jax.grad(chunk_loss)(params, jax.lax.stop_gradient(carry_in))
    assert tree_max_diff(step_grad, truncated) < 1e-5

    # Full BPTT into the earlier chunks gives another gradient: the truncation is real.
    full = jax.grad(lambda p: chunk_loss(p, model.apply(p, stream[:, : k * L])[1]))(params)
    assert tree_max_diff(full, truncated) > 1e-4


def test_new_carry_has_no_gradient_path():
    """stop_gradient on the handed-on carry: differentiating through a composed second chunk
    sees no contribution from the first chunk's parameters use."""
    model, params, stream = setup()
    loss_fn = lm_loss(model)
    optimizer = optax.sgd(0.0)

    def two_chunks(p):
        state = TrainState.create(p, optimizer, jax.random.key(0))
        carry = start_carry(model, p, stream)
        # The same wrapper make_chunk_step uses, called outside jit to differentiate it.
        step = make_chunk_step(loss_fn, optimizer, donate=False)
        _, carry, _ = step(state, carry, chunk(stream, 0))
        return loss_fn(p, carry, chunk(stream, 1), None)[0]

    carry1 = model.apply(params, stream[:, :L])[1]
    expected = jax.grad(lambda p: loss_fn(p, carry1, chunk(stream, 1), None)[0])(params)
    assert tree_max_diff(jax.grad(two_chunks)(params), expected) < 1e-5


def test_evaluate_stream_equals_whole_stream():
    model, params, stream = setup(cell=rj.gru)

    def metric_fn(p, carry, chunk):
        inputs, targets = chunk
        logits, new_carry = model.apply(p, inputs, carry)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return {"nll": nll.sum(), "count": jnp.float32(nll.size)}, new_carry

    means, final = evaluate_stream(
        jax.jit(metric_fn),
        params,
        [chunk(stream, k) for k in range(CHUNKS)],
        start_carry(model, params, stream),
    )
    logits, whole = model.apply(params, stream[:, :-1])
    full = optax.softmax_cross_entropy_with_integer_labels(logits, stream[:, 1:]).mean()
    np.testing.assert_allclose(means["nll"], float(full), rtol=1e-5)
    assert means["count"] == B * L * CHUNKS
    assert tree_max_diff(final, whole) < 1e-5
    with pytest.raises(ValueError, match="no chunks"):
        evaluate_stream(jax.jit(metric_fn), params, [], final)


def test_reserved_metric_key():
    model, params, stream = setup()

    def bad_loss(p, carry, chunk, rng):
        loss, (new_carry, _) = lm_loss(model)(p, carry, chunk, rng)
        return loss, (new_carry, {"__carry__": loss})

    optimizer = optax.sgd(0.1)
    step = make_chunk_step(bad_loss, optimizer)
    state = TrainState.create(params, optimizer, jax.random.key(0))
    with pytest.raises(ValueError, match="reserved"):
        step(state, start_carry(model, params, stream), chunk(stream, 0))
