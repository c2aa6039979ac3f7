"""``rj.unroll(..., backend="fused_cpu")`` (rnn_jax's own CPU kernel) equals the scan path.

The kernel runs the same float32 maths in another order (one input product for all steps,
oneDNN's sgemm and its own per-step product kernel, its own exp/tanh to about 1 ulp), so
values and gradients agree with the scan path to float32 round-off, not bit for bit.
Tolerance, per array, relative to its largest entry (at least 1; an entry's round-off scales
with the terms summed into it): values 1e-5, gradients 1e-4. LSTM and GRU: the kernel against
the scan path (both within 5e-7 of a float64 run on these shapes). The Elman RNNs with these
large random weights amplify round-off: the float32 scan path itself is up to 3.4e-5 off
float64 (float32 eps 1.2e-7) and the two float32 paths differ by up to 1.9e-5. For them the
criterion is against a float64 run of the scan path: the kernel's error at most the tolerance
plus twice the float32 scan path's own error there. Requires the ``rnn_jax[onednn]`` extra
(part of ``test``) and g++: no skip.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax import backends
from rnn_jax.backends import build
from rnn_jax.cells.base import fused_cell
from rnn_jax.gradcheck import random_problem

CELLS = {"tanh": rj.simple.cell, "relu": rj.simple.relu, "lstm": rj.lstm.cell, "gru": rj.gru.cell}
VALUE_TOL = 1e-5  # of each array's largest entry (at least 1)
GRAD_TOL = 1e-4
rng = np.random.default_rng

# (B, T, I, H, time_major, reverse, lengths): B=1, T=1, H not a multiple of 8 or 16, both
# layouts, reverse, lengths with a 0 and a full row; "mixed" draws lengths in [0, T]. With
# two threads, H >= 16 runs the split by hidden units (barrier per step), H < 16 the split
# by batch rows. H = 260: the per-step products' inner dimension (H forward, G*H backward)
# runs in chunks (256), B = 7 in register blocks of 6 rows and 1, a last panel part-filled.
SHAPES = [
    (1, 1, 3, 5, False, False, None),
    (4, 7, 6, 13, False, True, "mixed"),
    (3, 9, 5, 16, True, False, "mixed"),
    (2, 6, 8, 11, True, True, None),
    (5, 8, 4, 20, False, True, "mixed"),
    (7, 4, 3, 260, False, False, "mixed"),
]


def _lengths(batch, steps, kind):
    if kind is None:
        return None
    lengths = rng(batch * steps).integers(0, steps + 1, size=batch)
    lengths[0], lengths[-1] = steps, 0 if batch > 1 else steps  # a full row and an empty one
    return jnp.asarray(lengths)


def _outputs_and_grads(cell, backend, reverse, time_major):
    """A jitted ``(params, xs, carry, lengths) -> ((final, hs), grads)`` of a loss reading
    every output and every part of the final carry, with fixed weights (each gradient entry
    gets a different cotangent); grads with respect to params, xs and the initial carry."""

    def loss(params, xs, carry, lengths):
        out = rj.unroll(
            cell, params, xs, carry, lengths=lengths, reverse=reverse, time_major=time_major,
            backend=backend,
        )  # fmt: skip
        final, hs = out
        weights = jnp.cos(jnp.arange(hs.size, dtype=hs.dtype)).reshape(hs.shape)
        value = jnp.sum(hs * weights) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(final))
        return value, out

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    return jax.jit(lambda p, x, c, n: grad(p, x, c, n)[::-1])


def assert_close(actual, expected, tol):
    """Every leaf equal to within ``tol`` of that leaf's largest entry (at least 1)."""
    chex.assert_trees_all_equal_structs(actual, expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        scale = max(1.0, float(np.max(np.abs(e), initial=0.0)))
        chex.assert_trees_all_close(a / scale, e / scale, rtol=0, atol=tol)


def assert_as_accurate(actual, scan, exact, tol):
    """Each leaf of ``actual`` within ``tol`` of the leaf's largest entry (at least 1) plus
    twice the float32 ``scan``'s own largest error of the float64 ``exact`` result."""
    chex.assert_trees_all_equal_structs(actual, scan)
    leaves = zip(*map(jax.tree.leaves, (actual, scan, exact)), strict=True)
    for a, s, e in leaves:
        a, s = np.asarray(a, np.float64), np.asarray(s, np.float64)
        scale = max(1.0, float(np.max(np.abs(e), initial=0.0)))
        bound = tol * scale + 2 * float(np.max(np.abs(s - e), initial=0.0))
        chex.assert_trees_all_close(a, e, rtol=0, atol=bound)


@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: "B{}T{}I{}H{}-tm{:d}-rev{:d}-len{}".format(*s[:6], s[6] or 0)
)
@pytest.mark.parametrize("name", CELLS)
def test_values_and_gradients_equal_scan(name, shape):
    cell, (*dims, time_major, reverse, lengths) = CELLS[name], shape
    params, xs, carry = random_problem(cell, dims, jnp.float32, rng(dims), time_major=time_major)
    lengths = _lengths(dims[0], dims[1], lengths)
    fused, scan = (
        _outputs_and_grads(cell, b, reverse, time_major)(params, xs, carry, lengths)
        for b in ("fused_cpu", "scan")
    )
    if name in ("lstm", "gru"):
        assert_close(fused[0], scan[0], VALUE_TOL)
        assert_close(fused[1], scan[1], GRAD_TOL)
    else:  # the Elman RNNs amplify round-off here: measure it against float64
        with jax.enable_x64(True):
            to64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
            exact = _outputs_and_grads(cell, "scan", reverse, time_major)(
                to64(params), to64(xs), to64(carry), lengths
            )
            exact = jax.tree.map(np.asarray, exact)
        assert_as_accurate(fused[0], scan[0], exact[0], VALUE_TOL)
        assert_as_accurate(fused[1], scan[1], exact[1], GRAD_TOL)
    if lengths is not None:  # outputs past each length are exactly zero
        hs = fused[0][1] if not time_major else jnp.swapaxes(fused[0][1], 0, 1)
        past = np.arange(dims[1])[None, :] >= np.asarray(lengths)[:, None]
        assert np.all(np.asarray(hs)[past] == 0)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_no_steps_or_no_rows_return_the_initial_carry(name):
    """T = 0 (or B = 0) is handled, not refused: the final carry is the initial one (its
    gradient passes straight through) and the output is empty, as on the scan path."""
    cell = CELLS[name]
    for dims in ((3, 0, 4, 5), (0, 4, 4, 5)):
        params, xs, carry = random_problem(cell, dims, jnp.float32, rng(3))
        fused, scan = (
            _outputs_and_grads(cell, b, False, False)(params, xs, carry, None)
            for b in ("fused_cpu", "scan")
        )
        chex.assert_trees_all_equal(fused, scan)


