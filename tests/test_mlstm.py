"""rj.mlstm: the hand-written step backward (check_cell), the chunkwise form equal to the step
by step scan with lengths, masks and resets, values and gradients equal to mlstm-kernels'
PyTorch reference (recurrent and chunkwise), and the cell through every driver."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, max_abs_diff, optional_import

import rnn_jax as rj
from rnn_jax import models
from rnn_jax.cells.mlstm import MLSTMCarry

torch, needs_torch = optional_import("torch")
mlstm_kernels, needs_kernels = optional_import("mlstm_kernels")

B, T, I, H = 2, 7, 3, 8  # noqa: E741 (I: the input size, as everywhere here)
HEADS = rj.mlstm.variant(num_heads=2, key_size=3, chunk_size=3)


def random_inputs(rng, cell, batch=B, steps=T, input_size=I, hidden_size=H):
    """Random float64 parameters (gate weights and biases included), inputs and carry."""
    params = jax.tree.map(
        lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape)),
        jax.eval_shape(lambda: cell.init(jax.random.PRNGKey(0), input_size, hidden_size)),
    )
    xs = jnp.asarray(rng.normal(size=(batch, steps, input_size)))
    zero = cell.zero_carry(batch, hidden_size, jnp.float64)
    carry = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape)), zero)
    return params, xs, carry._replace(n=jnp.abs(carry.n))


def test_check_cell_float64(x64):
    """Step backward vs jax.vjp, BPTT full and truncated, parallel vs sequential: 2 heads,
    d_k = 3 != d_v = 4, chunks of 3 over 4 steps."""
    rj.check_cell(HEADS, input_size=I, hidden_size=H, batch_size=2, num_steps=4, truncate=2)


def test_chunkwise_equals_steps(x64):
    """The chunkwise form's values and final carries equal the step-by-step scan's to 1e-10
    for chunk sizes 1, 3 (not dividing T = 7) and 16 (> T), with lengths, a mask with gaps,
    resets and reverse. (Its gradients against the steps': check_cell's parallel stage, with
    lengths and resets; the mask reaches the chunkwise form as the same ``valid``.)"""
    rng = np.random.default_rng(0)
    params, xs, carry = random_inputs(rng, HEADS)
    mask = jnp.asarray(rng.random((B, T)) > 0.3)
    resets = jnp.asarray(rng.random((B, T)) > 0.6)
    cases = [dict(mask=mask, resets=resets),
             dict(lengths=jnp.array([T, 4]), resets=resets, reverse=True)]  # fmt: skip

    def run(cell, p, mode, gradient, data):
        return rj.unroll(cell, p, xs, carry, mode=mode, gradient=gradient, **data)

    for data in cases:
        steps = run(HEADS, params, "sequential", "manual", data)
        for chunk_size in (1, 3, 16):
            cell = rj.mlstm.variant(num_heads=2, key_size=3, chunk_size=chunk_size)
            assert_close(run(cell, params, "parallel", None, data), steps)


def test_reset_restarts_from_initial_carry(x64):
    """A reset in the middle of a chunk: the rest of the row equals a fresh run from the
    initial carry over the same steps (the chunkwise form alone, not compared with steps)."""
    params, xs, carry = random_inputs(np.random.default_rng(1), HEADS)
    resets = jnp.zeros((B, T), bool).at[:, 4].set(True)
    final, hs = rj.unroll(HEADS, params, xs, carry, resets=resets, mode="parallel")
    final_fresh, hs_fresh = rj.unroll(HEADS, params, xs[:, 4:], carry, mode="parallel")
    assert_close((final, hs[:, 4:]), (final_fresh, hs_fresh))


def reference_inputs(rng, batch, heads, steps, key_size, value_size):
    """q, k, v, i, f and an initial state (C, n, m) as mlstm-kernels takes them."""
    normal = lambda *shape: rng.normal(size=shape)
    qkv = normal(batch, heads, steps, key_size), normal(batch, heads, steps, key_size)
    gates = 2 * normal(batch, heads, steps), 2 + 2 * normal(batch, heads, steps)
    state = (normal(batch, heads, key_size, value_size), np.abs(normal(batch, heads, key_size)),
             normal(batch, heads, 1))  # fmt: skip
    return (*qkv, normal(batch, heads, steps, value_size), *gates, state)


def as_cell_inputs(q, k, v, i, f, o):
    """The cell's ``xs (B, T, Z)`` for ``w_x = identity``, ``b = 0``: ``z = x`` is
    ``q | k | v | o | i | f``."""
    per_step = lambda a: np.moveaxis(a, 1, 2).reshape(a.shape[0], a.shape[2], -1)
    gate = lambda a: np.moveaxis(a, 1, 2)
    return jnp.asarray(np.concatenate([per_step(q), per_step(k), per_step(v), o, gate(i),
                                       gate(f)], axis=-1))  # fmt: skip


@needs_torch
@needs_kernels
@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_values_and_gradients_equal_mlstm_kernels(x64, mode):
    """float64, 2 heads, d_k = 3, d_v = 4, 8 steps from a random initial state: h~ and the
    final (C, n, m) equal mlstm-kernels' native recurrent sequence and its native chunkwise
    form (chunk 4), and the gradients of q, k, v, i, f equal torch autograd's through the
    recurrent one."""
    from mlstm_kernels.torch.chunkwise.native.fw import mlstm_chunkwise
    from mlstm_kernels.torch.recurrent.native_sequence import mlstm_recurrent_sequence__native_fw

    batch, heads, steps, key_size, value_size = 2, 2, 8, 3, 4
    rng = np.random.default_rng(0)
    q, k, v, i, f, (c0, n0, m0) = reference_inputs(rng, batch, heads, steps, key_size, value_size)
    o = rng.normal(size=(batch, steps, heads * value_size))
    weights = rng.normal(size=(batch, heads, steps, value_size))  # the loss sum(weights * h)

    tensors = [torch.tensor(a, requires_grad=True) for a in (q, k, v, i, f)]
    state = [torch.tensor(a) for a in (c0, n0, m0)]
    h_rec, last_rec = mlstm_recurrent_sequence__native_fw(
        *tensors, *state, return_last_states=True, dtype_state=torch.float64
    )
    (h_rec * torch.tensor(weights)).sum().backward()
    torch_grads = [t.grad.numpy() for t in tensors]
    h_chunk, last_chunk = mlstm_chunkwise(
        *(t.detach() for t in tensors), *state, return_last_states=True, chunk_size=4
    )

    cell = rj.mlstm.variant(num_heads=heads, key_size=key_size, chunk_size=3)
    width = 2 * heads * key_size + 2 * heads * value_size + 2 * heads
    params = {"w_x": jnp.eye(width), "b": jnp.zeros(width)}
    carry = MLSTMCarry(jnp.zeros((batch, heads * value_size)), jnp.asarray(c0), jnp.asarray(n0),
                       jnp.asarray(m0[..., 0]))  # fmt: skip
    gate = jax.nn.sigmoid(jnp.asarray(o))

    def h_tilde(xs):  # (B, NH, T, d_v), the reference's layout
        gradient = "manual" if mode == "sequential" else None  # parallel: JAX's only
        final, hs = rj.unroll(cell, params, xs, carry, mode=mode, gradient=gradient)
        per_head = (hs / gate).reshape(batch, steps, heads, value_size)
        return jnp.moveaxis(per_head, 1, 2), final

    xs = as_cell_inputs(q, k, v, i, f, o)
    ours, final = h_tilde(xs)
    for h_ref, last in ((h_rec, last_rec), (h_chunk, last_chunk)):
        assert_close(ours, h_ref.detach().numpy(), tol=1e-12)
        assert_close((final.C, final.n, final.m[..., None]),
                     tuple(a.detach().numpy() for a in last), tol=1e-12)  # fmt: skip
    d_xs = jax.grad(lambda xs: jnp.sum(h_tilde(xs)[0] * weights))(xs)
    ours_grads = _split_like_reference(d_xs, batch, heads, key_size, value_size)
    assert_close(ours_grads, torch_grads, tol=1e-11)


def _split_like_reference(d_xs, batch, heads, key_size, value_size):
    """``d_xs (B, T, Z)`` -> the gradients of q, k, v (B, NH, T, d), i, f (B, NH, T)."""
    cuts = np.cumsum([heads * key_size, heads * key_size, heads * value_size,
                      heads * value_size, heads])  # fmt: skip
    dq, dk, dv, _, di, df = np.split(np.asarray(d_xs), cuts, axis=-1)
    per_head = lambda a: np.moveaxis(a.reshape(*a.shape[:2], heads, -1), 1, 2)
    return [per_head(dq), per_head(dk), per_head(dv), np.moveaxis(di, 1, 2),
            np.moveaxis(df, 1, 2)]  # fmt: skip


@needs_torch
@needs_kernels
def test_float32_equals_mlstm_kernels_chunkwise():
    """float32 (the dtype models train in): the chunkwise form against mlstm-kernels'
    chunkwise one, chunk 4 both, 16 steps, 2 heads of 8, from the zero state."""
    from mlstm_kernels.torch.chunkwise.native.fw import mlstm_chunkwise

    batch, heads, steps, size = 2, 2, 16, 8
    rng = np.random.default_rng(2)
    q, k, v, i, f, _ = reference_inputs(rng, batch, heads, steps, size, size)
    ref = mlstm_chunkwise(*(torch.tensor(a, dtype=torch.float32) for a in (q, k, v, i, f)),
                          chunk_size=4).numpy()  # fmt: skip
    cell = rj.mlstm.variant(num_heads=heads, chunk_size=4)
    width = 4 * heads * size + 2 * heads
    params = {"w_x": jnp.eye(width), "b": jnp.zeros(width)}
    o = np.full((batch, steps, heads * size), 50.0)  # sigmoid(50) == 1 in float32
    xs = as_cell_inputs(q, k, v, i, f, o).astype(jnp.float32)
    _, hs = rj.unroll(cell, params, xs, mode="parallel")
    ours = np.moveaxis(np.asarray(hs).reshape(batch, steps, heads, size), 1, 2)
    assert np.max(np.abs(ours - ref)) <= 2e-5 * max(1.0, np.max(np.abs(ref)))


def test_bptt_and_truncation(x64):
    """rj.bptt (hand-written steps) with lengths equals jax.grad through the chunkwise form;
    truncate=T+1 is full BPTT (the initial carry is T+1 steps from the last output in
    rj.bptt's count) and truncate=1 differs from it."""
    params, xs, carry = random_inputs(np.random.default_rng(3), HEADS)
    lengths = jnp.array([T, 5])
    d_hs = jnp.asarray(np.random.default_rng(4).normal(size=(B, T, H)))

    def loss(p, xs, c):
        _, hs = rj.unroll(HEADS, p, xs, c, lengths=lengths, mode="parallel")
        return jnp.sum(hs * d_hs)

    expected = jax.grad(loss, argnums=(0, 1, 2))(params, xs, carry)
    full = rj.bptt(HEADS, params, xs, d_hs, carry, lengths=lengths)
    assert_close(full, expected)
    assert_close(rj.bptt(HEADS, params, xs, d_hs, carry, lengths=lengths, truncate=T + 1), full)
    truncated = rj.bptt(HEADS, params, xs, d_hs, carry, lengths=lengths, truncate=1)
    assert max_abs_diff(truncated[0], full[0]) > 1e-3


def test_stack_bidirectional_classifier_nnx(x64):
    """A bidirectional 2-layer stack: parallel equals sequential with lengths; the classifier
    runs it and trains (a finite gradient); nnx.RNN gives rj.unroll_stack's outputs."""
    from flax import nnx

    from rnn_jax import nnx as rj_nnx

    rng = np.random.default_rng(5)
    _, xs, _ = random_inputs(rng, HEADS)
    lengths = jnp.array([T, 3])
    stack = rj.init_stack(HEADS, jax.random.PRNGKey(0), I, H, 2, bidirectional=True,
                          dtype=jnp.float64)  # fmt: skip
    run = lambda mode: rj.unroll_stack(HEADS, stack, xs, lengths=lengths, mode=mode)
    parallel, sequential = run("parallel"), run("sequential")
    assert_close(parallel, sequential)
    assert parallel[1].shape == (B, T, 2 * H)

    model = models.classifier(HEADS, hidden_size=H, num_classes=3)
    model_params = model.init(jax.random.PRNGKey(1), I, dtype=jnp.float64)
    logits = model.apply(model_params, xs, lengths=lengths)
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, xs, lengths=lengths) ** 2))(model_params)
    assert logits.shape == (B, 3)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))

    layer = rj_nnx.RNN(HEADS, params=stack)
    assert_close(layer(xs, lengths=lengths), parallel)
    assert isinstance(layer, nnx.Module)


