"""rj.slstm, xLSTM's sLSTM cell: its hand-written backward against jax.grad (check_cell), its
values and gradients against the ``xlstm`` package's own sLSTM (the pure-PyTorch "vanilla"
backend, float64, on CPU) on weights converted by ``interop``, the stabiliser's claims (the
outputs do not depend on it, its gradient contribution cancels, the convention at a tie), and
the cell through every driver."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, optional_import

import rnn_jax as rj
from rnn_jax import interop, models
from rnn_jax.cells.slstm import SLSTMCarry

torch, needs_torch = optional_import("torch")
xlstm, needs_xlstm = optional_import("xlstm")


def _problem(cell, hidden, *, batch=2, steps=5, inputs=3, seed=0, empty=False):
    """float64 params (recurrent weights and biases random too), xs and a carry (the zero
    carry, or a non-empty one: ``n > 0``)."""
    rng = np.random.default_rng(seed)
    params = cell.init(jax.random.PRNGKey(seed), inputs, hidden, dtype=jnp.float64,
                       bias_init="standard", recurrent_init="standard")  # fmt: skip
    params = {k: v + jnp.asarray(0.3 * rng.normal(size=v.shape)) for k, v in params.items()}
    xs = jnp.asarray(rng.normal(size=(batch, steps, inputs)))
    normal = lambda: jnp.asarray(rng.normal(size=(batch, hidden)))
    carry = cell.zero_carry(batch, hidden, jnp.float64)
    if not empty:
        carry = SLSTMCarry(normal(), normal(), jnp.exp(normal()), normal())
    return params, xs, carry


def test_check_cell_float64(x64):
    """Contract, one step vs jax.vjp, and rj.bptt full and truncated (truncate=2, uneven
    lengths) vs jax.grad and finite differences, at random carries (negative normalisers
    included): this is the cell's test of rj.bptt with truncation. Two heads of two units,
    sigmoid forget gate (the exponential one: test_exp_forget_gate_step_backward and
    test_stabiliser_gradient_contribution_cancels[exp])."""
    report = rj.check_cell(rj.slstm.configured(num_heads=2), 3, 4, batch_size=2, num_steps=4,
                           truncate=2, num_directions=1)  # fmt: skip
    assert report.ok and max(max(row.errors) for row in report.rows) < 1e-11


def test_exp_forget_gate_step_backward(x64):
    """The exponential forget gate (log f = f~): step_backward equals jax.vjp of step with
    random cotangents on every carry leaf, at several random carries and inputs."""
    cell = rj.slstm.configured(num_heads=2, forget_gate="exp")
    rng = np.random.default_rng(7)
    for seed in range(3):
        params, xs, carry = _problem(cell, 4, seed=seed)
        new, h, residuals = cell.step_forward(params, carry, xs[:, 0])
        d_h = jnp.asarray(rng.normal(size=h.shape))
        d_carry = SLSTMCarry(*(jnp.asarray(rng.normal(size=h.shape)) for _ in range(4)))
        _, vjp = jax.vjp(cell.step, params, carry, xs[:, 0])
        d_params, d_prev, d_x = vjp((d_carry, d_h))
        manual = cell.step_backward(params, residuals, d_h, d_carry)
        assert_close(manual, (d_params, d_x, d_prev), 1e-12)


# ---------------------------------------------------------------------------------------
# the reference: xlstm's sLSTMCell, vanilla backend


def _xlstm_cell(num_heads, hidden, params, *, backend="vanilla"):
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    config = sLSTMCellConfig(hidden_size=hidden, num_heads=num_heads, backend=backend)
    module = sLSTMCell(config, skip_backend_init=True).double()
    state, input_weight = interop.slstm_to_xlstm(params, backend=backend)
    module.load_state_dict(state)
    return module, input_weight


def _xlstm_run(module, input_weight, xs, carry):
    """The reference's hs (B, T, H) and final state (4, B, H) from our inputs."""
    batch, steps, _ = xs.shape
    out, final = module(xs @ input_weight.T, state=carry)
    hs = out.permute(0, 2, 1, 3).reshape(batch, steps, -1)  # (B, heads, T, D) -> (B, T, H)
    return hs, final


