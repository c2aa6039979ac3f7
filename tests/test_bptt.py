"""Hand-written BPTT (``rj.bptt`` and ``unroll(gradient="manual")``) against three oracles:

* ``jax.vjp`` through ``unroll(gradient="autodiff")`` (full BPTT),
* ``rnn_jax.gradcheck.truncated_reference_grads``, the windowed ``stop_gradient`` loss
  (truncated BPTT; each row run alone, so lengths and reverse are checked too),
* PyTorch autograd on the same weights (``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``, float64).

float64 runs under ``jax.enable_x64(True)`` as a context manager, so nothing leaks into
other test modules; float32 runs with x64 off, as users run it.

Not tested on purpose: ``jax.jacfwd`` / ``jax.jvp`` through ``gradient="manual"``.
``jax.custom_vjp`` functions support reverse mode only; forward mode raises a TypeError
by design (use ``gradient="autodiff"`` for forward-mode derivatives).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELLS, examples, random_carry, random_params
from hypothesis import given, settings
from hypothesis import strategies as st

import rnn_jax as rj
from rnn_jax.cells.base import LSTMCarry, hidden_of, with_hidden
from rnn_jax.gradcheck import truncated_reference_grads

TOL = {"float64": 1e-10, "float32": 1e-5}


# ----------------------------------------------------------------------------------------
# Random problems
# ----------------------------------------------------------------------------------------


def random_problem(rng, cell, shape, dtype, *, time_major, with_carry, with_d_carry):
    """``(params, xs, carry, d_hs, d_carry)``; ``shape = (B, T, I, H)``; carry/d_carry may be
    None (then unroll and bptt use zeros)."""
    batch_size, num_steps, input_size, hidden_size = shape
    seq = (num_steps, batch_size) if time_major else (batch_size, num_steps)
    params = random_params(rng, cell, input_size, hidden_size, dtype)
    xs = jnp.asarray(rng.normal(size=(*seq, input_size)), dtype)
    d_hs = jnp.asarray(rng.normal(size=(*seq, hidden_size)), dtype)
    carry = random_carry(rng, cell, batch_size, hidden_size, dtype) if with_carry else None
    d_carry = random_carry(rng, cell, batch_size, hidden_size, dtype) if with_d_carry else None
    return params, xs, carry, d_hs, d_carry


@st.composite
def problems(draw, *, min_steps=1, max_steps=9, max_batch=4):
    """Everything random about one BPTT problem, as plain Python values."""
    num_steps = draw(st.integers(min_steps, max_steps))
    batch_size = draw(st.integers(1, max_batch))
    lengths = draw(
        st.none() | st.lists(st.integers(0, num_steps), min_size=batch_size, max_size=batch_size)
    )
    return dict(
        cell=draw(st.sampled_from(sorted(CELLS))),
        shape=(batch_size, num_steps, draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        lengths=lengths,
        reverse=draw(st.booleans()),
        time_major=draw(st.booleans()),
        with_carry=draw(st.booleans()),
        with_d_carry=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float32", "float64"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@functools.partial(jax.jit, static_argnames=("cell", "reverse", "time_major", "truncate"))
def manual_and_autodiff(
    cell, params, xs, carry, d_hs, d_carry, lengths, *, reverse, time_major, truncate=None
):
    """``(autodiff, manual_vjp, bptt)``, each ``(d_params, d_xs, d_carry0)``.

    ``autodiff`` and ``manual_vjp`` are ``jax.vjp`` through ``unroll`` with
    ``gradient="autodiff"`` / ``"manual"`` applied to ``(d_carry, d_hs)``; ``autodiff`` is
    None when truncating. Their ``d_carry0`` is None when ``carry`` is None. One jit per
    problem: a single compile instead of one per primitive per new shape.
    """
    config = dict(lengths=lengths, reverse=reverse, time_major=time_major)

    def vjp(gradient, trunc):
        def run(p, x, c):
            return rj.unroll(cell, p, x, c, gradient=gradient, truncate=trunc, **config)

        (final, _), pullback = jax.vjp(run, params, xs, carry)
        d_final = jax.tree.map(jnp.zeros_like, final) if d_carry is None else d_carry
        return pullback((d_final, d_hs))

    autodiff = None if truncate is not None else vjp("autodiff", None)
    manual = bptt_of(cell, params, xs, carry, d_hs, d_carry, truncate, config)
    return autodiff, vjp("manual", truncate), manual


def bptt_of(cell, params, xs, carry, d_hs, d_carry, truncate, config):
    return rj.bptt(cell, params, xs, d_hs, carry, d_carry=d_carry, truncate=truncate, **config)


def solve(problem, truncate=None):
    """Draw the arrays of ``problem`` and return them with the three gradients."""
    cell = CELLS[problem["cell"]]
    rng = np.random.default_rng(problem["seed"])
    arrays = random_problem(
        rng,
        cell,
        problem["shape"],
        jnp.dtype(problem["dtype"]),
        time_major=problem["time_major"],
        with_carry=problem["with_carry"],
        with_d_carry=problem["with_d_carry"],
    )
    lengths = problem["lengths"]
    lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    grads = manual_and_autodiff(
        cell,
        *arrays,
        lengths,
        reverse=problem["reverse"],
        time_major=problem["time_major"],
        truncate=truncate,
    )
    return arrays, grads


def assert_grads_close(got, want, dtype):
    """``(d_params, d_xs, d_carry0)`` trees; ``want``'s None (no given carry) is skipped."""
    tol = TOL[jnp.dtype(dtype).name]
    got_params, got_xs, got_carry = got
    want_params, want_xs, want_carry = want
    assert got_params["w_x"].dtype == dtype
    chex.assert_trees_all_close(got_params, want_params, atol=tol, rtol=tol)
    chex.assert_trees_all_close(got_xs, want_xs, atol=tol, rtol=tol)
    if want_carry is not None:
        chex.assert_trees_all_close(got_carry, want_carry, atol=tol, rtol=tol)


