"""The rule book of ``rj.unroll``'s options (``rnn_jax.options``), in float64:

- every pair of options (and of the per-call data ``lengths``, ``mask``, ``resets``, ``carry``)
  either runs and equals a reference computed without the pair's interaction, or is refused
  with a ``ValueError`` naming both;
- the seven reproductions of issue 22, each of which gave a silent wrong answer or a raw error.

The reference for a pair is a Python loop of ``cell.step`` (``loop_reference``) that knows the
semantic options (reverse, time-major, lengths, mask, resets, initial carry, every carry,
zoneout's evaluation mix, dropout off in evaluation) and nothing of how ``rj.unroll`` computes;
the options that only choose how to compute (``gradient``, ``unroll``, ``remat``, ``mode``,
``backend="auto"``, ``matmul_dtype`` in the parameters' own dtype) must not change values or
gradients. Truncated BPTT changes the gradient by design: those pairs compare values only.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_params

import rnn_jax as rj
from rnn_jax import models

B, T, D, H = 2, 5, 3, 4
LENGTHS = np.array([5, 3])
MASK = np.array([[True, False, True, True, True], [True, True, False, True, True]])
RESETS = np.array([[False, False, True, False, False], [False, True, False, False, True]])

# One non-default value per option; "data" entries are rj.unroll's array arguments.
OPTIONS = {
    "reverse": True,
    "time_major": True,
    "return_carries": True,
    "mode": "sequential",
    "gradient": "manual",
    "unroll": 2,
    "truncate": 2,  # with gradient="manual", which it needs
    "remat": 2,
    "matmul_dtype": "float64",
    "backend": "auto",
    "input_dropout": 0.3,
    "recurrent_dropout": 0.3,
    "zoneout": 0.25,
    "training": False,
    "lengths": "data",
    "mask": "data",
    "resets": "data",
    "carry": "data",
}
COMPUTE_ONLY = {"mode", "gradient", "unroll", "remat", "matmul_dtype", "backend"}
PAIRS = list(itertools.combinations(OPTIONS, 2))


def _kwargs(names, rng):
    kwargs, data = {}, {}
    for name in names:
        if OPTIONS[name] == "data":
            continue
        kwargs[name] = OPTIONS[name]
    if "truncate" in names:
        kwargs["gradient"] = "manual"
    if "lengths" in names:
        data["lengths"] = jnp.asarray(LENGTHS)
    for name, flags in (("mask", MASK), ("resets", RESETS)):
        if name in names:
            data[name] = jnp.asarray(flags)
    if "carry" in names:
        data["carry"] = rj.LSTMCarry(*(jnp.asarray(rng.normal(0, 0.5, (B, H))) for _ in "hc"))
    return kwargs, data


def loop_reference(cell, params, xs, carry=None, *, lengths=None, mask=None, resets=None,
                   reverse=False, time_major=False, return_carries=False, zoneout=None,
                   training=None, **_):  # fmt: skip
    """``rj.unroll``'s documented semantics as a Python loop of ``cell.step``, one row at a
    time, in evaluation mode (dropout off, zoneout's mix)."""
    del training
    if time_major:
        xs = jnp.swapaxes(xs, 0, 1)
        mask = None if mask is None else mask.T
        resets = None if resets is None else resets.T
    carry = cell.zero_carry(B, H, xs.dtype) if carry is None else carry
    rows, finals, all_carries = [], [], []
    for b in range(B):
        start = jax.tree.map(lambda a, b=b: a[b : b + 1], carry)
        steps = int(T if lengths is None else lengths[b])
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        state, outs, kept = start, [None] * T, [None] * T
        for t in order:
            if resets is not None and resets[b, t] and not reverse:
                state = start
            if resets is not None and reverse and t + 1 < steps and resets[b, t + 1]:
                state = start  # read backwards, an episode starts at its last step
            if mask is not None and not mask[b, t]:
                outs[t], kept[t] = jnp.zeros((1, H)), state
                continue
            new, _ = cell.step(params, state, xs[b : b + 1, t])
            if zoneout is not None:
                new = jax.tree.map(lambda n, o: zoneout * o + (1 - zoneout) * n, new, state)
            state = new
            outs[t], kept[t] = cell.hidden_of(state), state
        for t in range(T):  # padding: output zero, the carry kept
            if outs[t] is None:
                outs[t], kept[t] = jnp.zeros((1, H)), state
        rows.append(jnp.concatenate(outs)[None])
        finals.append(state)
        all_carries.append(jax.tree.map(lambda *c: jnp.concatenate(c)[None], *kept))
    cat = lambda trees: jax.tree.map(lambda *a: jnp.concatenate(a), *trees)
    hs, final = jnp.concatenate(rows), cat(finals)
    carries = cat(all_carries)
    if time_major:
        hs = jnp.swapaxes(hs, 0, 1)
        carries = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), carries)
    return (final, hs, carries) if return_carries else (final, hs)


