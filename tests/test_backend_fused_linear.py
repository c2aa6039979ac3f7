"""``rj.unroll(linear_cell, ..., backend="fused_cpu")`` (the linear-recurrence kernel,
``rnn_jax/backends/fused_linear.cc``) equals the pure-JAX parallel path.

The kernel runs the same float32 maths per lane in the same order as the sequential
``lax.scan`` of the parallel path (its own sigmoid, to about 1 ulp, for the minGRU's fused
gates; complex products for the LRU), so values and gradients agree to float32 round-off, not
bit for bit. Tolerance, per array, relative to its largest entry (at least 1): values and
gradients 2e-6 (observed at most 3.2e-7 on these shapes). On a long sequence (T=1000, where
round-off accumulates) the criterion is against a float64 run of the pure-JAX path: the
kernel's error at most 1e-6 plus twice the float32 pure-JAX path's own error. Needs g++ (no
oneDNN): no skip.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax.backends import AUTO_LINEAR_CPU, build, fused_linear

VALUE_TOL = 2e-6  # of each array's largest entry (at least 1)
GRAD_TOL = 2e-6
# The minGRU's fused gates; the real "affine" kernel (minLSTM's a, b); the complex one (LRU).
CELLS = {"mingru": rj.mingru.cell, "minlstm": rj.minlstm.cell, "lru": rj.lru.cell}

# (B, T, I, H, time_major, reverse, row inputs): B=1, T=1, T=0, H not a multiple of 16,
# both layouts, reverse; lengths with a 0 and a full row, a mask, resets, lengths + resets.
SHAPES = [
    (1, 1, 3, 5, False, False, None),
    (4, 9, 6, 19, False, True, "lengths"),
    (3, 8, 5, 33, True, False, "mask"),
    (3, 10, 4, 16, False, False, "resets"),
    (5, 7, 4, 20, True, True, "lengths+resets"),
    (2, 0, 3, 7, False, False, "lengths"),
]


def _row_inputs(batch, steps, which, seed):
    """``lengths``, ``mask`` and ``resets`` for ``which``, batch-major (None where unused)."""
    rng = np.random.default_rng(seed)
    lengths = mask = resets = None
    if "lengths" in which:
        lengths = rng.integers(0, steps + 1, size=batch)
        lengths[0], lengths[-1] = steps, 0  # a full row and an empty one
        lengths = jnp.asarray(lengths)
    if "mask" in which:
        mask = jnp.asarray(rng.random((batch, steps)) > 0.3)
    if "resets" in which:
        resets = jnp.asarray(rng.random((batch, steps)) > 0.7)
    return lengths, mask, resets


def _problem(cell, batch, steps, input_size, hidden, time_major, seed):
    """``(params, xs, carry0, readout (H,))``, float32 (the LRU's state complex64), random."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = cell.init(keys[0], input_size, hidden)
    if cell is not rj.lru.cell:
        params = {name: 2 * value for name, value in params.items()}  # gates away from 0.5
    shape = (steps, batch, input_size) if time_major else (batch, steps, input_size)
    xs = jax.random.normal(keys[1], shape, jnp.float32)
    carry0 = jax.tree.map(lambda zero: zero + jax.random.normal(keys[2], zero.shape, zero.dtype),
                          cell.zero_carry(batch, hidden))  # fmt: skip
    readout = jax.random.normal(keys[3], (hidden,), jnp.float32)
    return params, xs, carry0, readout


def _final_term(final):
    """A real function of every leaf of the final carry (the LRU's complex state too)."""
    return sum(jnp.sum(jnp.cos(jnp.real(leaf)) + jnp.sin(jnp.imag(leaf)))
               for leaf in jax.tree.leaves(final))  # fmt: skip


@functools.cache
def _outputs_and_grads(cell, backend, reverse, time_major):
    """A jitted ``(params, xs, h0, readout, lengths, mask, resets) -> ((final, hs), grads)``
    of a loss reading every output and the final carry."""

    def run(params, xs, h0, lengths, mask, resets):
        return rj.unroll(cell, params, xs, h0, lengths=lengths, mask=mask, resets=resets,
                         reverse=reverse, time_major=time_major, backend=backend)  # fmt: skip

    def loss(params, xs, h0, readout, lengths, mask, resets):
        final, hs = run(params, xs, h0, lengths, mask, resets)
        return jnp.sum(jnp.sin(hs) @ readout) + _final_term(final), (final, hs)

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    return jax.jit(lambda *args: grad(*args)[::-1])


def _assert_close(got, want, tol, what):
    for path, g, w in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got),
                          jax.tree.leaves(want), strict=True):  # fmt: skip
        scale = max(1.0, float(jnp.max(jnp.abs(w)))) if w.size else 1.0
        error = float(jnp.max(jnp.abs(g - w))) if w.size else 0.0
        assert g.shape == w.shape and error <= tol * scale, (what, path[0], error, scale)


