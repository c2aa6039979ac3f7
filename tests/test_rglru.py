"""``rj.rglru`` (Griffin/Hawk's RG-LRU) against recurrentgemma's JAX ``RGLRU`` layer on the same
parameters (values and gradients, with and without segment resets, and continuing from a
cache), its own ``check_cell`` in float64, the converters, and every driver."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, optional_import

import rnn_jax as rj
from rnn_jax import interop

# recurrentgemma: requirements-data.txt (--no-deps; its numpy pin clashes) + the test extra
recurrentgemma, needs_reference = optional_import("recurrentgemma.jax")
rg_layers = recurrentgemma and recurrentgemma.layers
rg_scan = recurrentgemma and recurrentgemma.scan

WIDTH, HEADS, BATCH, STEPS = 6, 3, 2, 7
CELL = rj.rglru.with_heads(HEADS)


def _reference(dtype):
    """recurrentgemma's layer and its variables (biases made non-zero: a zero bias would hide
    a bias in the wrong slot)."""
    layer = rg_layers.RGLRU(width=WIDTH, num_heads=HEADS, param_dtype=dtype)
    x = jnp.zeros((BATCH, STEPS, WIDTH), dtype)
    variables = layer.init(jax.random.PRNGKey(0), x, jnp.zeros((BATCH, STEPS), int))
    rng = np.random.default_rng(1)
    shift = lambda p: p + jnp.asarray(rng.normal(0, 0.5, p.shape), dtype)
    return layer, jax.tree.map(shift, variables)


@pytest.fixture
def float64_accumulation(monkeypatch):
    """The reference's scan accumulates in ``acc_float_dtype`` (float32 unless told): told
    float64 here, so the whole reference runs in float64."""
    scan = functools.partial(rg_scan.linear_scan, acc_float_dtype=jnp.float64)
    monkeypatch.setattr(rg_scan, "linear_scan", scan)


# segment_pos of the reference; rnn_jax's resets are where it is 0 after step 0, and its
# carry is the zero carry (fresh: step 0 starts a document) or the cache (a segment goes on).
# Resets with a cache are not here: an rnn_jax reset reads the initial carry (every cell's
# rule), the reference's a zero state, and the two agree only from the zero carry.
SEGMENTS = {
    "resets": ([[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 0]], None),
    "cache": ([list(range(5, 5 + STEPS)), list(range(1, 1 + STEPS))], "cache"),
}


def _both(dtype, case, mode):
    """``(value, grads)`` of the same loss through the reference and through rj.unroll."""
    layer, variables = _reference(dtype)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(BATCH, STEPS, WIDTH)), dtype)
    cache = jnp.asarray(rng.normal(size=(BATCH, WIDTH)), dtype)
    positions, with_cache = SEGMENTS[case]
    segment_pos = jnp.asarray(positions)
    weights = jnp.asarray(np.cos(np.arange(x.size)).reshape(x.shape), dtype)

    def reference(params, x, cache):
        y, last = layer.apply({"params": params}, x, segment_pos, cache if with_cache else None)
        return jnp.sum(y * weights) + jnp.sum(jnp.sin(last))

    def ours(params, x, cache):
        carry = interop.carry_from_recurrentgemma(cache) if with_cache else None
        starts = (segment_pos == 0).at[:, 0].set(False)  # step 0 starts from the carry anyway
        final, hs = rj.unroll(CELL, params, x, carry, resets=starts, mode=mode)
        return jnp.sum(hs * weights) + jnp.sum(jnp.sin(final.h))

    both = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
    expected = both(reference)(variables["params"], x, cache)
    params = interop.rglru_from_recurrentgemma(variables)
    value, (d_params, d_x, d_cache) = both(ours)(params, x, cache)
    # lam = -a_param: the converter, linear, maps gradients as it maps parameters
    got = (value, (interop.rglru_to_recurrentgemma(d_params), d_x, d_cache))
    if not with_cache:  # both ignore the cache: zero gradient each
        assert float(jnp.max(jnp.abs(d_cache))) == 0.0
    return got, expected


@needs_reference
@pytest.mark.parametrize(
    ("case", "mode"),
    [
        ("resets", "sequential"),
        ("resets", "parallel"),
        ("cache", "sequential"),
    ],
)
def test_equals_recurrentgemma_float64(case, mode, x64, float64_accumulation):
    got, expected = _both(jnp.float64, case, mode)
    assert_close(got, expected, 1e-12)


@needs_reference
def test_equals_recurrentgemma_as_shipped_float32():
    """The reference as it ships (float32, its float32 scan) on the resets case: measured
    max error 1e-6 absolute (on the loss, ~10), 2e-7 relative to each leaf's largest entry."""
    got, expected = _both(jnp.float32, "resets", "parallel")
    close = functools.partial(np.testing.assert_allclose, atol=3e-6, rtol=2e-6)
    jax.tree.map(close, got, expected)


