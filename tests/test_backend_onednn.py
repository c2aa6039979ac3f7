"""``rj.unroll(..., backend="onednn")`` equals the scan path, values and gradients.

oneDNN runs the same float32 arithmetic in another order (one input product for all steps,
its own gate kernels), so the two agree to float32 round-off, not bit for bit. Tolerance, per
array, relative to its largest entry (an entry's round-off scales with the terms summed into
it, not with its own size): values 1e-5, gradients 1e-4. Measured worst cases over these
shapes: values 6e-7, gradients 8e-7, except the exploding ReLU RNN (|h| ~ 80, gradients ~ 370
at T=9) at 3e-5, where the scan path itself is 1e-5 off a float64 run (float32 eps 1.2e-7).
Requires the ``rnn_jax[onednn]`` extra (part of ``test``) and g++: no skip.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax import backends
from rnn_jax.backends import build, cudnn
from rnn_jax.cells.base import fused_cell
from rnn_jax.gradcheck import random_problem

CELLS = {"tanh": rj.simple.cell, "relu": rj.simple.relu, "lstm": rj.lstm.cell, "gru": rj.gru.cell}
VALUE_TOL = 1e-5  # of each array's largest entry (at least 1)
GRAD_TOL = 1e-4
rng = np.random.default_rng

# (B, T, I, H, time_major, reverse): B=1, T=1, H not a multiple of 8, both layouts, reverse.
SHAPES = [
    (1, 1, 3, 5, False, False),
    (4, 7, 6, 13, False, True),
    (3, 9, 5, 16, True, False),
    (2, 6, 8, 11, True, True),
]


def _outputs_and_grads(cell, backend, reverse, time_major):
    """A jitted ``(params, xs, carry) -> ((final, hs), grads)`` of a loss reading every
    output, hs and every part of the final carry, with fixed weights (so each gradient entry
    gets a different cotangent); grads with respect to params, xs and the initial carry."""

    def loss(params, xs, carry):
        out = rj.unroll(
            cell, params, xs, carry, reverse=reverse, time_major=time_major, backend=backend
        )
        final, hs = out
        weights = jnp.cos(jnp.arange(hs.size, dtype=hs.dtype)).reshape(hs.shape)
        value = jnp.sum(hs * weights) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(final))
        return value, out

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    return jax.jit(lambda p, x, c: grad(p, x, c)[::-1])


def _assert_trees_close(actual, expected, tol):
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(expected)]
    for path, a, e in zip(paths, jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        scale = max(1.0, float(np.max(np.abs(e), initial=0.0)))
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(e), rtol=0, atol=tol * scale, err_msg=path
        )


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}I{}H{}-tm{:d}-rev{:d}".format(*s))
@pytest.mark.parametrize("name", CELLS)
def test_values_and_gradients_equal_scan(name, shape):
    cell, (*dims, time_major, reverse) = CELLS[name], shape
    params, xs, carry = random_problem(
        cell, dims, jnp.float32, np.random.default_rng(dims), time_major=time_major
    )
    fused, scan = (
        _outputs_and_grads(cell, b, reverse, time_major)(params, xs, carry)
        for b in ("onednn", "scan")
    )
    _assert_trees_close(fused[0], scan[0], VALUE_TOL)
    _assert_trees_close(fused[1], scan[1], GRAD_TOL)


@pytest.mark.parametrize("name", CELLS)
def test_forward_only_runs_inference_and_equals_scan(name):
    """A call nobody differentiates runs oneDNN's forward_inference (no workspace)."""
    params, xs, carry = random_problem(CELLS[name], (3, 5, 4, 6), jnp.float32, rng(8))
    run = jax.jit(lambda p, x, c: rj.unroll(CELLS[name], p, x, c, reverse=True, backend="onednn"))
    assert "training = false" in run.lower(params, xs, carry).as_text()
    expected = rj.unroll(CELLS[name], params, xs, carry, reverse=True)
    _assert_trees_close(run(params, xs, carry), expected, VALUE_TOL)


def test_default_carry_and_eager_call():
    params, xs, _ = random_problem(rj.lstm, (2, 4, 3, 6), jnp.float32, np.random.default_rng(0))
    _assert_trees_close(
        rj.unroll(rj.lstm, params, xs, backend="onednn"), rj.unroll(rj.lstm, params, xs), VALUE_TOL
    )


