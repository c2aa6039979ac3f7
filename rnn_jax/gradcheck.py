"""Gradient checking: hand-written BPTT vs ``jax.grad`` vs central finite differences.

``check_gradients`` is the tool to run on a new cell (any cell of the protocol, e.g. from
``rj.make_cell``; ``rj.check_cell`` runs it as part of a wider check) before trusting it.
It differentiates the scalar loss

    L(params, xs, carry) = sum_t <d_hs[t], hs[t]> + <d_carry, final carry>

three ways and compares them per leaf (each parameter array, ``xs``, each part of the
initial carry):

(a) ``rj.bptt``, the hand-written backward;
(b) ``jax.grad``: through ``rj.unroll(gradient="autodiff")`` for full BPTT, or through
    ``truncated_reference_grads`` (a slow, obviously-correct windowed ``stop_gradient``
    loss) for ``truncate=k``;
(c) central finite differences along random unit directions ``v`` of each leaf,
    ``(L(θ + εv) - L(θ - εv)) / 2ε`` against ``<grad, v>``.

Precision: (a) vs (b) runs in the caller's dtype, with tolerances for that dtype
(``check_gradients``' ``rtol``, ``atol``). The finite-difference check (c) always runs in
float64 (inputs are cast under ``jax.enable_x64(True)``, so no global x64 flag is needed):
in float32 a central difference is good to ~1e-4 at best, too coarse to tell a small slip
from round-off.
For truncated BPTT the finite-differenced function is the windowed loss with each window's
starting carry frozen at its value at θ (what ``stop_gradient`` means); its exact gradient
is the truncated gradient. The finite-differenced loss is a per-row re-implementation
(a plain scan of ``cell.step`` over each row's valid prefix), independent of ``unroll``'s
masking and prefix reversal, so (c) also catches a forward that pads or reverses wrongly.

These are test tools: call them outside ``jit`` (they jit their own pieces); ``lengths``
must be concrete. Cost: a few compiles per call, about 1-3 s of CPU at test sizes.
ReLU cells have kinks: a finite difference that straddles one (a pre-activation within ε
of 0) is meaningless; with random data that has probability ~ε per element.

``hidden_grad_norms`` is the BPTT diagnostic: ``||dL/dh_t||`` for a loss on the last state,
the curve that shows vanishing or exploding gradients.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.bptt import bptt
from rnn_jax.checks import (
    as_cell,
    carry_lead,
    check_lengths,
    init_shapes,
    params_dtype,
    spatial_rank,
)
from rnn_jax.scan import unroll
from rnn_jax.sequence import prepare

__all__ = [  # fmt: skip
    "GradReport", "LeafReport", "LeafRow", "check_gradients", "hidden_grad_norms",
    "random_problem",
]

# (a) vs (b): both sides do the same float operations in a different order, so they differ
# by a few roundings of the dtype, relative to the leaf's scale (bfloat16 keeps 8 bits).
DEFAULT_TOL = {"float64": 1e-10, "float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}
# At most this many failing leaves get a detail line in an error message.
MAX_DETAIL_LINES = 12
# (c): central differences in float64 with ε = 1e-6 are good to ~1e-9 here; a wrong
# backward (a missing factor) is off by O(1).
DEFAULT_FD_TOL = 1e-6
DEFAULT_EPS = 1e-6


def _run(cell, params, carry, xs):
    """Plain scan of ``cell.step`` over ``xs (n, b, I)`` from ``carry``.

    Returns ``(final_carry, carries (n, ...) before each step, hs (n, b, H))``.
    """

    def body(c, x):
        new, h = cell.step(params, c, x)
        return new, (c, h)

    final, (carries, hs) = jax.lax.scan(body, carry, xs)
    return final, carries, hs


def _vdot_tree(a, b):
    """``sum Re(sum(a_leaf * b_leaf))`` over two pytrees of the same structure: the real loss
    whose JAX cotangent on a (complex) ``b`` is ``a`` (JAX transposes without conjugating)."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return sum(jnp.real(jnp.sum(x * y)) for x, y in pairs)


def _batch_major(seq, time_major: bool):
    return jnp.swapaxes(seq, 0, 1) if time_major else seq


