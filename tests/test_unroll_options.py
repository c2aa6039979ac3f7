"""``rj.unroll``'s per-step options against independent formulations, in float64:

- ``resets``: equal to running each segment separately from the initial carry (forward, and
  the gradients of both ``gradient`` modes, with ``truncate`` too; ``rj.bptt`` likewise);
- ``mask``: equal to running only the unmasked steps (compacted), outputs zero where masked;
  a right-padding mask equals ``lengths``; Keras' LSTM given the same mask agrees on carries
  and unmasked outputs;
- ``return_carries``: every step's carry equals a Python loop of ``cell.step``, gradients too;
- unbatched ``(T, I)`` input equals row 0 of the batch of one, for every entry point.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, random_carry, random_params, random_stack
from custom_cells import peephole

import rnn_jax as rj
from rnn_jax.cells.base import LSTMCarry

B, T, D, H = 2, 6, 3, 4
RESETS = np.array(
    [[False, False, True, False, True, False], [True, False, False, False, False, True]]
)
MASK = np.array([[True, False, False, True, True, False], [False, True, True, False, True, True]])


def setup(cell, seed=0):
    rng = np.random.default_rng(seed)
    if cell is peephole:
        params = jax.tree.map(
            jnp.asarray, cell.init(jax.random.PRNGKey(seed), D, H, dtype=jnp.float64)
        )
        carry = jax.tree.map(
            lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape)), cell.zero_carry(B, H, jnp.float64)
        )
    else:
        params = random_params(rng, cell, D, H)
        carry = random_carry(rng, cell, B, H)
    xs = jnp.asarray(rng.normal(size=(B, T, D)))
    w_hs = jnp.asarray(rng.normal(size=(B, T, H)))
    w_final = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), carry)
    return params, xs, carry, w_hs, w_final


def loss_of(w_hs, w_final):
    """A loss reading every output and the whole final carry."""
    return lambda final, hs: (
        jnp.sum(hs * w_hs) + sum(jax.tree.leaves(jax.tree.map(jnp.vdot, final, w_final)))
    )


def row(tree, b):
    return jax.tree.map(lambda a: a[b : b + 1], tree)


def stack_rows(trees, axis=0):
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis), *trees)


def segments(resets_row):
    """``[start, end)`` of each episode."""
    bounds = sorted({0, T, *np.flatnonzero(resets_row).tolist()})
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def run_segments(cell, params, xs, carry, resets, *, reverse=False, **kwargs):
    """The reference: per row, each episode unrolled on its own from the initial carry."""
    finals, rows = [], []
    for b in range(B):
        run = lambda s, e, b=b: rj.unroll(
            cell, params, xs[b : b + 1, s:e], row(carry, b), reverse=reverse, **kwargs
        )
        parts = [run(s, e) for s, e in segments(resets[b])]
        finals.append(parts[0][0] if reverse else parts[-1][0])
        rows.append(jnp.concatenate([hs for _, hs in parts], axis=1))
    return stack_rows(finals), jnp.concatenate(rows)


def assert_same_loss_and_grads(ours, reference, *args):
    """Loss and its gradients in every argument, each side compiled as one program (the
    reference runs many short scans: jit keeps its compile and dispatch time small)."""
    both = [jax.jit(jax.value_and_grad(f, tuple(range(len(args))))) for f in (ours, reference)]
    assert_close(both[0](*args), both[1](*args))


def vjp_of(fn, args, cotangent):
    """``jax.vjp`` of ``fn`` at ``args`` applied to ``cotangent``, compiled as one program."""
    return jax.jit(lambda *a: jax.vjp(fn, *a)[1](cotangent))(*args)


CELLS = {"lstm": rj.lstm.cell, "gru": rj.gru.cell, "peephole": peephole}
MODES = [dict(gradient="autodiff"), dict(gradient="manual"), dict(gradient="manual", truncate=2)]
MODE_IDS = ["autodiff", "manual", "manual-truncate2"]


# The fused cell in every mode; a custom cell (its own step_backward) and the GRU where the
# hand-written path differs from the LSTM's. Fewer cases keep the file's compile time small.
RESET_CASES = [("lstm", 0), ("lstm", 1), ("lstm", 2), ("peephole", 2), ("gru", 1)]
MASK_CASES = [("lstm", 0), ("lstm", 2), ("peephole", 1)]


@pytest.mark.parametrize(("name", "mode"), [(n, MODES[m]) for n, m in RESET_CASES],
                         ids=[f"{n}-{MODE_IDS[m]}" for n, m in RESET_CASES])  # fmt: skip
def test_resets_equal_separate_segments(x64, name, mode):
    cell = CELLS[name]
    params, xs, carry, w_hs, w_final = setup(cell)
    loss = loss_of(w_hs, w_final)
    ours = lambda p, x, c: loss(*rj.unroll(cell, p, x, c, resets=jnp.asarray(RESETS), **mode))
    reference = lambda p, x, c: loss(*run_segments(cell, p, x, c, RESETS, **mode))
    assert_same_loss_and_grads(ours, reference, params, xs, carry)


def check_reverse(cell, seed, reference, **option):
    """``unroll(reverse=True)`` with one option (``resets=`` or ``mask=``, numpy) against its
    reference run with ``reverse=True``; returns ``setup``'s values for further checks."""
    params, xs, carry, w_hs, w_final = setup(cell, seed=seed)
    (flags,) = option.values()
    expected = jax.jit(lambda *a: reference(cell, *a, flags, reverse=True))(params, xs, carry)
    given = {name: jnp.asarray(value) for name, value in option.items()}
    assert_close(rj.unroll(cell, params, xs, carry, reverse=True, **given), expected)
    return params, xs, carry, w_hs, w_final


