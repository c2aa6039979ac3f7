"""ConvLSTM (Shi et al. 2015) over 1-D, 2-D or 3-D inputs: the LSTM with its two matrix products
replaced by ``"same"`` convolutions (stride 1), so the state keeps the input's spatial shape:

    z = conv(x, w_x) + conv(h, w_h) + b                     (B, *spatial, 4F)
    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of z       (rj.lstm's gate order)
    c' = f * c + i * g;   h' = o * tanh(c')

Parameters ``{"w_x": (*kernel, C, 4F), "w_h": (*kernel, F, 4F), "b": (4F,)}``: Keras
``ConvLSTM1D/2D/3D``'s ``kernel``, ``recurrent_kernel`` and ``bias`` as they are (same gate order
i, f, c, o). Flax ``ConvLSTMCell`` orders its gates i, g, f, o, has a bias in each
convolution and adds 1 to the forget pre-activation inside the step: its model is these
parameters with ``b = b_ih + b_hh`` (plus 1 on f) and the gate blocks reordered.

Carry ``LSTMCarry(h, c)``, each ``(B, *spatial, F)``; inputs ``(B, *spatial, C)`` per step,
``(B, T, *spatial, C)`` as a sequence. The carry's shape depends on the input's, so
``zero_carry`` takes the carry's leading shape ``(B, *spatial)`` instead of ``B`` (the cell
declares ``spatial_rank``; ``rj.unroll`` and ``rj.bptt`` build it from ``xs``).

"same" padding follows Keras, Flax and ``lax`` (``"SAME"``): ``(k - 1) // 2`` before and
``k // 2`` after each spatial axis, so even kernels pad one more after.

Known issue (found 2026-12-01 by ``experiments/gradcheck.py``): in float64 on XLA:CPU, the
autodiff gradient through ``rj.unroll(cell, ..., gradient="autodiff")`` is wrong for some
shapes (in a survey of hidden sizes 2-8 and widths 3, 4, 6: hidden 5 at width 4). XLA
miscompiles the backward ``lax.scan`` when it runs as its own loop (eagerly, or inside a
``jax.jit`` that does not fuse it away); the same loop body, each convolution and the forward
residuals are right (``experiments/results/jax-eager-scan-grad.md``). In float64 use
``gradient="manual"``, which finite differences confirm, or ``unroll=2``, which avoids the
miscompiled loop in every case tried (both are tested at the failing shape).

Examples:
  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> cell = rj.conv_lstm((3, 3))                              # 2-D, kernel 3x3
  >>> params = cell.init(jax.random.PRNGKey(0), input_size=2, hidden_size=4)
  >>> {name: value.shape for name, value in params.items()}
  {'w_x': (3, 3, 2, 16), 'w_h': (3, 3, 4, 16), 'b': (16,)}
  >>> xs = jnp.ones((1, 5, 6, 6, 2))                           # (B, T, H, W, C)
  >>> carry, hs = rj.unroll(cell, params, xs)
  >>> hs.shape, carry.c.shape
  ((1, 5, 6, 6, 4), (1, 6, 6, 4))
  >>> cell.zero_carry((1, 6, 6), 4).h.shape                    # leading shape (B, H, W)
  (1, 6, 6, 4)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from rnn_jax.cell import hidden_width, make_cell
from rnn_jax.cells import lstm
from rnn_jax.cells.base import LSTMCarry, StepResiduals
from rnn_jax.init import set_gate_bias

# Letters naming the spatial axes in lax's dimension-number strings; "N", "C", "I", "O" are
# taken, any other letter is a spatial axis matched by name across lhs, rhs and output.
SPATIAL_LETTERS = "DHW"


def _same_padding(kernel: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(before, after)`` per spatial axis: lax's "SAME" at stride 1 (Keras', Flax's)."""
    return [((k - 1) // 2, k // 2) for k in kernel]


def _correlate(lhs, rhs, padding: list[tuple[int, int]], spec: str):
    """``lax.conv_general_dilated`` at stride 1; ``spec`` names the axes of lhs, rhs and the
    output as in ``"NSC,SIO,NSC"``, ``S`` standing for the spatial axes (one per pad)."""
    numbers = spec.replace("S", SPATIAL_LETTERS[-len(padding):]).split(",")
    return jax.lax.conv_general_dilated(lhs, rhs, (1,) * len(padding), padding,
                                        dimension_numbers=tuple(numbers))  # fmt: skip


def conv(x, w):
    """``x (B, *spatial, C_in)``, ``w (*kernel, C_in, C_out)`` -> ``(B, *spatial, C_out)``,
    "same" padding, stride 1 (a correlation, as every deep-learning "convolution")."""
    return _correlate(x, w, _same_padding(w.shape[:-2]), "NSC,SIO,NSC")


def conv_input_backward(d_out, w):
    """The VJP of ``conv`` for its input: ``d_out (B, *spatial, C_out)`` -> ``(B, *spatial,
    C_in)``. ``out[p] = sum_j x[p + j - lo] w[j]`` gives ``dx[q] = sum_j d_out[q - j + lo]
    w[j]``: a correlation with the kernel flipped in space and its in/out axes swapped
    (``"OI"``), padded ``(hi, lo)`` (the forward's pads swapped: they differ for even k)."""
    flipped = jnp.flip(w, axis=tuple(range(w.ndim - 2)))
    pads = [(hi, lo) for lo, hi in _same_padding(w.shape[:-2])]
    return _correlate(d_out, flipped, pads, "NSC,SOI,NSC")


def conv_kernel_backward(x, d_out, kernel: tuple[int, ...]):
    """The VJP of ``conv`` for its kernel: ``dw[j, c, o] = sum_{b, p} x_pad[b, p + j, c]
    d_out[b, p, o]``, ``(*kernel, C_in, C_out)``. The same correlation with the batch as the
    contracted feature axis (lhs ``"C...N"``, rhs ``"I...O"``) and the input channels as the
    batch, padded as the forward: output spatial size ``W + k - 1 - W + 1 = k``."""
    return _correlate(x, d_out, _same_padding(kernel), "CSN,ISO,SNC")


def init(kernel_size: tuple[int, ...], key, input_size: int, hidden_size: int, *,
         dtype=jnp.float32, forget_bias: float | None = 1.0):  # fmt: skip
    """``{"w_x": (*kernel, C, 4F), "w_h": (*kernel, F, 4F), "b": (4F,)}``: Glorot-uniform
    kernels, ``U(+-sqrt(6 / (fan_in + fan_out)))`` with fans ``prod(kernel) * C_in`` and
    ``prod(kernel) * C_out`` (Keras' ``kernel`` initialiser, which also draws
    ``recurrent_kernel`` orthogonal, Flax both lecun-normal), zero bias with ``forget_bias``
    on f (Keras' ``unit_forget_bias``; Flax adds its 1 inside the step)."""
    if input_size < 1 or hidden_size < 1:
        raise ValueError(f"input_size and hidden_size must be >= 1, got input_size="
                         f"{input_size}, hidden_size={hidden_size}")  # fmt: skip
    width = 4 * hidden_size
    shapes = {"w_x": (*kernel_size, input_size, width), "w_h": (*kernel_size, hidden_size, width)}
    sizes = [math.prod(shape) for shape in shapes.values()]
    # One U(-1, 1) draw for both kernels, then scaled: XLA:CPU compiles a random draw per
    # shape, which takes seconds; one shape instead of two halves that.
    flat = jax.random.uniform(key, (sum(sizes),), dtype, -1.0, 1.0)
    params = {}
    for (name, shape), part in zip(shapes.items(), jnp.split(flat, [sizes[0]]), strict=True):
        area = math.prod(kernel_size)
        limit = math.sqrt(6 / (area * shape[-2] + area * shape[-1]))
        params[name] = (part * limit).reshape(shape)
    b = jnp.zeros((width,), dtype)
    if forget_bias is not None:
        b = set_gate_bias(b, lstm.FORGET_GATE, hidden_size, forget_bias)
    return params | {"b": b}


def zero_carry(rank: int, lead, hidden_size: int, dtype=jnp.float32) -> LSTMCarry:
    """``LSTMCarry`` of zeros ``(B, *spatial, F)``; ``lead`` is ``(B, *spatial)``."""
    lead = (lead,) if isinstance(lead, int) else tuple(lead)
    if len(lead) != 1 + rank:
        raise TypeError(
            f"a {rank}-D ConvLSTM's carry is (B, *spatial, F): zero_carry takes its leading "
            f"shape (B, *spatial), {1 + rank} ints, got {lead}"
        )
    h = jnp.zeros((*lead, hidden_size), dtype)
    return LSTMCarry(h, jnp.zeros_like(h))


def step_forward(params, carry: LSTMCarry, x):
    """``(params, LSTMCarry (B, *spatial, F) each, x (B, *spatial, C)) -> (carry', h',
    StepResiduals(x, carry, LSTMGates))``; the gate math is ``rj.lstm``'s, element-wise."""
    z_x = conv(x, params["w_x"]) + params["b"]
    z_h = conv(carry.h, params["w_h"])
    new_carry, gates = lstm.pointwise(z_x, z_h, carry)
    return new_carry, new_carry.h, StepResiduals(x, carry, gates)


def step_backward(params, residuals: StepResiduals, d_h, d_carry: LSTMCarry | None = None):
    """Hand-written VJP of the step: ``(d_params, d_x (B, *spatial, C), d_carry_prev)``.

    ``rj.lstm``'s gate backward gives ``d_z (B, *spatial, 4F)``; then the two convolutions'
    VJPs, written as convolutions: ``d_x = conv_input_backward(d_z, w_x)``, ``d_w_x =
    conv_kernel_backward(x, d_z)`` (and so for ``h``), ``d_b`` the sum over all but the
    channel axis.
    """
    x, carry, gates = residuals
    if d_carry is None:
        d_carry = jax.tree.map(jnp.zeros_like, carry)
    d_z, _, d_prev = lstm.pointwise_backward(gates, LSTMCarry(d_carry.h + d_h, d_carry.c))
    kernel = params["w_x"].shape[:-2]
    d_params = {
        "w_x": conv_kernel_backward(x, d_z, kernel),
        "w_h": conv_kernel_backward(carry.h, d_z, kernel),
        "b": d_z.sum(axis=tuple(range(d_z.ndim - 1))),
    }
    d_x = conv_input_backward(d_z, params["w_x"])
    return d_params, d_x, LSTMCarry(conv_input_backward(d_z, params["w_h"]), d_prev.c)


def sizes(params) -> tuple[int, int]:
    """``(C, F)`` from ``w_x (*kernel, C, 4F)`` and ``w_h (*kernel, F, 4F)``."""
    return int(params["w_x"].shape[-2]), int(params["w_h"].shape[-2])


def conv_lstm(kernel_size):
    """The ConvLSTM cell (module docstring) for ``kernel_size``, a tuple of 1 to 3 ints: its
    length is the spatial rank (``(3,)`` for ``(B, T, W, C)`` sequences, ``(3, 3)`` for
    ``(B, T, H, W, C)``, ``(3, 3, 3)`` for ``(B, T, D, H, W, C)``). Cached: the same
    ``kernel_size`` gives the same (hashable) cell.

    ``init(key, input_size=C, hidden_size=F, *, dtype, forget_bias=1.0)``;
    ``zero_carry((B, *spatial), F, dtype)``. Runs in ``rj.unroll`` (both gradients,
    ``lengths``, ``mask``, ``resets``, ``reverse``, an initial carry), ``rj.bptt``,
    ``rj.check_cell``, ``rj.check_gradients``, stacked and bidirectional (``rj.unroll_stack``)
    and with dropout and zoneout (masks ``(B, *spatial, width)``, as Keras').

    Examples:
      >>> import rnn_jax as rj
      >>> cell = rj.conv_lstm((3,))                            # 1-D: xs (B, T, W, C)
      >>> cell is rj.conv_lstm([3]), cell.name, cell.spatial_rank
      (True, 'conv_lstm_3', 1)
      >>> cell.zero_carry((2, 7), 3).c.shape                  # (B, W) -> c (B, W, F)
      (2, 7, 3)
    """
    kernel = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else ()
    if len(kernel) not in (1, 2, 3) or not all(
        isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in kernel
    ):
        raise ValueError(
            "kernel_size must be a tuple of 1 to 3 positive ints (its length is the spatial "
            f"rank: (3,) for (B, T, W, C) inputs, (3, 3) for (B, T, H, W, C), (3, 3, 3) for "
            f"(B, T, D, H, W, C)), got {kernel_size!r}"
        )
    return _cell(kernel)


@functools.cache
def _cell(kernel: tuple[int, ...]):
    """One cell per kernel size: a static jit argument compiles once per kernel."""
    return make_cell(
        "conv_lstm_" + "x".join(map(str, kernel)),
        functools.partial(init, kernel),
        zero_carry=functools.partial(zero_carry, len(kernel)),
        step_forward=step_forward,
        step_backward=step_backward,
        sizes=sizes,
        spatial_rank=len(kernel),
        recurrent_dropout="carry",  # h is read by the recurrent convolution alone
        output_size=hidden_width,
    )
