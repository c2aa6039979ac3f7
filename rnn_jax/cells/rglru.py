"""RG-LRU, the Real-Gated Linear Recurrent Unit of Griffin and Hawk (De et al. 2024, "Griffin:
Mixing Gated Linear Recurrences with Local Attention for Efficient Language Models").

A gated diagonal linear recurrence of width ``D`` (``input_size == hidden_size == D``)::

    r_t = sigmoid(x_t W_r + b_r)              recurrence gate   (block-diagonal W, num_heads)
    i_t = sigmoid(x_t W_i + b_i)              input gate        (block-diagonal W, num_heads)
    log a_t = -c * r_t * softplus(-lam)       a_t = a^(c r_t) with a = sigmoid(lam), c = 8
    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * x_t)

At the first step of a segment (a document start) the recurrence ignores ``h_{t-1}`` and skips
the normalisation: ``h_t = i_t * x_t``, as the reference does where ``segment_pos == 0``. The
carry says where a segment starts: ``RGLRUCarry(h (B, D), fresh (B,))`` with ``fresh = 1`` in
``zero_carry`` (no step read yet: the next one starts a segment) and ``0`` after any step. So
``rj.unroll`` from the zero carry treats step 0 as a document start, a ``resets=`` step reads
the initial carry and starts a new segment, and a carry handed on from an earlier chunk
(``fresh = 0``) continues its segment: the reference's ``segment_pos`` of 0 at the starts and
positive elsewhere, and its ``cache``. ``fresh`` enters as a number (``a_t * (1 - fresh)`` and
normaliser ``fresh + (1 - fresh) * sqrt(1 - a_t^2)``), so it is differentiable like any leaf.

The derivative of ``sqrt(1 - a_t^2)`` is bounded at 1000 (evaluated at
``max(1 - a_t^2, 1 / (4 * 1000^2))``), as the reference's ``sqrt_bound_derivative`` (it keeps
training in bfloat16 free of NaNs where ``a_t -> 1``); ``step``'s autodiff gradient and the
hand-written ``step_backward`` both use it.

Parameters ``{"lam": (D,), "w_r", "w_i": (heads, D/heads, D/heads), "b_r", "b_i":
(heads, D/heads)}``; ``rj.rglru`` has one head (dense gates), ``rj.rglru.with_heads(n)`` has
n. ``lam`` is the paper's Lambda (``a = sigmoid(lam)``); recurrentgemma stores
``a_param = -lam`` (``log a = -softplus(a_param)``), and ``rnn_jax.interop`` converts
(``rglru_from_recurrentgemma``, ``rglru_to_recurrentgemma``). Initialisation as the
reference's: ``a^2`` uniform on the ring ``[min_rad^2, max_rad^2]`` (0.9, 0.999), gate
weights normal with variance ``w_init_variance_scale / D`` (flax's fan-in of the
``(heads, D/heads, D/heads)`` kernel counts every head), biases zero.

The step's coefficients ``(a_t * (1 - fresh), normaliser * i_t * x_t)`` come from one function,
``coefficients``, used by ``step`` and by ``parallel`` (the whole sequence through
``rj.linear_scan``'s core); the two modes agree.

Reference: ``recurrentgemma==1.0.1`` (Google DeepMind), ``recurrentgemma/jax/layers.py``:
``RGLRU``, ``BlockDiagonalLinear``, ``rnn_real_param_init``, ``sqrt_bound_derivative``,
``scan.linear_scan``; the Hawk block around it is ``rnn_jax.blocks.init_hawk``.

Examples:
  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> cell = rj.rglru.with_heads(2)                     # gates with 2 diagonal blocks
  >>> params = cell.init(jax.random.PRNGKey(0), 4, 4)
  >>> xs = jax.random.normal(jax.random.PRNGKey(1), (2, 30, 4))
  >>> carry, hs = rj.unroll(cell, params, xs)                        # parallel over time
  >>> _, hs_steps = rj.unroll(cell, params, xs, mode="sequential")
  >>> hs.shape, carry.fresh.tolist(), bool(jnp.allclose(hs, hs_steps, atol=1e-5))
  ((2, 30, 4), [0.0, 0.0], True)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cell import Cell, hidden_width
from rnn_jax.ops.linear_recurrence import scan_states

__all__ = [  # fmt: skip
    "RGLRUCarry", "cell", "coefficients", "hidden_of", "init", "num_heads_of", "parallel",
    "step", "step_backward", "step_forward", "with_heads", "zero_carry",
]

C = 8.0  # the exponent scale c of a_t = a^(c r_t) (the paper's and the reference's)
MAX_SQRT_GRADIENT = 1000.0  # the reference's bound on d sqrt(u) / du


class RGLRUCarry(NamedTuple):
    """``h (B, D)``: the state; ``fresh (B,)``: 1 where the next step starts a segment."""

    h: jax.Array
    fresh: jax.Array


@dataclasses.dataclass(frozen=True)
class Init:
    """``init`` for ``num_heads`` gate blocks (hashable, so the cell stays a static argument)."""

    num_heads: int = 1

    def __call__(self, key, input_size: int, hidden_size: int, *, dtype=jnp.float32,
                 min_rad: float = 0.9, max_rad: float = 0.999,
                 w_init_variance_scale: float = 1.0) -> dict:  # fmt: skip
        """The reference's initialisation (module docstring)."""
        if input_size != hidden_size:
            raise ValueError(
                f"rglru maps width D to D: input_size ({input_size}) must equal hidden_size "
                f"({hidden_size}); project the input to the width first (as the Hawk block does)"
            )
        if hidden_size % self.num_heads:
            raise ValueError(f"rglru with {self.num_heads} heads: hidden_size ({hidden_size}) "
                             f"must be a multiple of num_heads")  # fmt: skip
        if not 0 < min_rad < max_rad < 1:
            raise ValueError(f"rglru: need 0 < min_rad < max_rad < 1, got min_rad={min_rad}, "
                             f"max_rad={max_rad}")  # fmt: skip
        k_lam, k_r, k_i = jax.random.split(key, 3)
        # a^2 uniform on [min_rad^2, max_rad^2] ("proportional to area in a ring"); the
        # reference adds 1e-8 inside the log.
        unif = jax.random.uniform(k_lam, (hidden_size,), dtype)
        log_a = 0.5 * jnp.log(unif * (max_rad**2 - min_rad**2) + min_rad**2 + 1e-8)
        block = hidden_size // self.num_heads
        std = math.sqrt(w_init_variance_scale / hidden_size)
        shape = (self.num_heads, block, block)
        return {
            # log a = -softplus(-lam)  <=>  lam = -log(exp(-log a) - 1)
            "lam": -jnp.log(jnp.expm1(-log_a)),
            "w_r": std * jax.random.normal(k_r, shape, dtype),
            "b_r": jnp.zeros((self.num_heads, block), dtype),
            "w_i": std * jax.random.normal(k_i, shape, dtype),
            "b_i": jnp.zeros((self.num_heads, block), dtype),
        }


