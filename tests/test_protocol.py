"""The open cell protocol: any cell, any carry, through every part of rnn_jax.

The cells are in ``custom_cells.py`` (peephole LSTM, layer-norm LSTM, a three-part carry),
each with autodiff only and with a hand-written backward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_close
from custom_cells import CUSTOM_CELLS, broken_peephole, layernorm_lstm, normalised, peephole

import rnn_jax as rj
from rnn_jax.gradcheck import random_problem

CELL_IDS = list(CUSTOM_CELLS)


@pytest.mark.parametrize("name", CELL_IDS)
def test_custom_cells_pass_check_cell(name, x64):
    report = rj.check_cell(CUSTOM_CELLS[name], input_size=3, hidden_size=4, batch_size=2,
                           num_steps=4, num_directions=1)  # fmt: skip
    assert report.ok
    assert report.rows[-1].path.startswith("d_carry")
    # The errors are float64 round-off at every stage, not just under the tolerance.
    assert max(max(row.errors) for row in report.rows) < 1e-12


@pytest.mark.parametrize("name", ["peephole", "layernorm", "normalised"])
def test_check_gradients_with_lengths_reverse_and_truncation(name, x64):
    cell = CUSTOM_CELLS[name]
    params, xs, carry = random_problem(cell, (3, 4, 3, 4), "float64", np.random.default_rng(2))
    for truncate in (None, 3):
        report = rj.check_gradients(
            cell, params, xs, carry, lengths=[4, 2, 0], reverse=True, truncate=truncate,
            num_directions=1,
        )  # fmt: skip
        assert report.ok and report.max_rel_err < 1e-12


@pytest.mark.parametrize("name", ["peephole", "layernorm", "normalised"])
def test_hand_written_equals_autodiff_cell(name, x64):
    """The cell with a hand-written backward and the same cell through jax.vjp give the
    same BPTT gradients (a second, independent check of the generic sweep)."""
    manual, derived = CUSTOM_CELLS[name], CUSTOM_CELLS[name + "_autodiff"]
    params, xs, carry = random_problem(manual, (2, 6, 3, 4), "float64", np.random.default_rng(3))
    d_hs = jnp.asarray(np.random.default_rng(4).normal(size=(2, 6, 4)))
    for truncate in (None, 2):
        ours = rj.bptt(manual, params, xs, d_hs, carry, truncate=truncate, lengths=[6, 3])
        theirs = rj.bptt(derived, params, xs, d_hs, carry, truncate=truncate, lengths=[6, 3])
        assert_close(ours, theirs, 1e-12)


def _stack_loss(cell, gradient, xs, targets):
    def loss(stack):
        finals, hs = rj.unroll_stack(cell, stack, xs, lengths=jnp.array([6, 4]),
                                     gradient=gradient)  # fmt: skip
        return jnp.mean((hs - targets) ** 2)

    return loss


@pytest.mark.parametrize("cell", [peephole, layernorm_lstm, normalised], ids=lambda c: c.name)
def test_custom_cells_train_manual_in_bidirectional_stack(cell, x64):
    """Two bidirectional layers with the hand-written gradient: equal to autodiff's, and a
    few RMSProp steps lower the loss."""
    key = jax.random.PRNGKey(0)
    stack = rj.init_stack(cell, key, 3, 4, num_layers=2, bidirectional=True, dtype=jnp.float64)
    xs = jax.random.normal(key, (2, 6, 3), jnp.float64)
    targets = jnp.tanh(jnp.cumsum(jax.random.normal(key, (2, 6, 8), jnp.float64), axis=1))
    manual = _stack_loss(cell, "manual", xs, targets)
    autodiff = _stack_loss(cell, "autodiff", xs, targets)
    assert_close(jax.grad(manual)(stack), jax.grad(autodiff)(stack), 1e-12)

    optimizer = optax.rmsprop(1e-2)
    opt_state = optimizer.init(stack)
    step = jax.jit(lambda p, s: _update(optimizer, manual, p, s))
    first = float(manual(stack))
    for _ in range(30):
        stack, opt_state = step(stack, opt_state)
    assert float(manual(stack)) < 0.8 * first


def _update(optimizer, loss, params, opt_state):
    updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wrong_backward_names_the_leaf_in_a_short_message(dtype):
    with jax.enable_x64(dtype == "float64"):
        with pytest.raises(AssertionError) as caught:
            rj.check_cell(broken_peephole("p_f"), 3, 4, dtype=dtype)
    message = str(caught.value)
    assert message.startswith("check_cell peephole_p_f_bug")
    assert len(message.splitlines()) <= 40
    assert "failing: d_params.p_f\n" in message
    table = message.splitlines()[2:11]
    bad_rows = [line.split()[0] for line in table if line.endswith("NO")]
    assert bad_rows == ["d_params.p_f"]


def test_wrong_gate_derivative_fails_at_the_step_stage(x64):
    report = rj.check_cell(broken_peephole("forget_gate"), 3, 4, raise_on_failure=False)
    assert not report.ok
    failed = {row.path for row in report.failures()}
    assert {"d_params.w_x", "d_params.p_f", "d_x", "d_carry.c"} <= failed
    # The one-step comparison already catches it: the earliest evidence comes first.
    assert all(row.message.startswith("step:") for row in report.failures() if row.errors[0] > 1)


def test_correct_cell_passes_in_bfloat16():
    # a user's cell and a built-in fused one (the other custom cells pass in float32/64 below;
    # each bfloat16 check_cell costs ~20 s of compiling)
    for cell in (peephole, rj.lstm):
        report = rj.check_cell(cell, 3, 4, dtype=jnp.bfloat16, num_directions=1)
        assert report.ok and report.dtype == "bfloat16" and report.rtol == 5e-2


def test_check_cell_reports_broken_contracts():
    def init_without_dtype(key, input_size, hidden_size):
        return {"w_x": jnp.zeros((input_size, hidden_size)), "w_h": jnp.zeros((hidden_size,) * 2)}

    step = lambda p, h, x: (jnp.tanh(x @ p["w_x"] + h @ p["w_h"]),) * 2
    no_dtype = rj.make_cell("no_dtype", init_without_dtype, step)
    with pytest.raises(TypeError, match=r"no_dtype.init\(key, input_size, hidden_size, \*, dtype"):
        rj.check_cell(no_dtype, 3, 4, dtype=jnp.float32)

    def init_ignoring_dtype(key, input_size, hidden_size, *, dtype=jnp.float32):
        return init_without_dtype(key, input_size, hidden_size)

    ignores = rj.make_cell("ignores", init_ignoring_dtype, step)
    with pytest.raises(TypeError, match=r"ignores.init\(..., dtype=bfloat16\) returned .*float32"):
        rj.check_cell(ignores, 3, 4, dtype=jnp.bfloat16)

    wrong_h = rj.make_cell("wrong_h", init_ignoring_dtype, lambda p, h, x: (step(p, h, x)[0], h))
    with pytest.raises(ValueError, match=r"wrong_h: step's output h .* is not hidden_of"):
        rj.check_cell(wrong_h, 3, 4, dtype=jnp.float32)

    with pytest.raises(ValueError, match=r"step_forward was given without step_backward"):
        rj.make_cell("half", init_ignoring_dtype, step, step_forward=lambda p, c, x: None)


def test_any_object_with_the_protocol_is_a_cell(x64):
    class Elman:
        """A plain class, not built with make_cell."""

        name = "plain_elman"
        init = staticmethod(lambda key, i, h, *, dtype=jnp.float32: rj.simple.init(
            key, i, h, dtype=dtype))  # fmt: skip
        zero_carry = staticmethod(rj.simple.zero_carry)
        hidden_of = staticmethod(lambda carry: carry)
        step = staticmethod(rj.simple.step)
        step_forward = staticmethod(rj.simple.step_forward)
        step_backward = staticmethod(rj.simple.step_backward)

    assert isinstance(Elman(), rj.RecurrentCell)
    assert rj.check_cell(Elman(), 3, 4, num_directions=0).ok

    class NotACell:
        name = "half"
        init = step = staticmethod(lambda *a: None)

    with pytest.raises(TypeError, match=r"lacks \['zero_carry', 'hidden_of', 'step_forward'"):
        rj.unroll(NotACell(), {}, jnp.ones((1, 2, 3)))


def test_generic_inputs_are_checked_before_compute():
    params = peephole.init(jax.random.PRNGKey(0), 3, 4)
    xs = jnp.ones((2, 5, 3))
    bad = params | {"p_f": jnp.zeros(5)}
    with pytest.raises(ValueError, match=r"peephole params .*\['p_f'\] must be \(4,\), got \(5,\)"):
        rj.unroll(peephole, bad, xs)
    with pytest.raises(TypeError, match=r"peephole params .* must have keys \['b', 'p_f', 'p_i', "
                       r"'p_o', 'w_h', 'w_x'\], got \['b', 'p_f', 'p_i', 'w_h', 'w_x'\]"):
        rj.unroll(peephole, {k: v for k, v in params.items() if k != "p_o"}, xs)
    carry = normalised.zero_carry(2, 4)
    with pytest.raises(TypeError, match=r"normalised carry must have the structure"):
        rj.unroll(normalised, normalised.init(jax.random.PRNGKey(0), 3, 4), xs, carry[:2])
    with pytest.raises(ValueError, match=r"normalised carry.n must be \(2, 4\), got \(2, 3\)"):
        rj.unroll(normalised, normalised.init(jax.random.PRNGKey(0), 3, 4), xs,
                  carry._replace(n=jnp.zeros((2, 3))))  # fmt: skip
    with pytest.raises(ValueError, match=r"matmul_dtype= with cell=: matmul_dtype is an option of"):
        rj.unroll(peephole, params, xs, matmul_dtype=jnp.bfloat16)


@pytest.mark.parametrize("cell", [rj.lstm, rj.gru, normalised], ids=["lstm", "gru", "normalised"])
def test_zero_length_sequences(cell, x64):
    """T=0: the final carry is the initial one; every gradient is zero but d_carry0."""
    params, _, carry = random_problem(cell, (2, 1, 3, 4), "float64", np.random.default_rng(0))
    xs = jnp.zeros((2, 0, 3))
    d_hs = jnp.zeros((2, 0, 4))
    d_final = jax.tree.map(jnp.ones_like, carry)
    d_params, d_xs, d_carry0 = rj.bptt(cell, params, xs, d_hs, carry, d_carry=d_final)
    assert all(float(jnp.abs(leaf).max()) == 0 for leaf in jax.tree.leaves(d_params))
    assert d_xs.shape == (2, 0, 3)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), d_carry0, d_final))

    def loss(p, c, gradient):
        final, _ = rj.unroll(cell, p, xs, c, gradient=gradient)
        return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(final))

    for gradient in ("manual", "autodiff"):
        g_params, g_carry = jax.grad(loss, argnums=(0, 1))(params, carry, gradient)
        assert all(float(jnp.abs(leaf).max()) == 0 for leaf in jax.tree.leaves(g_params))
        assert jax.tree.all(jax.tree.map(lambda a: bool(jnp.all(a == 1)), g_carry))
    report = rj.check_gradients(cell, params, xs, carry, num_directions=1)
    assert report.ok and report.rows[0].max_abs_err == 0


def test_custom_cells_in_models_nnx_remat_and_tbptt(x64):
    from flax import nnx

    from rnn_jax import models, tbptt

    key = jax.random.PRNGKey(0)
    model = models.classifier(normalised, hidden_size=4, num_classes=3, bidirectional=True,
                              gradient="manual")  # fmt: skip
    params = model.init(key, 3, dtype=jnp.float64)
    xs = jax.random.normal(key, (2, 5, 3), jnp.float64)
    logits = model.apply(params, xs, lengths=jnp.array([5, 2]))
    # The readout reads hidden_of(final carry) of both directions, merged.
    finals, _ = rj.bidirectional(normalised, params["rnn"][0], xs, lengths=jnp.array([5, 2]))
    h = jnp.concatenate([finals[0].h, finals[1].h], axis=-1)
    assert_close(logits, h @ params["readout"]["w"] + params["readout"]["b"], 1e-12)

    module = rj.nnx.RNN(layernorm_lstm, 3, 4, rngs=nnx.Rngs(0), dtype=jnp.float64,
                        gradient="manual")  # fmt: skip
    assert set(module.params[0]) == set(layernorm_lstm.init(key, 3, 4))
    _, hs = module(xs)
    assert_close(hs, rj.unroll(layernorm_lstm, module.params[0], xs)[1], 1e-12)

    lm = models.language_model(peephole, vocab_size=5, hidden_size=4, gradient="manual")
    lm_params = lm.init(key, dtype=jnp.float64)
    tokens = jnp.array([[0, 1, 2, 3], [4, 3, 2, 1]])

    def chunk_loss(p, carry, chunk, rng):
        logits, finals = lm.apply(p, chunk, carry, remat=2)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], chunk[:, 1:])
        return loss.mean(), (finals, {})

    step = tbptt.make_chunk_step(chunk_loss, optax.sgd(0.1), donate=False)
    carry = tbptt.zero_carry(lambda p, t: lm.apply(p, t)[1], lm_params, tokens)
    state = rj.train.TrainState.create(lm_params, optax.sgd(0.1), key)
    state, carry, metrics = step(state, carry, tokens)
    assert np.isfinite(float(metrics["loss"]))
    assert isinstance(carry[0], rj.LSTMCarry)


def test_hidden_grad_norms_of_a_custom_carry(x64):
    params, xs, _ = random_problem(normalised, (2, 6, 3, 4), "float64", np.random.default_rng(5))
    norms = rj.hidden_grad_norms(normalised, params, xs)
    assert norms.shape == (6,) and abs(float(norms[-1]) - 1) < 1e-12


# ----------------------------------------------------------------- a user's first mistakes


def _tanh_init(key, input_size, hidden_size, *, dtype=jnp.float32):
    k1, k2 = jax.random.split(key)
    return {"w_x": 0.1 * jax.random.normal(k1, (input_size, hidden_size), dtype),
            "w_h": 0.1 * jax.random.normal(k2, (hidden_size, hidden_size), dtype)}  # fmt: skip


def test_a_step_returning_only_h_is_told_the_step_contract():
    """``step`` returning ``h'`` alone, not ``(carry', h')``: unroll (and bptt) and
    check_cell name the contract before any compute, instead of lax.scan's carry-type error
    or "too many values to unpack"."""
    step = lambda p, h, x: jnp.tanh(x @ p["w_x"] + h @ p["w_h"])  # h' alone
    only_h = rj.make_cell("only_h", _tanh_init, step)
    params = only_h.init(jax.random.PRNGKey(0), 3, 4)
    contract = r"only_h.step\(params, carry, x\) must return a pair \(new_carry, h\)"
    for run in (
        lambda: rj.unroll(only_h, params, jnp.ones((2, 5, 3))),
        lambda: rj.unroll(only_h, params, jnp.ones((5, 3)), gradient="manual"),  # unbatched
        lambda: rj.bptt(only_h, params, jnp.ones((2, 5, 3)), jnp.ones((2, 5, 4))),
        lambda: rj.check_cell(only_h, 3, 4, dtype=jnp.float32),
    ):
        got = r".*got array \(\d, 4\) float32 \(only h'\?\)"
        with pytest.raises(TypeError, match=contract + got):
            run()

    # A new carry of another shape than the one given is named with the contract too.
    wide = rj.make_cell("wide", _tanh_init, lambda p, h, x: ((h, h), h))
    with pytest.raises(TypeError, match=r"wide.step\(params, carry, x\) must return a pair"):
        rj.unroll(wide, wide.init(jax.random.PRNGKey(0), 3, 4), jnp.ones((2, 5, 3)))


def test_make_cell_refuses_a_step_backward_without_its_step_forward():
    step = lambda p, h, x: (jnp.tanh(x @ p["w_x"] + h @ p["w_h"]),) * 2
    backward = lambda p, residuals, d_h, d_carry: (p, d_h, d_carry)
    with pytest.raises(ValueError, match=r"half: step_backward was given without step_forward.*"
                       r"reads the residuals its step_forward keeps"):  # fmt: skip
        rj.make_cell("half", _tanh_init, step, step_backward=backward)


def test_an_init_that_ignores_dtype_is_named(x64):
    def init(key, input_size, hidden_size, *, dtype=jnp.float32):
        return _tanh_init(key, input_size, hidden_size, dtype=dtype) | {"b": jnp.zeros(hidden_size)}

    step = lambda p, h, x: (jnp.tanh(x @ p["w_x"] + h @ p["w_h"] + p["b"]),) * 2
    cell = rj.make_cell("no_b_dtype", init, step)
    message = (r"no_b_dtype.init\(..., dtype=float32\) returned params of dtype float64 at "
               r"\['b'\]: init must create every parameter in the dtype it is given")  # fmt: skip
    with pytest.raises(TypeError, match=message):
        rj.check_cell(cell, 3, 4, dtype=jnp.float32)
    xs = jnp.ones((2, 5, 3), jnp.float32)
    params = cell.init(jax.random.PRNGKey(0), 3, 4, dtype=jnp.float32)  # b float64: mixed
    with pytest.raises(TypeError, match=message):
        rj.unroll(cell, params, xs)
    as_f32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)  # all float32: init is wrong
    with pytest.raises(TypeError, match=message):
        rj.unroll(cell, as_f32, xs)


def test_check_cell_header_states_every_tolerance(x64):
    report = rj.check_cell(rj.gru, 3, 4, num_directions=1)
    head = str(report).splitlines()[0]
    for words in ("rtol=1e-10", "atol=1e-10", "fd err:", "eps=1e-06", "fd_tol=1e-06",
                  "1 random directions"):  # fmt: skip
        assert words in head, (words, head)
    assert (report.fd_tol, report.eps) == (1e-6, 1e-6)
    skipped = str(rj.check_cell(rj.gru, 3, 4, num_directions=0))
    assert "fd err: not run" in skipped.splitlines()[0]
    assert all(line.split()[-2] == "-" for line in skipped.splitlines()[2:])