# ----------------------------------------------------------------------------------------
# Full BPTT vs autodiff
# ----------------------------------------------------------------------------------------


@settings(max_examples=examples(30), deadline=None)
@given(problem=problems())
def test_manual_matches_autodiff(problem):
    with jax.enable_x64(problem["dtype"] == "float64"):
        (_, xs, carry, _, _), (autodiff, manual_vjp, manual) = solve(problem)
        assert_grads_close(manual, autodiff, xs.dtype)
        assert_grads_close(manual_vjp, autodiff, xs.dtype)
        # Without a given carry bptt still returns dL/d(zero carry), shaped like a carry.
        batch_size, hidden_size = problem["shape"][0], problem["shape"][3]
        zero = CELLS[problem["cell"]].zero_carry(batch_size, hidden_size, xs.dtype)
        chex.assert_trees_all_equal_shapes_and_dtypes(manual[2], zero if carry is None else carry)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_lengths_zero_and_full_reverse_time_major(name):
    """The boundary lengths 0 and T in one batch, reversed, time-major, float64."""
    problem = dict(
        cell=name,
        shape=(3, 5, 2, 3),
        lengths=[0, 5, 2],
        reverse=True,
        time_major=True,
        with_carry=True,
        with_d_carry=True,
        dtype="float64",
        seed=7,
    )
    with jax.enable_x64(True):
        (_, _, carry, _, d_carry), (autodiff, manual_vjp, manual) = solve(problem)
        assert_grads_close(manual, autodiff, jnp.float64)
        assert_grads_close(manual_vjp, autodiff, jnp.float64)
        # A length-0 row is the identity: its carry gradient is d_carry bit for bit.
        chex.assert_trees_all_equal(
            jax.tree.map(lambda a: a[0], manual[2]), jax.tree.map(lambda a: a[0], d_carry)
        )


# ----------------------------------------------------------------------------------------
# Truncated BPTT vs the windowed stop_gradient reference
# ----------------------------------------------------------------------------------------

TRUNCATIONS = {
    "1": lambda num_steps: 1,
    "2": lambda num_steps: 2,
    "T-1": lambda num_steps: num_steps - 1,
    "T": lambda num_steps: num_steps,
    "T+3": lambda num_steps: num_steps + 3,
}