def _loss(result, weights):
    """A scalar reading every output, the final carry and (if returned) every carry."""
    leaves = jax.tree.leaves(result)
    return sum(jnp.sum(leaf * w[: leaf.size].reshape(leaf.shape)) for leaf, w in
               zip(leaves, weights, strict=False))  # fmt: skip


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    params = random_params(rng, rj.lstm, D, H)
    xs = jnp.asarray(rng.normal(size=(B, T, D)))
    weights = [jnp.asarray(rng.normal(size=B * T * H)) for _ in range(6)]
    return rng, params, xs, weights


def _named_in(message: str, first: str, second: str) -> bool:
    return f"{first}=" in message and f"{second}=" in message


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_every_pair_runs_right_or_is_refused_by_name(x64, first, second):
    rng, params, xs, weights = _problem()
    kwargs, data = _kwargs((first, second), rng)
    if kwargs.get("time_major"):
        xs = jnp.swapaxes(xs, 0, 1)
    run = lambda p, x: rj.unroll(rj.lstm, p, x, **data, **kwargs)
    try:
        got = run(params, xs)
    except ValueError as err:
        assert _named_in(str(err), first, second), f"refused without naming both: {err}"
        return
    semantic = {k: v for k, v in kwargs.items() if k not in COMPUTE_ONLY | {"truncate"}}
    reference = lambda p, x: loop_reference(rj.lstm.cell, p, x, **data, **semantic)
    want = reference(params, xs)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12), got, want)
    if "truncate" in kwargs:
        return  # truncated BPTT's gradient differs by design (tests/test_tbptt.py, gradcheck)
    grad = lambda f: jax.grad(lambda p, x: _loss(f(p, x), weights), argnums=(0, 1))(params, xs)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11),
                 grad(run), grad(reference))  # fmt: skip


# The options a minGRU (a linear recurrence: parallel mode by default) meets differently.
LINEAR_OPTIONS = ("mode", "gradient", "unroll", "truncate", "remat", "return_carries", "reverse",
                  "lengths", "resets", "mask")  # fmt: skip
LINEAR_PAIRS = list(itertools.combinations(LINEAR_OPTIONS, 2))


@pytest.mark.parametrize(
    ("first", "second"), LINEAR_PAIRS, ids=[f"{a}+{b}" for a, b in LINEAR_PAIRS]
)
def test_every_pair_on_a_linear_recurrence(x64, first, second):
    rng = np.random.default_rng(1)
    cell = rj.mingru
    params = jax.tree.map(jnp.asarray, random_params(rng, cell, D, H))
    xs = jnp.asarray(rng.normal(size=(B, T, D)))
    kwargs, data = _kwargs((first, second), rng)
    data.pop("carry", None)
    for mode in ("parallel", "sequential"):
        if "mode" in kwargs:
            kwargs["mode"] = mode
        try:
            got = rj.unroll(cell, params, xs, **data, **kwargs)
        except ValueError as err:
            assert _named_in(str(err), first, second), f"refused without naming both: {err}"
            continue
        semantic = {k: v for k, v in kwargs.items() if k not in COMPUTE_ONLY | {"truncate"}}
        want = loop_reference(cell.cell, params, xs, **data, **semantic)
        jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12),
                     got, want)  # fmt: skip


def test_options_record_is_parsed_once_and_forwarded():
    opts = rj.UnrollOptions(gradient="manual")
    assert rj.options.parse(opts, unroll=2) == rj.UnrollOptions(gradient="manual", unroll=2)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['unrol'\]"):
        rj.unroll(rj.lstm, rj.lstm.init(jax.random.PRNGKey(0), D, H), jnp.ones((B, T, D)),
                  unrol=2)  # fmt: skip
    with pytest.raises(ValueError, match="truncate= with gradient="):
        opts.replace(gradient="autodiff", truncate=2)


# --- The seven reproductions of issue 22 -------------------------------------------------


def test_repro1_recurrent_dropout_on_a_cell_without_recurrent_product_is_refused():
    params = rj.lru.init(jax.random.PRNGKey(0), D, H)
    for cell in (rj.lru, rj.mingru, rj.minlstm):
        params = cell.init(jax.random.PRNGKey(0), D, H)
        with pytest.raises(ValueError, match="recurrent_dropout= with cell=.*does not declare"):
            rj.unroll(cell, params, jnp.ones((B, T, D)), recurrent_dropout=0.5,
                      key=jax.random.PRNGKey(1))  # fmt: skip
        _, plain = rj.unroll(cell, params, jnp.ones((B, T, D)))  # input dropout still works
        _, dropped = rj.unroll(cell, params, jnp.ones((B, T, D)), input_dropout=0.5,
                               key=jax.random.PRNGKey(1))  # fmt: skip
        assert not np.allclose(plain, dropped)


