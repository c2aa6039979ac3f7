"""The forward pass over a whole sequence, and what ``unroll`` and ``bptt`` share:
argument checking, the validity mask from ``lengths`` and ``mask``, episode resets, prefix
reversal, and unbatched ``(T, I)`` input.

Internally everything is time-major: ``xs (T, B, I)``, ``hs (T, B, H)``, ``valid (T, B)``.
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.checks import (
    as_cell,
    carry_lead,
    cell_output_size,
    check_carry,
    check_lengths,
    check_params,
    check_sequence,
    check_step_contract,
    check_steps,
    params_dtype,
    spatial_rank,
)
from rnn_jax.options import check_step_flags


class Prepared(NamedTuple):
    """Checked inputs of ``unroll``/``bptt``, time-major."""

    cell: object  # the Cell that runs
    xs: jax.Array  # (T, B, I), time-major
    carry: object  # initial carry, checked
    lengths: jax.Array | None  # (B,) int32
    valid: jax.Array | None  # (T, B) bool: t < lengths[b] and mask[b, t]
    hidden_size: int
    output_size: int  # width of each step's output h (hidden_size unless the cell projects)
    # (T, B) bool, True where a valid step starts from the initial carry; None when every row
    # reads a prefix of its steps from one start (no mask, no resets): the fast path.
    resets: jax.Array | None = None


def prepare(
    cell, params, xs, carry, lengths, *, time_major: bool, mask=None, resets=None, reverse=False
) -> Prepared:
    """Check everything ``unroll``/``bptt`` receive and bring ``xs`` to time-major.

    ``mask`` and ``resets`` are ``(B, T)`` bool (``(T, B)`` time-major) or None. For a
    spatial cell (``rj.conv_lstm``) ``xs`` is ``(B, T, *spatial, I)`` and the zero carry
    takes ``(B, *spatial)`` from it; masks act on whole ``(B,)`` rows as ever.
    """
    check_step_flags(reverse=reverse, mask=mask, resets=resets)
    cell = as_cell(cell)
    input_size, hidden_size = check_params(cell, params)
    dtype = params_dtype(params)
    check_sequence(xs, input_size, dtype, time_major=time_major, spatial=spatial_rank(cell))
    xs_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)
    num_steps, batch_size = xs_tm.shape[:2]
    lead = carry_lead(cell, xs_tm.shape[1:])  # B, or (B, *spatial) for a spatial cell
    carry = (cell.zero_carry(lead, hidden_size, dtype) if carry is None
             else check_carry(cell, carry, lead, hidden_size, dtype))  # fmt: skip
    check_step_contract(cell, params, carry, jax.ShapeDtypeStruct(xs_tm.shape[1:], xs_tm.dtype))
    lengths = check_lengths(lengths, batch_size, num_steps)
    valid = None if lengths is None else valid_mask(lengths, num_steps)
    mask = check_steps(mask, "mask", batch_size, num_steps, time_major=time_major)
    resets = check_steps(resets, "resets", batch_size, num_steps, time_major=time_major)
    valid, resets = _step_flags(valid, mask, resets)
    output_size = cell_output_size(cell, hidden_size)
    return Prepared(cell, xs_tm, carry, lengths, valid, hidden_size, output_size, resets)


def _step_flags(valid, mask, resets):
    """Combine the lengths' ``valid``, ``mask`` and ``resets`` (each ``(T, B)`` bool or None).

    A reset counts only at a valid step: a masked step keeps the carry it was given, and the
    backward must not send a cotangent to the initial carry through a step that never ran.
    With a mask, ``resets`` becomes all False rather than None: the steps a row reads are no
    longer a prefix, so the hand-written backward needs each step's own residuals.
    """
    if mask is not None:
        valid = mask if valid is None else valid & mask
        resets = jnp.zeros_like(mask) if resets is None else resets
    if resets is not None and valid is not None:
        resets = resets & valid
    return valid, resets


def reading_order(prep: Prepared, reverse: bool):
    """``(xs, valid, resets)`` (time-major) in the order the cell reads them.

    With ``reverse`` each row's valid prefix is flipped (``flip_valid``); a mask is flipped
    with it. Read backwards, an episode starts at its last step, so the restart moves to the
    step after its first one in reading order (``prepare`` refuses this with a mask).
    """
    if not reverse:
        return prep.xs, prep.valid, prep.resets
    flags = flags_in_reading_order(prep.valid, prep.resets, prep.lengths)
    return flip_valid(prep.xs, prep.lengths), *flags


def flags_in_reading_order(valid, resets, lengths):
    """``(valid, resets)`` (time-major ``(T, B)`` bool or None) for a backwards reading of
    each row's valid prefix (``reading_order``)."""
    if resets is None:  # a lengths prefix maps onto itself: no gather needed
        return valid, None
    valid, resets = jax.tree.map(lambda flags: flip_valid(flags, lengths), (valid, resets))
    resets = jnp.concatenate([jnp.zeros_like(resets[:1]), resets[:-1]])
    return valid, resets if valid is None else resets & valid


def valid_mask(lengths: jax.Array, num_steps: int) -> jax.Array:
    """``(T, B)`` bool, True where ``t < lengths[b]``."""
    return jnp.arange(num_steps)[:, None] < lengths[None, :]


