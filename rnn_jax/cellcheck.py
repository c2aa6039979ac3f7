"""``rj.check_cell``: is a cell's contract kept, and where is its backward wrong?

Stages, each compared leaf by leaf (every entry of ``d_params``, ``d_x``, ``d_carry``):

1. the contract: ``init`` honours ``dtype=``, ``sizes`` reads the sizes back, ``zero_carry``
   and ``step`` agree on the carry's structure, shapes and dtypes, ``hidden_of(carry')`` is
   the step's output, ``step_forward`` computes what ``step`` does;
2. one step: the hand-written ``step_backward`` against ``jax.vjp(step)`` at random
   parameters (biases too), a random carry and random cotangents;
3. whole sequences: ``rj.bptt`` full and truncated (with uneven lengths) through
   ``rj.check_gradients`` (against ``jax.grad`` and float64 finite differences);
4. for a cell with a parallel (linear) form: ``rj.unroll``'s parallel mode against its
   sequential mode, values (a contract: they must agree) and gradients (parallel's, with its
   hand-written reverse scan, against ``jax.grad`` of the step-by-step scan), with uneven
   lengths and episode resets.

A contract violation raises at once (``TypeError``/``ValueError`` saying what was expected);
numeric failures are collected in a ``CellReport`` whose table names each leaf's error at
each stage.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.checks import (
    as_cell,
    carry_lead,
    check_init_dtype,
    check_like,
    check_params,
    check_step_contract,
    init_shapes,
    spatial_rank,
)
from rnn_jax.gradcheck import (
    DEFAULT_EPS,
    DEFAULT_FD_TOL,
    LeafReport,
    _leaf_names,
    _normal_like,
    _numpy_rng,
    _vdot_tree,
    check_gradients,
    check_spatial_shape,
    compare_leaf,
    compare_trees,
    tolerances,
)
from rnn_jax.scan import unroll

STAGES = ("step", "full", "truncated")
PARALLEL = "parallel"


@dataclasses.dataclass(frozen=True)
class CellRow:
    """One leaf: its scaled error (max abs err / max |reference|) at each stage, the float64
    finite-difference error of the BPTT stages, and what failed."""

    path: str
    errors: tuple[float, ...]  # one per stage in the report's stages
    fd_err: float
    ok: bool
    message: str = ""


@dataclasses.dataclass(frozen=True)
class CellReport(LeafReport):
    """The result of ``check_cell``: one ``CellRow`` per leaf of ``d_params``, ``d_x`` and
    ``d_carry``; ``str(report)`` is the table, ``report.ok``, ``report.failures()``."""

    cell: str
    dtype: str
    truncate: int
    rows: tuple[CellRow, ...]
    rtol: float
    atol: float
    stages: tuple[str, ...] = STAGES
    fd_tol: float = DEFAULT_FD_TOL  # the fd err column's pass mark
    eps: float = DEFAULT_EPS  # its finite-difference step
    num_directions: int = 2  # its random directions per leaf (0: not run)

    def __str__(self) -> str:
        parallel = ", parallel vs jax.grad of the steps" if PARALLEL in self.stages else ""
        fd = "fd err: not run (num_directions=0)"
        if self.num_directions:
            fd = (f"fd err: bptt vs float64 central differences, eps={self.eps:g}, "
                  f"{self.num_directions} random directions per leaf (pass: <= fd_tol="
                  f"{self.fd_tol:g})")  # fmt: skip
        head = (
            f"check_cell {self.cell} {self.dtype}: scaled error max|manual - ref| / max|ref| "
            f"per stage, step vs jax.vjp, bptt vs jax.grad{parallel} (pass: <= rtol="
            f"{self.rtol:g} + atol={self.atol:g}/max|ref|); {fd}"
        )
        labels = {"step": "step", "full": "bptt full", "truncated": f"bptt k={self.truncate}",
                  PARALLEL: "parallel"}  # fmt: skip
        columns = (*(labels[stage] for stage in self.stages), "fd err")
        fd_err = lambda row: row.fd_err if self.num_directions else "-"
        return self.table(head, columns, lambda row: (*row.errors, fd_err(row)))


def check_cell(
    cell,
    input_size: int,
    hidden_size: int,
    *,
    batch_size: int = 3,
    num_steps: int = 5,
    dtype=jnp.float64,
    key=0,
    truncate: int = 3,
    params=None,
    rtol: float | None = None,
    atol: float | None = None,
    num_directions: int = 2,
    raise_on_failure: bool = True,
    spatial_shape=None,
) -> CellReport:
    """Check a cell's contract and its hand-written backward (module docstring).

    Args:
      cell: any cell (``rj.make_cell``, a library cell, an object of the protocol).
      input_size, hidden_size, batch_size, num_steps: the problem's sizes.
      dtype: float64 (default; run under ``jax.enable_x64``), float32, bfloat16 or float16:
        the tolerances follow it (``rnn_jax.gradcheck.DEFAULT_TOL``).
      key: int seed for the random parameters, inputs, carries and cotangents.
      truncate: the truncation of the third stage.
      params: parameters to check at instead of random N(0, 0.5^2) ones (for a cell whose
        parameters must satisfy a constraint).
      rtol, atol, num_directions: as in ``rj.check_gradients``.
      raise_on_failure: raise ``AssertionError`` (message: the table, then one line per
        failing leaf) instead of returning a failing report.
      spatial_shape: for a spatial cell (``rj.conv_lstm``) the inputs' spatial shape, e.g.
        ``(5, 5)``: then ``x`` is ``(B, *spatial_shape, I)``; None: 4 along each axis.

    Examples:
      >>> import jax, rnn_jax as rj
      >>> with jax.enable_x64(True):
      ...     report = rj.check_cell(rj.gru, input_size=3, hidden_size=4)
      >>> report.ok, [row.path for row in report.rows][:2]
      (True, ['d_params.b_h', 'd_params.b_x'])
    """
    cell = as_cell(cell)
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("check_cell in float64 needs 64-bit JAX: run it under "
                         "jax.enable_x64(True), or pass dtype=jnp.float32")  # fmt: skip
    rtol, atol = tolerances(dtype, rtol, atol)
    rng = _numpy_rng(key)
    if spatial_shape is None:
        spatial_shape = (4,) * spatial_rank(cell)
    spatial = check_spatial_shape(cell, spatial_shape)
    sizes = (batch_size, input_size, hidden_size)
    params, carry, x = _check_contract(cell, sizes, spatial, dtype, rng, params, rtol, atol)

    step = _step_stage(cell, params, carry, x, rng, rtol, atol)
    xs = jnp.asarray(rng.normal(size=(batch_size, num_steps, *spatial, input_size)), dtype)
    common = dict(rtol=rtol, atol=atol, num_directions=num_directions, key=int(rng.integers(2**31)),
                  raise_on_failure=False)  # fmt: skip
    full = check_gradients(cell, params, xs, carry, **common)
    lengths = np.array([num_steps - (b % max(num_steps, 1)) for b in range(batch_size)])
    truncated = check_gradients(cell, params, xs, carry, truncate=truncate, lengths=lengths,
                                **common)  # fmt: skip
    stages, columns = STAGES, [step, full.rows, truncated.rows]
    if cell.parallel is not None:
        stages = (*STAGES, PARALLEL)
        columns.append(_parallel_stage(cell, params, xs, carry, lengths, rng, rtol, atol))

    rows = []
    for by_stage in zip(*columns, strict=True):
        s_row, f_row, t_row = by_stage[:3]
        errors = tuple(row.max_rel_err for row in by_stage)
        failed = [(stage, row.message) for stage, row in
                  zip(stages, by_stage, strict=True) if not row.ok]  # fmt: skip
        # The earliest failing stage is the most local evidence; the others are named.
        message = "" if not failed else f"{failed[0][0]}: {failed[0][1]}"
        if len(failed) > 1:
            message += f" (also fails: {', '.join(stage for stage, _ in failed[1:])})"
        fd_err = max(f_row.fd_err, t_row.fd_err)
        rows.append(CellRow(s_row.path, errors, fd_err, not failed, message))
    report = CellReport(cell.name, dtype.name, truncate, tuple(rows), rtol, atol, stages,
                        full.fd_tol, full.eps, num_directions)  # fmt: skip
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _check_contract(cell, sizes, spatial, dtype, rng, params, rtol, atol):
    """Raise on a broken contract; return random ``(params, carry, x)`` for the checks;
    ``x (B, *spatial, I)``."""
    batch_size, input_size, hidden_size = sizes
    lead = carry_lead(cell, (batch_size, *spatial, input_size))  # B, or (B, *spatial)
    name = cell.name
    try:
        shapes = init_shapes(cell, input_size, hidden_size, dtype)
    except TypeError as err:
        message = f"{name}.init(key, input_size, hidden_size, *, dtype=...) failed: {err}"
        raise TypeError(message) from err
    check_init_dtype(cell, shapes, dtype)
    params = _normal_like(rng, shapes, 0.5) if params is None else params
    found = check_params(cell, params)
    if tuple(found) != (input_size, hidden_size):
        made_for = (input_size, hidden_size)
        raise ValueError(f"{name}: sizes(params) says {tuple(found)}, but the params were made "
                         f"for (input_size, hidden_size) = {made_for}")  # fmt: skip
    zero = cell.zero_carry(lead, hidden_size, dtype)
    for path, leaf in jax.tree_util.tree_flatten_with_path(zero)[0]:
        call = f"{name}.zero_carry({lead}, {hidden_size}, {dtype.name})"
        where = call + jax.tree_util.keystr(path)
        # A complex leaf (the LRU's state) counts as its real part's dtype, as in params.
        if leaf.ndim == 0 or leaf.shape[0] != batch_size or jnp.finfo(leaf.dtype).dtype != dtype:
            raise ValueError(f"{where} must be ({batch_size}, ...) {dtype.name} (batch first, "
                             f"or its complex dtype), got {leaf.shape} {leaf.dtype}")  # fmt: skip
    carry = _normal_like(rng, zero, 0.5)
    x = jnp.asarray(rng.normal(size=(batch_size, *spatial, input_size)), dtype)
    check_step_contract(cell, params, carry, x)  # new carry like the carry, like zero's
    # Compiled as one program each: run eagerly, every operation of a step would compile
    # on its own, which is most of the check's time on a small problem.
    new_carry, h = jax.jit(cell.step)(params, carry, x)
    h_of = cell.hidden_of(new_carry)
    if h.shape != h_of.shape or not np.array_equal(np.asarray(h), np.asarray(h_of)):
        raise ValueError(f"{name}: step's output h {h.shape} is not hidden_of(new carry) "
                         f"{h_of.shape}")  # fmt: skip
    fwd_carry, fwd_h = jax.jit(lambda *args: cell.step_forward(*args)[:2])(params, carry, x)
    for label, a, b in (("carry", fwd_carry, new_carry), ("h", fwd_h, h)):
        for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            if not compare_leaf(leaf_a, leaf_b, rtol, atol)[2]:
                raise ValueError(f"{name}: step_forward's {label} differs from step's")
    return params, carry, x


def _step_stage(cell, params, carry, x, rng, rtol, atol):
    """Rows of ``step_backward`` vs ``jax.vjp(step)`` at one step."""
    new_carry, h, _ = jax.eval_shape(cell.step_forward, params, carry, x)
    d_h, d_carry = _normal_like(rng, h), _normal_like(rng, new_carry)

    def backward(params, carry, x, d_h, d_carry):
        residuals = cell.step_forward(params, carry, x)[2]
        manual = cell.step_backward(params, residuals, d_h, d_carry)
        _, vjp = jax.vjp(cell.step, params, carry, x)
        d_params, d_carry_prev, d_x = vjp((d_carry, d_h))
        return manual, (d_params, d_x, d_carry_prev)

    manual, reference = jax.eval_shape(backward, params, carry, x, d_h, d_carry)
    check_like(reference, manual, f"{cell.name}.step_backward's result")
    manual, reference = jax.jit(backward)(params, carry, x, d_h, d_carry)  # one compile
    names = _leaf_names(d_params=params, d_x=x, d_carry=carry)
    return compare_trees(names, manual, reference, rtol, atol, "step_backward vs jax.vjp")


def _parallel_stage(cell, params, xs, carry, lengths, rng, rtol, atol):
    """Rows of the parallel path's gradient against ``jax.grad`` of the step-by-step scan
    (``mode="sequential"``, autodiff), with ``lengths`` and a reset in every row; its values
    must equal the sequential ones (else ``ValueError``)."""
    batch_size, num_steps = xs.shape[:2]
    resets = np.zeros((batch_size, num_steps), bool)
    resets[:, num_steps // 2] = True
    data = dict(lengths=jnp.asarray(lengths), resets=jnp.asarray(resets))
    run = {mode: functools.partial(unroll, cell, mode=mode, **data, **kwargs) for mode, kwargs in
           (("parallel", {}), ("sequential", {"gradient": "autodiff"}))}  # fmt: skip
    both = lambda p, x, c: {mode: fn(p, x, c) for mode, fn in run.items()}
    outputs = jax.jit(both)(params, xs, carry)
    for got, want in zip(jax.tree.leaves(outputs["parallel"]),
                         jax.tree.leaves(outputs["sequential"]), strict=True):  # fmt: skip
        max_abs, _, ok, message = compare_leaf(got, want, rtol, atol, "parallel vs sequential")
        if not ok:
            raise ValueError(f"{cell.name}: the parallel path's values differ from the step's: "
                             f"{message}")  # fmt: skip
    weights = _normal_like(rng, outputs["sequential"])
    loss = lambda fn: lambda p, x, c: _vdot_tree(weights, fn(p, x, c))
    grads = jax.jit(lambda p, x, c: {mode: jax.grad(loss(fn), argnums=(0, 1, 2))(p, x, c)
                                     for mode, fn in run.items()})(params, xs, carry)  # fmt: skip
    names = _leaf_names(d_params=params, d_x=xs, d_carry=carry)
    return compare_trees(names, grads["parallel"], grads["sequential"], rtol, atol,
                         "parallel vs jax.grad of the steps")  # fmt: skip