def _concrete_lengths(lengths, xs, time_major: bool) -> tuple[int, ...]:
    """``(B,)`` ints for ``xs``' rows (a tuple: a static argument); the reference slices rows
    by them, so they must be concrete."""
    if isinstance(lengths, jax.core.Tracer):
        raise TypeError("the gradient reference needs concrete lengths (call it outside jit)")
    batch_size, num_steps = _batch_major(xs, time_major).shape[:2]
    if lengths is None:
        return (num_steps,) * batch_size
    check_lengths(np.asarray(lengths), batch_size, num_steps)  # shape, dtype, range: clear errors
    return tuple(int(n) for n in np.asarray(lengths))


def _row(tree, b: int):
    """Batch row ``b`` of a carry, keeping a batch axis of 1."""
    return jax.tree.map(lambda a: a[b : b + 1], tree)


def _row_loss(cell, params, xs_row, carry_row, d_hs_row, d_carry_row, truncate, starts):
    """One row's term of ``windowed_loss``: ``xs_row (L, 1, I)``, ``d_hs_row (L, 1, H)`` in
    reading order; ``starts (L, ...)`` the row's carries before each step (constants)."""
    num_steps = xs_row.shape[0]
    if num_steps == 0:
        return _vdot_tree(d_carry_row, carry_row)
    # Outputs t < k - 1 have windows reaching back to the initial carry: one plain run.
    n_prefix = num_steps if truncate is None else min(truncate - 1, num_steps)
    loss = 0.0
    final = None
    if n_prefix > 0:
        final, _, hs = _run(cell, params, carry_row, xs_row[:n_prefix])
        loss = loss + jnp.vdot(d_hs_row[:n_prefix], hs)
    n_windows = num_steps - n_prefix
    if n_windows > 0:
        # Window w serves output t = k - 1 + w and covers steps w .. w + k - 1.
        idx = np.arange(n_windows)[:, None] + np.arange(truncate)[None, :]
        window_xs = xs_row[idx]  # (W, k, 1, I)
        window_starts = jax.tree.map(lambda a: a[:n_windows], starts)

        def window(start, xs_w):
            end, _, hs_w = _run(cell, params, start, xs_w)
            return end, hs_w[-1]

        ends, last_hs = jax.vmap(window)(window_starts, window_xs)
        loss = loss + jnp.vdot(d_hs_row[n_prefix:], last_hs)
        final = jax.tree.map(lambda a: a[-1], ends)
    return loss + _vdot_tree(d_carry_row, final)


def _rows(xs, d_hs, carry, d_carry, lengths, reverse, time_major):
    """Per row: ``(xs_row (L,1,I), d_hs_row (L,1,H), carry_row, d_carry_row)``, in reading
    order: the row's valid prefix, backwards if ``reverse``."""
    xs_bm, d_hs_bm = _batch_major(xs, time_major), _batch_major(d_hs, time_major)
    lengths = _concrete_lengths(lengths, xs, time_major)
    for b in range(xs_bm.shape[0]):
        pos = np.arange(lengths[b])[::-1].copy() if reverse else np.arange(lengths[b])
        yield xs_bm[b, pos][:, None], d_hs_bm[b, pos][:, None], _row(carry, b), _row(d_carry, b)


def windowed_loss(cell, arrays, truncate, *, lengths=None, reverse=False, time_major=False):
    """``L(params, xs, carry) = sum_t <d_hs[t], h_t> + <d_carry, final>``, each ``h_t``
    recomputed in its window; ``arrays = (params, xs, carry, d_hs, d_carry)``.

    Each batch row runs alone over its valid prefix (reversed if ``reverse``), so padding,
    masks and prefix reversal play no part. ``truncate=None``: every window starts at the
    initial carry (the plain loss). Else output t is recomputed from step s = t - k + 1: from
    the carry before s if s >= 0, frozen at ``arrays`` (a constant: what ``stop_gradient``
    means), else from the differentiable initial carry; the final-carry cotangent enters at
    the end of the row's last window. The exact gradient of ``L`` at ``arrays`` is then the
    truncated gradient (what finite differences need: they cannot see ``stop_gradient``).
    """
    params, xs, carry, d_hs, d_carry = arrays
    config = (lengths, reverse, time_major)
    starts = None
    if truncate is not None:  # per row, the (L, ...) stacked carries before each step

        def row_starts(params, xs, carry):
            rows = _rows(xs, d_hs, carry, d_carry, *config)
            return [_run(cell, params, carry_row, xs_row)[1] for xs_row, _, carry_row, _ in rows]

        starts = jax.jit(row_starts)(params, xs, carry)  # one compile for all rows

    def loss(params, xs, carry):
        rows = _rows(xs, d_hs, carry, d_carry, *config)
        return sum(
            _row_loss(cell, params, xs_row, carry_row, d_hs_row, d_carry_row, truncate,
                      None if starts is None else starts[b])  # fmt: skip
            for b, (xs_row, d_hs_row, carry_row, d_carry_row) in enumerate(rows)
        )

    return loss


