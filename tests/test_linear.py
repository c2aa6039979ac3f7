"""``rj.linear_scan`` and the linear-recurrence cells (minGRU, minLSTM) against sequential
references: a plain Python/``lax.scan`` loop of ``h = a * h + b``, running each row's segments
separately, and each cell's own ``step`` in ``mode="sequential"``; values and ``jax.grad``
gradients to 1e-10 in float64 (complex128 for the scan)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close

import rnn_jax as rj
from rnn_jax.linear import METHODS

SCAN_METHODS = [m for m in METHODS if m != "auto"]


def _reference(a, b, h0, lengths=None, resets=None, reverse=False):
    """``(B, T, ...)`` states by a Python loop over rows and steps (independent of rnn_jax)."""
    a = jnp.broadcast_to(a, b.shape)
    batch_size, num_steps = b.shape[:2]
    rows = []
    for row in range(batch_size):
        length = num_steps if lengths is None else int(lengths[row])
        order = range(length - 1, -1, -1) if reverse else range(length)
        h, out = h0[row], [jnp.zeros_like(b[row, 0])] * num_steps
        for t in order:
            # An episode starts at a reset; read backwards it starts at the step before one.
            restart = t + 1 if reverse else t
            if resets is not None and restart < length and resets[row, restart]:
                h = h0[row]
            h = a[row, t] * h + b[row, t]
            out[t] = h
        rows.append(jnp.stack(out))
    return jnp.stack(rows)


def _problem(dtype, shape=(3, 7, 2), seed=0):
    rng = np.random.default_rng(seed)
    draw = lambda *s: rng.uniform(-1, 1, s) + (1j * rng.uniform(-1, 1, s) if dtype == "c" else 0)
    cast = jnp.complex128 if dtype == "c" else jnp.float64
    return tuple(jnp.asarray(draw(*s), cast) for s in (shape, shape, shape[:1] + shape[2:]))


def _weights(shape):
    return jnp.asarray(np.cos(np.arange(np.prod(shape)).reshape(shape)))


@pytest.mark.parametrize("dtype", ["r", "c"])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_equals_the_loop_values_and_gradients(dtype, reverse, x64):
    a, b, h0 = _problem(dtype)
    lengths, resets = np.array([7, 4, 0]), np.zeros((3, 7), bool)
    resets[0, 3] = resets[1, 2] = True
    weights = _weights(b.shape)

    def loss(fn):
        return jax.jit(jax.value_and_grad(
            lambda a, b, h0: jnp.sum(jnp.real(fn(a, b, h0) * weights)), argnums=(0, 1, 2)
        ))  # fmt: skip

    expected = loss(lambda a, b, h0: _reference(a, b, h0, lengths, resets, reverse))(a, b, h0)
    for method in SCAN_METHODS:
        ours = functools.partial(
            rj.linear_scan, reverse=reverse, lengths=lengths, resets=resets, method=method
        )
        assert_close(ours(a, b, h0), _reference(a, b, h0, lengths, resets, reverse))
        assert_close(loss(ours)(a, b, h0), expected)


def _scan_reference(a, b, reverse=False):
    """``(B, T, ...)`` states from zero by ``lax.scan`` (for sequences too long for the loop)."""

    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    a = jnp.broadcast_to(a, b.shape).swapaxes(0, 1)
    _, hs = jax.lax.scan(step, jnp.zeros_like(b[:, 0]), (a, b.swapaxes(0, 1)), reverse=reverse)
    return hs.swapaxes(0, 1)


@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_long_sequences_cross_chunks(reverse, x64):
    """T=200 spans several chunks (and a ragged last one); a broadcast ``a (H,)``."""
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.uniform(0.5, 1.0, (2,)))
    b = jnp.asarray(rng.normal(size=(2, 200, 2)))
    loss = lambda fn: jax.jit(jax.value_and_grad(lambda a: jnp.sum(fn(a) ** 2)))
    value, d_a = loss(lambda a: _scan_reference(a, b, reverse))(a)
    for method in SCAN_METHODS:
        ours = lambda a: rj.linear_scan(a, b, reverse=reverse, method=method)  # noqa: B023
        assert_close(ours(a), _scan_reference(a, b, reverse))
        ours_value, ours_d_a = loss(ours)(a)
        assert ours_d_a.shape == (2,)
        assert_close(ours_value, value, 1e-10 * float(value))
        assert_close(ours_d_a, d_a, 1e-10 * float(jnp.max(jnp.abs(d_a))))


def test_linear_scan_time_major_and_empty(x64):
    a, b, h0 = _problem("r", (2, 5, 3))
    ours = rj.linear_scan(a.swapaxes(0, 1), b.swapaxes(0, 1), h0, time_major=True)
    assert_close(ours.swapaxes(0, 1), rj.linear_scan(a, b, h0))
    assert rj.linear_scan(a[:, :0], b[:, :0], h0).shape == (2, 0, 3)


def test_linear_scan_errors_name_what_was_expected():
    b = jnp.ones((2, 5, 3))
    with pytest.raises(ValueError, match=r"a \(4,\) must broadcast"):
        rj.linear_scan(jnp.ones(4), b)
    with pytest.raises(ValueError, match=r"h0 must be \(B, \.\.\.\) = \(2, 3\)"):
        rj.linear_scan(b, b, jnp.ones((3,)))
    with pytest.raises(TypeError, match=r"resets must be bool \(2, 5\), got dtype float32"):
        rj.linear_scan(b, b, resets=jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="method must be one of"):
        rj.linear_scan(b, b, method="fast")
    with pytest.raises(TypeError, match="b must be floating or complex"):
        rj.linear_scan(b, jnp.ones((2, 5, 3), jnp.int32))


LINEAR_CELLS = {
    "mingru": rj.mingru.cell,
    "mingru_log": rj.mingru.log_space,
    "minlstm": rj.minlstm.cell,
    "minlstm_log": rj.minlstm.log_space,
    "lru": rj.lru.cell,
    "lru_n5": rj.lru.with_state_size(5),
}


@pytest.mark.parametrize("name", list(LINEAR_CELLS))
def test_linear_cells_pass_check_cell(name, x64):
    input_size = 3 if name == "lru" else 2  # the LRU's diagonal skip needs I == H
    report = rj.check_cell(LINEAR_CELLS[name], input_size=input_size, hidden_size=3,
                           batch_size=2, num_steps=3, num_directions=1)  # fmt: skip
    assert report.ok and max(max(row.errors) for row in report.rows) < 1e-12


def _cell_problem(name, rng, batch_size=3, num_steps=9):
    """Random params (N(0, 0.5^2); the LRU's from its init, whose eigenvalue parametrisation
    needs |lambda| < 1), inputs, and a positive initial carry (as the log-space models')."""
    cell = LINEAR_CELLS[name]
    params = cell.init(jax.random.PRNGKey(0), 3, 3, dtype=jnp.float64)
    if not name.startswith("lru"):
        params = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 0.5, p.shape)), params)
    xs = jnp.asarray(rng.normal(size=(batch_size, num_steps, 3)))
    zero = cell.zero_carry(batch_size, 3, jnp.float64)
    carry = jax.tree.map(lambda z: z + jnp.asarray(rng.uniform(0.1, 1.0, z.shape)), zero)
    return cell, params, xs, carry