def test_stack_and_bidirectional_pass_the_backend_through():
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    stack = rj.init_stack(rj.gru, jax.random.PRNGKey(0), 4, 6, 1, bidirectional=True)

    @functools.partial(jax.jit, static_argnums=2)
    @functools.partial(jax.value_and_grad, argnums=(0, 1))
    def loss(stack, xs, backend):
        finals, hs = rj.unroll_stack(rj.gru, stack, xs, backend=backend)
        return jnp.sum(jnp.tanh(hs)) + sum(jnp.sum(f) for f in jax.tree.leaves(finals))

    (fused, d_fused), (scan, d_scan) = loss(stack, xs, "onednn"), loss(stack, xs, "scan")
    _assert_trees_close(fused, scan, VALUE_TOL)
    _assert_trees_close(d_fused, d_scan, GRAD_TOL)


def _uses_onednn(fn, *args) -> bool:
    return "rnn_jax_onednn_forward" in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize("name", CELLS)
def test_auto_runs_the_faster_fused_cpu_kernel_not_onednn(name):
    """oneDNN 3.2 trains with its reference kernels: "auto" picks backend="fused_cpu"
    (measured faster for every cell, docs/results/bench.md); "onednn" runs when asked."""
    params, xs, _ = random_problem(CELLS[name], (2, 5, 3, 4), jnp.float32, rng(2))
    auto = lambda p, x: rj.unroll(CELLS[name], p, x, backend="auto")[1]
    assert backends.AUTO_CPU[name] == "fused_cpu" and not _uses_onednn(auto, params, xs)
    asked = lambda p, x: rj.unroll(CELLS[name], p, x, backend="onednn")[1]
    assert _uses_onednn(asked, params, xs)


def _custom_lstm():
    """A cell named "lstm" that is not rj.lstm: a fused backend must not run it."""
    base = rj.lstm.cell.fused
    return fused_cell("lstm", 4, base.init, base.pointwise, base.pointwise_backward,
                      has_cell_state=True, matmul_dtype="float32")  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lengths=jnp.array([4, 1])), "backend= with lengths="),
        (dict(gradient="manual", truncate=2), "backend= with truncate="),
        (dict(remat=2), "backend= with remat="),
        (dict(matmul_dtype=jnp.bfloat16), "backend= with matmul_dtype="),
        (
            dict(backend="cudnn", cell=rj.gru),
            r"runs only the built-in cells \('lstm',\), got 'gru'",
        ),
        (dict(cell=_custom_lstm()), "runs only the built-in cells"),
        pytest.param(
            dict(backend="cudnn"),
            "backend='cudnn' needs a GPU; JAX's default is cpu",
            marks=pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU-only error"),
        ),
        (dict(backend="fused"), "backend must be one of"),
    ],
)
def test_unsupported_options_raise_naming_option_and_backend(kwargs, match):
    kwargs = {"backend": "onednn", "cell": rj.lstm} | kwargs
    cell = kwargs.pop("cell")
    params, xs, _ = random_problem(cell, (2, 4, 3, 5), jnp.float32, np.random.default_rng(3))
    with pytest.raises(ValueError, match=match):
        rj.unroll(cell, params, xs, **kwargs)


def test_float64_is_refused(x64):
    params, xs, _ = random_problem(rj.lstm, (2, 4, 3, 5), jnp.float64, np.random.default_rng(4))
    with pytest.raises(TypeError, match="float32 only, got params of dtype float64"):
        rj.unroll(rj.lstm, params, xs, backend="onednn")


def test_fused_kind_names_only_the_builtin_cells():
    assert [backends.fused_kind(c) for c in CELLS.values()] == list(CELLS)
    assert backends.fused_kind(rj.lstm) == "lstm"
    assert backends.fused_kind(_custom_lstm()) is None
    assert backends.fused_kind(object()) is None


