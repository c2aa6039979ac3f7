"""``backend="fused_cpu"`` for the linear cells: the recurrence ``h_t = a_t * h_{t-1} + b_t``
over a whole time-major sequence in one XLA FFI call forward and one backward
(``fused_linear.cc``, built on first use by ``build.py``; no oneDNN needed).

Two kernels, one sweep each way:

- ``"mingru"``: the minGRU's gates fused in. It reads the product ``k = xs @ w_x`` (XLA's;
  ``(B, T, 2H)`` in the caller's layout, ``[k_z | k_h]``) and the bias ``(2H,)``, computes
  ``z = sigmoid(k_z + b_z)``, the scan and the outputs in one pass, and its backward returns
  ``d_k`` (recomputing ``z``) and ``d_bias`` (summed in the same pass), so XLA makes no
  element-wise pass over a ``(T, B, .)`` array at all: only the two products remain.
  ``"minlstm"``: the same for the minLSTM (``k = [k_f | k_i | k_h]``, 3H).
- ``"affine"``: any real ``LinearForm``: ``a, b (T, B, H)`` from the cell's own coefficients
  (XLA), the scan in the kernel, ``d_a, d_b`` back; ``"complex"``: the same in complex64 (the
  LRU's diagonal recurrence).

Lengths/masks (``valid``), resets (``starts``) and ``h0`` are handled inside, with
``rnn_jax.ops.linear_recurrence.scan_states``' meaning; ``reverse`` and the layout are the
driver's (it flips and transposes before, as for every linear cell). float32 (complex64) only.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from rnn_jax.backends import build
from rnn_jax.cell import linear_readout
from rnn_jax.sequence import flip_valid, to_layout

KINDS = {"mingru": 0, "affine": 1, "complex": 2, "minlstm": 3}  # the C++ enum Kind
GATES = {"mingru": 2, "minlstm": 3}  # the fused-gate kinds: pre-activations per unit


def set_threads(num_threads: int) -> None:
    """Threads each linear fused_cpu call uses from now on (0: XLA's pool size)."""
    if not isinstance(num_threads, int) or num_threads < 0:
        raise ValueError(f"num_threads must be an int >= 0, got {num_threads!r}")
    build.load(build.LINEAR).rnn_jax_linear_set_num_threads(num_threads)


def _flags(flags):
    """``(T, B)`` bool -> uint8 for the kernel; None -> ``(0,)`` (the kernel's default)."""
    return jnp.zeros((0,), jnp.uint8) if flags is None else flags.astype(jnp.uint8)


class Layout(NamedTuple):
    """What a call runs (static): the kernel, ``(B, T, .)`` arrays or ``(T, B, .)``, and
    whether each row reads its valid prefix backwards (outputs at the positions read)."""

    kind: str
    batch_major: bool = False
    reverse: bool = False

    def attributes(self) -> dict:
        return {"kind": np.int32(KINDS[self.kind]), "batch_major": self.batch_major,
                "reverse": self.reverse}  # fmt: skip


def _forward_call(layout: Layout, x1, x2, h0, valid, starts, lengths):
    build.load(build.LINEAR)
    results = (
        jax.ShapeDtypeStruct((*x1.shape[:2], h0.shape[-1]), h0.dtype),  # hs, like x1
        jax.ShapeDtypeStruct(h0.shape, h0.dtype),  # final (B, H)
    )
    call = jax.ffi.ffi_call(build.LINEAR_FORWARD_TARGET, results, vmap_method="sequential")
    return call(x1, x2, h0, valid, starts, lengths, **layout.attributes())


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sequence(layout, x1, x2, h0, valid, starts, lengths):
    """``(final (B, H), hs)``; ``valid``/``starts`` uint8 ``(T, B)`` or ``(0,)``, ``lengths``
    int32 ``(B,)`` or ``(0,)``."""
    hs, final = _forward_call(layout, x1, x2, h0, valid, starts, lengths)
    return final, hs


def _sequence_forward(layout, *args):
    args = tuple(arg.value for arg in args)  # symbolic_zeros: CustomVJPPrimal wrappers
    hs, final = _forward_call(layout, *args)
    return (final, hs), (*args, hs)


def _sequence_backward(layout, residuals, cotangents):
    x1, x2, h0, valid, starts, lengths, hs = residuals
    d_final, d_hs = cotangents
    d_final = jnp.zeros(h0.shape, h0.dtype) if isinstance(d_final, SymbolicZero) else d_final
    # No output gradient (only the final state is read): the kernel skips that read.
    d_hs = jnp.zeros((0,), hs.dtype) if isinstance(d_hs, SymbolicZero) else d_hs
    results = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (x1, x2, h0))
    call = jax.ffi.ffi_call(build.LINEAR_BACKWARD_TARGET, results, vmap_method="sequential")
    d_x1, d_x2, d_h0 = call(x1, x2, h0, valid, starts, lengths, hs, d_hs, d_final,
                            **layout.attributes())  # fmt: skip
    return d_x1, d_x2, d_h0, None, None, None