# Every shape for the minGRU (its own kernel), two each for the real and complex a, b
# (between them: lengths, mask, lengths + resets, reverse, both layouts).
CASES = [("mingru", shape) for shape in SHAPES] + [
    ("minlstm", SHAPES[1]), ("minlstm", SHAPES[4]), ("lru", SHAPES[2]), ("lru", SHAPES[4]),
]


@pytest.mark.parametrize(("name", "shape"), CASES,
                         ids=lambda c: c if isinstance(c, str) else
                         "B{}T{}I{}H{}-tm{}-rev{}-{}".format(*c))  # fmt: skip
def test_fused_linear_equals_the_parallel_path(name, shape):
    """Values (final carry, every output) and gradients (params, xs, h0) equal the pure-JAX
    parallel path's, with lengths, masks, resets, reverse, both layouts, B=1, T=1, T=0."""
    batch, steps, input_size, hidden, time_major, reverse, which = shape
    cell = CELLS[name]
    params, xs, h0, readout = _problem(cell, batch, steps, input_size, hidden, time_major, 0)
    rows = _row_inputs(batch, steps, which or "", 1)
    if time_major:  # mask and resets follow the layout
        rows = (rows[0], *(None if r is None else r.T for r in rows[1:]))
    args = (params, xs, h0, readout, *rows)
    (want_values, want_grads) = _outputs_and_grads(cell, "scan", reverse, time_major)(*args)
    (got_values, got_grads) = _outputs_and_grads(cell, "fused_cpu", reverse, time_major)(*args)
    _assert_close(got_values, want_values, VALUE_TOL, "values")
    _assert_close(got_grads, want_grads, GRAD_TOL, "gradients")


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_fused_linear_runs_the_kernel_both_ways(name):
    """The fused path is the kernel (its FFI targets in the jaxpr, forward and backward), and
    the gates are fused in (no sigmoid in XLA's part), reading the caller's batch-major
    layout (no transpose of a (B, T, .) array to time-major)."""
    cell = CELLS[name]
    params, xs, h0, readout = _problem(cell, 2, 5, 3, 4, False, 0)

    def loss(params):
        final, hs = rj.unroll(cell, params, xs, h0, backend="fused_cpu")
        return jnp.sum(final @ readout) + jnp.sum(hs)

    text = str(jax.make_jaxpr(jax.grad(loss))(params))
    assert build.LINEAR_FORWARD_TARGET in text and build.LINEAR_BACKWARD_TARGET in text
    assert "logistic" not in text
    assert text.count("('batch_major', True)") == 2


def test_auto_runs_the_kernel_where_it_is_measured_faster():
    """``backend="auto"`` on the CPU: the linear kernel for the minGRU and minLSTM (their
    fused gates), with the kernel's values; the pure-JAX parallel path for the LRU, for an
    explicit ``gradient=`` and for non-float32 inputs."""
    jaxpr = lambda cell, params, xs, **options: str(jax.make_jaxpr(
        lambda p: rj.unroll(cell, p, xs, backend="auto", **options)[1])(params))  # fmt: skip
    for name in ("mingru", "minlstm", "lru"):
        params, xs, h0, _ = _problem(CELLS[name], 2, 5, 3, 4, False, 0)
        runs_kernel = build.LINEAR_FORWARD_TARGET in jaxpr(CELLS[name], params, xs)
        assert runs_kernel == (name in AUTO_LINEAR_CPU), name
    params, xs, h0, _ = _problem(rj.mingru.cell, 2, 5, 3, 4, False, 0)
    auto = rj.unroll(rj.mingru, params, xs, h0, backend="auto")
    fused = rj.unroll(rj.mingru, params, xs, h0, backend="fused_cpu")
    _assert_close(auto, fused, 0.0, "values")
    assert build.LINEAR_FORWARD_TARGET not in jaxpr(rj.mingru, params, xs, gradient="manual")
    as16 = jax.tree.map(lambda v: v.astype(jnp.bfloat16), params)
    assert build.LINEAR_FORWARD_TARGET not in jaxpr(rj.mingru, as16, xs.astype(jnp.bfloat16))