def truncated_reference_grads(
    cell,
    params,
    xs,
    d_hs,
    carry=None,
    *,
    d_carry=None,
    lengths=None,
    reverse=False,
    time_major=False,
    truncate=None,
):
    """What ``rj.bptt`` must return, by ``jax.grad`` of ``windowed_loss`` (the windows'
    starts under ``stop_gradient``).

    Same arguments and result as ``rj.bptt``: ``(d_params, d_xs, d_carry0)``;
    ``truncate=None`` gives full BPTT. Slow (O(T k) steps): a test oracle, not a training tool.
    """
    prep = prepare(cell, params, xs, carry, None, time_major=time_major)  # zeros for None
    d_carry = jax.tree.map(jnp.zeros_like, prep.carry) if d_carry is None else d_carry
    lengths = _concrete_lengths(lengths, xs, time_major)
    arrays = (params, xs, prep.carry, d_hs, d_carry)
    return _reference_grads(prep.cell, arrays, lengths, reverse, time_major, truncate)


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4, 5))
def _reference_grads(cell, arrays, lengths, reverse, time_major, truncate):
    """``jax.grad`` of ``windowed_loss``, jitted: eager ``lax.scan`` inside ``grad`` retraces
    on every call, one compile per configuration is far cheaper."""
    loss = windowed_loss(cell, arrays, truncate, lengths=lengths, reverse=reverse,
                         time_major=time_major)  # fmt: skip
    return jax.grad(loss, argnums=(0, 1, 2))(*arrays[:3])


@dataclasses.dataclass(frozen=True)
class LeafRow:
    """One leaf's comparison.

    ``max_abs_err``: max |manual - reference|. ``max_rel_err``: that over the reference's
    largest magnitude (a scale-free error that does not blow up at zero entries).
    ``fd_err``: max over directions of |fd - <grad, v>| / max(1, |<grad, v>|), in float64.
    """

    path: str
    max_abs_err: float
    max_rel_err: float
    fd_err: float
    ok: bool
    message: str = ""


class LeafReport:
    """What a report of per-leaf rows (each with ``ok`` and ``message``) can say."""

    rows: tuple

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def failures(self) -> list:
        return [row for row in self.rows if not row.ok]

    def raise_if_failed(self) -> None:
        """``AssertionError`` whose message starts with the table (``str(self)``), then one
        line per failing leaf (at most ``MAX_DETAIL_LINES``)."""
        bad = self.failures()
        if bad:
            lines = [str(self), f"failing: {', '.join(row.path for row in bad)}"]
            lines += [f"  {row.path}: {row.message}" for row in bad[:MAX_DETAIL_LINES]]
            if len(bad) > MAX_DETAIL_LINES:
                lines.append(f"  ... and {len(bad) - MAX_DETAIL_LINES} more")
            raise AssertionError("\n".join(lines))

    def table(self, head: str, columns, cells) -> str:
        """``head``, then one line per leaf: its path, ``cells(row)`` under ``columns`` (11
        wide; a float is written ``.3e``) and ``yes``/``NO``."""
        width = max(len("leaf"), *(len(row.path) for row in self.rows))
        fmt = lambda cell: f"{cell:11.3e}" if isinstance(cell, float) else f"{cell:>11}"
        lines = [head, "  ".join([f"{'leaf':<{width}}", *map(fmt, columns), "ok"])]
        for row in self.rows:
            ok = "yes" if row.ok else "NO"
            lines.append("  ".join([f"{row.path:<{width}}", *map(fmt, cells(row)), ok]))
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class GradReport(LeafReport):
    """The result of ``check_gradients``: one ``LeafRow`` per leaf, plus the settings."""

    cell: str
    dtype: str
    truncate: int | None
    rows: tuple[LeafRow, ...]
    rtol: float
    atol: float
    fd_tol: float
    eps: float

    @property
    def max_abs_err(self) -> float:
        return max(row.max_abs_err for row in self.rows)

    @property
    def max_rel_err(self) -> float:
        return max(row.max_rel_err for row in self.rows)

    @property
    def fd_err(self) -> float:
        return max(row.fd_err for row in self.rows)

    def __str__(self) -> str:
        trunc = "full" if self.truncate is None else f"truncate={self.truncate}"
        head = (
            f"check_gradients {self.cell} {self.dtype} {trunc} "
            f"(rtol={self.rtol:g}, atol={self.atol:g}; fd eps={self.eps:g}, tol={self.fd_tol:g})"
        )
        columns = ("max abs err", "max rel err", "fd err")
        return self.table(head, columns, lambda r: (r.max_abs_err, r.max_rel_err, r.fd_err))