@pytest.mark.parametrize("which", list(TRUNCATIONS))
@settings(max_examples=examples(3), deadline=None)
@given(problem=problems(min_steps=2, max_steps=7, max_batch=3))
def test_truncated_matches_windowed_reference(which, problem):
    truncate = TRUNCATIONS[which](problem["shape"][1])
    with jax.enable_x64(problem["dtype"] == "float64"):
        (params, xs, carry, d_hs, d_carry), (_, manual_vjp, manual) = solve(problem, truncate)
        lengths = problem["lengths"]
        reference = truncated_reference_grads(
            CELLS[problem["cell"]],
            params,
            xs,
            d_hs,
            carry,
            d_carry=d_carry,
            lengths=None if lengths is None else np.asarray(lengths),
            reverse=problem["reverse"],
            time_major=problem["time_major"],
            truncate=truncate,
        )
        if carry is None:  # the reference differentiates the zero carry; unroll's vjp cannot
            reference = reference[:2] + (None,)
        assert_grads_close(manual, reference, xs.dtype)
        assert_grads_close(manual_vjp, reference, xs.dtype)


NO_FLAGS = dict(time_major=False, with_d_carry=False)


@pytest.mark.parametrize("name", ["simple", "gru"])
def test_truncation_window_semantics(name):
    """The definition itself, on a loss that reads only the last output h_{T-1} (T = 3):
    k = 1 reaches only x_{T-1}; k = T reaches x_0 but not the initial carry; k = T + 1 is
    full BPTT. Checked for both bptt and the reference, so neither can silently ignore k."""
    cell = CELLS[name]
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        params, xs, carry, _, _ = random_problem(
            rng, cell, (2, 3, 2, 3), jnp.float64, **NO_FLAGS, with_carry=True
        )
        d_hs = jnp.zeros((2, 3, 3)).at[:, -1].set(jnp.asarray(rng.normal(size=(2, 3))))

        args = (cell, params, xs, d_hs, carry)
        manual = {k: rj.bptt(*args, truncate=k) for k in (1, 3, 4, None)}
        for k in (1, 3, 4):
            reference = truncated_reference_grads(*args, truncate=k)
            chex.assert_trees_all_close(manual[k], reference, atol=1e-12, rtol=1e-12)
        zero_carry = jax.tree.map(jnp.zeros_like, carry)
        (_, d_xs_1, d_c_1), (_, d_xs_3, d_c_3), (_, _, d_c_4) = manual[1], manual[3], manual[4]
        np.testing.assert_array_equal(d_xs_1[:, :2], 0)
        assert np.abs(d_xs_1[:, 2]).min() > 0
        chex.assert_trees_all_close(d_c_1, zero_carry, atol=0)
        assert np.abs(d_xs_3[:, 0]).max() > 1e-6
        chex.assert_trees_all_close(d_c_3, zero_carry, atol=0)
        assert np.abs(hidden_of(d_c_4)).max() > 1e-6
        chex.assert_trees_all_close(manual[4], manual[None], atol=1e-12, rtol=1e-12)


# ----------------------------------------------------------------------------------------
# PyTorch autograd on identical weights
# ----------------------------------------------------------------------------------------

TORCH_MODULES = {
    "simple": ("RNN", {"nonlinearity": "tanh"}),
    "relu": ("RNN", {"nonlinearity": "relu"}),
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
}


def params_from_torch(module, name):
    """rnn_jax params from a PyTorch module: ``w_x = W_ih^T``, ``w_h = W_hh^T``; one fused
    ``b = b_ih + b_hh`` for Elman/LSTM, GRU keeps ``b_x = b_ih``, ``b_h = b_hh``."""

    def arr(t):
        return jnp.asarray(t.detach().numpy())

    params = {"w_x": arr(module.weight_ih_l0).T, "w_h": arr(module.weight_hh_l0).T}
    if name == "gru":
        params.update(b_x=arr(module.bias_ih_l0), b_h=arr(module.bias_hh_l0))
    else:
        params["b"] = arr(module.bias_ih_l0) + arr(module.bias_hh_l0)
    return params