_sequence.defvjp(_sequence_forward, _sequence_backward, symbolic_zeros=True)


def scan(kind: str, x1, x2, h0, *, valid=None, starts=None, lengths=None, reverse=False,
         batch_major=False):  # fmt: skip
    """``(final (B, H), hs)`` of the recurrence, ``hs`` laid out as ``x1``. ``kind="mingru"``:
    ``x1 = k (T, B, 2H)`` without the bias, ``x2`` the bias ``(2H,)`` (``"minlstm"``: 3H);
    ``"affine"`` (float32)
    or ``"complex"`` (complex64): ``x1 = a``, ``x2 = b (T, B, H)``; ``(B, T, .)`` with
    ``batch_major``. ``h0 (B, H)``;
    ``valid``/``starts`` ``(T, B)`` bool or None in reading order (as ``scan_states``);
    ``reverse``: each row reads positions ``L-1 .. 0`` of its valid prefix (``lengths (B,)``,
    None: all T), outputs at the positions read."""
    steps, batch = x1.shape[1::-1] if batch_major else x1.shape[:2]
    hidden = h0.shape[-1]
    _check_dtype(jnp.complex64 if kind == "complex" else jnp.float32, x1, x2, h0)
    width = GATES.get(kind, 1) * hidden
    want = [(*x1.shape[:2], width), (width,) if kind in GATES else (*x1.shape[:2], width)]
    got = [x1.shape, None if x2 is None else x2.shape]
    if x1.ndim != 3 or got != want or h0.shape != (batch, hidden):
        raise ValueError(f"fused_cpu linear kernel {kind!r}: expected x1, x2 of shapes {want} "
                         f"and h0 (B, H); got {got} and h0 {h0.shape}")  # fmt: skip
    if steps == 0 or batch == 0 or hidden == 0:  # nothing to run: the initial state
        return h0, jnp.zeros((*x1.shape[:2], hidden), h0.dtype)
    lengths = jnp.zeros((0,), jnp.int32) if lengths is None else lengths.astype(jnp.int32)
    layout = Layout(kind, batch_major, reverse)
    return _sequence(layout, x1, x2, h0, _flags(valid), _flags(starts), lengths)


def _check_dtype(dtype, *arrays):
    for array in arrays:
        if array is not None and array.dtype != dtype:
            raise TypeError(f"backend='fused_cpu' runs linear recurrences in float32 (complex64 "
                            f"states) only, got {array.dtype}")  # fmt: skip


def parallel(cell, params, prep, valid, starts, *, reverse: bool, time_major: bool):
    """``rj.unroll``'s parallel path of a linear cell with ``backend="fused_cpu"``:
    ``(final carry, hs)`` as ``rj.unroll`` returns them (the caller's layout, outputs aligned
    with the inputs). ``prep``: ``rnn_jax.sequence.Prepared`` (time-major ``xs``, unflipped);
    ``valid``/``starts`` ``(T, B)`` in reading order.

    Fused gates (the minGRU): the pre-activations of the caller's layout (a transpose of
    ``prep.xs`` XLA cancels against ``prepare``'s), the kernel reading them batch-major and
    ``reverse`` in place, so no (T, B, .) array is transposed or flipped. Any other form: its
    coefficients in reading order (time-major, as ``cell.parallel``), the readout after."""
    form = cell.linear
    if form.fused_gates is not None:  # preactivations are per position: any layout works
        xs = prep.xs if time_major else jnp.swapaxes(prep.xs, 0, 1)
        k, bias, state0 = form.preactivations(params, xs, prep.carry)
        return scan(form.fused_gates, k, bias, state0, valid=valid, starts=starts,
                    lengths=prep.lengths, reverse=reverse, batch_major=not time_major)  # fmt: skip
    xs = flip_valid(prep.xs, prep.lengths) if reverse else prep.xs
    a, b, state0 = form.coefficients(params, xs, prep.carry)
    final_state, states = _affine(a, b, state0, valid, starts)
    final, hs = linear_readout(form, cell.hidden_of, params, xs, prep.carry, valid, final_state,
                               states)  # fmt: skip
    return final, to_layout(flip_valid(hs, prep.lengths) if reverse else hs, time_major)


def _affine(a, b, state0, valid, starts):
    """The ``"affine"`` (``"complex"``) kernel over states of any trailing shape
    ``(T, B, ...)``, flattened to ``(T, B, N)`` for the kernel and back."""
    a = jnp.broadcast_to(a, b.shape)
    state0 = jnp.zeros(b.shape[1:], b.dtype) if state0 is None else state0
    steps, batch = b.shape[:2]
    flat = (steps, batch, math.prod(b.shape[2:]))
    h0 = jnp.broadcast_to(state0, b.shape[1:]).reshape(batch, flat[2])
    kind = "complex" if jnp.iscomplexobj(b) else "affine"
    final, hs = scan(kind, a.reshape(flat), b.reshape(flat), h0, valid=valid, starts=starts)
    return final.reshape(b.shape[1:]), hs.reshape(b.shape)