def zero_carry(batch_size: int, hidden_size: int, dtype=jnp.float32) -> RGLRUCarry:
    """Zero state, ``fresh = 1``: the first step starts a segment."""
    return RGLRUCarry(jnp.zeros((batch_size, hidden_size), dtype), jnp.ones((batch_size,), dtype))


def hidden_of(carry: RGLRUCarry):
    return carry.h


@dataclasses.dataclass(frozen=True)
class Sizes:
    """``sizes`` for ``num_heads``: ``(D, D)``, refusing parameters with another head count."""

    num_heads: int = 1

    def __call__(self, params) -> tuple[int, int]:
        found = num_heads_of(params)
        if found != self.num_heads:
            raise ValueError(
                f"these RG-LRU params have {found} heads (w_r {tuple(params['w_r'].shape)}), "
                f"the cell {self.num_heads}: run them with rj.rglru.with_heads({found})"
            )
        width = params["lam"].shape[0]
        return width, width


def block_diagonal(x, w, b):
    """``x (R, D)`` times the block-diagonal ``w (heads, D/heads, D/heads)`` plus ``b``."""
    heads, block, _ = w.shape
    blocks = x.reshape(x.shape[0], heads, block)
    # explicit sizes, not -1: an empty sequence has R = 0 rows
    return (jnp.einsum("rhi,hij->rhj", blocks, w) + b).reshape(x.shape[0], heads * w.shape[2])