def _leaf_names(**trees) -> list[str]:
    """Leaf names (``params.w_x``, ``carry.h``) in the order of
    ``jax.tree.leaves(tuple(trees.values()))``, which is the order of ``bptt``'s
    ``(d_params, d_xs, d_carry0)`` (a dict would sort its keys)."""
    flat = [(root, jax.tree_util.tree_flatten_with_path(tree)[0]) for root, tree in trees.items()]
    keystr = lambda path: jax.tree_util.keystr(path, simple=True, separator=".")  # noqa: E731
    return [".".join([root, keystr(path)]) if path else root for root, leaves in flat
            for path, _ in leaves]  # fmt: skip


def compare_leaf(manual, reference, rtol, atol, what="manual vs jax.grad"):
    """``(max_abs, max_rel, ok, message)`` for one leaf.

    ``ok``: ``max |manual - reference| <= atol + rtol * max |reference|`` (NaN fails).
    ``message`` names the worst entry in one line.
    """
    manual = np.asarray(manual, np.complex128 if np.iscomplexobj(manual) else np.float64)
    reference = np.asarray(reference, manual.dtype)
    if manual.shape != reference.shape:
        return math.inf, math.inf, False, f"{what}: shape {manual.shape} != {reference.shape}"
    diff = np.abs(manual - reference)
    max_abs = float(diff.max()) if diff.size else 0.0  # NaN if any entry is NaN
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    if max_abs <= atol + rtol * scale:
        return max_abs, max_rel, True, ""
    worst = np.unravel_index(np.argmax(diff), diff.shape)  # the first NaN, if any
    at = tuple(int(i) for i in worst)
    message = (
        f"{what}: max abs err {max_abs:.3e} > {atol:g} + {rtol:g} * {scale:.3e} at {at} "
        f"(manual {manual[worst]:.6g}, reference {reference[worst]:.6g})"
    )
    return max_abs, max_rel, False, message


def compare_trees(names, manual, reference, rtol, atol, what, fd_errs=None, fd_tol=None):
    """One ``LeafRow`` per leaf (``names`` in ``jax.tree.leaves`` order) of ``manual`` against
    ``reference``; with ``fd_errs`` (one per leaf) a leaf also fails when its finite-difference
    error exceeds ``fd_tol``; without, ``fd_err`` is NaN (not run)."""
    rows = []
    fds = [math.nan] * len(names) if fd_errs is None else fd_errs
    leaves = zip(names, jax.tree.leaves(manual), jax.tree.leaves(reference), fds, strict=True)
    for name, m, r, fd_err in leaves:
        max_abs, max_rel, ok, message = compare_leaf(m, r, rtol, atol, what)
        if fd_errs is not None and not fd_err <= fd_tol:  # also catches NaN
            ok = False
            message = (message + "; " if message else "") + (
                f"finite differences: scaled error {fd_err:.3e} > {fd_tol:g}"
            )
        rows.append(LeafRow(name, max_abs, max_rel, fd_err, ok, message))
    return rows