@needs_torch
@needs_xlstm
@pytest.mark.parametrize("empty", [True, False], ids=["zero_carry", "carry"])
def test_values_and_gradients_equal_xlstm(empty, x64):
    """On converted weights, float64: the outputs and the final (h, c, n, m), and the gradients
    of a loss of both (the raw c, n, m included) wrt w_x, r, b, xs and the initial carry,
    equal xlstm's autograd through its vanilla backend to float64 round-off. (From an empty
    carry the initial carry's gradient is not compared: see test_empty_carry_gradient.)"""
    cell, hidden = rj.slstm.configured(num_heads=2), 4
    params, xs, carry = _problem(cell, hidden, steps=6, empty=empty)
    rng = np.random.default_rng(1)
    w_hs = rng.normal(size=(2, 6, hidden))
    w_final = rng.normal(size=(4, 2, hidden))

    def loss(p, x, c):
        final, hs = rj.unroll(cell, p, x, c, gradient="manual")
        return jnp.sum(hs * w_hs) + jnp.sum(jnp.stack(final) * w_final), (final, hs)

    (_, (final, hs)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
        params, xs, carry
    )

    module, input_weight = _xlstm_cell(2, hidden, params)
    t_xs = torch.tensor(np.asarray(xs), requires_grad=True)
    t_state = torch.tensor(np.stack([np.asarray(a) for a in carry]), requires_grad=True)
    input_weight.requires_grad_(True)
    t_hs, t_final = _xlstm_run(module, input_weight, t_xs, t_state)
    (torch.sum(t_hs * torch.tensor(w_hs)) + torch.sum(t_final * torch.tensor(w_final))).backward()

    assert_close(hs, t_hs.detach().numpy(), 1e-12)
    assert_close(jnp.stack(final), t_final.detach().numpy(), 1e-12)
    theirs = interop.slstm_from_xlstm(
        {"_recurrent_kernel_": module._recurrent_kernel_.grad, "_bias_": module._bias_.grad},
        input_weight.grad,
    )
    assert_close(grads[0], theirs, 1e-11)
    assert_close(grads[1], t_xs.grad.numpy(), 1e-11)
    if not empty:
        assert_close(jnp.stack(grads[2]), t_state.grad.numpy(), 1e-11)


def test_empty_carry_gradient(x64):
    """A zero normaliser marks an empty state whose stabiliser counts as -inf: f' = 0, so the
    gradient wrt that carry's c and n is zero (and wrt its m too); h and m are still read."""
    cell = rj.slstm.configured(num_heads=2)
    params, xs, carry = _problem(cell, 4, empty=True)
    d_hs = jnp.ones((2, 5, 4))
    _, _, d_carry0 = rj.bptt(cell, params, xs, d_hs, carry)
    assert not np.any(d_carry0.c) and not np.any(d_carry0.n) and not np.any(d_carry0.m)
    assert np.all(np.abs(d_carry0.h) > 0)


@needs_torch
@needs_xlstm
def test_init_equals_xlstm_reset_parameters():
    """The bias initialisations are xlstm's, head by head, gate by gate (block 1 of 3 for the
    block-dependent power law); recurrent weights zero by default, as its default."""
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    for bias_init in ("powerlaw_blockdependent", "small_init", "zeros"):
        config = sLSTMCellConfig(hidden_size=12, num_heads=3, backend="vanilla",
                                 bias_init=bias_init, _block_idx=1, _num_blocks=3)  # fmt: skip
        module = sLSTMCell(config)
        ours = rj.slstm.configured(num_heads=3).init(
            jax.random.PRNGKey(0), 5, 12, bias_init=bias_init, block_index=1, num_blocks=3
        )
        theirs = module.bias[:].permute(1, 0, 2).reshape(-1)  # (heads, gates, D) -> gate-major
        np.testing.assert_allclose(ours["b"], theirs.numpy(), rtol=1e-6, atol=1e-6)
        assert not np.any(ours["r"]) and not torch.any(module.recurrent_kernel[:])