def _summary(final, hs, weights):
    """A real scalar reading every output and every leaf of the final carry."""
    leaves = sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree.leaves(final))
    return jnp.sum(hs * weights) + leaves


PARALLEL_CASES = [(name, reverse) for name in ("mingru", "minlstm", "lru") for reverse in (0, 1)]
PARALLEL_CASES += [("lru_n5", True), ("mingru_log", False), ("minlstm_log", False)]


@pytest.mark.parametrize(("name", "reverse"), PARALLEL_CASES)
def test_parallel_equals_sequential_values_and_gradients(name, reverse, x64):
    cell, params, xs, carry = _cell_problem(name, np.random.default_rng(5))
    options = dict(lengths=jnp.array([9, 5, 0]), reverse=reverse)
    resets = np.zeros((3, 9), bool)
    resets[0, 4] = True
    weights = _weights((3, 9, 3))

    def loss(mode, gradient="autodiff"):
        def value(params, xs, carry):
            final, hs = rj.unroll(cell, params, xs, carry, mode=mode, gradient=gradient,
                                  resets=jnp.asarray(resets), **options)  # fmt: skip
            return _summary(final, hs, weights)

        return jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2)))

    args = (params, xs, carry)
    expected = loss("sequential")(*args)
    for gradient in ("autodiff", "manual"):
        assert_close(loss("parallel", gradient)(*args), expected)


@pytest.mark.parametrize("name", ["mingru", "lru"])
def test_every_scan_method_of_a_cell_agrees(name, x64):
    """``cell.parallel`` by each ``linear_scan`` method, with lengths and resets."""
    cell, params, xs, carry = _cell_problem(name, np.random.default_rng(6), num_steps=70)
    xs_tm = xs.swapaxes(0, 1)
    valid = jnp.arange(70)[:, None] < jnp.array([70, 33, 0])[None, :]
    starts = jnp.zeros((70, 3), bool).at[20, 0].set(True)
    weights = _weights((70, 3, 3))

    def loss(method):
        def value(params, xs_tm, carry):
            final, hs = cell.parallel(params, xs_tm, carry, valid, starts, method=method)
            return _summary(final, hs, weights)

        return jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2)))

    expected = loss("auto")((params, xs_tm, carry)[0], xs_tm, carry)
    for method in SCAN_METHODS:
        assert_close(loss(method)(params, xs_tm, carry), expected)


def test_parallel_is_the_default_and_bptt_uses_the_cell(x64):
    params = rj.minlstm.init(jax.random.PRNGKey(0), 3, 4, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 3), jnp.float64)
    d_hs = jnp.ones((2, 6, 4))
    _, vjp = jax.vjp(lambda p, x: rj.unroll(rj.minlstm, p, x)[1], params, xs)
    d_params, d_xs, _ = rj.bptt(rj.minlstm, params, xs, d_hs)
    assert_close((d_params, d_xs), vjp(d_hs))