def random_problem(cell, shape, dtype, rng: np.random.Generator, *, time_major=False, spatial=()):
    """``(params, xs, carry)`` to check ``cell`` on: every parameter, biases included, and the
    initial carry N(0, 0.5^2) (zero biases or carries would hide a wrong slot), ``xs`` N(0, 1).

    ``shape = (B, T, I, H)``; ``xs`` is ``(B, T, I)``, or ``(T, B, I)`` if ``time_major``. Call
    under ``jax.enable_x64`` for float64. A spatial cell (``rj.conv_lstm``) needs the
    ``spatial`` shape, e.g. ``(5, 5)``: then ``xs`` is ``(B, T, *spatial, I)``.
    """
    cell = as_cell(cell)
    spatial = check_spatial_shape(cell, spatial)
    batch_size, num_steps, input_size, hidden_size = shape
    params = _normal_like(rng, init_shapes(cell, input_size, hidden_size, jnp.dtype(dtype)), 0.5)
    seq = (num_steps, batch_size) if time_major else (batch_size, num_steps)
    xs = jnp.asarray(rng.normal(size=(*seq, *spatial, input_size)), dtype)
    lead = carry_lead(cell, (batch_size, *spatial, input_size))  # B, or (B, *spatial)
    zero = jax.eval_shape(lambda: cell.zero_carry(lead, hidden_size, jnp.dtype(dtype)))
    carry = _normal_like(rng, zero, 0.5)
    return params, xs, carry


def check_spatial_shape(cell, spatial) -> tuple[int, ...]:
    """``spatial`` as a tuple of as many ints as ``cell`` has spatial axes (none for a cell of
    vectors), or ``ValueError`` saying what the cell needs."""
    spatial = tuple(int(n) for n in spatial)
    if len(spatial) != spatial_rank(cell):
        raise ValueError(
            f"{cell.name} has {spatial_rank(cell)} spatial axes; got a spatial shape {spatial} "
            f"of {len(spatial)}"
        )
    return spatial


def tolerances(dtype, rtol, atol) -> tuple[float, float]:
    """``(rtol, atol)``, each ``DEFAULT_TOL`` of ``dtype`` where None."""
    tol = DEFAULT_TOL.get(jnp.dtype(dtype).name, DEFAULT_TOL["float32"])
    return tol if rtol is None else rtol, tol if atol is None else atol


def _numpy_rng(key) -> np.random.Generator:
    """A numpy generator seeded by a JAX key (raw or typed) or an int.

    The checker draws its cotangents and directions with numpy: ``jax.random`` would compile
    a sampler for every new leaf shape, which costs more than the whole check here.
    """
    if key is None or isinstance(key, int):
        return np.random.default_rng(key or 0)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key).ravel().tolist())


def _normal_like(rng: np.random.Generator, tree, scale: float = 1.0):
    """N(0, scale^2) arrays shaped and typed like ``tree``'s leaves (ShapeDtypeStructs are
    fine); a complex leaf gets independent real and imaginary parts."""

    def draw(a):
        values = rng.normal(0, scale, a.shape)
        if jnp.issubdtype(a.dtype, jnp.complexfloating):
            values = values + 1j * rng.normal(0, scale, a.shape)
        return jnp.asarray(values, a.dtype)

    return jax.tree.map(draw, tree)


def _fd_errors(loss_fn, args, grads, rng, num_directions, eps):
    """Per leaf of ``args``: max over random unit directions v of the scaled error
    ``|(L(a + εv) - L(a - εv)) / 2ε - <g, v>| / max(1, |<g, v>|)``. float64 throughout;
    the loss is jitted once, the rest is numpy."""
    leaves, treedef = jax.tree.flatten(args)
    leaves = [np.asarray(leaf) for leaf in leaves]
    grad_leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    loss_flat = jax.jit(lambda flat: loss_fn(*jax.tree.unflatten(treedef, flat)))
    errors = []
    for i, (leaf, grad) in enumerate(zip(leaves, grad_leaves, strict=True)):
        worst = 0.0
        for _ in range(num_directions):
            v = np.asarray(_normal_like(rng, leaf))
            v = v / max(np.linalg.norm(v), 1e-300)
            plus, minus = list(leaves), list(leaves)
            plus[i], minus[i] = leaf + eps * v, leaf - eps * v
            fd = (float(loss_flat(plus)) - float(loss_flat(minus))) / (2 * eps)
            analytic = float(np.real(np.sum(grad * v)))  # dL = Re(g dz) in JAX's convention
            worst = max(worst, abs(fd - analytic) / max(1.0, abs(analytic)))
        errors.append(worst)
    return errors