def test_resets_reverse_and_lengths(x64):
    """Reversed, each episode is read backwards on its own; a reset past a row's length
    changes nothing."""
    cell = rj.lstm.cell
    params, xs, carry, w_hs, w_final = check_reverse(cell, 1, run_segments, resets=RESETS)
    lengths = jnp.array([4, 5])  # row 1's reset at t=5 is padding
    trimmed = jnp.asarray(RESETS & (np.arange(T) < np.array([[4], [5]])))
    run = lambda p, r: loss_of(w_hs, w_final)(
        *rj.unroll(cell, p, xs, carry, lengths=lengths, resets=r, gradient="manual")
    )
    run = jax.jit(jax.value_and_grad(run))
    assert_close(run(params, jnp.asarray(RESETS)), run(params, trimmed))


def test_bptt_resets_equal_vjp_of_segments(x64):
    cell = rj.gru.cell
    params, xs, carry, w_hs, w_final = setup(cell, seed=2)
    expected = vjp_of(
        lambda *a: run_segments(cell, *a, RESETS), (params, xs, carry), (w_final, w_hs)
    )
    got = rj.bptt(cell, params, xs, w_hs, carry, d_carry=w_final, resets=jnp.asarray(RESETS))
    assert_close(got, expected)


def run_compacted(cell, params, xs, carry, mask, *, reverse=False, **kwargs):
    """The reference for a mask: per row, only its unmasked steps, outputs scattered back."""
    finals, rows = [], []
    for b in range(B):
        keep = np.flatnonzero(mask[b])
        final, hs = rj.unroll(
            cell, params, xs[b : b + 1, keep], row(carry, b), reverse=reverse, **kwargs
        )
        finals.append(final)
        rows.append(jnp.zeros((1, T, H), xs.dtype).at[:, keep].set(hs))
    return stack_rows(finals), jnp.concatenate(rows)


@pytest.mark.parametrize(("name", "mode"), [(n, MODES[m]) for n, m in MASK_CASES],
                         ids=[f"{n}-{MODE_IDS[m]}" for n, m in MASK_CASES])  # fmt: skip
def test_mask_equals_compacted_sequence(x64, name, mode):
    cell = CELLS[name]
    params, xs, carry, w_hs, w_final = setup(cell, seed=3)
    loss = loss_of(w_hs, w_final)
    ours = lambda p, x, c: loss(*rj.unroll(cell, p, x, c, mask=jnp.asarray(MASK), **mode))
    reference = lambda p, x, c: loss(*run_compacted(cell, p, x, c, MASK, **mode))
    assert_same_loss_and_grads(ours, reference, params, xs, carry)


