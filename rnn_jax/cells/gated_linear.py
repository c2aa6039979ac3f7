"""Gated linear recurrences, ``h' = a(x) * h + b(x)``: what minGRU and minLSTM share.

The gates read only the input, through one fused product ``k = x @ w_x + b`` with
``w_x (I, G*H)``, ``b (G*H,)``; the state enters linearly. So the same cell runs step by step
(``step``, for sampling, streaming and ``rnn_jax.tbptt``) or over a whole sequence at once
(its ``LinearForm``: one ``(T*B, I) @ (I, G*H)`` product, then the linear scan).

A cell is described by ``coefficients(candidate, k) -> (a, b, residuals)`` and its
hand-written ``coefficients_backward(candidate, residuals, d_a, d_b) -> d_k``, where
``candidate`` is ``LINEAR`` or ``POSITIVE`` (the paper's log-space ``g``), a pair of a
function and its derivative; everything else is here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from rnn_jax.cell import LinearForm, cell_of_functions, hidden_width
from rnn_jax.cells.base import rows_product


def gated_linear_cells(name: str, num_gates: int, coefficients, coefficients_backward,
                       fused_gates: str | None = None):  # fmt: skip
    """``(cell, log_space)``: the ``Cell`` s, each with a ``parallel`` path, of the gate
    functions with the ``LINEAR`` candidate and with the ``POSITIVE`` one; ``fused_gates``:
    the name of the ``LINEAR`` one's gate maths in the fused CPU kernel
    (``LinearForm.fused_gates``; the log-space cell has none)."""
    cells = []
    for suffix, candidate in (("", LINEAR), ("_log_space", POSITIVE)):
        gates = (functools.partial(f, candidate) for f in (coefficients, coefficients_backward))
        fused = fused_gates if candidate is LINEAR else None
        cells.append(cell_of_functions(name + suffix, Variant(num_gates, *gates, fused)))
    return tuple(cells)


@dataclasses.dataclass(frozen=True)
class Variant:
    """The gate functions of one cell; its methods are the cell's (hashable: jit-static)."""

    num_gates: int
    coefficients: Callable
    coefficients_backward: Callable
    fused_gates: str | None = None
    output_size = staticmethod(hidden_width)

    def init(self, key, input_size: int, hidden_size: int, *, dtype=jnp.float32):
        """``{"w_x": (I, G*H), "b": (G*H,)}``, U(-1/sqrt(I), 1/sqrt(I)) as ``torch.nn.Linear``."""
        bound = 1 / math.sqrt(max(input_size, 1))
        width = self.num_gates * hidden_size
        k_w, k_b = jax.random.split(key)
        uniform = jax.random.uniform
        return {
            "w_x": uniform(k_w, (input_size, width), dtype, minval=-bound, maxval=bound),
            "b": uniform(k_b, (width,), dtype, minval=-bound, maxval=bound),
        }

    def sizes(self, params) -> tuple[int, int]:
        return params["w_x"].shape[0], params["b"].shape[0] // self.num_gates

    def step_forward(self, params, h, x):
        """``h (B, H), x (B, I)`` -> ``(h', h', residuals)``; carry ``h`` (``make_cell``'s
        default zeros ``(B, H)``), and ``step`` is this without the residuals."""
        a, b, gates = self.coefficients(x @ params["w_x"] + params["b"])
        h_new = a * h + b
        return h_new, h_new, (x, h, a, gates)

    def step_backward(self, params, residuals, d_h, d_carry):
        """``h' = a h + b``: ``d_h_prev = d a``, ``d_a = d h``, ``d_b = d``, then the gates."""
        x, h, a, gates = residuals
        d_total = d_h + d_carry  # h' is both the output and the carry
        d_k = self.coefficients_backward(gates, d_total * h, d_total)
        d_params = {"w_x": x.T @ d_k, "b": d_k.sum(0)}
        return d_params, d_k @ params["w_x"].T, d_total * a

    @property
    def linear(self) -> LinearForm:
        return LinearForm(self.sequence_coefficients, fused_gates=self.fused_gates,
                          preactivations=self.preactivations)  # fmt: skip

    def preactivations(self, params, xs, h0):
        """``xs (T, B, I)`` (or ``(B, T, I)``: each position alone) -> ``(xs @ w_x (T, B, G*H),
        b (G*H,), h0)``: one product for every step's gates (``rows_product``), the bias
        apart."""
        return rows_product(xs, params["w_x"]), params["b"], h0

    def sequence_coefficients(self, params, xs, h0):
        """Time-major ``xs (T, B, I)`` -> ``(a, b (T, B, H), h0)``."""
        k, bias, h0 = self.preactivations(params, xs, h0)
        a, b, _ = self.coefficients(k + bias)
        return a, b, h0


def positive(v):
    """The paper's ``g``: ``v + 1/2`` for ``v >= 0``, ``sigmoid(v)`` below; positive, C^1."""
    return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


def positive_derivative(v):
    sig = jax.nn.sigmoid(v)
    return jnp.where(v >= 0, 1.0, sig * (1 - sig)).astype(v.dtype)


# The candidate state's function of its pre-activation, and that function's derivative.
LINEAR = (lambda v: v, lambda v: 1)
POSITIVE = (positive, positive_derivative)
