"""LRU, the Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural
Networks for Long Sequences"): a complex diagonal linear recurrence with a real readout.

    lambda = exp(-exp(nu_log) + i exp(theta_log))          (N,) complex, |lambda| < 1
    s'     = lambda * s + exp(gamma_log) * (x @ (b_re + i b_im))       s (B, N) complex
    h'     = Re(s' @ (c_re + i c_im)) + skip(x)                        h (B, H) real

``skip(x) = x * d`` with ``d (H,)`` when ``input_size == hidden_size`` (the paper's layer),
else ``x @ d`` with ``d (I, H)``. The eigenvalues are initialised uniformly on the ring
``r_min <= |lambda| <= r_max`` with phases in ``[0, max_phase]``, and ``gamma`` normalises
each state's input so a white-noise input keeps unit variance: ``sqrt(1 - |lambda|^2)``.

The carry is ``LRUCarry(h (B, H), state (B, N))``: the last output (what the layer emits, so
``hidden_of`` reads it) and the complex state, ``N = hidden_size`` for ``rj.lru`` and any
``N`` for ``rj.lru.with_state_size(N)``. The recurrence is linear in the state, so a whole
sequence runs in parallel (``mode="parallel"``, the default, through ``rj.linear_scan``) or
step by step, with equal values.

Examples:
  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> params = rj.lru.init(jax.random.PRNGKey(0), input_size=4, hidden_size=4, r_min=0.9)
  >>> xs = jax.random.normal(jax.random.PRNGKey(1), (2, 30, 4))
  >>> carry, hs = rj.unroll(rj.lru, params, xs)
  >>> hs.shape, carry.state.shape, carry.state.dtype
  ((2, 30, 4), (2, 4), dtype('complex64'))
  >>> _, hs_steps = rj.unroll(rj.lru, params, xs, mode="sequential")
  >>> bool(jnp.allclose(hs, hs_steps, atol=1e-5))
  True
  >>> cell = rj.lru.with_state_size(8)                          # N = 8 states for H = 4
  >>> cell.init(jax.random.PRNGKey(0), 4, 4)["nu_log"].shape
  (8,)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cell import Cell, LinearForm, cell_of_functions, hidden_width, protocol_of
from rnn_jax.cells.base import rows_product

__all__ = [  # fmt: skip
    "LRUCarry", "cell", "eigenvalues", "hidden_of", "init", "parallel", "step",
    "step_backward", "step_forward", "with_state_size", "zero_carry",
]


class LRUCarry(NamedTuple):
    """``h (B, H)``: the last output; ``state (B, N)``: the complex recurrent state."""

    h: jax.Array
    state: jax.Array


@dataclasses.dataclass(frozen=True)
class LRU:
    """The cell's functions for one state size (None: ``hidden_size``); hashable."""

    state_size: int | None = None
    output_size = staticmethod(hidden_width)  # h (B, H) whatever the state size

    def init(self, key, input_size: int, hidden_size: int, *, dtype=jnp.float32,
             r_min: float = 0.0, r_max: float = 1.0, max_phase: float = 2 * math.pi):  # fmt: skip
        """The paper's initialisation (module docstring); ``b`` scaled by ``1/sqrt(2 I)``,
        ``c`` by ``1/sqrt(N)``, ``d`` standard normal."""
        if not 0 <= r_min < r_max <= 1:
            raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
        num_states = self.state_size or hidden_size
        keys = jax.random.split(key, 7)
        u_radius, u_phase = (jax.random.uniform(k, (num_states,), dtype) for k in keys[:2])
        nu_log = jnp.log(-0.5 * jnp.log(u_radius * (r_max**2 - r_min**2) + r_min**2))
        modulus = jnp.exp(-jnp.exp(nu_log))
        normal = lambda k, shape, scale: jax.random.normal(k, shape, dtype) * scale
        b_scale, c_scale = 1 / math.sqrt(2 * input_size), 1 / math.sqrt(num_states)
        return {
            "nu_log": nu_log,
            "theta_log": jnp.log(max_phase * u_phase),
            "gamma_log": jnp.log(jnp.sqrt(1 - modulus**2)),
            "b_re": normal(keys[2], (input_size, num_states), b_scale),
            "b_im": normal(keys[3], (input_size, num_states), b_scale),
            "c_re": normal(keys[4], (num_states, hidden_size), c_scale),
            "c_im": normal(keys[5], (num_states, hidden_size), c_scale),
            "d": normal(keys[6], _skip_shape(input_size, hidden_size), 1.0),
        }

    def zero_carry(self, batch_size: int, hidden_size: int, dtype=jnp.float32):
        num_states = self.state_size or hidden_size
        complex_dtype = jnp.result_type(dtype, jnp.complex64)
        return LRUCarry(
            jnp.zeros((batch_size, hidden_size), dtype),
            jnp.zeros((batch_size, num_states), complex_dtype),
        )

    def step_forward(self, params, carry, x):
        """``x (B, I)`` -> ``(LRUCarry(h', s'), h' (B, H), residuals)``; ``step`` is this
        without the residuals, ``hidden_of`` reads the carry's ``h``."""
        eigen, gain = eigenvalues(params), jnp.exp(params["gamma_log"])
        drive = _complex_product(x, params)  # x @ (b_re + i b_im), before the gain
        state = eigen * carry.state + gain * drive
        h = readout(params, state, x)
        return LRUCarry(h, state), h, (x, carry.state, state, drive)

    def step_backward(self, params, residuals, d_h, d_carry):
        """By hand: real-valued chain rule written with complex numbers in JAX's convention
        (a cotangent ``c`` of a complex ``z`` means ``dL = Re(c dz)``)."""
        x, state_prev, state, drive = residuals
        eigen, gain = eigenvalues(params), jnp.exp(params["gamma_log"])
        d_out = d_h + d_carry.h  # h' is both the output and the carry's h
        c = params["c_re"] + 1j * params["c_im"]
        d_state = d_out @ c.T + d_carry.state
        d_eigen = jnp.sum(d_state * state_prev, axis=0)
        d_drive = d_state * gain
        d_exponent = d_eigen * eigen  # through exp(-exp(nu_log) + i exp(theta_log))
        d_x, d_skip = _skip_backward(params["d"], x, d_out)
        d_x = d_x + jnp.real(d_drive) @ params["b_re"].T - jnp.imag(d_drive) @ params["b_im"].T
        d_params = {
            "nu_log": -jnp.real(d_exponent) * jnp.exp(params["nu_log"]),
            "theta_log": -jnp.imag(d_exponent) * jnp.exp(params["theta_log"]),
            "gamma_log": jnp.sum(jnp.real(d_state * drive), axis=0) * gain,
            "b_re": x.T @ jnp.real(d_drive),
            "b_im": -(x.T @ jnp.imag(d_drive)),
            "c_re": jnp.real(state).T @ d_out,
            "c_im": -(jnp.imag(state).T @ d_out),
            "d": d_skip,
        }
        return d_params, d_x, LRUCarry(jnp.zeros_like(d_out), d_state * eigen)

    @property
    def linear(self) -> LinearForm:
        """``state_t = lambda * state_{t-1} + gain * (x_t @ b)``, read out by ``readout``."""
        return LinearForm(_coefficients, readout, _carry_of)

    @staticmethod
    def sizes(params) -> tuple[int, int]:
        return params["b_re"].shape[0], params["c_re"].shape[1]