def _block_diagonal_backward(x, w, d_y):
    """``(d_x, d_w, d_b)`` of ``block_diagonal`` for ``d_y (R, D)``."""
    heads, block, _ = w.shape
    blocks, d_blocks = (v.reshape(v.shape[0], heads, block) for v in (x, d_y))
    d_x = jnp.einsum("rhj,hij->rhi", d_blocks, w).reshape(x.shape)
    return d_x, jnp.einsum("rhi,rhj->hij", blocks, d_blocks), jnp.sum(d_blocks, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def bounded_sqrt(u, max_gradient):
    """``sqrt(u)`` whose derivative is taken at ``max(u, 1 / (4 max_gradient^2))``."""
    return jnp.sqrt(u)


def _bounded_sqrt_forward(u, max_gradient):
    return jnp.sqrt(u), u


def _bounded_sqrt_backward(max_gradient, u, g):
    return (g * bounded_sqrt_derivative(u, max_gradient),)


def bounded_sqrt_derivative(u, max_gradient=MAX_SQRT_GRADIENT):
    """``d sqrt(u) / du`` taken at ``max(u, 1 / (4 max_gradient^2))``: at most ``max_gradient``."""
    return 0.5 * jax.lax.rsqrt(jnp.maximum(u, 1 / (4 * max_gradient**2)))


bounded_sqrt.defvjp(_bounded_sqrt_forward, _bounded_sqrt_backward)


def coefficients(params, x, fresh):
    """The step as a linear map ``h -> a * h + b``: ``x (R, D)``, ``fresh (R,)`` ->
    ``(a (R, D), b (R, D), residuals)``; ``step`` and ``parallel`` both use it."""
    r = jax.nn.sigmoid(block_diagonal(x, params["w_r"], params["b_r"]))
    i = jax.nn.sigmoid(block_diagonal(x, params["w_i"], params["b_i"]))
    softplus = jax.nn.softplus(-params["lam"])
    log_a = -C * r * softplus
    a, a_squared = jnp.exp(log_a), jnp.exp(2 * log_a)
    fresh = fresh[:, None]
    normaliser = fresh + (1 - fresh) * bounded_sqrt(1 - a_squared, MAX_SQRT_GRADIENT)
    gated = i * x
    residuals = (x, fresh, r, i, a, a_squared, normaliser, gated)
    return a * (1 - fresh), gated * normaliser, residuals


def coefficients_backward(params, residuals, d_a, d_b):
    """The VJP of ``coefficients``: ``(d_params, d_x (R, D), d_fresh (R,))``."""
    # The chain, outputs first: a_out = a (1 - fresh); b_out = gated * normaliser with
    # normaliser = fresh + (1 - fresh) root, root = sqrt(1 - a^2) (its derivative bounded as
    # the forward's custom VJP); a = exp(log_a) and a^2 = exp(2 log_a), both read log_a =
    # -C r softplus(-lam); r = sigmoid(x W_r + b_r); gated = i x, i = sigmoid(x W_i + b_i).
    x, fresh, r, i, a, a_squared, normaliser, gated = residuals
    root = jnp.sqrt(1 - a_squared)
    d_fresh = jnp.sum(-d_a * a + d_b * gated * (1 - root), axis=-1)
    d_gated = d_b * normaliser
    d_root = d_b * gated * (1 - fresh)
    d_a_squared = -d_root * bounded_sqrt_derivative(1 - a_squared)
    d_log_a = d_a * (1 - fresh) * a + 2 * d_a_squared * a_squared
    softplus = jax.nn.softplus(-params["lam"])
    d_r_pre = -C * softplus * d_log_a * r * (1 - r)
    d_i_pre = d_gated * x * i * (1 - i)
    d_x_r, d_w_r, d_b_r = _block_diagonal_backward(x, params["w_r"], d_r_pre)
    d_x_i, d_w_i, d_b_i = _block_diagonal_backward(x, params["w_i"], d_i_pre)
    d_softplus = -C * jnp.sum(d_log_a * r, axis=0)
    d_params = {
        "lam": -d_softplus * jax.nn.sigmoid(-params["lam"]),
        "w_r": d_w_r,
        "b_r": d_b_r,
        "w_i": d_w_i,
        "b_i": d_b_i,
    }
    return d_params, d_gated * i + d_x_r + d_x_i, d_fresh


def step(params, carry: RGLRUCarry, x):
    """``x (B, D)`` -> ``(RGLRUCarry(h', 0), h' (B, D))``."""
    new_carry, h, _ = step_forward(params, carry, x)
    return new_carry, h


def step_forward(params, carry: RGLRUCarry, x):
    a, b, residuals = coefficients(params, x, carry.fresh)
    h = a * carry.h + b
    return RGLRUCarry(h, jnp.zeros_like(carry.fresh)), h, (carry.h, a, residuals)


def step_backward(params, residuals, d_h, d_carry: RGLRUCarry):
    """By hand: ``h' = a h + b`` then ``coefficients_backward``; ``fresh' = 0`` is constant,
    so ``d_carry.fresh`` goes nowhere."""
    h_prev, a, coefficient_residuals = residuals
    d_out = d_h + d_carry.h  # h' is both the output and the carry's h
    d_params, d_x, d_fresh = coefficients_backward(
        params, coefficient_residuals, d_out * h_prev, d_out
    )
    return d_params, d_x, RGLRUCarry(d_out * a, d_fresh)


def parallel(params, xs, carry: RGLRUCarry, valid, starts=None, *, method="auto",
             gradient="manual"):  # fmt: skip
    """Time-major ``xs (T, B, D)`` -> ``(final RGLRUCarry, hs (T, B, D))``: each step's
    ``fresh`` (the initial carry's at step 0 and at the starts, until a valid step is read),
    every step's coefficients at once, then ``rj.linear_scan``'s core (``method``,
    ``gradient`` as ``rnn_jax.ops.linear_recurrence.scan_states``)."""
    num_steps, batch_size, width = xs.shape
    fresh, final_fresh = _fresh_before_each_step(carry.fresh, valid, starts, num_steps, method)
    a, b, _ = coefficients(params, xs.reshape(-1, width), fresh.reshape(-1))
    a, b = (v.reshape(num_steps, batch_size, width) for v in (a, b))
    final_h, hs = scan_states(a, b, carry.h, valid=valid, starts=starts, method=method,
                              gradient=gradient)  # fmt: skip
    return RGLRUCarry(final_h, final_fresh), hs


def _fresh_before_each_step(fresh0, valid, starts, num_steps: int, method):
    """``(fresh (T, B) before each step, after the last)``: ``fresh0`` at step 0 and at the
    starts, kept through skipped (invalid) steps, 0 after a step that ran -- the recurrence
    ``f -> (1 - valid_t) * f``, restarted from ``fresh0`` at the starts."""
    shape = (num_steps,) + fresh0.shape
    keep = jnp.zeros(shape, fresh0.dtype) if valid is None else 1 - valid.astype(fresh0.dtype)
    final, after = scan_states(keep, jnp.zeros(shape, fresh0.dtype), fresh0, starts=starts,
                               method=method)  # fmt: skip
    if num_steps == 0:
        return after, fresh0
    before = jnp.concatenate([fresh0[None], after[:-1]])
    if starts is not None:
        before = jnp.where(starts, fresh0, before)
    return before, final


@functools.cache
def with_heads(num_heads: int) -> Cell:
    """The RG-LRU whose gates have ``num_heads`` diagonal blocks (``D`` divisible by it)."""
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    return Cell(
        name="rglru" if num_heads == 1 else f"rglru_h{num_heads}",
        init=Init(num_heads),
        step=step,
        zero_carry=zero_carry,
        hidden_of=hidden_of,
        step_forward=step_forward,
        step_backward=step_backward,
        sizes=Sizes(num_heads),
        parallel=parallel,
        parallel_backward=True,  # scan_states' hand-written reverse scan for "manual"
        output_size=hidden_width,
    )


def num_heads_of(params) -> int:
    """The number of gate blocks of RG-LRU parameters (``w_r (heads, D/heads, D/heads)``)."""
    return int(params["w_r"].shape[0])


cell = with_heads(1)
init = cell.init