def test_forward_only_equals_scan_eager_and_jitted():
    """The primal alone (no gradient asked) runs the kernel without residuals."""
    params, xs, carry = random_problem(rj.gru, (3, 5, 4, 6), jnp.float32, rng(8))
    lengths = jnp.array([5, 0, 3])
    expected = rj.unroll(rj.gru, params, xs, carry, lengths=lengths, reverse=True)
    run = lambda p, x, c: rj.unroll(
        rj.gru, p, x, c, lengths=lengths, reverse=True, backend="fused_cpu"
    )
    lowered = jax.jit(run).lower(params, xs, carry).as_text()
    assert "rnn_jax_fused_forward" in lowered and "tensor<0xf32>" in lowered  # no residuals
    assert_close(run(params, xs, carry), expected, VALUE_TOL)
    assert_close(jax.jit(run)(params, xs, carry), expected, VALUE_TOL)


def test_default_carry_unbatched_input_and_vmap():
    params, xs, _ = random_problem(rj.lstm, (2, 4, 3, 6), jnp.float32, rng(0))
    fused = functools.partial(rj.unroll, rj.lstm, params, backend="fused_cpu")
    scan = functools.partial(rj.unroll, rj.lstm, params)
    assert_close(fused(xs), scan(xs), VALUE_TOL)
    assert_close(fused(xs[0]), scan(xs[0]), VALUE_TOL)  # one (T, I) sequence
    assert_close(jax.vmap(fused)(xs[:, None]), jax.vmap(scan)(xs[:, None]), VALUE_TOL)