def test_fused_linear_long_sequence_against_float64(x64):
    """T=1000 (round-off accumulates over the steps): the kernel is no further from a float64
    run of the pure-JAX path than twice the float32 pure-JAX path is, plus 1e-6."""
    cell = rj.mingru.cell
    params, xs, h0, readout = _problem(cell, 2, 1000, 4, 24, False, 3)
    args = (params, xs, h0, readout, None, None, None)
    as64 = lambda tree: jax.tree.map(lambda v: v.astype(jnp.float64), tree)
    reference = _outputs_and_grads(cell, "scan", False, False)(*as64(args))
    plain = _outputs_and_grads(cell, "scan", False, False)(*args)
    fused = _outputs_and_grads(cell, "fused_cpu", False, False)(*args)
    for ref, f32, got in zip(jax.tree.leaves(reference), jax.tree.leaves(plain),
                             jax.tree.leaves(fused), strict=True):  # fmt: skip
        scale = max(1.0, float(jnp.max(jnp.abs(ref))))
        plain_error = float(jnp.max(jnp.abs(f32 - ref))) / scale
        fused_error = float(jnp.max(jnp.abs(got - ref))) / scale
        assert fused_error <= 1e-6 + 2 * plain_error, (fused_error, plain_error)


def test_only_the_final_state_read_skips_the_output_gradient():
    """A loss of the final carry alone (the output cotangent is a symbolic zero: the kernel
    reads no d_hs) has the pure-JAX path's gradients."""
    params, xs, h0, readout = _problem(rj.minlstm.cell, 3, 12, 4, 10, False, 5)

    def loss(params, xs, h0, backend):
        final, _ = rj.unroll(rj.minlstm, params, xs, h0, backend=backend)
        return jnp.sum(jnp.tanh(final) @ readout)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    grads = {b: grad(params, xs, h0, b) for b in ("scan", "fused_cpu")}
    _assert_close(grads["fused_cpu"], grads["scan"], GRAD_TOL, "gradients")


def test_one_thread_gives_the_same_results():
    params, xs, h0, readout = _problem(rj.mingru.cell, 3, 6, 4, 40, False, 6)
    run = jax.jit(lambda p: rj.unroll(rj.mingru, p, xs, h0, backend="fused_cpu"))
    both = run(params)
    fused_linear.set_threads(1)
    try:
        one = jax.jit(lambda p: rj.unroll(rj.mingru, p, xs, h0 + 0, backend="fused_cpu"))(params)
    finally:
        fused_linear.set_threads(build.threads_from_env(build.FUSED_THREADS_ENV))
    _assert_close(one, both, 0.0, "values")


def test_fused_linear_refusals_name_the_options():
    """What the linear kernel cannot honour is refused by name, before any compute."""
    params, xs, h0, _ = _problem(rj.mingru.cell, 2, 5, 3, 4, False, 0)
    with pytest.raises(ValueError, match="backend.*gradient|gradient.*backend"):
        rj.unroll(rj.mingru, params, xs, backend="fused_cpu", gradient="manual")
    with pytest.raises(ValueError, match="backend.*mode|mode.*backend"):
        rj.unroll(rj.mingru, params, xs, backend="fused_cpu", mode="sequential")
    with pytest.raises(TypeError, match="float32"):
        as16 = jax.tree.map(lambda v: v.astype(jnp.bfloat16), params)
        rj.unroll(rj.mingru, as16, xs.astype(jnp.bfloat16), backend="fused_cpu")
    rglru = rj.rglru.init(jax.random.PRNGKey(0), 3, 3)
    with pytest.raises(ValueError, match="fused_cpu.*linear cells"):
        rj.unroll(rj.rglru, rglru, xs, backend="fused_cpu")
    with pytest.raises(ValueError, match=r"\[\(3, 2, 8\), \(8,\)\]"):
        fused_linear.scan("mingru", jnp.zeros((3, 2, 5)), jnp.zeros(8), jnp.zeros((2, 4)))


def test_a_missing_compiler_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    monkeypatch.setenv("RNN_JAX_CACHE", str(tmp_path))
    with pytest.raises(build.BackendUnavailable, match="C\\+\\+17 compiler.*apt-get install g"):
        build.build_library(build.LINEAR)


def test_the_cache_key_covers_the_shared_header(tmp_path):
    """Editing fused_common.h (included, not compiled on its own) builds anew."""
    edited = tmp_path / "fused_common.h"
    edited.write_text(build.COMMON.read_text() + "\n// edited\n")
    changed = dataclasses.replace(build.LINEAR, headers=(edited,))
    assert build.library_path(changed) != build.library_path(build.LINEAR)
    assert "-fopenmp" not in build.compile_command(tmp_path / "x.so", build.LINEAR)