@needs_reference
def test_bounded_sqrt_gradient_where_a_reaches_one(x64, float64_accumulation):
    """With ``a`` so close to 1 that ``1 - a_t^2 < 1/(4 * 1000^2)``, the gradient is the
    reference's clipped one (finite), by hand and by autodiff."""
    layer, variables = _reference(jnp.float64)
    variables["params"]["a_param"] = jnp.full((WIDTH,), -20.0)  # softplus(-20) ~ 2e-9
    # so 1 - a_t^2 <= 1 - exp(-16 softplus(-20)) < 1 / (4 * 1000^2): the bound acts everywhere
    assert 1 - np.exp(-16 * np.log1p(np.exp(-20.0))) < 1 / 4e6
    x = jax.random.normal(jax.random.PRNGKey(3), (BATCH, STEPS, WIDTH), jnp.float64)
    segment_pos = jnp.tile(jnp.arange(STEPS), (BATCH, 1))
    ref = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x, segment_pos)[0] ** 2))
    params = interop.rglru_from_recurrentgemma(variables)
    for gradient in ("autodiff", "manual"):
        loss = functools.partial(_squares, gradient=gradient, xs=x)
        got = jax.grad(loss)(params)
        assert_close(interop.rglru_to_recurrentgemma(got), ref(variables["params"]), 1e-9)


def _squares(params, xs, gradient):
    return jnp.sum(rj.unroll(CELL, params, xs, gradient=gradient, mode="sequential")[1] ** 2)


def test_check_cell_float64(x64):
    params = CELL.init(jax.random.PRNGKey(0), WIDTH, WIDTH, dtype=jnp.float64)
    rng = np.random.default_rng(4)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(0, 0.5, p.shape)), params)
    report = rj.check_cell(CELL, WIDTH, WIDTH, params=params, batch_size=2,
                                    num_steps=3, num_directions=1)  # fmt: skip
    assert report.ok and max(max(row.errors) for row in report.rows) < 1e-12


@needs_reference
def test_init_matches_the_reference_ring_and_refuses_bad_sizes():
    params = rj.rglru.init(jax.random.PRNGKey(0), 512, 512)
    a = jax.nn.sigmoid(params["lam"])
    assert 0.9 <= float(a.min()) and float(a.max()) <= 0.999
    # the reference's a_param init from the same formula: -lam
    reference = rg_layers.rnn_real_param_init(0.9, 0.999)(jax.random.PRNGKey(7), (512,))
    assert_close(jnp.sort(jax.nn.sigmoid(-reference)), jnp.sort(a), 0.02)
    assert 0.02 < float(jnp.std(params["w_r"])) * np.sqrt(512) / 1.0 < 2
    with pytest.raises(ValueError, match=r"input_size \(3\) must equal hidden_size \(4\)"):
        rj.rglru.init(jax.random.PRNGKey(0), 3, 4)
    with pytest.raises(ValueError, match=r"hidden_size \(4\) must be a multiple of num_heads"):
        rj.rglru.with_heads(3).init(jax.random.PRNGKey(0), 4, 4)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        rj.rglru.with_heads(0)
    two_heads = rj.rglru.with_heads(2).init(jax.random.PRNGKey(0), 4, 4)
    with pytest.raises(ValueError, match=r"have 2 heads .* run them with rj.rglru.with_heads\(2\)"):
        rj.unroll(rj.rglru, two_heads, jnp.ones((1, 3, 4)))