def test_mode_errors():
    params = rj.lstm.init(jax.random.PRNGKey(0), 3, 4)
    xs = jnp.ones((2, 5, 3))
    with pytest.raises(ValueError, match="mode= with cell=: mode='parallel' needs a linear"):
        rj.unroll(rj.lstm, params, xs, mode="parallel")
    with pytest.raises(ValueError, match="mode must be one of"):
        rj.unroll(rj.lstm, params, xs, mode="fast")
    params = rj.mingru.init(jax.random.PRNGKey(0), 3, 4)
    with pytest.raises(ValueError, match="mode= with truncate=: truncate= runs step by step"):
        rj.unroll(rj.mingru, params, xs, gradient="manual", truncate=2, mode="parallel")
    _, hs = rj.unroll(rj.mingru, params, xs, gradient="manual", truncate=2, mode="sequential")
    _, picked = rj.unroll(rj.mingru, params, xs, gradient="manual", truncate=2)  # mode=None
    assert hs.shape == (2, 5, 4) and bool(jnp.all(hs == picked))


def test_long_float32_scan_matches_a_float64_log_space_evaluation():
    """The paper's reason for log space: at T=16384 with gates near 1, cumulative products
    underflow. ``linear_scan`` never divides by them; compare in float32 against the
    log-space formula ``log h_t = logcumsumexp(log b_s + sum_{s<r<=t} log a_r)`` in float64."""
    rng = np.random.default_rng(0)
    num_steps = 16384
    log_a = np.log(rng.uniform(0.9, 1.0, (num_steps, 2)))
    b = rng.uniform(0.0, 0.1, (num_steps, 2))
    ours = rj.linear_scan(jnp.asarray(np.exp(log_a), jnp.float32)[None],
                          jnp.asarray(b, jnp.float32)[None])[0]  # fmt: skip
    prefix = np.cumsum(log_a, axis=0)
    log_h = prefix + np.logaddexp.accumulate(np.log(b) - prefix, axis=0)
    np.testing.assert_allclose(np.asarray(ours), np.exp(log_h), rtol=1e-4)


def _ema_cell():
    """A user's linear cell, ``h' = a * h + (1 - a) * (x @ w)`` with ``a = sigmoid(alpha)``,
    given as a ``LinearForm``: only the coefficients, no scan, masks or carry handling."""

    def init(key, input_size, hidden_size, *, dtype=jnp.float32):
        k_w, k_a = jax.random.split(key)
        return {"w": jax.random.normal(k_w, (input_size, hidden_size), dtype),
                "alpha": jax.random.normal(k_a, (hidden_size,), dtype)}  # fmt: skip

    def step(params, h, x):
        a = jax.nn.sigmoid(params["alpha"])
        h = a * h + (1 - a) * (x @ params["w"])
        return h, h

    def coefficients(params, xs, h0):
        a = jax.nn.sigmoid(params["alpha"])
        b = (1 - a) * (xs @ params["w"])
        return jnp.broadcast_to(a, b.shape), b, h0

    sizes = lambda p: p["w"].shape
    return rj.make_cell("ema", init, step, sizes=sizes, linear=rj.LinearForm(coefficients))


def test_a_users_linear_form_gets_lengths_resets_and_carry_from_the_library(x64):
    cell = _ema_cell()
    params = cell.init(jax.random.PRNGKey(0), 3, 4, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 7, 3), jnp.float64)
    options = dict(lengths=jnp.array([7, 3, 0]), resets=jnp.zeros((3, 7), bool).at[0, 4].set(True))
    for reverse in (False, True):
        parallel = rj.unroll(cell, params, xs, mode="parallel", reverse=reverse, **options)
        steps = rj.unroll(cell, params, xs, mode="sequential", reverse=reverse, **options)
        assert_close(parallel, steps, 1e-12)
    report = rj.check_cell(cell, 3, 4)
    assert report.ok and "parallel" in report.stages
    with pytest.raises(ValueError, match="parallel= or linear="):
        rj.make_cell("both", cell.init, cell.step, parallel=cell.parallel,
                     linear=rj.LinearForm(lambda *a: None))  # fmt: skip


@pytest.mark.parametrize("cell", [rj.lru.cell, rj.mingru.cell, rj.minlstm.cell, rj.rglru.cell],
                         ids=lambda cell: cell.name)  # fmt: skip
def test_parallel_runs_an_empty_sequence(cell):
    """T = 0 in parallel mode: no outputs and the initial carry back, as step by step."""
    params = cell.init(jax.random.PRNGKey(0), 4, 4)
    carry = jax.tree.map(lambda leaf: leaf + 0.5, cell.zero_carry(2, 4))
    final, hs = rj.unroll(cell, params, jnp.zeros((2, 0, 4)), carry, mode="parallel")
    assert hs.shape == (2, 0, 4)
    assert_close(final, carry, 0)
