"""The forward pass over a whole sequence, and what ``unroll`` and ``bptt`` share:
argument checking, the validity mask from ``lengths``, and prefix reversal.

Internally everything is time-major: ``xs (T, B, I)``, ``hs (T, B, H)``, ``valid (T, B)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cells.base import Cell, LSTMCarry
from rnn_jax.checks import (
    as_cell,
    check_carry,
    check_lengths,
    check_params,
    check_sequence,
    params_dtype,
)


class Prepared(NamedTuple):
    """Checked inputs of ``unroll``/``bptt``, time-major."""

    cell: object  # a Cell (fused) or GenericCell
    xs: jax.Array  # (T, B, I), time-major
    carry: object  # initial carry, checked
    lengths: jax.Array | None  # (B,) int32
    valid: jax.Array | None  # (T, B) bool: t < lengths[b]
    hidden_size: int
    output_size: int  # width of each step's output h (hidden_size unless the cell projects)


def prepare(cell, params, xs, carry, lengths, *, time_major: bool) -> Prepared:
    """Check everything ``unroll``/``bptt`` receive and bring ``xs`` to time-major."""
    cell = as_cell(cell)
    input_size, hidden_size = check_params(cell, params)
    dtype = params_dtype(params)
    check_sequence(xs, input_size, dtype, time_major=time_major)
    xs_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)
    num_steps, batch_size = xs_tm.shape[:2]
    if carry is None:
        carry = cell.zero_carry(batch_size, hidden_size, dtype)
    else:
        carry = check_carry(cell, carry, batch_size, hidden_size, dtype)
    lengths = check_lengths(lengths, batch_size, num_steps)
    valid = None if lengths is None else valid_mask(lengths, num_steps)
    output_size = jax.eval_shape(cell.hidden_of, carry).shape[-1]
    return Prepared(cell, xs_tm, carry, lengths, valid, hidden_size, output_size)


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
    return jax.tree.map(lambda n, o: jnp.where(_row_mask(valid_t, o, lead), n, o), new, old)


def zero_where_invalid(valid_t: jax.Array | None, value, lead: int = 0):
    """``value`` (a pytree of ``(B, ...)`` leaves) with the rows where ``valid_t`` is False
    zeroed."""
    if valid_t is None:
        return value
    return jax.tree.map(lambda v: jnp.where(_row_mask(valid_t, v, lead), v, 0), value)


def _row_mask(valid_t: jax.Array, like: jax.Array, lead: int) -> jax.Array:
    """``valid_t (B,)`` shaped to broadcast over ``like (*lead, B, ...)``."""
    return valid_t.reshape(valid_t.shape + (1,) * (like.ndim - lead - 1))


def scan_forward(cell, params, xs, carry, valid, *, unroll: int = 1, keep_gates=False):
    """Run ``cell`` over time-major ``xs (T, B, I)``.

    Returns ``(final_carry, hs (T, B, H), residuals)``; ``residuals`` stacks each step's
    residuals along time when ``keep_gates`` (for the hand-written backward), else None: a
    fused ``Cell`` keeps only its gate values (BPTT has ``xs`` and ``hs``), any other cell
    all of its ``step_forward`` residuals. Past a row's length the carry is frozen and the
    output is zero.
    """
    fused = isinstance(cell, Cell)

    def body(carry, inputs):
        x_t, valid_t = inputs
        new_carry, h, residuals = cell.step_forward(params, carry, x_t)
        new_carry = keep_where(valid_t, new_carry, carry)
        kept = (residuals.gates if fused else residuals) if keep_gates else None
        return new_carry, (zero_where_invalid(valid_t, h), kept)

    final, (hs, residuals) = jax.lax.scan(body, carry, (xs, valid), unroll=unroll)
    if fused and isinstance(final, tuple) and not isinstance(final, LSTMCarry):
        final = LSTMCarry(*final)
    return final, hs, residuals


def to_layout(seq_tm: jax.Array, time_major: bool) -> jax.Array:
    """Time-major ``(T, B, ...)`` back to the caller's layout."""
    return seq_tm if time_major else jnp.swapaxes(seq_tm, 0, 1)