def check_gradients(
    cell,
    params,
    xs,
    carry=None,
    *,
    lengths=None,
    reverse=False,
    time_major=False,
    truncate=None,
    d_hs=None,
    d_carry=None,
    num_directions=4,
    eps=None,
    rtol=None,
    atol=None,
    fd_tol=None,
    key=None,
    raise_on_failure=True,
) -> GradReport:
    """Compare hand-written BPTT with ``jax.grad`` and finite differences (module docstring).

    Args:
      cell, params, xs, carry, lengths, reverse, time_major, truncate: as ``rj.bptt``.
        ``carry=None`` draws a random initial carry from ``key`` (a zero carry would hide a
        wrong recurrent-weight gradient at the first step).
      d_hs: ``(B, T, H)`` cotangent of the outputs (time-major if ``time_major``);
        None draws it from ``key``. d_carry: cotangent of the final carry; None draws it.
      num_directions: random directions per leaf for the finite-difference check (0: skip).
      eps: finite-difference step (default 1e-6, in float64).
      rtol, atol: manual vs ``jax.grad`` tolerances, a leaf passing when its max abs error is
        ``<= atol + rtol * max|reference|``; default ``DEFAULT_TOL`` of the params' dtype
        (1e-10 float64, 1e-5 float32, 1e-2 float16, 5e-2 bfloat16).
      fd_tol: finite-difference tolerance on the scaled error (default 1e-6).
      key: JAX PRNG key or int seed for the cotangents and directions (default 0).
      raise_on_failure: raise ``AssertionError`` naming the failing leaves (default), else
        just return the report (``report.ok``).

    Returns:
      ``GradReport`` with rows for ``params.<name>``, ``xs`` and ``carry`` (``carry.h``,
      ``carry.c`` for the LSTM); ``str(report)`` is a table.

    Examples:
      >>> import jax, rnn_jax as rj
      >>> params = rj.lstm.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
      >>> xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
      >>> report = rj.check_gradients(rj.lstm, params, xs, truncate=2)
      >>> report.ok, [row.path for row in report.rows]
      (True, ['params.b', 'params.w_h', 'params.w_x', 'xs', 'carry.h', 'carry.c'])
    """
    cell = as_cell(cell)
    dtype = params_dtype(params)
    rtol, atol = tolerances(dtype, rtol, atol)
    fd_tol = DEFAULT_FD_TOL if fd_tol is None else fd_tol
    eps = DEFAULT_EPS if eps is None else eps
    rng = _numpy_rng(key)

    # Abstract forward: validates every argument (lengths' values too, closed over as
    # concrete) and gives the cotangents' shapes, without computing anything.
    config = dict(lengths=lengths, reverse=reverse, time_major=time_major)
    final, hs = jax.eval_shape(lambda p, x, c: unroll(cell, p, x, c, **config), params, xs, carry)
    if carry is None:
        carry = _normal_like(rng, final, scale=0.5)
    d_hs = _normal_like(rng, hs) if d_hs is None else d_hs
    d_carry = _normal_like(rng, final) if d_carry is None else d_carry
    if lengths is not None:  # static: the reference slices rows by them
        lengths = _concrete_lengths(lengths, xs, time_major)
    config["lengths"] = lengths

    args = (cell, params, xs, carry, d_hs, d_carry, lengths, reverse, time_major, truncate)
    manual, reference = _manual_and_reference(*args)
    names = _leaf_names(params=params, xs=xs, carry=carry)

    fd_errs = [0.0] * len(names)
    if num_directions > 0:
        with jax.enable_x64(True):
            # Every leaf in float64 (complex128 for a complex leaf).
            widen = lambda a: jnp.asarray(a, jnp.promote_types(a.dtype, jnp.float64))
            args64 = jax.tree.map(widen, (params, xs, carry, d_hs, d_carry))
            if dtype == jnp.float64:
                manual64 = manual
            else:
                manual64 = _manual_and_reference(cell, *args64, *args[6:], reference=False)[0]
            loss = windowed_loss(cell, args64, truncate, **config)
            fd_errs = _fd_errors(loss, args64[:3], manual64, rng, num_directions, eps)

    rows = compare_trees(names, manual, reference, rtol, atol, "manual vs jax.grad", fd_errs,
                         fd_tol)  # fmt: skip
    report = GradReport(cell.name, dtype.name, truncate, tuple(rows), rtol, atol, fd_tol, eps)
    if raise_on_failure:
        report.raise_if_failed()
    return report