def _keras_style_reset_before(params, xs, mask):
    """Keras' GRU(reset_after=False, recurrent_dropout) step written out: the mask drops
    h in the products only, z * h keeps the whole h."""
    h = jnp.zeros((xs.shape[0], H))
    w_h = params["w_h"]
    outs = []
    for t in range(xs.shape[1]):
        x_r, x_z, x_n = jnp.split(xs[:, t] @ params["w_x"] + params["b"], 3, -1)
        read = h * mask
        r = jax.nn.sigmoid(x_r + read @ w_h[:, :H])
        z = jax.nn.sigmoid(x_z + read @ w_h[:, H : 2 * H])
        n = jnp.tanh(x_n + (r * read) @ w_h[:, 2 * H :])
        h = (1 - z) * n + z * h
        outs.append(h)
    return jnp.stack(outs, 1)


def test_repro2_recurrent_dropout_leaves_the_carried_term_undropped(x64):
    rng = np.random.default_rng(0)
    params = random_params(rng, rj.gru.reset_before, D, H)
    xs = jnp.asarray(rng.normal(size=(B, 400, D)))
    mask = jnp.asarray(rng.choice([0.0, 2.0], size=(B, H)))
    cell = rj.regularized(rj.gru.reset_before, recurrent_dropout=True)
    inputs = jnp.concatenate([xs, jnp.broadcast_to(mask[:, None], (B, 400, H))], -1)
    _, hs = rj.unroll(cell, params, inputs)
    np.testing.assert_allclose(hs, _keras_style_reset_before(params, xs, mask), atol=1e-12)
    assert float(jnp.max(jnp.abs(hs))) <= 1.0  # it grew to 6.8e88 when z * h was dropped too
    _, hs = rj.unroll(rj.gru.reset_before, params, xs, recurrent_dropout=0.5,
                      key=jax.random.PRNGKey(0))  # fmt: skip
    assert bool(jnp.all(jnp.isfinite(hs))) and float(jnp.max(jnp.abs(hs))) <= 1.0
    for cell in (rj.mingru, rj.minlstm):  # no recurrent product: refused, not blown up
        with pytest.raises(ValueError, match="recurrent_dropout= with cell="):
            rj.unroll(cell, random_params(rng, cell, D, H), xs, recurrent_dropout=0.5,
                      key=jax.random.PRNGKey(0))  # fmt: skip


def test_repro3_one_zoneout_rate_on_a_gru_acts_on_h(x64):
    rng = np.random.default_rng(0)
    params = random_params(rng, rj.gru, D, H)
    xs = jnp.asarray(rng.normal(size=(B, T, D)))
    _, hs = rj.unroll(rj.gru, params, xs, zoneout=0.1, training=False)
    _, want = loop_reference(rj.gru.cell, params, xs, zoneout=0.1)
    np.testing.assert_allclose(hs, want, rtol=1e-12)
    _, trained = rj.unroll(rj.gru, params, xs, zoneout=0.1, key=jax.random.PRNGKey(0))
    assert trained.shape == (B, T, H)
    model = models.classifier(rj.gru, hidden_size=H, num_classes=3, zoneout=0.1)
    cparams = model.init(jax.random.PRNGKey(0), D, dtype=jnp.float64)
    logits = model.apply(cparams, xs, key=jax.random.PRNGKey(1))
    assert logits.shape == (B, 3)
    with pytest.raises(ValueError, match="zoneout= with cell=.*c field"):
        rj.unroll(rj.gru, params, xs, zoneout=(0.1, 0.1), training=False)


def test_repro4_residual_blocks_forward_the_key():
    model = models.language_model(rj.mingru, vocab_size=7, hidden_size=8, block="residual")
    params = model.init(jax.random.PRNGKey(0))
    tokens = jnp.arange(12).reshape(2, 6) % 7
    plain, _ = model.apply(params, tokens)
    dropped, _ = model.apply(params, tokens, key=jax.random.PRNGKey(1), input_dropout=0.5)
    assert not np.allclose(plain, dropped)
    evaluated, _ = model.apply(params, tokens, input_dropout=0.5)  # no key: evaluation
    np.testing.assert_array_equal(plain, evaluated)
    with pytest.raises(ValueError, match="recurrent_dropout= with cell="):
        model.apply(params, tokens, key=jax.random.PRNGKey(1), recurrent_dropout=0.5)
    classifier = models.classifier(rj.mingru, hidden_size=8, num_classes=3, block="residual",
                                   input_dropout=0.5)  # fmt: skip
    cparams = classifier.init(jax.random.PRNGKey(0), D)
    xs = jnp.ones((B, T, D))
    assert not np.allclose(classifier.apply(cparams, xs),
                           classifier.apply(cparams, xs, key=jax.random.PRNGKey(2)))  # fmt: skip