@needs_torch
@needs_xlstm
@pytest.mark.parametrize("backend", ["vanilla", "cuda"])
def test_interop_round_trips_and_layouts(backend):
    """xlstm -> rj -> xlstm and rj -> xlstm -> rj are bitwise; the converted r and b are the
    module's backend-independent external recurrent_kernel (heads, d_in, gates, d_out) and
    bias (heads, gates, D) whichever internal layout the backend keeps."""
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    config = sLSTMCellConfig(hidden_size=6, num_heads=2, backend=backend, bias_init="standard",
                             recurrent_weight_init="standard")  # fmt: skip
    module = sLSTMCell(config, skip_backend_init=True)
    input_weight = torch.randn(24, 5)
    params = interop.slstm_from_xlstm(module, input_weight)
    assert params["r"].shape == (2, 3, 4, 3)
    np.testing.assert_array_equal(params["r"], module.recurrent_kernel[:].numpy())
    np.testing.assert_array_equal(params["b"], module.bias[:].permute(1, 0, 2).reshape(-1))
    np.testing.assert_array_equal(params["w_x"], input_weight.numpy().T)
    state, weight = interop.slstm_to_xlstm(params, backend=backend)
    for key, value in module.state_dict().items():
        assert torch.equal(state[key], value), key
    assert torch.equal(weight, input_weight)
    again = interop.slstm_from_xlstm(state, weight, backend=backend)
    for key in params:
        np.testing.assert_array_equal(again[key], params[key])


def test_interop_refuses_bad_weights():
    rng = np.random.default_rng(0)
    state = {"_recurrent_kernel_": rng.normal(size=(2, 8, 2)), "_bias_": rng.normal(size=16)}
    with pytest.raises(ValueError, match=r"input_weight must be \(4H, I\) = \(16, I\)"):
        interop.slstm_from_xlstm(state, rng.normal(size=(12, 3)))
    with pytest.raises(ValueError, match=r"cuda sLSTMCell weights must be .*\(K, D, 4D\)"):
        interop.slstm_from_xlstm(state, rng.normal(size=(16, 3)), backend="cuda")
    with pytest.raises(ValueError, match="missing"):
        interop.slstm_from_xlstm({"_bias_": state["_bias_"]}, rng.normal(size=(16, 3)))
    with pytest.raises(ValueError, match="backend must be one of"):
        interop.slstm_to_xlstm({}, backend="triton")


# ---------------------------------------------------------------------------------------
# the stabiliser


def _stop_gradient_step(forget_gate):
    """An independent transcription of the equations whose stabiliser is a constant to
    autodiff (``stop_gradient``): if the stabiliser's gradient contribution cancels, its
    gradients of any loss of the outputs are rj.slstm's."""

    def step(params, carry, x):
        h, c, n, m = carry
        heads, dim = params["r"].shape[:2]
        rec = jnp.einsum("bkd,kdge->bgke", h.reshape(-1, heads, dim), params["r"])
        i, f, z, o = jnp.split(x @ params["w_x"] + params["b"] + rec.reshape(h.shape[0], -1), 4, -1)
        log_f = jax.nn.log_sigmoid(f) if forget_gate == "sigmoid" else f
        m_new = jax.lax.stop_gradient(jnp.where(n == 0, i, jnp.maximum(i, log_f + m)))
        i_gate = jnp.exp(i - m_new)
        f_gate = jnp.where(n == 0, 0.0, jnp.exp(log_f + m - m_new))
        c_new = f_gate * c + i_gate * jnp.tanh(z)
        n_new = f_gate * n + i_gate
        h_new = jax.nn.sigmoid(o) * c_new / n_new
        return SLSTMCarry(h_new, c_new, n_new, m_new), h_new

    return step


def test_outputs_do_not_depend_on_the_stabiliser(x64):
    """(c, n, m) -> (c e^-d, n e^-d, m + d) is the same state: every output is unchanged,
    for shifts either way."""
    cell = rj.slstm.configured(num_heads=2)
    params, xs, carry = _problem(cell, 4, steps=8)
    _, hs = rj.unroll(cell, params, xs, carry)
    for shift in (-4.0, 0.7, 6.0):
        scale = np.exp(-shift)
        shifted = carry._replace(c=carry.c * scale, n=carry.n * scale, m=carry.m + shift)
        assert_close(rj.unroll(cell, params, xs, shifted)[1], hs, 1e-12)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_stabiliser_gradient_contribution_cancels(forget_gate, x64):
    """For a loss of the outputs h: the hand-written BPTT's gradient wrt the initial m is
    exactly c dc + n dn (the invariance above, differentiated), and every gradient equals
    jax.grad of the transcription whose stabiliser is stop_gradient'ed."""
    cell = rj.slstm.configured(num_heads=2, forget_gate=forget_gate)
    params, xs, carry = _problem(cell, 4, steps=6, seed=2)
    d_hs = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 4)))
    manual = rj.bptt(cell, params, xs, d_hs, carry)
    d_carry0 = manual[2]
    assert_close(d_carry0.m, carry.c * d_carry0.c + carry.n * d_carry0.n, 1e-12)
    reference = rj.make_cell("stop_gradient_m", cell.init, _stop_gradient_step(forget_gate),
                             zero_carry=cell.zero_carry, sizes=cell.sizes)  # fmt: skip
    loss = lambda p, x: jnp.sum(rj.unroll(reference, p, x, carry, gradient="autodiff")[1] * d_hs)
    assert_close(manual[:2], jax.grad(loss, argnums=(0, 1))(params, xs), 1e-11)