def test_mask_reverse_and_bptt(x64):
    cell = rj.gru.cell
    params, xs, carry, w_hs, w_final = check_reverse(cell, 4, run_compacted, mask=MASK)
    mask = jnp.asarray(MASK)
    expected = vjp_of(
        lambda *a: run_compacted(cell, *a, MASK), (params, xs, carry), (w_final, w_hs)
    )
    assert_close(rj.bptt(cell, params, xs, w_hs, carry, d_carry=w_final, mask=mask), expected)


@pytest.mark.parametrize("gradient", ["autodiff", "manual"])
def test_right_padding_mask_equals_lengths(x64, gradient):
    cell = rj.lstm.cell
    params, xs, carry, w_hs, w_final = setup(cell, seed=5)
    lengths = jnp.array([3, 6])
    mask = jnp.arange(T)[None, :] < lengths[:, None]
    loss = loss_of(w_hs, w_final)
    by_mask = lambda p: loss(*rj.unroll(cell, p, xs, carry, mask=mask, gradient=gradient))
    by_lengths = lambda p: loss(*rj.unroll(cell, p, xs, carry, lengths=lengths, gradient=gradient))
    assert_close(jax.value_and_grad(by_mask)(params), jax.value_and_grad(by_lengths)(params))


def test_mask_keras_lstm_parity():
    """Keras' LSTM (JAX backend, float32: Keras 3's JAX RNN does not run in float64) with a mask
    with gaps, on our weights: the same final carry, and the same outputs at unmasked steps
    (Keras repeats the previous output at a masked step where we output zero)."""
    from test_interop import _import_keras

    keras = _import_keras()
    rng = np.random.default_rng(6)
    params = random_params(rng, rj.lstm.cell, D, H, dtype=np.float32)
    xs = rng.normal(size=(B, T, D)).astype(np.float32)
    layer = keras.layers.LSTM(H, return_sequences=True, return_state=True)
    layer(xs)
    layer.set_weights(rj.interop.to_keras(params, rj.lstm))
    keras_hs, keras_h, keras_c = (np.asarray(a) for a in layer(xs, mask=MASK))
    final, hs = rj.unroll(rj.lstm, params, jnp.asarray(xs), mask=jnp.asarray(MASK))
    np.testing.assert_allclose(np.asarray(final.h), keras_h, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(final.c), keras_c, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(hs)[MASK], keras_hs[MASK], atol=1e-6, rtol=0)
    assert not np.asarray(hs)[~MASK].any()


def loop_carries(cell, params, xs, carry, mask):
    """Every step's carry by a Python loop over ``cell.step``; kept where masked."""
    carries = []
    for t in range(T):
        new, _ = cell.step(params, carry, xs[:, t])
        keep = mask[:, t, None]
        carry = jax.tree.map(lambda n, o, keep=keep: jnp.where(keep, n, o), new, carry)
        carries.append(carry)
    return jax.tree.map(lambda *c: jnp.stack(c, axis=1), *carries)


@pytest.mark.parametrize("time_major", [False, True])
def test_return_carries_equal_a_loop_of_steps(x64, time_major):
    cell = rj.lstm.cell
    params, xs, carry, _, _ = setup(cell, seed=7)
    w = jnp.asarray(np.random.default_rng(8).normal(size=(B, T, H)))

    def ours(p):
        x = jnp.swapaxes(xs, 0, 1) if time_major else xs
        m = jnp.asarray(MASK.T if time_major else MASK)
        final, hs, carries = rj.unroll(
            cell, p, x, carry, mask=m, time_major=time_major, return_carries=True
        )
        carries = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), carries) if time_major else carries
        return final, carries

    final, carries = ours(params)
    assert isinstance(carries, LSTMCarry)
    assert_close(carries, loop_carries(cell, params, xs, carry, MASK))
    assert_close(final, jax.tree.map(lambda a: a[:, -1], carries))
    reference_loss = lambda p: jnp.vdot(loop_carries(cell, p, xs, carry, MASK).c, w)
    assert_close(
        jax.grad(lambda p: jnp.vdot(ours(p)[1].c, w))(params), jax.grad(reference_loss)(params)
    )