@needs_reference
def test_converters_round_trip_bitwise_and_refuse_other_trees():
    params = CELL.init(jax.random.PRNGKey(0), WIDTH, WIDTH)
    tree = interop.rglru_to_recurrentgemma(params)
    _, variables = _reference(jnp.float32)
    assert jax.tree.map(np.shape, tree) == jax.tree.map(np.shape, variables["params"])
    back = interop.rglru_from_recurrentgemma({"params": tree})
    jax.tree.map(np.testing.assert_array_equal, back, params)
    again = interop.rglru_to_recurrentgemma(interop.rglru_from_recurrentgemma(variables))
    jax.tree.map(
        np.testing.assert_array_equal, again, jax.tree.map(np.asarray, variables["params"])
    )
    with pytest.raises(ValueError, match="recurrentgemma RGLRU parameters have"):
        interop.rglru_from_recurrentgemma({"a_param": tree["a_param"]})


def _segments_separately(params, xs, resets):
    """Each row's episodes run from the zero carry on their own (reference semantics)."""
    rows = []
    for row in range(xs.shape[0]):
        bounds = [0] + [t for t in range(1, xs.shape[1]) if resets[row, t]] + [xs.shape[1]]
        parts = [rj.unroll(CELL, params, xs[row:row + 1, s:e], mode="sequential")[1]
                 for s, e in itertools.pairwise(bounds)]  # fmt: skip
        rows.append(jnp.concatenate(parts, axis=1))
    return jnp.concatenate(rows)


def test_unroll_modes_lengths_resets_reverse(x64):
    """Values: parallel = sequential with lengths, resets and reverse, and with a mask
    (check_cell proves the gradients of both modes, and of rj.bptt full and truncated k=3,
    against jax.grad and finite differences, with uneven lengths and resets);
    resets = the episodes run apart; a row that read nothing keeps a fresh carry."""
    params = CELL.init(jax.random.PRNGKey(0), WIDTH, WIDTH, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, STEPS, WIDTH), jnp.float64)
    lengths = jnp.array([STEPS, 4, 0])
    resets = jnp.zeros((3, STEPS), bool).at[0, 3].set(True).at[1, 1].set(True)
    for reverse in (False, True):
        options = dict(lengths=lengths, resets=resets, reverse=reverse)
        parallel = rj.unroll(CELL, params, xs, mode="parallel", **options)
        assert_close(parallel, rj.unroll(CELL, params, xs, mode="sequential", **options))
        assert parallel[0].fresh.tolist() == [0.0, 0.0, 1.0]
    for mode in ("parallel", "sequential"):  # an empty sequence: the carry stays fresh
        final, hs = rj.unroll(CELL, params, xs[:, :0], mode=mode)
        assert hs.shape == (3, 0, WIDTH) and final.fresh.tolist() == [1.0] * 3
    mask = jnp.asarray(np.random.default_rng(5).random((3, STEPS)) > 0.3)
    masked = rj.unroll(CELL, params, xs, mask=mask, mode="parallel")
    assert_close(masked, rj.unroll(CELL, params, xs, mask=mask, mode="sequential"))
    _, hs = rj.unroll(CELL, params, xs[:1], resets=resets[:1])
    assert_close(hs, _segments_separately(params, xs[:1], np.asarray(resets[:1])))