def test_stack_and_bidirectional_with_lengths_pass_the_backend_through():
    xs = jnp.asarray(rng(1).normal(size=(3, 5, 4)), jnp.float32)
    lengths = jnp.array([5, 2, 4])
    stack = rj.init_stack(rj.lstm, jax.random.PRNGKey(0), 4, 6, 1, bidirectional=True)

    @functools.partial(jax.jit, static_argnums=2)
    @functools.partial(jax.value_and_grad, argnums=(0, 1))
    def loss(stack, xs, backend):
        finals, hs = rj.unroll_stack(rj.lstm, stack, xs, lengths=lengths, backend=backend)
        return jnp.sum(jnp.tanh(hs)) + sum(jnp.sum(f) for f in jax.tree.leaves(finals))

    (fused, d_fused), (scan, d_scan) = loss(stack, xs, "fused_cpu"), loss(stack, xs, "scan")
    assert_close(fused, scan, VALUE_TOL)
    assert_close(d_fused, d_scan, GRAD_TOL)


def _uses_fused(fn, *args) -> bool:
    return "rnn_jax_fused_forward" in str(jax.make_jaxpr(fn)(*args))


def test_auto_picks_the_fused_kernel_with_lengths_and_scan_for_what_it_cannot_run():
    params, xs, _ = random_problem(rj.lstm, (2, 5, 3, 4), jnp.float32, rng(2))
    auto = lambda **kw: lambda p, x: rj.unroll(rj.lstm, p, x, backend="auto", **kw)[1]
    assert backends.AUTO_CPU["lstm"] == "fused_cpu"
    assert _uses_fused(auto(), params, xs)
    assert _uses_fused(auto(lengths=jnp.array([5, 2])), params, xs)
    mask = jnp.ones((2, 5), bool)
    assert not _uses_fused(auto(mask=mask), params, xs)
    np.testing.assert_array_equal(auto(mask=mask)(params, xs), rj.unroll(rj.lstm, params, xs)[1])
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        assert not _uses_fused(auto(), params64, xs.astype(jnp.float64))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(mask=jnp.ones((2, 5), bool)), ValueError, "backend= with mask="),
        (dict(resets=jnp.zeros((2, 5), bool)), ValueError, "backend= with resets="),
        (dict(gradient="manual", truncate=2), ValueError, "backend= with truncate="),
        (dict(remat=2), ValueError, "backend= with remat="),
        (dict(matmul_dtype=jnp.bfloat16), ValueError, "backend= with matmul_dtype="),
        (dict(return_carries=True), ValueError, "backend= with return_carries="),
        (dict(cell=rj.mgu), ValueError, r"runs only the built-in cells .* got 'mgu'"),
        (dict(cell="custom lstm"), ValueError, r"runs only the built-in cells .* got 'lstm'"),
        (dict(cell=rj.lstm.with_projection(2)), ValueError, "output projection"),
        (dict(dtype=jnp.bfloat16), TypeError, "runs float32 only"),
        (dict(lengths=jnp.array([5, 9])), ValueError, r"lengths must lie in \[0, 5\]"),
    ],
)
def test_what_it_cannot_run_is_refused_by_name(kwargs, error, match):
    cell = kwargs.pop("cell", rj.lstm)
    dtype = kwargs.pop("dtype", jnp.float32)
    params, xs, _ = random_problem(rj.lstm, (2, 5, 3, 4), dtype, rng(4))
    if cell is rj.mgu:  # a fused-gate cell with no kernel (rj.mingru runs: the linear kernel)
        params = rj.mgu.init(jax.random.PRNGKey(0), 3, 4)
    if cell == "custom lstm":  # named "lstm", the same maths, but not rj.lstm
        base = rj.lstm.cell.fused
        cell = fused_cell("lstm", 4, base.init, base.pointwise, base.pointwise_backward,
                          has_cell_state=True, matmul_dtype="float32")  # fmt: skip
    elif cell is not rj.lstm and cell is not rj.mgu:
        params = rj.lstm.init(jax.random.PRNGKey(0), 3, 4, proj_size=2)
    with pytest.raises(error, match=match):
        rj.unroll(cell, params, xs, backend="fused_cpu", **kwargs)


