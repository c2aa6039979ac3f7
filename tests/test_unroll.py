"""``rj.unroll`` (and stacks): parity with PyTorch and Flax linen on identical weights, and
hypothesis properties over shapes, lengths, reverse and layout.

Everything numeric runs in float64 under ``jax.enable_x64`` and must agree to 1e-10.
"""

from __future__ import annotations

import functools

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    CELLS,
    TOL64,
    assert_close,
    examples,
    optional_import,
    random_carry,
    random_params,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import rnn_jax as rj
from rnn_jax import interop
from rnn_jax.cells.base import LSTMCarry

torch, needs_torch = optional_import("torch")

TORCH_MODULES = {
    "simple": lambda i, h, **kw: torch.nn.RNN(i, h, nonlinearity="tanh", **kw),
    "relu": lambda i, h, **kw: torch.nn.RNN(i, h, nonlinearity="relu", **kw),
    "lstm": lambda i, h, **kw: torch.nn.LSTM(i, h, **kw),
    "gru": lambda i, h, **kw: torch.nn.GRU(i, h, **kw),
}


def torch_module(name, input_size, hidden_size, **kwargs):
    torch.manual_seed(sum(map(ord, name)) + input_size)
    module = TORCH_MODULES[name](input_size, hidden_size, **kwargs).double()
    with torch.no_grad():  # make biases large enough that a misplaced one shows
        for param in module.parameters():
            param.uniform_(-0.6, 0.6)
    return module


def torch_carry(name, carry_np):
    """Our per-layer-per-direction carries (numpy) -> torch's h0 or (h0, c0)."""
    if name == "lstm":
        h = torch.from_numpy(np.stack([c[0] for c in carry_np]))
        c = torch.from_numpy(np.stack([c[1] for c in carry_np]))
        return (h, c)
    return torch.from_numpy(np.stack(carry_np))


def flat_finals(finals):
    """Our ``unroll_stack`` finals -> the per-(layer, direction) list in torch's h_n order."""
    out = []
    for final in finals:
        out.extend(final if type(final) is tuple else [final])
    return out


def compare_finals(name, finals, torch_state, tol=TOL64):
    flat = flat_finals(finals)
    if name == "lstm":
        h_n, c_n = torch_state
        assert_close(jnp.stack([f.h for f in flat]), h_n.detach().numpy(), tol)
        assert_close(jnp.stack([f.c for f in flat]), c_n.detach().numpy(), tol)
        return
    assert_close(jnp.stack(flat), torch_state.detach().numpy(), tol)


# --- PyTorch -------------------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_parity_single_layer(x64, name, batch_first):
    batch, steps, inputs, hidden = 3, 6, 4, 5
    module = torch_module(name, inputs, hidden, batch_first=batch_first)
    params = interop.from_torch(module, CELLS[name])[0]
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(batch, steps, inputs) if batch_first else (steps, batch, inputs))
    carry0 = random_carry(rng, CELLS[name], batch, hidden)
    carry_np = [tuple(map(np.asarray, carry0))] if name == "lstm" else [np.asarray(carry0)]
    out, state = module(torch.from_numpy(xs), torch_carry(name, carry_np))
    final, hs = rj.unroll(CELLS[name], params, jnp.asarray(xs), carry0, time_major=not batch_first)
    assert_close(hs, out.detach().numpy())
    compare_finals(name, [final], state)