def eigenvalues(params):
    """``lambda = exp(-exp(nu_log) + i exp(theta_log))``, ``(N,)`` complex."""
    return jnp.exp(-jnp.exp(params["nu_log"]) + 1j * jnp.exp(params["theta_log"]))


def readout(params, state, x):
    """``Re(state @ (c_re + i c_im)) + skip(x)``: ``state (..., N)``, ``x (..., I)`` ->
    ``(..., H)``, each product on the rows (``rows_product``): one step's or a sequence's."""
    real = rows_product(jnp.real(state), params["c_re"])
    real = real - rows_product(jnp.imag(state), params["c_im"])
    skip = params["d"]
    return real + (x * skip if skip.ndim == 1 else rows_product(x, skip))


def _complex_product(x, params):
    return rows_product(x, params["b_re"]) + 1j * rows_product(x, params["b_im"])


def _skip_shape(input_size: int, hidden_size: int) -> tuple[int, ...]:
    return (hidden_size,) if input_size == hidden_size else (input_size, hidden_size)


def _skip_backward(skip, x, d_out):
    """``(d_x, d_skip)`` of ``x * skip`` (``skip (H,)``) or ``x @ skip`` (``skip (I, H)``)."""
    if skip.ndim == 1:
        return d_out * skip, jnp.sum(d_out * x, axis=0)
    return d_out @ skip.T, x.T @ d_out


def _coefficients(params, xs, carry):
    """Time-major ``xs (T, B, I)``: one product for every step's drive; ``(a, b, state0)``."""
    drive = _complex_product(xs, params) * jnp.exp(params["gamma_log"])
    return jnp.broadcast_to(eigenvalues(params), drive.shape), drive, carry.state


def _carry_of(carry, state, h):
    return LRUCarry(h, state)


@functools.cache
def with_state_size(state_size: int | None) -> Cell:
    """The LRU cell with ``N = state_size`` complex states (None: ``N = hidden_size``)."""
    if state_size is not None and (not isinstance(state_size, int) or state_size < 1):
        raise ValueError(f"state_size must be a positive int or None, got {state_size!r}")
    name = "lru" if state_size is None else f"lru_n{state_size}"
    return cell_of_functions(name, LRU(state_size))


cell = with_state_size(None)

init, zero_carry, hidden_of, step, step_forward, step_backward = protocol_of(cell)
parallel = cell.parallel