@pytest.mark.parametrize("name", sorted(CELLS))
def test_bptt_matches_pytorch(name):
    torch = pytest.importorskip("torch")
    batch_size, num_steps, input_size, hidden_size = shape = (3, 6, 4, 5)
    kind, kwargs = TORCH_MODULES[name]
    torch.manual_seed(sum(shape) + len(name))
    module = getattr(torch.nn, kind)(
        input_size, hidden_size, batch_first=True, dtype=torch.float64, **kwargs
    )
    rng = np.random.default_rng(11)
    xs_np = rng.normal(size=(batch_size, num_steps, input_size))
    d_hs_np = rng.normal(size=(batch_size, num_steps, hidden_size))
    h0_np, c0_np, d_h_np, d_c_np = rng.normal(size=(4, batch_size, hidden_size))

    xs_t = torch.tensor(xs_np, requires_grad=True)
    h0_t = torch.tensor(h0_np[None], requires_grad=True)
    c0_t = torch.tensor(c0_np[None], requires_grad=True)
    if name == "lstm":
        hs_t, (h_n, c_n) = module(xs_t, (h0_t, c0_t))
        loss = (c_n[0] * torch.tensor(d_c_np)).sum()
    else:
        hs_t, h_n = module(xs_t, h0_t)
        loss = 0
    loss = loss + (hs_t * torch.tensor(d_hs_np)).sum() + (h_n[0] * torch.tensor(d_h_np)).sum()
    loss.backward()

    cell = CELLS[name]
    with jax.enable_x64(True):
        params = params_from_torch(module, name)
        j = jnp.asarray
        carry, d_carry = j(h0_np), j(d_h_np)
        if name == "lstm":
            carry, d_carry = LSTMCarry(carry, j(c0_np)), LSTMCarry(d_carry, j(d_c_np))
        _, hs = rj.unroll(cell, params, j(xs_np), carry)
        d_params, d_xs, d_carry0 = rj.bptt(
            cell, params, j(xs_np), j(d_hs_np), carry, d_carry=d_carry
        )

    def grad_of(t):
        return t.grad.numpy()

    tol = dict(atol=1e-10, rtol=1e-10)
    chex.assert_trees_all_close(np.asarray(hs), hs_t.detach().numpy(), **tol)
    chex.assert_trees_all_close(np.asarray(d_xs), grad_of(xs_t), **tol)
    chex.assert_trees_all_close(np.asarray(hidden_of(d_carry0)), grad_of(h0_t)[0], **tol)
    if name == "lstm":
        chex.assert_trees_all_close(np.asarray(d_carry0.c), grad_of(c0_t)[0], **tol)
    chex.assert_trees_all_close(np.asarray(d_params["w_x"]), grad_of(module.weight_ih_l0).T, **tol)
    chex.assert_trees_all_close(np.asarray(d_params["w_h"]), grad_of(module.weight_hh_l0).T, **tol)
    if name == "gru":
        chex.assert_trees_all_close(np.asarray(d_params["b_x"]), grad_of(module.bias_ih_l0), **tol)
        chex.assert_trees_all_close(np.asarray(d_params["b_h"]), grad_of(module.bias_hh_l0), **tol)
    else:
        # The fused bias b = b_ih + b_hh: each torch bias sees the full gradient.
        for bias in (module.bias_ih_l0, module.bias_hh_l0):
            chex.assert_trees_all_close(np.asarray(d_params["b"]), grad_of(bias), **tol)


# ----------------------------------------------------------------------------------------
# Transformations: jit and vmap over a batch of sequences
# ----------------------------------------------------------------------------------------


def linear_loss(cell, params, xs, lengths, w, u, *, gradient, truncate=None):
    """``<w, hs> + <u, h_final>``: its cotangents are ``w`` and ``u``, so bptt can be
    called with them directly."""
    final, hs = rj.unroll(cell, params, xs, lengths=lengths, gradient=gradient, truncate=truncate)
    return jnp.vdot(w, hs) + jnp.vdot(u, hidden_of(final))


