"""The linear recurrence ``h_t = a_t * h_{t-1} + b_t`` over time-major arrays, and its
hand-written backward: the primitive under ``rj.linear_scan`` and every linear cell's
parallel path. It knows no cell and no option; ``rnn_jax.linear`` is the user-facing wrapper.

The recurrence composes associatively: the pair ``(a, b)`` acts as the map ``h -> a * h + b``,
and applying ``(a1, b1)`` then ``(a2, b2)`` is ``(a2 * a1, a2 * b1 + b2)``. The backward is the
*reverse* linear recurrence ``g_t = d_h_t + a_{t+1} * g_{t+1}``, with ``d_b_t = g_t`` and
``d_a_t = g_t * h_{t-1}`` (JAX transposes without conjugating, so the same formulas hold for
complex values). ``method``: see ``rnn_jax.linear``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

METHODS = ("auto", "associative", "sequential", "chunked")
CHUNK = 64  # steps per chunk for method="chunked" (measured best of 16..256 on the bench CPU)


def scan_states(a, b, h0=None, *, valid=None, starts=None, method="auto", gradient="manual"):
    """Time-major core of ``linear_scan``: returns ``(final_state (B, ...), hs (T, B, ...))``.

    ``a, b (T, B, ...)`` (same shape); ``valid (T, B)``: past a row's length the state is
    frozen (the final state is the one after its last valid step) and ``hs`` is zero;
    ``starts (T, B)``: the state before that step is ``h0``. Differentiable everywhere;
    ``gradient="manual"``: the recurrence's backward is the hand-written reverse recurrence
    (``recurrence``), ``"autodiff"``: JAX differentiates the evaluation itself.
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
    if gradient == "manual":
        hs = recurrence(a, b, method)
    else:
        hs = _evaluate(a, b, method, reverse=False)
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