def test_tie_in_the_stabiliser(x64):
    """At i~ == log f + m exactly (built: w_x = r = 0, b_i = log_sigmoid(b_f), m = 0) the max
    splits its derivative half and half, as jnp.maximum: step_backward equals jax.vjp with
    cotangents on every carry leaf (raw m included); and for a loss of h alone over a sequence
    the tie changes nothing: the gradients equal the stop_gradient transcription's."""
    cell = rj.slstm.configured(num_heads=2)
    params = cell.init(jax.random.PRNGKey(0), 3, 4, dtype=jnp.float64)
    b_f = jnp.asarray(np.random.default_rng(0).normal(size=4))
    b = params["b"].at[4:8].set(b_f).at[:4].set(jax.nn.log_sigmoid(b_f))
    params = {"w_x": jnp.zeros_like(params["w_x"]), "r": jnp.zeros_like(params["r"]), "b": b}
    rng = np.random.default_rng(1)
    carry = SLSTMCarry(*(jnp.asarray(rng.normal(size=(2, 4))) for _ in range(3)),
                       jnp.zeros((2, 4)))._replace(n=jnp.full((2, 4), 0.5))  # fmt: skip
    x = jnp.asarray(rng.normal(size=(2, 3)))
    new, h, residuals = cell.step_forward(params, carry, x)
    assert np.all(np.asarray(residuals.share_i) == 0.5)  # every unit at the tie
    d_h = jnp.asarray(rng.normal(size=(2, 4)))
    d_carry = SLSTMCarry(*(jnp.asarray(rng.normal(size=(2, 4))) for _ in range(4)))
    _, vjp = jax.vjp(cell.step, params, carry, x)
    d_params, d_prev, d_x = vjp((d_carry, d_h))
    assert_close(cell.step_backward(params, residuals, d_h, d_carry), (d_params, d_x, d_prev),
                 1e-12)  # fmt: skip

    # A sequence whose first step is the tie (then random inputs through the zero w_x).
    params = params | {"r": jnp.asarray(0.3 * rng.normal(size=params["r"].shape))}
    xs = jnp.asarray(rng.normal(size=(2, 4, 3))).at[:, 0].set(0.0)
    d_hs = jnp.asarray(rng.normal(size=(2, 4, 4)))
    reference = rj.make_cell("stop_gradient_m", cell.init, _stop_gradient_step("sigmoid"),
                             zero_carry=cell.zero_carry, sizes=cell.sizes)  # fmt: skip
    loss = lambda p: jnp.sum(rj.unroll(reference, p, xs, carry, gradient="autodiff")[1] * d_hs)
    assert_close(rj.bptt(cell, params, xs, d_hs, carry)[0], jax.grad(loss)(params), 1e-12)


# ---------------------------------------------------------------------------------------
# through every driver


def _manual_equals_autodiff(loss, params, tol=1e-11):
    grads = {g: jax.grad(lambda p, g=g: loss(p, g))(params) for g in ("manual", "autodiff")}
    assert_close(grads["manual"], grads["autodiff"], tol)


def test_unroll_lengths_reverse_resets_and_recurrent_dropout(x64):
    cell = rj.slstm.configured(num_heads=2)
    params, xs, carry = _problem(cell, 4, batch=3, steps=6)
    resets = np.zeros((3, 6), bool)
    resets[1, 3] = True
    options = dict(lengths=jnp.array([6, 4, 2]), reverse=True, resets=jnp.asarray(resets))
    w = jnp.asarray(np.random.default_rng(5).normal(size=(3, 6, 4)))

    def loss(p, gradient, **extra):
        final, hs = rj.unroll(cell, p, xs, carry, gradient=gradient, **options, **extra)
        return jnp.sum(hs * w) + jnp.sum(final.h) + jnp.sum(final.c)

    dropout = dict(recurrent_dropout=0.3, key=jax.random.PRNGKey(1))
    _manual_equals_autodiff(lambda p, g: loss(p, g, **dropout), params)
    # past a row's length: zero outputs; the final carry is the state after its last valid step
    final, hs = rj.unroll(cell, params, xs, carry, lengths=jnp.array([6, 4, 2]))
    assert not np.any(hs[2, 2:])
    alone, _ = rj.unroll(cell, params, xs[2:, :2], jax.tree.map(lambda a: a[2:], carry))
    assert_close(jax.tree.map(lambda a: a[2:], final), alone, 1e-12)