@needs_torch
@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_torch_parity_packed_variable_lengths(x64, name, bidirectional):
    """A packed batch (``enforce_sorted=False``) vs ``lengths``: padded outputs are zeros, the
    final states are each row's last valid step, the backward direction reads each row's
    valid prefix backwards — through a 2-layer stack."""
    batch, steps, inputs, hidden = 5, 7, 3, 4
    lengths = np.array([4, 7, 1, 6, 2])
    kw = dict(num_layers=2, bidirectional=bidirectional, batch_first=True)
    module = torch_module(name, inputs, hidden, **kw)
    stack = interop.from_torch(module, CELLS[name])
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(batch, steps, inputs))
    xs[np.arange(steps)[None, :] >= lengths[:, None]] = 7.0  # padding must not leak in
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(xs), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
    )
    out_packed, state = module(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(
        out_packed, batch_first=True, total_length=steps
    )
    finals, hs = rj.unroll_stack(CELLS[name], stack, jnp.asarray(xs), lengths=jnp.asarray(lengths))
    assert_close(hs, out.detach().numpy())
    compare_finals(name, finals, state)


@needs_torch
@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_parity_two_layer_bidirectional(x64, name, batch_first):
    batch, steps, inputs, hidden = 2, 5, 3, 4
    module = torch_module(
        name, inputs, hidden, num_layers=2, bidirectional=True, batch_first=batch_first
    )
    stack = interop.from_torch(module, CELLS[name])
    assert len(stack) == 2 and set(stack[1]) == {"fwd", "bwd"}
    assert stack[1]["fwd"]["w_x"].shape[0] == 2 * hidden
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(batch, steps, inputs) if batch_first else (steps, batch, inputs))
    carries = [
        (
            random_carry(rng, CELLS[name], batch, hidden),
            random_carry(rng, CELLS[name], batch, hidden),
        )
        for _ in range(2)
    ]
    flat = [c for pair in carries for c in pair]
    carry_np = [tuple(map(np.asarray, c)) if name == "lstm" else np.asarray(c) for c in flat]
    out, state = module(torch.from_numpy(xs), torch_carry(name, carry_np))
    finals, hs = rj.unroll_stack(
        CELLS[name], stack, jnp.asarray(xs), carries, time_major=not batch_first
    )
    assert_close(hs, out.detach().numpy())
    compare_finals(name, finals, state)


# --- Flax linen ----------------------------------------------------------------------

FLAX_CELLS = {
    "simple": (lambda h: fnn.SimpleCell(h, param_dtype=jnp.float64), rj.simple),
    "lstm": (lambda h: fnn.LSTMCell(h, param_dtype=jnp.float64), rj.lstm),
    "optimized_lstm": (lambda h: fnn.OptimizedLSTMCell(h, param_dtype=jnp.float64), rj.lstm),
    "gru": (lambda h: fnn.GRUCell(h, param_dtype=jnp.float64), rj.gru),
}


def randomized_flax_variables(module, xs, rng):
    """Flax's own init, then every leaf redrawn (Flax initialises biases to zero, which
    would hide a bias put in the wrong gate)."""
    variables = module.init(jax.random.PRNGKey(0), xs)
    return jax.tree.map(lambda v: jnp.asarray(rng.normal(0, 0.6, v.shape)), variables)