@pytest.mark.parametrize(
    ("name", "flags"),
    [("lstm", "mask"), ("gru", "resets"), ("peephole", "mask"), ("lstm", "resets")],
)
def test_return_carries_manual_gradient_equals_autodiff(x64, name, flags):
    """A loss reading every step's carry (its c, or h), the outputs and the final carry:
    the hand-written gradient (each step's carry cotangent joined where the backward enters
    that step) == autodiff's, for params, inputs and the initial carry; the fused sweep (LSTM,
    GRU) and the per-step one (a protocol cell; any cell with resets)."""
    cell = {"lstm": rj.lstm.cell, "gru": rj.gru.cell, "peephole": peephole}[name]
    params, xs, carry, w_hs, w_final = setup(cell, seed=11)
    step_flags = {flags: jnp.asarray(MASK if flags == "mask" else RESETS)}
    w_carries = jnp.asarray(np.random.default_rng(12).normal(size=(B, T, H)))

    def loss(params, xs, carry, gradient):
        final, hs, carries = rj.unroll(cell, params, xs, carry, gradient=gradient,
                                       return_carries=True, **step_flags)  # fmt: skip
        read = carries.c if hasattr(carries, "c") else carries
        return loss_of(w_hs, w_final)(final, hs) + jnp.vdot(jnp.tanh(read), w_carries)

    grads = jax.jit(lambda *a: [jax.grad(loss, (0, 1, 2))(*a, g) for g in ("manual", "autodiff")])
    manual, autodiff = grads(params, xs, carry)
    assert_close(manual, autodiff)


@pytest.mark.parametrize(
    ("name", "flags", "remat"), [("lstm", "resets", 4), ("peephole", "mask", 2)]
)
def test_remat_with_mask_or_resets_equals_no_remat(x64, name, flags, remat):
    """``remat`` segments (a last partial one too, T=6) with resets reading the sequence's
    initial carry in every segment, or a mask with gaps: outputs, final carry and both
    gradients (params, inputs, initial carry) equal those without remat."""
    cell = {"lstm": rj.lstm.cell, "peephole": peephole}[name]
    params, xs, carry, w_hs, w_final = setup(cell, seed=13)
    step_flags = {flags: jnp.asarray(MASK if flags == "mask" else RESETS)}

    def loss(params, xs, carry, gradient, remat):
        final, hs = rj.unroll(cell, params, xs, carry, gradient=gradient, remat=remat,
                              **step_flags)  # fmt: skip
        return loss_of(w_hs, w_final)(final, hs), (final, hs)

    def both(*args):
        return [jax.grad(loss, (0, 1, 2), has_aux=True)(*args, gradient, r)
                for gradient in ("autodiff", "manual") for r in (None, remat)]  # fmt: skip

    (auto, auto_remat, manual, manual_remat) = jax.jit(both)(params, xs, carry)
    assert_close(auto_remat, auto)
    assert_close(manual_remat, manual)
    assert_close(manual, auto)


def test_unbatched_equals_a_batch_of_one(x64):
    rng = np.random.default_rng(9)
    cell = rj.lstm.cell
    params = random_params(rng, cell, D, H)
    xs = jnp.asarray(rng.normal(size=(T, D)))
    carry = LSTMCarry(*(jnp.asarray(rng.normal(size=(H,))) for _ in range(2)))
    mask, resets = jnp.asarray(MASK[0]), jnp.asarray(RESETS[1])
    first = lambda tree: jax.tree.map(lambda a: a[0], tree)
    batched = lambda tree: jax.tree.map(lambda a: a[None], tree)
    flags = dict(lengths=jnp.asarray(5), mask=mask, resets=resets)
    single = rj.unroll(cell, params, xs, carry, return_carries=True, **flags)
    assert single[1].shape == (T, H) and single[0].c.shape == (H,) and single[2].c.shape == (T, H)
    expected = rj.unroll(
        cell, params, xs[None], batched(carry), return_carries=True, **batched(flags)
    )
    assert_close(single, first(expected))
    d_hs = jnp.asarray(rng.normal(size=(T, H)))
    d_params, d_xs, d_carry = rj.bptt(cell, params, xs, d_hs, carry, resets=resets)
    expected = rj.bptt(cell, params, xs[None], d_hs[None], batched(carry), resets=resets[None])
    assert_close((d_params, d_xs, d_carry), (expected[0], *first(expected[1:])))
    layer = {"fwd": params, "bwd": random_params(rng, cell, D, H)}
    (fwd, bwd), hs = rj.bidirectional(cell, layer, xs, time_major=True)
    assert hs.shape == (T, 2 * H) and fwd.h.shape == (H,)
    assert_close(((fwd, bwd), hs), first(rj.bidirectional(cell, layer, xs[None])))
    stack = random_stack(rng, cell, D, H, 2, bidirectional=False)
    finals, hs = rj.unroll_stack(cell, stack, xs, [carry, None], gradient="manual", mask=mask)
    expected = rj.unroll_stack(cell, stack, xs[None], [batched(carry), None], gradient="manual",
                               mask=mask[None])  # fmt: skip
    assert_close((finals, hs), first(expected))