def partial_loss(cell, params, xs, carry0, lengths, w, *, reads, gradient, truncate=None):
    """A loss that reads only part of ``unroll``'s output, so JAX hands the manual VJP a
    *symbolic* zero for the rest: ``"final"`` reads the final h (classification),
    ``"cell"`` the final LSTM c only, ``"outputs"`` the hs only (a language model)."""
    final, hs = rj.unroll(
        cell, params, xs, carry0, lengths=lengths, gradient=gradient, truncate=truncate
    )
    if reads == "outputs":
        return jnp.vdot(w, hs)
    return jnp.vdot(w[:, -1], final.c if reads == "cell" else hidden_of(final))


@pytest.mark.parametrize(
    ("name", "reads"),
    [(n, r) for n in sorted(CELLS) for r in ("final", "outputs")] + [("lstm", "cell")],
)
def test_manual_grad_of_a_loss_that_reads_part_of_the_output(name, reads):
    """Grads w.r.t. params, xs and the initial carry equal autodiff's (full BPTT) and, with
    truncation, ``rj.bptt`` given explicit zeros for the part the loss does not read."""
    cell = CELLS[name]
    batch_size, num_steps, input_size, hidden_size = 3, 6, 2, 4
    rng = np.random.default_rng(11)
    with jax.enable_x64(True):
        params = random_params(rng, cell, input_size, hidden_size, jnp.float64)
        xs = jnp.asarray(rng.normal(size=(batch_size, num_steps, input_size)))
        carry0 = random_carry(rng, cell, batch_size, hidden_size, jnp.float64)
        w = jnp.asarray(rng.normal(size=(batch_size, num_steps, hidden_size)))
        lengths = jnp.asarray([num_steps, 3, 0])

        def grads(gradient, truncate=None):
            loss = functools.partial(
                partial_loss, cell, reads=reads, gradient=gradient, truncate=truncate
            )
            return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, xs, carry0, lengths, w)

        chex.assert_trees_all_close(grads("manual"), grads("autodiff"), atol=1e-12, rtol=1e-12)

        zero = jax.tree.map(jnp.zeros_like, carry0)
        d_hs = w if reads == "outputs" else jnp.zeros_like(w)
        d_final = zero
        if reads == "final":
            d_final = with_hidden(zero, w[:, -1])
        elif reads == "cell":
            d_final = zero._replace(c=w[:, -1])
        explicit = rj.bptt(
            cell, params, xs, d_hs, carry0, d_carry=d_final, lengths=lengths, truncate=2
        )
        chex.assert_trees_all_close(grads("manual", truncate=2), explicit, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(("name", "truncate"), [("lstm", None), ("gru", 2)])
def test_jit_vmap_grad_manual(name, truncate):
    """``jit(vmap(grad(...)))`` of a ``gradient="manual"`` loss over N sequences (own lengths)
    equals ``rj.bptt`` (itself checked against autodiff above) run on each sequence alone;
    so does ``vmap(rj.bptt)``."""
    cell = CELLS[name]
    num_seqs, batch_size, num_steps, input_size, hidden_size = 3, 2, 5, 3, 4
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        params = random_params(rng, cell, input_size, hidden_size, jnp.float64)
        xs = jnp.asarray(rng.normal(size=(num_seqs, batch_size, num_steps, input_size)))
        w = jnp.asarray(rng.normal(size=(num_seqs, batch_size, num_steps, hidden_size)))
        u = jnp.asarray(rng.normal(size=(num_seqs, batch_size, hidden_size)))
        lengths = jnp.asarray(rng.integers(0, num_steps + 1, (num_seqs, batch_size)), jnp.int32)

        grad = jax.grad(functools.partial(linear_loss, cell, gradient="manual", truncate=truncate))
        batched = jax.jit(jax.vmap(grad, in_axes=(None, 0, 0, 0, 0)))(params, xs, lengths, w, u)

        @jax.jit
        def bptt_one(x, ln, w_n, u_n):
            zero = cell.zero_carry(batch_size, hidden_size, jnp.float64)
            d_carry = with_hidden(zero, u_n)
            return rj.bptt(cell, params, x, w_n, d_carry=d_carry, lengths=ln, truncate=truncate)

        vmapped_bptt = jax.vmap(bptt_one)(xs, lengths, w, u)
        for n in range(num_seqs):
            d_params, d_xs, _ = bptt_one(xs[n], lengths[n], w[n], u[n])
            chex.assert_trees_all_close(
                jax.tree.map(lambda a, n=n: a[n], batched), d_params, atol=1e-12, rtol=1e-12
            )
            chex.assert_trees_all_close(
                jax.tree.map(lambda a, n=n: a[n], vmapped_bptt[:2]),
                (d_params, d_xs),
                atol=1e-12,
                rtol=1e-12,
            )
        if truncate is None:  # and the full gradient is autodiff's
            want = jax.vmap(
                jax.grad(functools.partial(linear_loss, cell, gradient="autodiff")),
                in_axes=(None, 0, 0, 0, 0),
            )(params, xs, lengths, w, u)
            chex.assert_trees_all_close(batched, want, atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------


@pytest.fixture
def small():
    params = rj.lstm.init(jax.random.PRNGKey(0), 3, 4)
    xs = jnp.ones((2, 5, 3))
    return params, xs, jnp.ones((2, 5, 4))


@pytest.mark.parametrize("truncate", [0, -1, 1.5])
def test_bad_truncate(small, truncate):
    params, xs, d_hs = small
    with pytest.raises(ValueError, match="truncate must be None"):
        rj.bptt(rj.lstm, params, xs, d_hs, truncate=truncate)
    with pytest.raises(ValueError, match="truncate must be None"):
        rj.unroll(rj.lstm, params, xs, gradient="manual", truncate=truncate)


def test_truncate_needs_manual_gradient(small):
    params, xs, _ = small
    with pytest.raises(ValueError, match="gradient='manual'"):
        rj.unroll(rj.lstm, params, xs, truncate=2)


@pytest.mark.parametrize(
    "d_hs",
    [jnp.ones((2, 5, 3)), jnp.ones((2, 4, 4)), jnp.ones((5, 2, 4)), jnp.ones((2, 5, 4, 1))],
    ids=["hidden", "time", "time-major", "ndim"],
)
def test_d_hs_wrong_shape(small, d_hs):
    params, xs, _ = small
    with pytest.raises(ValueError, match=r"d_hs must be \(2, 5, 4\)"):
        rj.bptt(rj.lstm, params, xs, d_hs)


def test_d_hs_wrong_dtype(small):
    params, xs, d_hs = small
    with pytest.raises((TypeError, ValueError), match="d_hs must be .* float32"):
        rj.bptt(rj.lstm, params, xs, d_hs.astype(jnp.bfloat16))


def test_d_carry_wrong_structure(small):
    params, xs, d_hs = small
    with pytest.raises(TypeError, match=r"d_carry must be LSTMCarry\(h, c\)"):
        rj.bptt(rj.lstm, params, xs, d_hs, d_carry=jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"d_carry.c must be \(2, 4\)"):
        rj.bptt(rj.lstm, params, xs, d_hs, d_carry=LSTMCarry(jnp.ones((2, 4)), jnp.ones((2, 3))))
    gru_params = rj.gru.init(jax.random.PRNGKey(0), 3, 4)
    with pytest.raises(TypeError, match="d_carry must be one"):
        rj.bptt(rj.gru, gru_params, xs, d_hs, d_carry=LSTMCarry(jnp.ones((2, 4)), jnp.ones((2, 4))))


@pytest.mark.parametrize("d_hs", [jnp.ones((5,)), None, jnp.ones((2, 5))], ids=["1d", "none", "2d"])
def test_d_hs_not_3d_gets_the_clear_error(small, d_hs):
    params, xs, _ = small
    with pytest.raises((TypeError, ValueError), match=r"d_hs must be \(2, 5, 4\)"):
        rj.bptt(rj.lstm, params, xs, d_hs)


def test_truncate_accepts_numpy_ints_and_refuses_bools(small):
    params, xs, d_hs = small
    chex.assert_trees_all_close(
        rj.bptt(rj.lstm, params, xs, d_hs, truncate=np.int64(2)),
        rj.bptt(rj.lstm, params, xs, d_hs, truncate=2),
    )
    with pytest.raises(ValueError, match="truncate must be None"):
        rj.bptt(rj.lstm, params, xs, d_hs, truncate=True)  # a bool is not a step count
