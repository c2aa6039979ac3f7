"""Layers: stacks, bidirectional merges, dropout between layers, lengths through stacks,
the models' shapes, and ``gradient="manual"`` through stacks equal to autodiff (float64)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELLS, assert_close, random_carry, random_stack

import rnn_jax as rj
from rnn_jax import models
from rnn_jax.checks import as_cell, cell_output_size, one_zero_carry

# jit caches compiled scans per shape; eager lax.scan recompiles on every call
jstack = jax.jit(rj.unroll_stack, static_argnums=0, static_argnames=("merge", "dropout"))

MERGE_FNS = {
    "concat": lambda f, b: np.concatenate([f, b], axis=-1),
    "sum": lambda f, b: f + b,
    "mean": lambda f, b: (f + b) / 2,
    "mul": lambda f, b: f * b,
}


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_stack_is_layers_chained(x64, name, num_layers):
    cell = CELLS[name]
    rng = np.random.default_rng(num_layers)
    stack = random_stack(rng, cell, 3, 4, num_layers, bidirectional=False)
    xs = jnp.asarray(rng.normal(size=(2, 5, 3)))
    carries = [random_carry(rng, cell, 2, 4) for _ in range(num_layers)]
    finals, hs = rj.unroll_stack(cell, stack, xs, carries)
    assert len(finals) == num_layers and hs.shape == (2, 5, 4)
    h = xs
    for layer, carry, final in zip(stack, carries, finals, strict=True):
        want_final, h = rj.unroll(cell, layer, h, carry)
        assert_close(final, want_final)
    assert_close(hs, h)


def test_init_stack_shapes():
    stack = rj.init_stack(rj.gru, jax.random.PRNGKey(0), 3, 4, 3, bidirectional=True)
    assert [layer["fwd"]["w_x"].shape for layer in stack] == [(3, 12), (8, 12), (8, 12)]
    stack = rj.init_stack(rj.lstm, jax.random.PRNGKey(0), 3, 4, 2, bidirectional=True, merge="sum")
    assert stack[1]["bwd"]["w_x"].shape == (4, 16)
    # independent draws per layer and direction
    assert not np.allclose(stack[0]["fwd"]["w_h"], stack[0]["bwd"]["w_h"])
    assert rj.output_size(4, bidirectional=True) == 8
    assert rj.output_size(4, bidirectional=True, merge="mean") == 4


def test_cells_declare_their_output_size():
    """Every built-in cell states the width of its h (no probing), equal to hidden_of of its
    zero carry; a make_cell cell that does not is probed (one fallback), and the layers size
    the layer above from it."""
    builtin = (rj.simple, rj.simple.relu, rj.lstm, rj.lstm.peephole, rj.lstm.with_projection(2),
               rj.gru, rj.gru.reset_before, rj.mgu, rj.layernorm_lstm, rj.conv_lstm((3,)), rj.lru,
               rj.mingru, rj.minlstm, rj.slstm, rj.mlstm, rj.rglru)  # fmt: skip
    for cell in map(as_cell, builtin):
        probed = jax.eval_shape(lambda c=cell: c.hidden_of(one_zero_carry(c, 8))).shape[-1]
        assert cell.output_size is not None and cell.output_size(8) == probed, cell.name
    assert as_cell(rj.lstm.with_projection(2)).output_size(8) == 2

    def step(params, h, x):  # h is (B, 2H): outputs twice the hidden size
        h = jnp.tanh(x @ params["w_x"] + h @ params["w_h"])
        return h, h

    def init(key, input_size, hidden_size, *, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        return {"w_x": jax.random.normal(k1, (input_size, 2 * hidden_size), dtype),
                "w_h": jax.random.normal(k2, (2 * hidden_size, 2 * hidden_size), dtype)}

    sizes = lambda p: (p["w_x"].shape[0], p["w_h"].shape[0] // 2)  # noqa: E731
    zero_carry = lambda b, h, dtype=jnp.float32: jnp.zeros((b, 2 * h), dtype)  # noqa: E731
    cell = rj.make_cell("wide", init, step, sizes=sizes, zero_carry=zero_carry)
    assert cell.output_size is None and cell_output_size(cell, 3) == 6
    stack = rj.init_stack(cell, jax.random.PRNGKey(0), 2, 3, 2, bidirectional=True)
    assert stack[1]["fwd"]["w_x"].shape == (12, 6)
    _, hs = rj.unroll_stack(cell, stack, jnp.ones((2, 4, 2)))
    assert hs.shape == (2, 4, 12)


@pytest.mark.parametrize("merge", sorted(MERGE_FNS))
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_bidirectional_merges(x64, merge, name):
    cell = CELLS[name]
    rng = np.random.default_rng(7)
    layer = random_stack(rng, cell, 3, 4, 1, bidirectional=True)[0]
    xs = jnp.asarray(rng.normal(size=(3, 6, 3)))
    lengths = jnp.array([6, 2, 4])
    (f_fwd, f_bwd), hs = rj.bidirectional(cell, layer, xs, lengths=lengths, merge=merge)
    want_fwd, hs_fwd = rj.unroll(cell, layer["fwd"], xs, lengths=lengths)
    want_bwd, hs_bwd = rj.unroll(cell, layer["bwd"], xs, lengths=lengths, reverse=True)
    assert_close((f_fwd, f_bwd), (want_fwd, want_bwd))
    assert_close(hs, MERGE_FNS[merge](np.asarray(hs_fwd), np.asarray(hs_bwd)))
    assert hs.shape[-1] == rj.output_size(4, bidirectional=True, merge=merge)


def _dropout_problem(num_layers=3):
    rng = np.random.default_rng(8)
    stack = random_stack(rng, rj.gru.cell, 3, 6, num_layers, bidirectional=False)
    return stack, jnp.asarray(rng.normal(size=(2, 5, 3)))


def test_dropout_off_without_key_on_and_deterministic_with_key(x64):
    stack, xs = _dropout_problem()
    plain = jstack(rj.gru.cell, stack, xs)
    # no key: evaluation, no dropout whatever the rate
    assert_close(jstack(rj.gru.cell, stack, xs, dropout=0.5), plain, 0.0)
    key = jax.random.PRNGKey(0)
    first = jstack(rj.gru.cell, stack, xs, dropout=0.5, key=key)
    again = jstack(rj.gru.cell, stack, xs, dropout=0.5, key=key)
    other = jstack(rj.gru.cell, stack, xs, dropout=0.5, key=jax.random.PRNGKey(1))
    assert_close(first, again, 0.0)  # deterministic given the key
    assert np.abs(np.asarray(first[1]) - np.asarray(plain[1])).max() > 1e-3
    assert np.abs(np.asarray(first[1]) - np.asarray(other[1])).max() > 1e-3
    # the first layer reads xs undropped: its final carry is untouched
    assert_close(first[0][0], plain[0][0], 0.0)
    # rate 0 with a key is no dropout
    assert_close(jstack(rj.gru.cell, stack, xs, dropout=0.0, key=key), plain, 0.0)


def test_dropout_not_after_last_layer(x64):
    """One layer: nothing between layers, so a key changes nothing."""
    stack, xs = _dropout_problem(num_layers=1)
    plain = rj.unroll_stack(rj.gru, stack, xs)
    assert_close(rj.unroll_stack(rj.gru, stack, xs, dropout=0.9, key=jax.random.PRNGKey(0)), plain)


def test_dropout_is_inverted_dropout(x64):
    """Layer 2 of a stack whose layer 2 is linear in its input on step 1 (zero carry,
    relu, w_h irrelevant): what reaches it is zeros or the input scaled by 1/(1-rate)."""
    rate, hidden = 0.25, 64
    rng = np.random.default_rng(9)
    first = {"w_x": jnp.eye(hidden), "w_h": jnp.zeros((hidden, hidden)), "b": jnp.zeros(hidden)}
    xs = jnp.asarray(rng.uniform(0.5, 1.0, size=(4, 1, hidden)))
    _, hs = rj.unroll_stack(
        rj.simple.relu, [first, first], xs, dropout=rate, key=jax.random.PRNGKey(3)
    )
    ratio = np.asarray(hs / xs).ravel()
    kept = ratio > 0
    np.testing.assert_allclose(ratio[kept], 1 / (1 - rate), rtol=1e-12)
    assert 0.6 < kept.mean() < 0.9  # about 1 - rate kept


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stack_with_lengths_equals_rows_alone(x64, bidirectional):
    rng = np.random.default_rng(10)
    cell = rj.lstm.cell
    stack = random_stack(rng, cell, 2, 3, 2, bidirectional=bidirectional)
    xs = rng.normal(size=(3, 5, 2))
    lengths = np.array([5, 1, 3])
    finals, hs = rj.unroll_stack(cell, stack, jnp.asarray(xs), lengths=lengths)  # eager once
    for b, n in enumerate(lengths):
        row_finals, row_hs = jstack(cell, stack, jnp.asarray(xs[b : b + 1, :n]))
        assert_close(hs[b : b + 1, :n], row_hs)
        np.testing.assert_array_equal(np.asarray(hs[b, n:]), 0.0)
        assert_close(jax.tree.map(lambda a, b=b: a[b : b + 1], finals), row_finals)


def test_classifier_and_language_model_shapes():
    init, apply = models.classifier(rj.lstm, 8, 5, num_layers=2, bidirectional=True)
    params = init(jax.random.PRNGKey(0), 3)
    xs = jnp.ones((4, 6, 3))
    apply = jax.jit(apply)
    assert apply(params, xs).shape == (4, 5)
    assert apply(params, xs, lengths=jnp.array([6, 1, 3, 2])).shape == (4, 5)
    init, apply = models.language_model(rj.gru, 11, 7, num_layers=2, embed_size=5)
    params = init(jax.random.PRNGKey(1))
    tokens = jnp.zeros((3, 4), jnp.int32)
    apply = jax.jit(apply)
    logits, finals = apply(params, tokens)
    assert logits.shape == (3, 4, 11) and len(finals) == 2 and finals[0].shape == (3, 7)
    # carrying the state on: the second chunk starts where the first ended
    logits2, _ = apply(params, tokens, finals)
    assert not np.allclose(logits, logits2)
    init, apply = models.language_model(rj.simple, 6, 4)  # one-hot input
    logits, _ = jax.jit(apply)(init(jax.random.PRNGKey(2)), tokens)
    assert logits.shape == (3, 4, 6)


def _loss(cell, stack, xs, carry, lengths, gradient, merge):
    finals, hs = rj.unroll_stack(
        cell, stack, xs, carry, lengths=lengths, merge=merge, gradient=gradient
    )
    return jnp.sum(jnp.sin(hs)) + sum(jnp.sum(jnp.cos(f)) for f in jax.tree.leaves(finals))


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize(
    ("bidirectional", "merge"), [(False, "concat"), (True, "concat"), (True, "mul")]
)
def test_manual_gradient_through_stacks_equals_autodiff(x64, name, bidirectional, merge):
    cell = CELLS[name]
    rng = np.random.default_rng(11)
    stack = random_stack(rng, cell, 3, 4, 2, bidirectional=bidirectional, merge=merge)
    xs = jnp.asarray(rng.normal(size=(3, 5, 3)))
    lengths = jnp.array([5, 2, 4])
    grad = lambda gradient: jax.jit(  # noqa: E731
        jax.grad(lambda s, x: _loss(cell, s, x, None, lengths, gradient, merge), argnums=(0, 1))
    )(stack, xs)
    manual, auto = grad("manual"), grad("autodiff")
    assert_close(manual, auto)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(auto)) > 1e-3  # not vacuous


def test_manual_gradient_through_classifier_equals_autodiff(x64):
    xs = jnp.asarray(np.random.default_rng(12).normal(size=(4, 5, 3)))
    labels = jnp.array([0, 2, 1, 2])
    grads = {}
    for gradient in ("autodiff", "manual"):
        init, apply = models.classifier(rj.gru, 4, 3, bidirectional=True, gradient=gradient)
        params = init(jax.random.PRNGKey(0), 3, dtype=jnp.float64)

        def loss(params, apply=apply):
            logits = apply(params, xs, lengths=jnp.array([5, 3, 1, 4]))
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

        grads[gradient] = jax.jit(jax.grad(loss))(params)
    assert_close(grads["manual"], grads["autodiff"])


_jit_step = jax.jit(lambda cell, *args: cell.step(*args), static_argnums=0)


def _step_through_row(cell, params, seq):
    """One sequence ``(n, I)`` through ``cell.step`` one position at a time from a zero carry:
    ``(outputs (n, H), last output (H,))``; no scan, no masking, no lengths."""
    carry = cell.zero_carry(1, params["w_h"].shape[0], jnp.float64)
    outputs = []
    for x in seq:
        carry, h = _jit_step(cell, params, carry, jnp.asarray(x)[None])
        outputs.append(np.asarray(h[0]))
    return np.stack(outputs), outputs[-1]


def _reference_logits(cell, params, xs, lengths, bidirectional, merge):
    """The classifier computed row by row: each row cut to its length, each layer run over
    it (the backward direction over the reversed cut), merged as MERGE_FNS, then dense."""
    logits = []
    for x, n in zip(np.asarray(xs), lengths, strict=True):
        seq = x[:n]
        for layer in params["rnn"]:
            if bidirectional:
                fwd_hs, fwd_last = _step_through_row(cell, layer["fwd"], seq)
                bwd_hs, bwd_last = _step_through_row(cell, layer["bwd"], seq[::-1])
                seq = MERGE_FNS[merge](fwd_hs, bwd_hs[::-1])
                last = MERGE_FNS[merge](fwd_last, bwd_last)  # bwd ends having read position 0
            else:
                seq, last = _step_through_row(cell, layer, seq)
        readout = params["readout"]
        logits.append(last @ np.asarray(readout["w"]) + np.asarray(readout["b"]))
    return np.stack(logits)


@pytest.mark.parametrize(
    ("name", "num_layers", "bidirectional", "merge"),
    [
        ("lstm", 1, False, "concat"),
        ("gru", 2, True, "concat"),
        ("simple", 1, True, "sum"),
        ("gru", 1, True, "mean"),
        ("lstm", 2, True, "mul"),
    ],
)
def test_classifier_logits_equal_dense_of_hand_stepped_final_states(
    x64, name, num_layers, bidirectional, merge
):
    """The readout sees each row's state after its last *valid* step (both directions' for a
    bidirectional layer, merged): checked against a per-row loop of single steps."""
    cell = CELLS[name]
    init, apply = models.classifier(
        cell, 4, 3, num_layers=num_layers, bidirectional=bidirectional, merge=merge
    )
    rng = np.random.default_rng(13)
    shapes = init(jax.random.PRNGKey(0), 3, dtype=jnp.float64)
    # every entry random, the readout bias included (zeros would hide a missing term)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape)), shapes)
    xs = rng.normal(size=(4, 5, 3))
    lengths = np.array([5, 1, 3, 4])
    xs[np.arange(5)[None, :] >= lengths[:, None]] = 9.0  # padding must not reach the logits
    got = jax.jit(apply)(params, jnp.asarray(xs), lengths=jnp.asarray(lengths))
    assert_close(got, _reference_logits(cell, params, xs, lengths, bidirectional, merge))


@pytest.mark.parametrize("embed_size", [None, 5], ids=["one_hot", "embed"])
def test_language_model_refuses_out_of_range_tokens_naming_value_and_position(embed_size):
    """One-hot would give an all-zero input and an embedding lookup a clamped row: both wrong
    without a sound, so concrete tokens are checked on the host before any compute."""
    init, apply = models.language_model(rj.gru, 11, 4, embed_size=embed_size)
    params = init(jax.random.PRNGKey(0))
    tokens = np.zeros((2, 3), np.int32)
    assert apply(params, tokens)[0].shape == (2, 3, 11)
    for bad, where in ((11, (1, 2)), (-1, (0, 1))):
        wrong = tokens.copy()
        wrong[where] = bad
        for given in (wrong, jnp.asarray(wrong)):
            expected = rf"token {bad} at \(batch, time\) {re.escape(str(where))} .*\[0, 11\)"
            with pytest.raises(ValueError, match=expected):
                apply(params, given)