BAD = [
    (
        dict(resets=jnp.zeros((B, T), jnp.int32)),
        TypeError,
        r"resets must be bool \(2, 6\), got dtype int32",
    ),
    (
        dict(resets=jnp.zeros((T, B), bool)),
        ValueError,
        r"resets must be \(batch, time\) = \(2, 6\) bool, got shape \(6, 2\)",
    ),
    (
        dict(mask=np.zeros((B, T + 1), bool)),
        ValueError,
        r"mask must be \(batch, time\) = \(2, 6\) bool, got shape \(2, 7\)",
    ),
    (
        dict(mask=jnp.ones((B, T), bool), resets=jnp.ones((B, T), bool), reverse=True),
        ValueError,
        r"resets= with mask= and reverse=True is not supported",
    ),
    (
        dict(return_carries=True, remat=2),
        ValueError,
        r"remat= with return_carries=",
    ),
    (dict(return_carries=1), TypeError, r"return_carries must be True or False, got 1"),
    (
        dict(mask=jnp.ones((B, T), bool), backend="fused_cpu"),
        ValueError,
        r"backend= with mask=: backend='fused_cpu'",
    ),
    (
        dict(resets=jnp.ones((B, T), bool), backend="cudnn"),
        ValueError,
        r"backend= with resets=: backend='cudnn'",
    ),
    (
        dict(return_carries=True, backend="fused_cpu"),
        ValueError,
        r"backend= with return_carries=: backend='fused_cpu'",
    ),
    (dict(backend="onednn"), ValueError, r"backend='onednn' .* was removed: backend='fused_cpu'"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD)
def test_bad_options_raise_before_compute(kwargs, error, match):
    params = rj.lstm.init(jax.random.PRNGKey(0), D, H)
    with pytest.raises(error, match=match):
        rj.unroll(rj.lstm, params, jnp.ones((B, T, D)), **kwargs)


def test_unbatched_carry_with_a_batch_axis_names_the_cause():
    params = rj.gru.init(jax.random.PRNGKey(0), D, H)
    with pytest.raises(ValueError, match=r"carry.h must be \(1, 4\), got \(1, 2, 4\)") as info:
        rj.unroll(rj.gru, params, jnp.ones((T, D)), jnp.zeros((B, H)))
    assert "unbatched xs (T, I): a batch axis of 1 was added" in str(info.value.__notes__)


def test_models_and_nnx_take_one_unbatched_sequence():
    """A classifier (plain and residual) and an ``rnn_jax.nnx`` layer read ``(T, I)`` too."""
    from flax import nnx

    from rnn_jax import models
    from rnn_jax import nnx as rj_nnx

    xs = jnp.asarray(np.random.default_rng(3).normal(size=(T, D)), jnp.float32)
    for model in (models.classifier(rj.gru, H, 3, pool="mean"),
                  models.classifier(rj.mingru, H, 3, block="residual")):  # fmt: skip
        params = model.init(jax.random.PRNGKey(0), D)
        logits = model.apply(params, xs, lengths=jnp.asarray(4))
        assert logits.shape == (3,)
        assert_close(logits, model.apply(params, xs[None], lengths=jnp.asarray([4]))[0], 1e-6)
    layer = rj_nnx.LSTM(D, H, rngs=nnx.Rngs(0))
    finals, hs = layer(xs)
    assert hs.shape == (T, H)
    assert_close((finals, hs), jax.tree.map(lambda a: a[0], layer(xs[None])), 1e-6)