def test_classifier_over_a_bidirectional_layer_a_stack_and_nnx(x64):
    """models.classifier over a bidirectional sLSTM layer (rj.unroll_stack, rj.bidirectional):
    the hand-written gradient equals autodiff's; a two-layer stack reads the 2H outputs of
    the first; rnn_jax.nnx.RNN runs the cell."""
    from flax import nnx

    cell = rj.slstm.configured(num_heads=2)
    key = jax.random.PRNGKey(0)
    xs = jax.random.normal(key, (2, 5, 3), jnp.float64)
    build = dict(hidden_size=4, num_classes=3, bidirectional=True)
    model = {g: models.classifier(cell, gradient=g, **build) for g in ("manual", "autodiff")}
    params = model["manual"].init(key, 3, dtype=jnp.float64)
    labels = jnp.array([0, 2])

    def loss(p, g):
        logits = model[g].apply(p, xs, lengths=jnp.array([5, 2]))
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(2), labels])

    _manual_equals_autodiff(loss, params)
    stack = rj.init_stack(cell, key, 3, 4, num_layers=2, bidirectional=True, dtype=jnp.float64)
    assert stack[1]["fwd"]["w_x"].shape == (8, 16)  # layer 2 reads both directions
    finals, hs = rj.unroll_stack(cell, stack, xs, gradient="manual")
    assert hs.shape == (2, 5, 8) and isinstance(finals[1][0], SLSTMCarry)

    module = rj.nnx.RNN(rj.slstm, 3, 8, rngs=nnx.Rngs(0), dtype=jnp.float64, gradient="manual")
    assert module.params[0]["r"].shape == (4, 2, 4, 2)
    final, hs = module(xs)
    assert_close(hs, rj.unroll(rj.slstm, module.params[0], xs)[1], 1e-12)


def test_zoneout_keeps_h_alone(x64):
    """c is scaled together with n and m, so zoneout may not keep it alone: one rate acts on
    h only (evaluation mix h' = z h + (1 - z) h_new, c, n, m the step's), a rate for c is
    refused by name."""
    cell = rj.slstm.configured(num_heads=2)
    params, xs, carry = _problem(cell, 4, steps=3)
    final, hs = rj.unroll(cell, params, xs, carry, zoneout=0.25)
    state = carry
    for t in range(3):
        new, _ = cell.step(params, state, xs[:, t])
        state = new._replace(h=0.25 * state.h + 0.75 * new.h)
        assert_close(hs[:, t], state.h, 1e-12)
    assert_close(final, state, 1e-12)
    with pytest.raises(ValueError, match=r"zoneout= with cell=: zoneout of c needs a carry"):
        rj.unroll(cell, params, xs, carry, zoneout=(0.1, 0.1))


def test_bad_sizes_and_options_are_refused_by_name():
    with pytest.raises(ValueError, match=r"num_heads=4: hidden_size must be a positive multiple"
                                         r" of 4, got 6"):  # fmt: skip
        rj.slstm.init(jax.random.PRNGKey(0), 3, 6)
    with pytest.raises(ValueError, match="num_heads must be a positive int, got 0"):
        rj.slstm.configured(num_heads=0)
    with pytest.raises(ValueError, match=r"forget_gate must be one of \('sigmoid', 'exp'\)"):
        rj.slstm.configured(forget_gate="tanh")
    with pytest.raises(ValueError, match="bias_init must be one of"):
        rj.slstm.init(jax.random.PRNGKey(0), 3, 4, bias_init="ones")
    params = rj.slstm.configured(num_heads=2).init(jax.random.PRNGKey(0), 3, 4)
    with pytest.raises(ValueError, match=r"slstm params .*r"):  # 2-head params, 4-head cell
        rj.unroll(rj.slstm, params, jnp.ones((2, 5, 3)))