def flip_valid(seq: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """Reverse each sequence's valid prefix along time (axis 0); padding stays in place.

    ``seq (T, B, ...)``. Without ``lengths`` this is ``seq[::-1]``. It is its own inverse,
    which is why ``reverse=True`` is implemented as flip -> forward scan -> flip.
    """
    if lengths is None:
        return seq[::-1]
    steps = jnp.arange(seq.shape[0])[:, None]
    source = jnp.where(steps < lengths[None, :], lengths[None, :] - 1 - steps, steps)
    source = source.reshape(source.shape + (1,) * (seq.ndim - 2))
    return jnp.take_along_axis(seq, source, axis=0)


def keep_where(valid_t: jax.Array | None, new, old, lead: int = 0):
    """Per batch row: ``new`` where ``valid_t (B,)``, else ``old``.

    Works on any carry pytree whose leaves are ``(B, ...)``, after ``lead`` extra leading
    axes (BPTT's truncation slots).
    """
    if valid_t is None:
        return new
    rows = lambda o: valid_t.reshape(valid_t.shape + (1,) * (o.ndim - lead - 1))  # broadcasts
    return jax.tree.map(lambda n, o: jnp.where(rows(o), n, o), new, old)


def zero_where_invalid(valid_t: jax.Array | None, value, lead: int = 0):
    """``value`` (a pytree of ``(B, ...)`` leaves) with the rows where ``valid_t`` is False
    zeroed."""
    return keep_where(valid_t, value, jax.tree.map(jnp.zeros_like, value), lead)


def scan_forward(
    cell, params, xs, carry, valid, *, resets=None, unroll=1, keep_gates=False, keep_carries=False,
    start=None,
):
    """Run ``cell`` over time-major ``xs (T, B, I)``.

    Returns ``(final_carry, hs (T, B, H), residuals)``; ``residuals`` stacks each step's
    residuals along time when ``keep_gates`` (for the hand-written backward), else None: a
    fused ``Cell`` keeps only its gate values (BPTT has ``xs`` and ``hs``) unless ``resets``
    is given, any other cell all of its ``step_forward`` residuals. At an invalid step
    (``valid (T, B)`` False) the carry is kept and the output is zero. Where ``resets (T, B)``
    is True the step reads ``start`` (None: the initial ``carry``) instead of the previous one.
    With ``keep_carries`` the second result is ``(hs, carries)``, ``carries`` the carry after
    every step stacked along time (leaves ``(T, B, ...)``).
    """
    # Resets or gaps: a step may not read the previous output, so the fused backward (which
    # rebuilds h_{t-1} from hs) cannot serve; the step keeps its full residuals instead.
    keep_all = cell.fused is None or resets is not None
    start = carry if start is None else start

    def body(carry, inputs):
        x_t, valid_t, reset_t = inputs
        read = carry if reset_t is None else keep_where(reset_t, start, carry)
        new_carry, h, residuals = cell.step_forward(params, read, x_t)
        new_carry = keep_where(valid_t, new_carry, carry)
        kept = (residuals if keep_all else residuals.gates) if keep_gates else None
        h = zero_where_invalid(valid_t, h)
        return new_carry, ((h, new_carry) if keep_carries else h, kept)

    final, (hs, residuals) = jax.lax.scan(body, carry, (xs, valid, resets), unroll=unroll)
    return final, hs, residuals


def to_layout(seq_tm: jax.Array, time_major: bool) -> jax.Array:
    """Time-major ``(T, B, ...)`` back to the caller's layout."""
    return seq_tm if time_major else jnp.swapaxes(seq_tm, 0, 1)


def accepts_unbatched(arrays=(), trees=(), results=()):
    """Let a batched entry point (``xs (B, T, I)``) also take one sequence ``xs (T, I)``.

    For unbatched ``xs`` the wrapped function runs on a batch of one: a leading axis is
    added to ``xs``, to the array arguments named in ``arrays`` (``lengths`` a scalar,
    ``mask (T,)``) and to every leaf of the pytree arguments in ``trees`` (carries
    ``(H,)`` -> ``(1, H)``), with ``time_major=False``; then it is stripped from the results
    whose positions are in ``results`` (every leaf of those; ``results=None``: of the whole
    result, for a function returning one array or tree). ``mask``/``resets`` inside a
    layer's ``**kwargs`` (passed on to ``rj.unroll``) get the axis too. Batched calls pass
    through.
    """

    def wrap(fn):
        signature = inspect.signature(fn)
        var_kw = [p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            if getattr(bound.arguments.get("xs"), "ndim", None) != 2:
                return fn(*args, **kwargs)
            named = bound.arguments
            passed_on = named.setdefault(var_kw[0], {}) if var_kw else {}  # its **kwargs
            # mask and resets may also arrive in a layer's **kwargs, passed on to rj.unroll
            for name in dict.fromkeys(("xs", *arrays, "mask", "resets")):
                where = passed_on if name in passed_on else named
                if where.get(name) is not None:
                    where[name] = jnp.asarray(where[name])[None]
            for name in trees:
                named[name] = jax.tree.map(lambda leaf: jnp.asarray(leaf)[None], named.get(name))
            (named if "time_major" in signature.parameters else passed_on)["time_major"] = False
            try:
                out = fn(*bound.args, **bound.kwargs)
            except (ValueError, TypeError) as err:
                added = ["xs", *arrays, *trees]
                err.add_note(f"unbatched xs (T, I): a batch axis of 1 was added to {added}")
                raise
            strip = lambda tree: jax.tree.map(lambda leaf: leaf[0], tree)
            if results is None:
                return strip(out)
            return tuple(strip(v) if i in results else v for i, v in enumerate(out))

        return wrapper

    return wrap