@functools.partial(jax.jit, static_argnums=(0, 6, 7, 8, 9), static_argnames="reference")
def _manual_and_reference(
    cell, params, xs, carry, d_hs, d_carry, lengths, reverse, time_major, truncate, reference=True
):
    """``(rj.bptt, its reference or None)``, one compile; ``lengths`` a tuple or None.

    The reference: for full BPTT ``jax.vjp`` through ``unroll(gradient="autodiff")``, for
    truncated BPTT ``jax.grad`` of the windowed loss (``truncated_reference_grads``).
    """
    config = dict(lengths=lengths, reverse=reverse, time_major=time_major)
    manual = bptt(cell, params, xs, d_hs, carry, d_carry=d_carry, truncate=truncate, **config)
    if not reference:
        return manual, None
    if truncate is not None:
        arrays = (params, xs, carry, d_hs, d_carry)
        return manual, _reference_grads(cell, arrays, lengths, reverse, time_major, truncate)

    def run(p, x, c):
        return unroll(cell, p, x, c, gradient="autodiff", **config)

    _, vjp = jax.vjp(run, params, xs, carry)
    return manual, vjp((d_carry, d_hs))


def hidden_grad_norms(cell, params, xs, carry=None, *, d_h_last=None, time_major=False):
    """``(T,)``: ``||dL/dh_t||`` for ``L = <d_h_last, h_{T-1}>``, a loss on the last state only.

    ``h_t`` is the hidden state after reading ``xs[:, t]`` (the LSTM's ``h``, with ``c``
    held fixed). ``d_h_last (B, H)`` (``(B, *spatial, H)`` for a spatial cell) defaults to a
    constant unit-norm cotangent, so ``norms[T-1] == 1`` and ``norms[t]`` is how much of the
    signal survives ``T-1-t`` steps back: decaying toward t = 0 is vanishing, growing is
    exploding. Each step back is one ``rj.bptt`` over a single step, chaining its ``d_carry0``.
    """
    prep = prepare(cell, params, xs, carry, None, time_major=time_major)  # zeros for None
    if d_h_last is None:
        h_shape = jax.eval_shape(prep.cell.hidden_of, prep.carry).shape  # (B, [*spatial,] H)
        d_h_last = jnp.full(h_shape, 1 / math.sqrt(math.prod(h_shape)), xs.dtype)
    return _hidden_grad_norms(prep.cell, params, prep.xs, prep.carry, d_h_last)


@functools.partial(jax.jit, static_argnums=0)
def _hidden_grad_norms(cell, params, xs_tm, carry, d_h_last):
    final, carries_before, _ = _run(cell, params, carry, xs_tm)
    # The cotangent d_h_last on h alone, placed in the carry wherever hidden_of reads h.
    d_final = jax.vjp(cell.hidden_of, final)[1](d_h_last)[0]

    def backward(d_after, inputs):
        # d_after = dL/d(carry after step t); one-step BPTT turns it into dL/d(carry before).
        x_t, c_before = inputs
        norm = jnp.linalg.norm(cell.hidden_of(d_after))
        zero_d_hs = jnp.zeros((x_t.shape[0], 1, *d_h_last.shape[1:]), x_t.dtype)
        _, _, d_before = bptt(cell, params, x_t[:, None], zero_d_hs, c_before, d_carry=d_after)
        return d_before, norm

    _, norms = jax.lax.scan(backward, d_final, (xs_tm, carries_before), reverse=True)
    return norms