def test_repro5_reverse_in_a_stack(x64):
    rng = np.random.default_rng(0)
    stack = rj.init_stack(rj.lstm, jax.random.PRNGKey(0), D, H, num_layers=2, dtype=jnp.float64)
    xs = jnp.asarray(rng.normal(size=(B, T, D)))
    _, hs = rj.unroll_stack(rj.lstm, stack, xs, reverse=True, lengths=jnp.asarray(LENGTHS))
    _, first = rj.unroll(rj.lstm, stack[0], xs, reverse=True, lengths=jnp.asarray(LENGTHS))
    _, want = rj.unroll(rj.lstm, stack[1], first, reverse=True, lengths=jnp.asarray(LENGTHS))
    np.testing.assert_allclose(hs, want, rtol=1e-12)
    bidirectional = rj.init_stack(rj.lstm, jax.random.PRNGKey(0), D, H, bidirectional=True,
                                  dtype=jnp.float64)  # fmt: skip
    with pytest.raises(ValueError, match="reverse= with bidirectional="):
        rj.unroll_stack(rj.lstm, bidirectional, xs, reverse=True)


def test_repro6_linear_scan_reads_resets_in_the_callers_layout(x64):
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(0.5, 0.9, (B, T, H)))
    b = jnp.asarray(rng.normal(size=(B, T, H)))
    resets = jnp.asarray(RESETS)
    batch_major = rj.linear_scan(a, b, resets=resets)
    time_major = rj.linear_scan(jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1), time_major=True,
                                resets=resets.T)  # fmt: skip
    np.testing.assert_allclose(jnp.swapaxes(time_major, 0, 1), batch_major, rtol=1e-12)
    with pytest.raises(ValueError, match=r"resets must be \(time, batch\)"):
        rj.linear_scan(jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1), time_major=True,
                       resets=resets)  # fmt: skip


def test_repro7_parallel_mode_reads_gradient_and_refuses_unroll(x64):
    rng = np.random.default_rng(0)
    params = jax.tree.map(jnp.asarray, random_params(rng, rj.mingru, D, H))
    xs = jnp.asarray(rng.normal(size=(B, T, D)))
    with pytest.raises(ValueError, match="mode= with unroll="):
        rj.unroll(rj.mingru, params, xs, mode="parallel", unroll=4)
    _, by_steps = rj.unroll(rj.mingru, params, xs, unroll=4)  # mode=None picks the steps
    _, parallel = rj.unroll(rj.mingru, params, xs)
    np.testing.assert_allclose(by_steps, parallel, rtol=1e-10)
    # "manual" (the hand-written reverse scan) and "autodiff" are different programs with
    # the same gradient: the autodiff one has no custom_vjp in its jaxpr.
    loss = lambda gradient: lambda p: jnp.sum(
        rj.unroll(rj.mingru, p, xs, mode="parallel", gradient=gradient)[1] ** 2
    )
    jaxprs = {g: str(jax.make_jaxpr(loss(g))(params)) for g in ("manual", "autodiff")}
    assert "custom_vjp" in jaxprs["manual"] and "custom_vjp" not in jaxprs["autodiff"]
    grads = [jax.grad(loss(g))(params) for g in ("manual", "autodiff")]
    jax.tree.map(lambda m, a: np.testing.assert_allclose(m, a, rtol=1e-10), *grads)


def test_check_cell_proves_the_parallel_path_against_the_steps(x64):
    report = rj.check_cell(rj.mingru, input_size=3, hidden_size=4)
    assert report.stages[-1] == "parallel" and report.ok
    parallel = rj.mingru.cell.parallel

    def drifting(params, xs, carry, valid, starts=None, **kwargs):  # values off by 1e-6
        final, hs = parallel(params, xs, carry, valid, starts, **kwargs)
        return final, hs * (1 + 1e-6)

    def frozen_gradient(params, xs, carry, valid, starts=None, **kwargs):  # no d_params
        return parallel(jax.lax.stop_gradient(params), xs, carry, valid, starts, **kwargs)

    import dataclasses

    with pytest.raises(ValueError, match="parallel path's values differ"):
        rj.check_cell(dataclasses.replace(rj.mingru.cell, parallel=drifting), 3, 4)
    broken = dataclasses.replace(rj.mingru.cell, parallel=frozen_gradient)
    report = rj.check_cell(broken, 3, 4, raise_on_failure=False)
    failing = {row.path for row in report.rows if not row.ok}
    assert failing == {"d_params.b", "d_params.w_x"}
    assert all("parallel" in row.message for row in report.rows if not row.ok)
