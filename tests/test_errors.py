# ruff: noqa: E501  (the tables of expected messages read best one case per line)
"""Bad input gets a clear ValueError/TypeError naming what was expected and what arrived,
raised before any compute (the scan is never reached)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax import models
from rnn_jax.cells.base import LSTMCarry

B, T, D, H = 2, 5, 3, 4  # batch, time, input features, hidden


@pytest.fixture(autouse=True)
def no_compute(request, monkeypatch):
    """Any error must come from the checks: reaching a scan fails the test (unless the test
    is marked ``computes``). ``jax.lax.scan`` itself is patched, so every path is guarded
    (unroll, the hand-written BPTT's sweeps, remat's segments, stacks, the models), and so
    is ``jax.ffi.ffi_call`` (a fused backend's kernel); test_the_no_compute_guard_covers_every_
    entry_point checks the reach."""
    if request.node.get_closest_marker("computes"):
        return

    def reached(*args, **kwargs):
        raise AssertionError("the scan ran: bad input was not rejected up front")

    monkeypatch.setattr(jax.lax, "scan", reached)
    monkeypatch.setattr(jax.ffi, "ffi_call", reached)


def params_of(cell, dtype=jnp.float32):
    return cell.init(jax.random.PRNGKey(0), D, H, dtype=dtype)


XS = jnp.ones((B, T, D))


@pytest.mark.parametrize(
    ("xs", "error", "match"),
    [
        (
            jnp.ones((D,)),  # (B, D) is now one unbatched (T, I) sequence
            ValueError,
            r"xs must be 3-D \(batch, time, input_size\) or 2-D .* got shape \(3,\)",
        ),
        (jnp.ones((1, B, T, D)), ValueError, r"must be 3-D .* got shape \(1, 2, 5, 3\)"),
        ([[[1.0, 2.0, 3.0]]], ValueError, r"xs must be 3-D .* got shape list"),
        (jnp.ones((B, T, 5)), ValueError, r"xs has 5 features .* w_x expects input_size=3"),
        (jnp.ones((B, T, D), jnp.int32), TypeError, r"floating-point array, got dtype int32"),
        (jnp.ones((B, T, D), jnp.bool_), TypeError, r"floating-point array, got dtype bool"),
    ],
)
def test_bad_xs(xs, error, match):
    with pytest.raises(error, match=match):
        rj.unroll(rj.gru, params_of(rj.gru), xs)


def test_time_major_layout_named_in_message():
    with pytest.raises(ValueError, match=r"\(time, batch, input_size\)"):
        rj.unroll(rj.gru, params_of(rj.gru), jnp.ones((D,)), time_major=True)  # (T, D) is unbatched


def test_xs_dtype_must_match_params(x64):
    with pytest.raises(
        TypeError, match=r"xs dtype float32 does not match the params dtype float64"
    ):
        rj.unroll(rj.lstm, params_of(rj.lstm, jnp.float64), XS)
    with pytest.raises(TypeError, match=r"xs dtype bfloat16 .* params dtype float32"):
        rj.unroll(rj.lstm, params_of(rj.lstm), XS.astype(jnp.bfloat16))


@pytest.mark.parametrize(
    ("cell", "carry", "error", "match"),
    [
        (rj.simple, jnp.zeros((B, H + 1)), ValueError, r"simple carry.h must be \(2, 4\), got \(2, 5\)"),
        (rj.simple, jnp.zeros((B + 1, H)), ValueError, r"carry.h must be \(2, 4\), got \(3, 4\)"),
        (rj.gru, jnp.zeros((H,)), ValueError, r"gru carry.h must be \(2, 4\), got \(4,\)"),
        (rj.simple, (jnp.zeros((B, H)), jnp.zeros((B, H))), TypeError, r"simple carry must be one \(2, 4\) array, got tuple"),
        (rj.gru, LSTMCarry(jnp.zeros((B, H)), jnp.zeros((B, H))), TypeError, r"gru carry must be one \(2, 4\) array, got LSTMCarry"),
        (rj.lstm, jnp.zeros((B, H)), TypeError, r"lstm carry must be LSTMCarry\(h, c\) of two \(2, 4\) arrays, got ArrayImpl"),
        (rj.lstm, (jnp.zeros((B, H)),), TypeError, r"LSTMCarry\(h, c\) .* got tuple"),
        (rj.lstm, LSTMCarry(jnp.zeros((B, H)), jnp.zeros((B, 3))), ValueError, r"lstm carry.c must be \(2, 4\), got \(2, 3\)"),
        (rj.gru, jnp.zeros((B, H), jnp.float16), TypeError, r"gru carry.h dtype float16 != params dtype float32"),
    ],
)  # fmt: skip
def test_bad_carry(cell, carry, error, match):
    with pytest.raises(error, match=match):
        rj.unroll(cell, params_of(cell), XS, carry)


@pytest.mark.parametrize(
    ("lengths", "error", "match"),
    [
        (jnp.array([T + 1, 2]), ValueError, r"lengths must lie in \[0, 5\] .* got min 2 and max 6"),
        (jnp.array([-1, 2]), ValueError, r"lengths must lie in \[0, 5\] .* got min -1"),
        (np.array([3, 2, 1]), ValueError, r"lengths must have shape \(2,\), got \(3,\)"),
        (jnp.array([[3, 2]]), ValueError, r"lengths must have shape \(2,\), got \(1, 2\)"),
        (jnp.array([3.0, 2.0]), TypeError, r"lengths must be integers, got dtype float32"),
        ([3, 2.5], TypeError, r"lengths must be integers, got dtype float"),
    ],
)
def test_bad_lengths(lengths, error, match):
    with pytest.raises(error, match=match):
        rj.unroll(rj.simple, params_of(rj.simple), XS, lengths=lengths)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"gradient": "numeric"},
            r"gradient must be one of \(None, 'autodiff', 'manual'\), got 'numeric'",
        ),
        ({"unroll": 0}, r"unroll must be an int >= 1, got 0"),
        ({"unroll": 2.5}, r"unroll must be an int >= 1, got 2.5"),
        ({"truncate": 3}, r"truncate=k needs gradient='manual'"),
        ({"truncate": 0, "gradient": "manual"}, r"truncate must be None .* or an int >= 1, got 0"),
        ({"truncate": 1.5, "gradient": "manual"}, r"truncate must be .* got 1.5"),
    ],
)
def test_bad_unroll_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rj.unroll(rj.gru, params_of(rj.gru), XS, **kwargs)


def test_shape_errors_also_raise_under_jit():
    f = jax.jit(lambda p, x: rj.unroll(rj.gru, p, x))
    with pytest.raises(ValueError, match=r"xs has 5 features"):
        f(params_of(rj.gru), jnp.ones((B, T, 5)))


def _drop(params, key):
    return {k: v for k, v in params.items() if k != key}


@pytest.mark.parametrize(
    ("cell", "mutate", "error", "match"),
    [
        (rj.lstm, lambda p: _drop(p, "b"), ValueError, r"lstm params must have keys \['b', 'w_h', 'w_x'\], got \['w_h', 'w_x'\]"),
        (rj.gru, lambda p: {**_drop(p, "b_h"), "b": p["b_x"]}, ValueError, r"gru params must have keys \['b_h', 'b_x', 'w_h', 'w_x'\], got \['b', 'b_x', 'w_h', 'w_x'\]"),
        (rj.lstm, lambda p: {**p, "w_h": p["w_h"][:, :12]}, ValueError, r"lstm with 4 gate\(s\) expects w_x \(I, 16\) and w_h \(4, 16\); got w_x \(3, 16\), w_h \(4, 12\)"),
        (rj.gru, lambda p: {**p, "w_x": p["w_x"][:, :6]}, ValueError, r"gru with 3 gate\(s\) expects w_x \(I, 12\) .* got w_x \(3, 6\)"),
        (rj.lstm, lambda p: {**p, "w_x": p["w_x"][0]}, ValueError, r"w_x and w_h must be 2-D, got \(16,\)"),
        (rj.lstm, lambda p: {**p, "b": p["b"][:8]}, ValueError, r"lstm b must be \(16,\), got \(8,\)"),
        (rj.gru, lambda p: {**p, "b_h": p["b_h"].astype(jnp.float16)}, TypeError, r"gru params must share one dtype, got \['float16', 'float32'\]"),
        (rj.simple, lambda p: list(p.values()), TypeError, r"simple params must be a dict of arrays, got list"),
    ],
)  # fmt: skip
def test_bad_params(cell, mutate, error, match):
    with pytest.raises(error, match=match):
        rj.unroll(cell, mutate(params_of(cell)), XS)


def test_params_of_another_cell():
    """LSTM params given to the GRU: the gate count gives it away."""
    lstm_params = {k: v for k, v in params_of(rj.lstm).items()}
    with pytest.raises(ValueError, match=r"gru params must have keys"):
        rj.unroll(rj.gru, lstm_params, XS)
    simple_params = params_of(rj.simple)
    with pytest.raises(ValueError, match=r"lstm with 4 gate\(s\) expects"):
        rj.unroll(rj.lstm, simple_params, XS)


def test_not_a_cell():
    with pytest.raises(
        TypeError, match=r"expected a cell such as rj.lstm or rj.simple.relu, got 'lstm'"
    ):
        rj.unroll("lstm", params_of(rj.lstm), XS)


def test_bad_layer_options():
    stack = rj.init_stack(rj.gru, jax.random.PRNGKey(0), D, H, 2)
    with pytest.raises(
        ValueError, match=r"merge must be one of \['concat', 'mean', 'mul', 'sum'\], got 'max'"
    ):
        rj.unroll_stack(rj.gru, stack, XS, merge="max")
    with pytest.raises(ValueError, match=r"merge must be one of"):
        rj.init_stack(rj.gru, jax.random.PRNGKey(0), D, H, 2, bidirectional=True, merge="avg")
    for rate in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=rf"dropout must be in \[0, 1\), got {rate}"):
            rj.unroll_stack(rj.gru, stack, XS, dropout=rate)
    with pytest.raises(ValueError, match=r"carry has 1 entries for 2 layers"):
        rj.unroll_stack(rj.gru, stack, XS, [None])
    with pytest.raises(TypeError, match=r"stack params must be a non-empty list of layer params"):
        rj.unroll_stack(rj.gru, [], XS)
    with pytest.raises(TypeError, match=r"non-empty list .* got \{"):
        rj.unroll_stack(rj.gru, stack[0], XS)
    with pytest.raises(ValueError, match=r"num_layers must be >= 1, got 0"):
        rj.init_stack(rj.gru, jax.random.PRNGKey(0), D, H, 0)
    with pytest.raises(
        ValueError,
        match=r"bidirectional params must be \{'fwd', 'bwd'\}, got keys \['b_h', 'b_x', 'w_h', 'w_x'\]",
    ):
        rj.bidirectional(rj.gru, stack[0], XS)
    with pytest.raises(
        ValueError, match=r"input_size and hidden_size must be >= 1, got input_size=0"
    ):
        rj.gru.init(jax.random.PRNGKey(0), 0, H)


def _mismatched_stack():
    """Layer 2 of a bidirectional concat stack reads 2H features; this one is built for H."""
    layer = rj.init_bidirectional(rj.lstm, jax.random.PRNGKey(0), D, H)
    wrong = rj.init_bidirectional(rj.lstm, jax.random.PRNGKey(1), H, H)
    return [layer, wrong]


def test_stack_layer_sizes_checked_before_compute():
    with pytest.raises(
        ValueError, match=r"stack layer 1: layer 0's output has 8 features .* input_size=4"
    ):
        rj.unroll_stack(rj.lstm, _mismatched_stack(), XS)


@pytest.mark.computes
def test_traced_out_of_range_lengths_are_clipped_not_nan():
    # Under jit the values can't be checked; they act as clipped to [0, T] (was NaN).
    params = params_of(rj.gru)
    run = jax.jit(lambda lengths: rj.unroll(rj.gru, params, XS, lengths=lengths, reverse=True))
    final, hs = run(jnp.array([T + 3, -1]))
    want_final, want_hs = rj.unroll(rj.gru, params, XS, lengths=jnp.array([T, 0]), reverse=True)
    assert bool(jnp.all(jnp.isfinite(hs)))
    np.testing.assert_allclose(hs, want_hs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(final, want_final, rtol=1e-6, atol=1e-6)


def test_bptt_checks_its_cotangents():
    params = params_of(rj.gru)
    with pytest.raises(
        ValueError, match=r"d_hs must be \(2, 5, 4\) float32 like unroll's hs, got \(2, 5, 3\)"
    ):
        rj.bptt(rj.gru, params, XS, jnp.ones((B, T, 3)))
    with pytest.raises(ValueError, match=r"gru d_carry.h must be \(2, 4\), got \(2, 3\)"):
        rj.bptt(rj.gru, params, XS, jnp.ones((B, T, H)), d_carry=jnp.ones((B, 3)))


def test_model_tokens_checked():
    init, apply = models.language_model(rj.gru, 7, 4)
    with pytest.raises(
        ValueError, match=r"tokens must be an integer array \(batch, time\), got \(2, 3\) float32"
    ):
        apply(init(jax.random.PRNGKey(0)), jnp.ones((2, 3)))


_BI = (jnp.zeros((B, H)), jnp.zeros((B, H + 1)))


@pytest.mark.parametrize(
    ("run", "match"),
    [
        (lambda p, s, bi: rj.bptt(rj.gru, p, jnp.ones((D,)), jnp.ones((B, T, H))), r"xs must be 3-D .* got shape \(3,\)"),
        (lambda p, s, bi: rj.bptt(rj.gru, p, jnp.ones((B, T, 5)), jnp.ones((B, T, H))), r"xs has 5 features .* input_size=3"),
        (lambda p, s, bi: rj.bptt(rj.gru, p, XS, jnp.ones((B, T, H)), lengths=jnp.array([T + 1, 2])), r"lengths must lie in \[0, 5\] .* max 6"),
        (lambda p, s, bi: rj.bptt(rj.gru, p, XS, jnp.ones((B, T, H)), jnp.zeros((B, H + 1))), r"gru carry.h must be \(2, 4\), got \(2, 5\)"),
        (lambda p, s, bi: rj.bptt(rj.gru, p, XS, jnp.ones((B, T, H)), truncate=0), r"truncate must be None .* got 0"),
        (lambda p, s, bi: rj.unroll(rj.gru, p, jnp.ones((B, T, 5)), remat="sqrt"), r"xs has 5 features .* input_size=3"),
        (lambda p, s, bi: rj.unroll(rj.gru, p, XS, remat=2, gradient="manual", lengths=jnp.array([-1, 2])), r"lengths must lie in \[0, 5\] .* got min -1"),
        (lambda p, s, bi: rj.unroll(rj.gru, p, XS, remat=0), r"remat must be None, 'sqrt' or an int >= 1, got 0"),
        (lambda p, s, bi: rj.unroll_stack(rj.gru, s, XS, lengths=jnp.array([3, 2, 1])), r"lengths must have shape \(2,\), got \(3,\)"),
        (lambda p, s, bi: rj.unroll_stack(rj.gru, s, jnp.ones((B, T, 5))), r"stack layer 0: xs has 5 features .* input_size=3"),
        (lambda p, s, bi: rj.bidirectional(rj.gru, bi, jnp.ones((B, T, 5))), r"xs has 5 features .* input_size=3"),
        (lambda p, s, bi: rj.bidirectional(rj.gru, bi, XS, _BI), r"gru carry.h must be \(2, 4\), got \(2, 5\)"),
        (lambda p, s, bi: rj.bidirectional(rj.gru, {**bi, "bwd": {**bi["bwd"], "w_h": bi["bwd"]["w_h"][:, :6]}}, XS), r"gru with 3 gate\(s\) expects"),
        (lambda p, s, bi: rj.unroll_stack(rj.gru, s, XS, [None, jnp.zeros((B, H + 1))]), r"gru carry.h must be \(2, 4\), got \(2, 5\)"),
    ],
    ids=["bptt-xs-2d", "bptt-features", "bptt-lengths", "bptt-carry", "bptt-truncate", "remat-features", "remat-lengths", "remat-0", "stack-lengths", "stack-features", "bidirectional-features", "bidirectional-bwd-carry", "bidirectional-bwd-params", "stack-layer-1-carry"],
)  # fmt: skip
def test_bptt_remat_and_stacks_check_before_compute(run, match):
    params = params_of(rj.gru)
    stack = rj.init_stack(rj.gru, jax.random.PRNGKey(0), D, H, 2)
    bi = rj.init_bidirectional(rj.gru, jax.random.PRNGKey(0), D, H)
    with pytest.raises(ValueError, match=match):
        run(params, stack, bi)


def _entry_points():
    """Every public way into a scan, with good input: under the guard each must fail."""
    params = params_of(rj.gru)
    stack = rj.init_stack(rj.gru, jax.random.PRNGKey(0), D, H, 2)
    bi = rj.init_bidirectional(rj.gru, jax.random.PRNGKey(0), D, H)
    classifier = models.classifier(rj.gru, H, 3, bidirectional=True)
    language_model = models.language_model(rj.gru, 7, H)
    return {
        "unroll": lambda: rj.unroll(rj.gru, params, XS),
        "unroll manual": lambda: rj.unroll(rj.gru, params, XS, gradient="manual"),
        "unroll remat": lambda: rj.unroll(rj.gru, params, XS, remat="sqrt"),
        "unroll remat manual": lambda: rj.unroll(
            rj.gru, params, XS, remat="sqrt", gradient="manual"
        ),
        "grad of manual": lambda: jax.grad(
            lambda p: rj.unroll(rj.gru, p, XS, gradient="manual")[1].sum()
        )(params),
        "bptt": lambda: rj.bptt(rj.gru, params, XS, jnp.ones((B, T, H))),
        "bptt truncated": lambda: rj.bptt(rj.gru, params, XS, jnp.ones((B, T, H)), truncate=2),
        "unroll_stack": lambda: rj.unroll_stack(rj.gru, stack, XS),
        "bidirectional": lambda: rj.bidirectional(rj.gru, bi, XS),
        "classifier": lambda: classifier.apply(classifier.init(jax.random.PRNGKey(0), D), XS),
        "language_model": lambda: language_model.apply(
            language_model.init(jax.random.PRNGKey(0)), jnp.zeros((B, T), jnp.int32)
        ),
    }


@pytest.mark.parametrize("entry", sorted(_entry_points()))
def test_the_no_compute_guard_covers_every_entry_point(entry):
    """The guard above is only as good as its reach: good input through each entry point
    must hit it, or a check missing from that path would go unnoticed."""
    with pytest.raises(AssertionError, match="the scan ran"):
        _entry_points()[entry]()