def test_missing_compiler_or_library_says_what_to_install(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-rnn-jax")
    with pytest.raises(build.BackendUnavailable, match="apt-get install g"):
        build.compile_command(build.SOURCE)
    monkeypatch.delenv("CXX")

    def missing(name):
        raise build.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(build.importlib.metadata, "distribution", missing)
    with pytest.raises(build.BackendUnavailable, match=r"pip install 'rnn_jax\[onednn\]'"):
        build.compile_command(build.SOURCE)


def test_build_is_cached_and_keyed_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("RNN_JAX_CACHE", str(tmp_path))
    first = build.build_library()
    assert first.parent == tmp_path and first.stat().st_mode & 0o111
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp file left behind
    mtime = first.stat().st_mtime_ns
    assert build.build_library() == first and first.stat().st_mtime_ns == mtime
    edited = tmp_path / "edited.cc"
    edited.write_text(build.SOURCE.read_text() + "\n// edited\n")
    assert build.library_path(dataclasses.replace(build.ONEDNN, source=edited)) != first


# --- cuDNN: the weight packing, checked on CPU against jax.experimental.rnn's reference ---


def _reference_lstm(x, h_0, c_0, weights, seq_lengths, *, input_size, hidden_size, **kw):
    """``jax.experimental.rnn.lstm``'s signature, run by its CPU reference ``lstm_ref``
    on the weights unpacked by its own ``unpack_lstm_weights``."""
    from jax.experimental import rnn

    unpacked = rnn.unpack_lstm_weights(weights, input_size, hidden_size, 1, False)
    return rnn.lstm_ref(x, h_0, c_0, *unpacked, seq_lengths, input_size, hidden_size, 1, 0.0, False)


@pytest.mark.parametrize(("time_major", "reverse"), [(False, False), (True, True)])
def test_cudnn_packing_matches_lstm_ref(monkeypatch, time_major, reverse):
    from jax.experimental import rnn

    monkeypatch.setattr(rnn, "lstm", _reference_lstm)
    shape = (3, 6, 4, 5)
    params, xs, carry = random_problem(
        rj.lstm, shape, jnp.float32, np.random.default_rng(5), time_major=time_major
    )
    expected = rj.unroll(rj.lstm, params, xs, carry, reverse=reverse, time_major=time_major)
    got = cudnn.unroll(params, xs, carry, reverse=reverse, time_major=time_major)
    _assert_trees_close(got, expected, VALUE_TOL)


@pytest.mark.gpu
@pytest.mark.ci_may_skip(reason="CI runs on CPUs: the skip is hardware, not a broken install")
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN needs a GPU")
def test_cudnn_values_and_gradients_equal_scan():
    params, xs, carry = random_problem(
        rj.lstm, (4, 7, 6, 13), jnp.float32, np.random.default_rng(6)
    )
    with jax.default_matmul_precision("float32"):  # no TF32 on the scan side either
        fused, scan = (
            _outputs_and_grads(rj.lstm, b, True, False)(params, xs, carry)
            for b in ("cudnn", "scan")
        )
    _assert_trees_close(fused[0], scan[0], VALUE_TOL)
    _assert_trees_close(fused[1], scan[1], GRAD_TOL)


def test_bench_backend_flag_adds_onednn_rows(tmp_path):
    from test_bench import load_bench

    argv = ["--config", "2,3,4,5", "--cells", "simple,gru", "--modes", "train"]
    argv += ["--impls", "rnn_jax", "--backend", "onednn", "--steps", "1", "--warmup", "0"]
    report = load_bench().main(argv + ["--out", str(tmp_path), "--name", "smoke"])
    rows = {(r["cell"], r["impl"]) for r in report["results"]}
    assert rows == {(c, i) for c in ("simple", "gru") for i in ("rnn_jax", "rnn_jax-onednn")}


def test_thread_count_setting(monkeypatch):
    params, xs, _ = random_problem(rj.lstm, (3, 4, 2, 5), jnp.float32, np.random.default_rng(7))
    run = jax.jit(lambda p, x: rj.unroll(rj.lstm, p, x, backend="onednn"))
    try:
        backends.set_onednn_threads(1)
        _assert_trees_close(run(params, xs), rj.unroll(rj.lstm, params, xs), VALUE_TOL)
    finally:
        backends.set_onednn_threads(build.threads_from_env())
    with pytest.raises(ValueError, match="num_threads must be an int >= 0, got -1"):
        backends.set_onednn_threads(-1)
    monkeypatch.setenv(build.THREADS_ENV, "two")
    with pytest.raises(ValueError, match="RNN_JAX_ONEDNN_THREADS must be an int >= 0, got 'two'"):
        build.threads_from_env()


def test_classifier_takes_the_backend():
    from rnn_jax import models

    xs = jnp.asarray(rng(9).normal(size=(4, 6, 5)), jnp.float32)
    labels = jnp.array([0, 1, 2, 1])
    results = {}
    for backend in ("onednn", "scan"):
        model = models.classifier(rj.lstm, hidden_size=7, num_classes=3, backend=backend)
        params = model.init(jax.random.PRNGKey(0), input_size=5)

        def loss(params, apply=model.apply):
            logp = jax.nn.log_softmax(apply(params, xs))
            return -jnp.mean(logp[jnp.arange(4), labels])

        results[backend] = jax.jit(jax.value_and_grad(loss))(params)
    _assert_trees_close(results["onednn"][0], results["scan"][0], VALUE_TOL)
    _assert_trees_close(results["onednn"][1], results["scan"][1], GRAD_TOL)