def test_thread_count_setting(monkeypatch):
    # H = 20: split by hidden units on two threads, one block on one.
    params, xs, _ = random_problem(rj.gru, (5, 4, 2, 20), jnp.float32, rng(7))
    run = jax.jit(
        jax.value_and_grad(lambda p: jnp.sum(rj.unroll(rj.gru, p, xs, backend="fused_cpu")[1]))
    )
    expected = run(params)
    try:
        backends.set_fused_cpu_threads(1)
        assert_close(run(params), expected, GRAD_TOL)
    finally:
        backends.set_fused_cpu_threads(build.threads_from_env(build.FUSED_THREADS_ENV))
    with pytest.raises(ValueError, match="num_threads must be an int >= 0, got -1"):
        backends.set_fused_cpu_threads(-1)
    monkeypatch.setenv(build.FUSED_THREADS_ENV, "two")
    with pytest.raises(ValueError, match="RNN_JAX_FUSED_THREADS must be an int >= 0, got 'two'"):
        build.threads_from_env(build.FUSED_THREADS_ENV)


def test_missing_compiler_or_onednn_says_what_to_install(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-rnn-jax")
    with pytest.raises(build.BackendUnavailable, match="backend='fused_cpu'.*apt-get install g"):
        build.compile_command(build.FUSED.source, build.FUSED)
    monkeypatch.delenv("CXX")

    def missing(name):
        raise build.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(build.importlib.metadata, "distribution", missing)
    with pytest.raises(build.BackendUnavailable, match=r"pip install 'rnn_jax\[onednn\]'"):
        build.compile_command(build.FUSED.source, build.FUSED)


def test_build_is_cached_and_keyed_by_source_flags_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("RNN_JAX_CACHE", str(tmp_path))
    first = build.build_library(build.FUSED)
    assert first.parent == tmp_path and first.stat().st_mode & 0o111
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp file left behind
    mtime = first.stat().st_mtime_ns
    assert build.build_library(build.FUSED) == first and first.stat().st_mtime_ns == mtime
    edited = tmp_path / "edited.cc"
    edited.write_text(build.FUSED.source.read_text() + "\n// edited\n")
    assert build.library_path(dataclasses.replace(build.FUSED, source=edited)) != first
    flags = dataclasses.replace(build.FUSED, flags=("-O2",))
    assert build.library_path(flags) != first
    monkeypatch.setattr(build, "cpu_features", lambda: "another CPU")
    assert build.library_path(build.FUSED) != first
    assert build.library_path(build.LINEAR) != first  # the two kernels never share a file


def test_bench_backend_flag_adds_fused_cpu_rows(tmp_path):
    from test_bench import load_bench

    argv = ["--config", "2,3,4,5", "--cells", "lstm", "--modes", "train"]
    argv += ["--impls", "rnn_jax,rnn_jax-fused_cpu-1thread", "--backend", "fused_cpu"]
    argv += ["--steps", "1", "--warmup", "0"]
    report = load_bench().main(argv + ["--out", str(tmp_path), "--name", "smoke"])
    rows = {(r["cell"], r["impl"]) for r in report["results"]}
    impls = ("rnn_jax", "rnn_jax-fused_cpu-1thread", "rnn_jax-fused_cpu")
    assert rows == {("lstm", impl) for impl in impls}
