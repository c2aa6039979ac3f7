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

import functools
import math

import jax
import jax.numpy as jnp

from rnn_jax.checks import check_lengths
from rnn_jax.sequence import flags_in_reading_order, flip_valid, to_layout, valid_mask

METHODS = ("auto", "associative", "sequential", "chunked")
CHUNK = 64  # steps per chunk for method="chunked" (measured best of 16..256 on the bench CPU)


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
      resets: optional ``(B, T)`` bool: where True a new episode starts at that step, whose
        first step reads ``h0`` instead of ``h_{t-1}``; the same as running each episode
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
    starts = _check_resets(resets, batch_size, num_steps)
    if starts is not None and valid is not None:
        starts = starts & valid  # a reset at a padded step does nothing
    if reverse:
        a_tm, b_tm = flip_valid(a_tm, lengths), flip_valid(b_tm, lengths)
        valid, starts = flags_in_reading_order(valid, starts, lengths)
    _, hs = scan_states(a_tm, b_tm, h0, valid=valid, starts=starts, method=method)
    hs = flip_valid(hs, lengths) if reverse else hs
    return to_layout(hs, time_major)


def scan_states(a, b, h0=None, *, valid=None, starts=None, method="auto"):
    """Time-major core of ``linear_scan``: returns ``(final_state (B, ...), hs (T, B, ...))``.

    ``a, b (T, B, ...)`` (same shape); ``valid (T, B)``: past a row's length the state is
    frozen (the final state is the one after its last valid step) and ``hs`` is zero;
    ``starts (T, B)``: the state before that step is ``h0``. Differentiable everywhere; the
    recurrence itself has the hand-written backward.
    """
    method = resolve_method(method)
    if valid is not None:
        mask = valid.reshape(valid.shape + (1,) * (b.ndim - 2))
        a, b = jnp.where(mask, a, 1), jnp.where(mask, b, 0)  # the identity map: frozen
    if b.shape[0] == 0:
        return _initial(b, h0), b
    # h0 enters as an input: a start step reads h0 instead of its predecessor (after the
    # validity mask, so a row whose first steps are skipped holds h0 through them).
    if starts is None:  # only step 0 starts: touch that step alone, not the whole sequence
        if h0 is not None:
            b = b.at[0].add(a[0] * h0)
        a = a.at[0].set(0)
    else:
        starts = starts.at[0].set(True).reshape(starts.shape + (1,) * (b.ndim - 2))
        if h0 is not None:
            b = b + jnp.where(starts, a * h0, 0)
        a = jnp.where(starts, 0, a)
    hs = recurrence(a, b, method)
    final = hs[-1]
    if valid is not None:
        hs = jnp.where(mask, hs, 0)
    return final, hs


def _initial(b, h0):
    """The state of an empty sequence: ``h0``, or zeros."""
    zeros = jnp.zeros(b.shape[1:], b.dtype)
    return zeros if h0 is None else zeros + h0


def resolve_method(method: str) -> str:
    """``"auto"`` -> ``"sequential"`` on CPU, ``"associative"`` on GPU/TPU."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "associative"
    return method


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def recurrence(a, b, method):
    """``h_t = a_t * h_{t-1} + b_t`` from ``h_{-1} = 0``; ``a, b, h (T, ...)``, same shape."""
    return _evaluate(a, b, method, reverse=False)


def _recurrence_forward(a, b, method):
    hs = _evaluate(a, b, method, reverse=False)
    return hs, (a, hs)


def _recurrence_backward(method, residuals, d_hs):
    """``g_t = d_h_t + a_{t+1} g_{t+1}``; ``d_b = g``, ``d_a_t = g_t * h_{t-1}``."""
    a, hs = residuals
    a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])], axis=0)
    g = _evaluate(a_next, d_hs.astype(hs.dtype), method, reverse=True)
    h_prev = jnp.concatenate([jnp.zeros_like(hs[:1]), hs[:-1]], axis=0)
    return g * h_prev, g


recurrence.defvjp(_recurrence_forward, _recurrence_backward)


def _evaluate(a, b, method, *, reverse):
    """The recurrence by ``method``, along axis 0; ``reverse`` runs from the end."""
    if b.shape[0] == 0:
        return b
    if method == "associative":
        return jax.lax.associative_scan(_compose, (a, b), reverse=reverse, axis=0)[1]
    if method == "sequential" or b.shape[0] <= CHUNK:
        return _sequential(a, b, reverse=reverse)
    return _chunked(a, b, reverse=reverse)


def _compose(earlier, later):
    """The map ``h -> a h + b`` of ``earlier`` followed by ``later``."""
    a_1, b_1 = earlier
    a_2, b_2 = later
    return a_2 * a_1, a_2 * b_1 + b_2


def _sequential(a, b, *, reverse):
    def step(h, ab):
        a_t, b_t = ab
        h = a_t * h + b_t
        return h, h

    return jax.lax.scan(step, jnp.zeros_like(b[0]), (a, b), reverse=reverse)[1]


def _chunked(a, b, *, reverse):
    """Sequential within chunks of ``CHUNK`` steps (all chunks at once), then one short scan
    of the chunks' end states, then one element-wise pass to add each chunk's entry state."""
    num_steps = b.shape[0]
    num_chunks = math.ceil(num_steps / CHUNK)
    pad = num_chunks * CHUNK - num_steps
    if pad:  # identity maps, at the end the scan reaches last
        edge = (0, pad) if not reverse else (pad, 0)
        widths = [edge] + [(0, 0)] * (b.ndim - 1)
        a, b = jnp.pad(a, widths, constant_values=1), jnp.pad(b, widths)
    a_c, b_c = (x.reshape((num_chunks, CHUNK) + x.shape[1:]) for x in (a, b))

    def step(state, ab):
        (prod, h), (a_t, b_t) = state, ab
        prod, h = a_t * prod, a_t * h + b_t
        return (prod, h), (prod, h)

    ones = jnp.ones_like(b_c[:, 0])
    start = (ones, jnp.zeros_like(b_c[:, 0]))
    # Steps along axis 1 (within a chunk): move it first for lax.scan, then back.
    steps = (jnp.swapaxes(a_c, 0, 1), jnp.swapaxes(b_c, 0, 1))
    _, (prods, local) = jax.lax.scan(step, start, steps, reverse=reverse)
    prods, local = jnp.swapaxes(prods, 0, 1), jnp.swapaxes(local, 0, 1)
    end = 0 if reverse else -1
    ends = _sequential(prods[:, end], local[:, end], reverse=reverse)  # state after chunk c
    zero = jnp.zeros_like(ends[:1])
    entry = jnp.concatenate([ends[1:], zero] if reverse else [zero, ends[:-1]], axis=0)
    hs = local + prods * entry[:, None]
    hs = hs.reshape((num_chunks * CHUNK,) + hs.shape[2:])
    return hs[pad:] if reverse else hs[:num_steps]


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


def _check_resets(resets, batch_size: int, num_steps: int):
    """``(B, T)`` bool -> time-major ``(T, B)``, or None."""
    if resets is None:
        return None
    resets = jnp.asarray(resets)
    if resets.dtype != jnp.bool_ or resets.shape != (batch_size, num_steps):
        raise ValueError(
            f"resets must be (B, T) = ({batch_size}, {num_steps}) bool, "
            f"got {resets.shape} {resets.dtype}"
        )
    return resets.T