def test_refusals():
    """Sizes that do not divide into the heads and bad variants: clear errors, no compute."""
    cell = rj.mlstm.variant(num_heads=3)
    with pytest.raises(ValueError, match="num_heads=3: hidden_size=8 does not divide into 3"):
        cell.init(jax.random.PRNGKey(0), I, 8)
    with pytest.raises(ValueError, match="hidden_size=8 does not divide"):
        cell.zero_carry(2, 8)
    with pytest.raises(ValueError, match=r"num_heads=3, key_size=None: params\['w_x'\] \(3, 34\)"):
        cell.sizes(rj.mlstm.init(jax.random.PRNGKey(0), I, 8))  # 1 head's layout
    for bad in (dict(num_heads=0), dict(chunk_size=0), dict(key_size=True)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            rj.mlstm.variant(**bad)
    with pytest.raises(ValueError, match="recurrent_dropout"):
        rj.unroll(rj.mlstm, rj.mlstm.init(jax.random.PRNGKey(0), I, 4), jnp.ones((B, T, I)),
                  recurrent_dropout=0.1, key=jax.random.PRNGKey(0))  # fmt: skip
    # The chunkwise form has no hand-written backward: asking for one there is refused, and
    # without mode= it picks the steps, whose backward is hand-written.
    params = rj.mlstm.init(jax.random.PRNGKey(0), I, 4)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I))
    by_hand = jax.grad(lambda p: rj.unroll(rj.mlstm, p, xs, gradient="manual")[1].sum())(params)
    steps = jax.grad(lambda p: rj.unroll(rj.mlstm, p, xs, mode="sequential")[1].sum())(params)
    assert_close(by_hand, steps, 1e-5)
    with pytest.raises(ValueError, match=r"gradient= with mode=: mlstm's parallel form has no"):
        rj.unroll(rj.mlstm, rj.mlstm.init(jax.random.PRNGKey(0), I, 4), jnp.ones((B, T, I)),
                  mode="parallel", gradient="manual")  # fmt: skip