def test_stack_bidirectional_classifier_and_nnx():
    from flax import nnx

    from rnn_jax import models
    from rnn_jax import nnx as rj_nnx
    from rnn_jax.blocks import apply_residual

    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, WIDTH))
    lengths = jnp.array([5, 3])
    stack = rj.init_stack(CELL, jax.random.PRNGKey(0), WIDTH, WIDTH, num_layers=1,
                          bidirectional=True, merge="sum")  # fmt: skip
    finals, hs = rj.unroll_stack(CELL, stack, xs, lengths=lengths, merge="sum")
    # the bidirectional layer by hand: forwards + the valid prefix read backwards
    _, fwd = rj.unroll(CELL, stack[0]["fwd"], xs, lengths=lengths)
    _, bwd = rj.unroll(CELL, stack[0]["bwd"], xs, lengths=lengths, reverse=True)
    assert_close(hs, fwd + bwd, 1e-6)
    assert bool(jnp.all(hs[1, 3:] == 0)) and finals[0][1].fresh.tolist() == [0.0, 0.0]

    model = models.classifier(CELL, hidden_size=WIDTH, num_classes=3, block="residual")
    model_params = model.init(jax.random.PRNGKey(2), input_size=4)
    _, mixed = apply_residual(CELL, model_params["rnn"], xs[..., :4], lengths=lengths)
    last = mixed[jnp.arange(2), lengths - 1]
    expected = last @ model_params["readout"]["w"] + model_params["readout"]["b"]
    assert_close(model.apply(model_params, xs[..., :4], lengths=lengths), expected, 1e-6)

    module = rj_nnx.RNN(CELL, WIDTH, WIDTH, rngs=nnx.Rngs(0), gradient="manual")
    _, expected = rj.unroll(CELL, module.params[0], xs, lengths=lengths)
    assert_close(module(xs, lengths=lengths)[1], expected, 1e-6)


# ---------------------------------------------------------------------------------------
# the Hawk block (rnn_jax.blocks) against recurrentgemma's ResidualBlock (recurrent)


def _hawk_reference(dtype, width=8, lru_width=6, expanded=12):
    layer = recurrentgemma.ResidualBlock(
        width=width, mlp_expanded_width=expanded, num_heads=2, attention_window_size=4,
        temporal_block_type=recurrentgemma.TemporalBlockType.RECURRENT, lru_width=lru_width,
        param_dtype=dtype,
    )  # fmt: skip
    x = jnp.zeros((BATCH, STEPS, width), dtype)
    variables = layer.init(jax.random.PRNGKey(0), x, jnp.zeros((BATCH, STEPS), int))
    rng = np.random.default_rng(3)
    shift = lambda p: p + jnp.asarray(rng.normal(0, 0.3, p.shape), dtype)
    return layer, jax.tree.map(shift, variables)


@needs_reference
def test_hawk_block_equals_recurrentgemma_residual_block(x64, float64_accumulation):
    """Values and gradients on converted weights with segment resets (the RG-LRU's modes are
    proved equal above, so one here), and the converters' round trip."""
    from rnn_jax.blocks import hawk_block, zero_hawk_carry

    layer, variables = _hawk_reference(jnp.float64)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(BATCH, STEPS, 8)))
    segment_pos = jnp.asarray(SEGMENTS["resets"][0])
    starts = segment_pos == 0
    weights = jnp.asarray(np.cos(np.arange(x.size)).reshape(x.shape))

    def reference(params, x):
        return jnp.sum(layer.apply({"params": params}, x, segment_pos)[0] * weights)

    def ours(block, x):
        carry = zero_hawk_carry(block, BATCH)
        y, _ = hawk_block(block, x, carry, starts=starts, resets=starts, mode="parallel")
        return jnp.sum(y * weights)

    grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    expected = grad(reference)(variables["params"], x)
    block = interop.hawk_block_from_recurrentgemma(variables)
    value, (d_block, d_x) = grad(ours)(block, x)
    # the converter is affine (norm scales +-1): gradients map by its linear part
    d_tree = interop.hawk_block_to_recurrentgemma(d_block)
    for norm in ("temporal_pre_norm", "channel_pre_norm"):
        d_tree[norm]["scale"] = d_tree[norm]["scale"] + 1
    assert_close((value, (d_tree, d_x)), expected, 1e-11)
    back = interop.hawk_block_to_recurrentgemma(block)  # the norms' +-1: one rounding at most
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=3e-16), back,
                 jax.tree.map(np.asarray, variables["params"]))  # fmt: skip
    with pytest.raises(ValueError, match="recurrent ResidualBlock has"):
        interop.hawk_block_from_recurrentgemma({"params": {"mlp_block": {}}})