@pytest.mark.parametrize("flax_name", sorted(FLAX_CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_flax_rnn_parity_with_lengths(x64, flax_name, reverse):
    make_cell, cell = FLAX_CELLS[flax_name]
    batch, steps, inputs, hidden = 4, 6, 3, 5
    rng = np.random.default_rng(3)
    xs = jnp.asarray(rng.normal(size=(batch, steps, inputs)))
    lengths = jnp.array([6, 3, 1, 5])
    module = fnn.RNN(make_cell(hidden), return_carry=True, reverse=reverse, keep_order=True)
    variables = randomized_flax_variables(module, xs, rng)
    flax_final, flax_hs = module.apply(variables, xs, seq_lengths=lengths)
    params = interop.from_flax(variables, cell)
    final, hs = rj.unroll(cell, params, xs, lengths=lengths, reverse=reverse)
    valid = np.arange(steps)[None, :, None] < np.asarray(lengths)[:, None, None]
    # Flax leaves unspecified values past a row's length; ours are zeros
    assert_close(jnp.where(valid, flax_hs, 0.0), hs)
    assert_close(final, interop.carry_from_flax(flax_final, cell))


def test_flax_bidirectional_parity(x64):
    batch, steps, inputs, hidden = 3, 5, 2, 4
    rng = np.random.default_rng(4)
    xs = jnp.asarray(rng.normal(size=(batch, steps, inputs)))
    lengths = jnp.array([5, 2, 4])
    module = fnn.Bidirectional(
        fnn.RNN(fnn.GRUCell(hidden, param_dtype=jnp.float64)),
        fnn.RNN(fnn.GRUCell(hidden, param_dtype=jnp.float64)),
    )
    variables = randomized_flax_variables(module, xs, rng)
    flax_hs = module.apply(variables, xs, seq_lengths=lengths)
    params = interop.from_flax(variables, rj.gru)
    _, hs = rj.bidirectional(rj.gru, params, xs, lengths=lengths)
    valid = np.arange(steps)[None, :, None] < np.asarray(lengths)[:, None, None]
    assert_close(jnp.where(valid, flax_hs, 0.0), hs)


# --- properties (hypothesis) -----------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cell", "reverse", "time_major", "unroll"))
def junroll(
    cell, params, xs, carry=None, lengths=None, *, reverse=False, time_major=False, unroll=1
):
    """``rj.unroll`` under jit: eager ``lax.scan`` recompiles on every call, jit caches per
    shape, which keeps these property tests fast (eager calls are covered elsewhere)."""
    return rj.unroll(
        cell, params, xs, carry, lengths=lengths, reverse=reverse, time_major=time_major,
        unroll=unroll,
    )  # fmt: skip


MAX_BATCH = 4


@st.composite
def problems(draw):
    """A cell, shapes, per-row lengths (0 allowed), layout and direction. Feature sizes come
    from a short list so compiled shapes repeat across examples."""
    inputs, hidden = draw(st.sampled_from([(2, 3), (1, 2), (3, 1)]))
    return dict(
        name=draw(st.sampled_from(sorted(CELLS))),
        batch=draw(st.integers(1, MAX_BATCH)),
        steps=(steps := draw(st.integers(1, 5))),
        inputs=inputs,
        hidden=hidden,
        lengths=draw(st.lists(st.integers(0, steps), min_size=MAX_BATCH, max_size=MAX_BATCH)),
        reverse=draw(st.booleans()),
        time_major=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def build(p):
    rng = np.random.default_rng(p["seed"])
    cell = CELLS[p["name"]]
    params = random_params(rng, cell, p["inputs"], p["hidden"])
    xs = rng.normal(size=(p["batch"], p["steps"], p["inputs"]))
    carry = random_carry(rng, cell, p["batch"], p["hidden"])
    lengths = np.asarray(p["lengths"][: p["batch"]])
    return cell, params, xs, carry, lengths


def flip_prefix(xs, lengths):
    """Reverse each row's first ``lengths[b]`` steps (batch-major numpy), padding kept."""
    out = xs.copy()
    for b, n in enumerate(lengths):
        out[b, :n] = xs[b, :n][::-1]
    return out


SETTINGS = settings(max_examples=examples(20), deadline=None)


@SETTINGS
@given(problems())
def test_reverse_of_reversed_input_is_forward(p):
    """Reading the prefix-reversed sequence backwards is reading the sequence forwards:
    same final carry, outputs equal after undoing the reversal on the valid prefix."""
    with jax.enable_x64(True):
        cell, params, xs, carry, lengths = build(p)
        final, hs = junroll(cell, params, jnp.asarray(xs), carry, lengths=lengths)
        final_r, hs_r = junroll(
            cell,
            params,
            jnp.asarray(flip_prefix(xs, lengths)),
            carry,
            lengths=lengths,
            reverse=True,
        )
        assert_close(final_r, final)
        assert_close(flip_prefix(np.asarray(hs_r), lengths), hs)
        assert_close(flip_prefix(flip_prefix(xs, lengths), lengths), xs, 0.0)


@SETTINGS
@given(problems())
def test_batch_with_lengths_equals_each_row_alone(p):
    with jax.enable_x64(True):
        cell, params, xs, carry, lengths = build(p)
        xs_in = np.swapaxes(xs, 0, 1) if p["time_major"] else xs
        final, hs = junroll(
            cell, params, jnp.asarray(xs_in), carry, lengths=lengths,
            reverse=p["reverse"], time_major=p["time_major"],
        )  # fmt: skip
        hs = np.swapaxes(np.asarray(hs), 0, 1) if p["time_major"] else np.asarray(hs)
        for b, n in enumerate(lengths):
            row_carry = jax.tree.map(lambda c, b=b: c[b : b + 1], carry)
            row_final = jax.tree.map(lambda c, b=b: c[b : b + 1], final)
            if n == 0:  # nothing read: the carry passes through, outputs are all zero
                assert_close(row_final, row_carry, 0.0)
            else:
                alone_final, alone_hs = junroll(
                    cell, params, jnp.asarray(xs[b : b + 1, :n]), row_carry, reverse=p["reverse"]
                )
                assert_close(row_final, alone_final)
                assert_close(hs[b : b + 1, :n], alone_hs)
            np.testing.assert_array_equal(hs[b, n:], 0.0)


@settings(max_examples=examples(12), deadline=None)  # five compiled programs per example
@given(problems(), st.sampled_from([2, 3, 5]))
def test_unroll_factor_time_major_and_full_lengths_agree(p, k):
    """``unroll=k`` == ``unroll=1``; time-major == batch-major transposed; lengths = T ==
    lengths None."""
    with jax.enable_x64(True):
        cell, params, xs, carry, lengths = build(p)
        kw = dict(lengths=lengths, reverse=p["reverse"])
        base = junroll(cell, params, jnp.asarray(xs), carry, **kw)
        assert_close(junroll(cell, params, jnp.asarray(xs), carry, unroll=k, **kw), base)
        final_tm, hs_tm = junroll(
            cell, params, jnp.asarray(np.swapaxes(xs, 0, 1)), carry, time_major=True, **kw
        )
        assert_close((final_tm, jnp.swapaxes(hs_tm, 0, 1)), base)
        full = np.full(p["batch"], p["steps"])
        assert_close(
            junroll(cell, params, jnp.asarray(xs), carry, lengths=full, reverse=p["reverse"]),
            junroll(cell, params, jnp.asarray(xs), carry, reverse=p["reverse"]),
        )


def loop_unroll(cell, params, xs, carry, reverse=False):
    """The plainest reference: a Python loop of ``step`` (full-length rows)."""
    order = range(xs.shape[1] - 1, -1, -1) if reverse else range(xs.shape[1])
    hs = [None] * xs.shape[1]
    for t in order:
        carry, hs[t] = cell.step(params, carry, xs[:, t])
    return carry, jnp.stack(hs, axis=1)


@settings(max_examples=examples(8), deadline=None)  # each example compiles five programs
@given(problems())
def test_jit_vmap_grad(p):
    with jax.enable_x64(True):
        cell, params, xs, carry, lengths = build(p)
        xs = jnp.asarray(xs)
        f = lambda params, xs, carry: rj.unroll(cell, params, xs, carry, reverse=p["reverse"])  # noqa: E731
        jitted = jax.jit(f)(params, xs, carry)
        assert_close(jitted, jax.jit(loop_unroll, static_argnums=(0, 4))(
            cell, params, xs, carry, p["reverse"]
        ))  # fmt: skip
        # vmap over an extra leading axis of whole batches of sequences
        many = jnp.stack([xs, 2 * xs, -xs])
        batched = jax.jit(jax.vmap(f, in_axes=(None, 0, None)))(params, many, carry)
        for i in range(3):
            want = jitted if i == 0 else jax.jit(f)(params, many[i], carry)
            assert_close(jax.tree.map(lambda a, i=i: a[i], batched), want)
        # grad (params, xs, carry) equals autodiff through the Python loop of steps
        loss = lambda run: lambda *a: sum(jnp.sum(jnp.sin(v)) for v in jax.tree.leaves(run(*a)))  # noqa: E731
        reference = lambda pr, x, c: loop_unroll(cell, pr, x, c, p["reverse"])  # noqa: E731
        grads = jax.jit(jax.grad(loss(f), argnums=(0, 1, 2)))(params, xs, carry)
        assert_close(
            grads, jax.jit(jax.grad(loss(reference), argnums=(0, 1, 2)))(params, xs, carry)
        )


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-5), ("bfloat16", 0.1)])
def test_low_precision_tracks_float64(x64, name, dtype, tol):
    """Same numbers in float32/bfloat16 as in float64 (to the precision's own error), the
    outputs in the input's dtype, and with lengths and reverse."""
    rng = np.random.default_rng(5)
    cell = CELLS[name]
    params = random_params(rng, cell, 3, 4)
    xs = rng.normal(size=(2, 5, 3))
    lengths = np.array([5, 3])
    want = rj.unroll(cell, params, jnp.asarray(xs), lengths=lengths, reverse=True)
    low = jax.tree.map(lambda a: a.astype(dtype), params)
    got = jax.jit(lambda pr, x: rj.unroll(cell, pr, x, lengths=lengths, reverse=True))(
        low, jnp.asarray(xs, dtype)
    )
    assert {str(a.dtype) for a in jax.tree.leaves(got)} == {dtype}
    chex.assert_trees_all_close(jax.tree.map(lambda a: a.astype(jnp.float64), got), want, atol=tol)


def test_reverse_final_carry_is_after_position_zero(x64):
    """Design: with reverse=True, ``hs[:, t]`` is the state right after reading ``xs[:, t]``
    and the final carry is the state after position 0."""
    rng = np.random.default_rng(6)
    params = random_params(rng, rj.lstm.cell, 2, 3)
    xs = jnp.asarray(rng.normal(size=(1, 4, 2)))
    final, hs = rj.unroll(rj.lstm, params, xs, reverse=True)
    assert isinstance(final, LSTMCarry)
    assert_close(final.h, hs[:, 0], 0.0)
    carry = rj.lstm.zero_carry(1, 3, jnp.float64)
    carry, h3 = rj.lstm.step(params, carry, xs[:, 3])
    assert_close(hs[:, 3], h3)
