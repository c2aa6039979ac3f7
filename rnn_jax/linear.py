"""``linear_scan``: the linear recurrence ``h_t = a_t * h_{t-1} + b_t``, in parallel over time.

The recurrence is linear in ``h``, so it composes associatively: the pair ``(a, b)`` acts as the
map ``h -> a * h + b``, and applying ``(a1, b1)`` then ``(a2, b2)`` is ``(a2 * a1, a2 * b1 + b2)``.
``jax.lax.associative_scan`` evaluates all T prefixes at O(log T) depth.

The backward is written by hand: the gradient of a linear recurrence is the *reverse* linear
recurrence ``g_t = d_h_t + a_{t+1} * g_{t+1}``, with ``d_b_t = g_t`` and
``d_a_t = g_t * h_{t-1}`` -- a second scan of the same kind, instead of autodiff through the
first one. (JAX transposes without conjugating, so the same formulas hold for complex values.)

Three ways to evaluate a scan (``method``), with equal values:

- ``"associative"``: ``lax.associative_scan``, O(log T) depth; the choice for GPUs and TPUs.
- ``"sequential"``: a ``lax.scan`` over T steps of element-wise work.
- ``"chunked"``: T split into chunks; a sequential scan within chunks runs on all chunks at
  once, then a short scan carries each chunk's final state into the next.

``"auto"`` (the default) is ``"sequential"`` on CPU and ``"associative"`` elsewhere: on this
project's 2-core CPU the sequential loop is memory-bound and fastest (B=16, T=4096, H=256,
forward and backward, quiet machine: sequential 90 ms, chunked 217 ms, associative 295 ms),
while the associative scan's O(log T) depth is what a GPU or TPU needs. (Moving minGRU's gate
math into the loop body, forward and backward, was measured slower: 535 against 476 ms for a
whole minGRU layer's train step at those sizes.)

Internally everything is time-major, ``(T, B, ...)``, as in ``rnn_jax.sequence``.
"""

from __future__ import annotations

import jax.numpy as jnp

from rnn_jax.checks import check_lengths, check_steps
from rnn_jax.ops.linear_recurrence import (  # noqa: F401 (METHODS, CHUNK: rj.linear's API)
    CHUNK,
    METHODS,
    scan_states,
)
from rnn_jax.sequence import flags_in_reading_order, flip_valid, to_layout, valid_mask

__all__ = ["CHUNK", "METHODS", "linear_scan"]  # fmt: skip


def linear_scan(
    a,
    b,
    h0=None,
    *,
    reverse: bool = False,
    time_major: bool = False,
    lengths=None,
    resets=None,
    method: str = "auto",
):
    """All states of ``h_t = a_t * h_{t-1} + b_t``; ``(B, T, ...)`` like ``b``.

    Args:
      a: ``(B, T, ...)`` coefficients, real or complex; any shape that broadcasts to ``b``'s
        (e.g. ``(H,)`` for a time-invariant diagonal recurrence).
      b: ``(B, T, ...)`` inputs (``(T, B, ...)`` with ``time_major=True``).
      h0: ``(B, ...)`` state before the first step read; None means zeros.
      reverse: run from the last step to the first, ``h_t = a_t * h_{t+1} + b_t``; outputs
        stay aligned with positions (``h[:, t]`` is the state after reading position t). With
        ``lengths`` only each row's valid prefix is read backwards, as in ``rj.unroll``.
      time_major: ``a``, ``b`` and the result are ``(T, B, ...)``.
      lengths: optional ``(B,)`` ints in ``[0, T]``: states past a row's length are zero.
      resets: optional ``(B, T)`` bool (``(T, B)`` with ``time_major``, as ``rj.unroll``):
        where True a new episode starts at that step, whose first step reads ``h0`` instead of
        ``h_{t-1}``; the same as running each episode
        separately, as ``rj.unroll``'s ``resets``. With ``reverse`` each episode is read
        backwards on its own (it starts from ``h0`` at its last step).
      method: ``"auto"``, ``"associative"``, ``"sequential"`` or ``"chunked"`` (module
        docstring); all give the same values and gradients.

    Returns:
      ``h``, with ``b``'s shape and layout and the promoted dtype of ``a``, ``b``, ``h0``.

    Examples:
      >>> import jax.numpy as jnp, rnn_jax as rj
      >>> a = jnp.full((1, 4, 1), 0.5)
      >>> b = jnp.ones((1, 4, 1))
      >>> rj.linear_scan(a, b)[0, :, 0]                         # 1, 1.5, 1.75, 1.875
      Array([1.   , 1.5  , 1.75 , 1.875], dtype=float32)
      >>> rj.linear_scan(a, b, reverse=True)[0, :, 0]
      Array([1.875, 1.75 , 1.5  , 1.   ], dtype=float32)
    """
    a, b, h0 = _check_operands(a, b, h0, time_major)
    a_tm, b_tm = (x if time_major else jnp.swapaxes(x, 0, 1) for x in (a, b))
    num_steps, batch_size = b_tm.shape[:2]
    lengths = check_lengths(lengths, batch_size, num_steps)
    valid = None if lengths is None else valid_mask(lengths, num_steps)
    starts = check_steps(resets, "resets", batch_size, num_steps, time_major=time_major)
    if starts is not None and valid is not None:
        starts = starts & valid  # a reset at a padded step does nothing
    if reverse:
        a_tm, b_tm = flip_valid(a_tm, lengths), flip_valid(b_tm, lengths)
        valid, starts = flags_in_reading_order(valid, starts, lengths)
    _, hs = scan_states(a_tm, b_tm, h0, valid=valid, starts=starts, method=method)
    hs = flip_valid(hs, lengths) if reverse else hs
    return to_layout(hs, time_major)


def _check_operands(a, b, h0, time_major):
    """Arrays, ``b`` at least ``(B, T)``, ``a`` broadcasting to it, ``h0`` to ``b[:, 0]``."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    for name, value in (("a", a), ("b", b)):
        if not jnp.issubdtype(value.dtype, jnp.inexact):
            raise TypeError(f"linear_scan: {name} must be floating or complex, got {value.dtype}")
    layout = "(T, B, ...)" if time_major else "(B, T, ...)"
    if b.ndim < 2:
        raise ValueError(f"linear_scan: b must be {layout}, got shape {b.shape}")
    try:
        jnp.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(
            f"linear_scan: a {a.shape} must broadcast to b's shape {layout} = {b.shape}"
        ) from None
    if jnp.broadcast_shapes(a.shape, b.shape) != b.shape:
        raise ValueError(f"linear_scan: a {a.shape} must broadcast to b {b.shape}, not widen it")
    state_shape = (b.shape[1] if time_major else b.shape[0],) + b.shape[2:]
    dtype = jnp.result_type(a, b) if h0 is None else jnp.result_type(a, b, h0)
    if h0 is not None:
        h0 = jnp.asarray(h0)
        if h0.shape != state_shape:
            raise ValueError(f"linear_scan: h0 must be (B, ...) = {state_shape}, got {h0.shape}")
        h0 = h0.astype(dtype)
    return jnp.broadcast_to(a, b.shape).astype(dtype), b.astype(dtype), h0