def test_hawk_resets_lengths_and_chunks_are_segments_run_apart(x64):
    """A reset starts the block afresh (convolution window and RG-LRU); a row's final carry
    at its length is that of the row cut there, and handed on it continues the row; options
    it cannot honour are refused by name."""
    from rnn_jax.blocks import apply_hawk, init_hawk

    params = init_hawk(jax.random.PRNGKey(0), 3, width=4, num_layers=1, num_heads=2,
                       dtype=jnp.float64)  # fmt: skip
    params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero biases, a wider convolution
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, STEPS, 3), jnp.float64)
    run = jax.jit(apply_hawk)
    resets = jnp.zeros((2, STEPS), bool).at[0, 3].set(True)
    finals, hs = run(params, xs, resets=resets, lengths=jnp.array([STEPS, 2]))
    assert_close(hs[:1, 3:], run(params, xs[:1, 3:])[1])
    assert_close(hs[:1, :3], run(params, xs[:1, :3])[1])
    cut_finals, cut = run(params, xs[1:, :2])
    assert_close(hs[1:, :2], cut)
    assert_close([jax.tree.map(lambda v: v[1:], f) for f in finals], cut_finals)
    assert_close(run(params, xs[1:, 2:], cut_finals)[1], run(params, xs[1:])[1][:, 2:])
    empty_finals, empty = apply_hawk(params, xs[:, :0])
    assert empty.shape == (2, 0, 4) and empty_finals[0].rglru.fresh.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="reverse= with the Hawk block"):
        apply_hawk(params, xs, reverse=True)
    with pytest.raises(ValueError, match=r"reads xs \(B, T, 3\), got \(2, 7, 4\)"):
        apply_hawk(params, jnp.ones((2, STEPS, 4)))


def test_causal_conv1d_equals_its_definition_with_history_and_resets(x64):
    """Per row and step, ``out_t = b + sum_lag w[K-1-lag] * input(t - lag)``, where a lag past
    the segment's start reads the initial history as if the segment began the sequence; the
    final history is the K-1 inputs before each row's length, by the same rule."""
    from rnn_jax.blocks import _segment_starts, causal_conv1d

    rng = np.random.default_rng(7)
    batch, steps, width, conv = 3, 9, 2, 4
    w, b = rng.normal(size=(conv, width)), rng.normal(size=width)
    v, history = rng.normal(size=(batch, steps, width)), rng.normal(size=(batch, conv - 1, width))
    resets = np.zeros((batch, steps), bool)
    resets[0, 4] = resets[1, 1] = resets[1, 6] = True
    lengths = np.array([steps, 8, 2])
    starts = _segment_starts(jnp.asarray(resets), batch, steps)

    def position(row, t, start):  # the input at step t of the segment starting at `start`
        offset = t - start if t < start else t
        return v[row, t] if t >= start else history[row, offset + conv - 1]

    out, final = causal_conv1d(jnp.asarray(w), jnp.asarray(b), jnp.asarray(v),
                               jnp.asarray(history), starts=starts, lengths=lengths)  # fmt: skip
    for row in range(batch):
        start = 0
        for t in range(steps):
            start = t if resets[row, t] else start
            expected = b + sum(w[conv - 1 - lag] * position(row, t - lag, start)
                               for lag in range(conv))  # fmt: skip
            np.testing.assert_allclose(out[row, t], expected, rtol=1e-12)
        end = lengths[row]
        last = max((t for t in range(end) if resets[row, t]), default=0)
        expected = [position(row, t, last) for t in range(end - conv + 1, end)]
        np.testing.assert_allclose(final[row], np.stack(expected), rtol=1e-12)
