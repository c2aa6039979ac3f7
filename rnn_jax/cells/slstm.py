"""sLSTM, the scalar-memory LSTM of xLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term
Memory", section 2.2), as the ``xlstm`` package computes it. Gate order i, f, z, o::

    z_t = x @ w_x + b + R h_{t-1}                (B, 4H), gates side by side, heads inside
    i~, f~, z~, o~ = split(z_t)
    log f = log_sigmoid(f~)        (forget_gate="sigmoid", the reference's)   or  f~  ("exp")
    m'  = max(log f + m, i~)                     the stabiliser
    i'  = exp(i~ - m'),   f' = exp(log f + m - m')        both <= 1
    c'  = f' * c + i' * tanh(z~)
    n'  = f' * n + i'                            the normaliser
    h'  = sigmoid(o~) * c' / n'

``R`` is block-diagonal: ``num_heads`` heads of ``head_dim = H / num_heads`` units, each head's
``h`` slice feeding only its own units of the four gates, stored as ``r (heads, head_dim, 4,
head_dim)``: ``(R h)[g, k, e] = sum_d h[k, d] r[k, d, g, e]`` (gate g, head k, unit e).

The carry ``SLSTMCarry(h, c, n, m)`` (each ``(B, H)``) holds the *stabilised* state: the
exponential gates' true cell and normaliser are ``c e^m`` and ``n e^m``, and ``h' = o c'/n'``
reads only their ratio, so every choice of ``m`` gives the same outputs (it only keeps the
exponentials from overflowing). A normaliser of exactly zero marks an empty state (the zero
carry, a reset), whose stabiliser counts as -inf: ``m' = i~`` and ``f' = 0`` (nothing to
forget), the reference's first step (its ``if torch.all(n == 0.0): mnew = iraw``), here per
element. So the gradient wrt an empty carry's ``c`` and ``n`` is zero (the reference's is
``min(exp(log f + m - i~), 1)`` times theirs there, an artefact of its clip).

**The backward at the stabiliser.** With ``a = i~ - m'`` and ``b = log f + m - m'`` the
exponents, their adjoints are ``da = i' (dc' tanh(z~) + dn')`` and ``db = f' (dc' c + dn' n)``,
and the adjoint that reaches the value ``m'`` is::

    dm'_total = dm' - da - db = dm' - (c' dc' + n' dn')

(``dc'``, ``dn'`` the full cotangents of ``c'``, ``n'``). It goes to the max's winner; **at a
tie** ``i~ == log f + m`` it is split half and half, the convention of ``jnp.maximum``'s
derivative, so ``step_backward`` equals ``jax.vjp(step)`` there too. Its value: since
everything after a carry is unchanged by ``(c, n, m) -> (c e^-d, n e^-d, m + d)``, a loss of
the outputs ``h`` alone has ``dm = c dc + n dn`` at every carry, so ``dm'_total = 0`` at every
step: the stabiliser contributes nothing to any gradient and the tie convention cannot change
one (step by step, ``dm'_total(t) = s_f(t+1) dm'_total(t+1)`` with ``s_f`` the forget side's
share of the next max, which vanishes from the end). Only at an exact tie, and only for a
loss that reads the carry's raw ``c``, ``n`` or ``m``, does the convention show.
``tests/test_slstm.py`` checks both statements.

The reference is ``xlstm==2.0.6``'s pure-PyTorch ("vanilla") backend:
``xlstm/blocks/slstm/src/vanilla/slstm.py`` (the pointwise equations above, including the
``min(., 1)`` clips, which are no-ops once ``m'`` is the max, and which this module leaves
out), ``xlstm/blocks/slstm/src/vanilla/__init__.py`` (the head-wise recurrent product) and
``xlstm/blocks/slstm/cell.py`` (gate order, layouts, ``reset_parameters``' initialisations).
Its cell takes the input projection ``x @ w_x`` from outside (``sLSTMLayer``'s four head-wise
linears, no bias); here ``w_x (I, 4H)`` is the cell's own, so the cell works on any input.
``rnn_jax.interop.slstm_from_xlstm`` / ``slstm_to_xlstm`` convert weights both ways.

Parameters ``{"w_x": (I, 4H), "r": (heads, head_dim, 4, head_dim), "b": (4H,)}``.

Examples:
  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> params = rj.slstm.init(jax.random.PRNGKey(0), input_size=3, hidden_size=8)
  >>> {name: w.shape for name, w in params.items()}    # rj.slstm has 4 heads of 2 units
  {'w_x': (3, 32), 'r': (4, 2, 4, 2), 'b': (32,)}
  >>> carry, hs = rj.unroll(rj.slstm, params, jnp.ones((2, 5, 3)), gradient="manual")
  >>> hs.shape, carry.n.shape
  ((2, 5, 8), (2, 8))
  >>> cell = rj.slstm.configured(num_heads=2, forget_gate="exp")
  >>> cell.name, cell.init(jax.random.PRNGKey(0), 3, 8)["r"].shape
  ('slstm_h2_exp', (2, 4, 4, 4))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cell import Cell, cell_of_functions, hidden_width
from rnn_jax.cells.base import input_projection, input_weight_backward, split_gates
from rnn_jax.init import uniform

__all__ = [  # fmt: skip
    "FORGET_GATES", "SLSTMCarry", "cell", "configured", "hidden_of", "init", "step",
    "step_backward", "step_forward", "zero_carry",
]

NUM_GATES = 4  # i, f, z, o
FORGET_GATES = ("sigmoid", "exp")
BIAS_INITS = ("powerlaw_blockdependent", "small_init", "standard", "zeros")
RECURRENT_INITS = ("zeros", "standard")


class SLSTMCarry(NamedTuple):
    """The sLSTM state, each ``(B, H)``: output ``h``, stabilised cell ``c`` and normaliser
    ``n``, stabiliser ``m`` (module docstring)."""

    h: jax.Array
    c: jax.Array
    n: jax.Array
    m: jax.Array

    # Zoneout may keep h; c only together with n and m (one scale e^-m), so never alone.
    zoneout_fields = ("h",)


class SLSTMResiduals(NamedTuple):
    """What a step keeps for its backward: its input and carry, and the gate values, each
    ``(B, H)`` but ``x (B, I)``."""

    x: jax.Array
    carry: SLSTMCarry
    i: jax.Array  # i' = exp(i~ - m')
    f: jax.Array  # f' = exp(log f + m - m'), 0 on an empty state
    z: jax.Array  # tanh(z~)
    o: jax.Array  # sigmoid(o~)
    d_log_f: jax.Array  # d log f / d f~: sigmoid(-f~) (sigmoid forget gate) or 1 (exp)
    share_i: jax.Array  # the input side's share of the max's derivative: 1, 0 or 1/2 at a tie
    new_carry: SLSTMCarry


@dataclasses.dataclass(frozen=True)
class SLSTM:
    """The sLSTM's functions for one head count and forget gate; hashable."""

    num_heads: int = 4
    forget_gate: str = "sigmoid"
    # The carry's h is read by the recurrent product alone: recurrent dropout scales it there.
    recurrent_dropout = "carry"
    output_size = staticmethod(hidden_width)

    def init(self, key, input_size: int, hidden_size: int, *, dtype=jnp.float32,
             bias_init: str = "powerlaw_blockdependent", recurrent_init: str = "zeros",
             block_index: int = 0, num_blocks: int = 1):  # fmt: skip
        """``{"w_x": (I, 4H), "r": (heads, head_dim, 4, head_dim), "b": (4H,)}``.

        ``w_x``: normal with std ``sqrt(2 / (5 I))`` ("small init", what ``xlstm``'s
        ``sLSTMLayer`` gives its input projections). ``recurrent_init``: ``"zeros"`` (the
        reference's default) or ``"standard"`` (U(±1/sqrt(H))). ``bias_init``, per head, as
        ``sLSTMCellBase.reset_parameters``: ``"powerlaw_blockdependent"`` (default; forget
        bias ``-(-5 + 12 (e / (head_dim - 1))^(0.3 + 1.3 block_index / (num_blocks - 1)))``
        over the head's units ``e``, others zero), ``"small_init"`` (forget bias
        ``linspace(3, 6)``, others zero), ``"standard"`` (all U(±1/sqrt(H))) or ``"zeros"``.
        """
        head_dim = self.head_dim(hidden_size)
        _check_choice("bias_init", bias_init, BIAS_INITS)
        _check_choice("recurrent_init", recurrent_init, RECURRENT_INITS)
        if input_size < 1:
            raise ValueError(f"slstm input_size must be >= 1, got {input_size}")
        k_x, k_r, k_b = jax.random.split(key, 3)
        std = math.sqrt(2 / (5 * input_size))
        w_x = std * jax.random.normal(k_x, (input_size, NUM_GATES * hidden_size), dtype)
        r_shape = (self.num_heads, head_dim, NUM_GATES, head_dim)
        bound = 1 / math.sqrt(hidden_size)
        if recurrent_init == "zeros":
            r = jnp.zeros(r_shape, dtype)
        else:
            r = uniform(k_r, r_shape, bound, dtype)
        b = _bias(k_b, bias_init, self.num_heads, head_dim, block_index, num_blocks, dtype)
        return {"w_x": w_x, "r": r, "b": b}

    def head_dim(self, hidden_size: int) -> int:
        """``H / num_heads``, refusing an ``H`` that does not divide into the heads."""
        if hidden_size < 1 or hidden_size % self.num_heads:
            raise ValueError(
                f"slstm with num_heads={self.num_heads}: hidden_size must be a positive "
                f"multiple of {self.num_heads}, got {hidden_size}"
            )
        return hidden_size // self.num_heads

    def zero_carry(self, batch_size: int, hidden_size: int, dtype=jnp.float32) -> SLSTMCarry:
        """Four ``(B, H)`` zeros: an empty state (``n = 0``, see the module docstring)."""
        zeros = jnp.zeros((batch_size, hidden_size), dtype)
        return SLSTMCarry(zeros, zeros, zeros, zeros)

    @staticmethod
    def hidden_of(carry: SLSTMCarry):
        return carry.h

    @staticmethod
    def sizes(params) -> tuple[int, int]:
        return params["w_x"].shape[0], params["b"].shape[0] // NUM_GATES

    def step(self, params, carry: SLSTMCarry, x):
        """``x (B, I)`` -> ``(SLSTMCarry(h', c', n', m'), h' (B, H))``."""
        new_carry, h, _ = self.step_forward(params, carry, x)
        return new_carry, h

    def step_forward(self, params, carry: SLSTMCarry, x):
        """``(params, carry, x (B, I)) -> (carry', h', SLSTMResiduals)``."""
        z = input_projection(params, x) + recurrent_product(params["r"], carry.h)
        i_raw, f_raw, z_raw, o_raw = split_gates(z, NUM_GATES)
        if self.forget_gate == "sigmoid":
            log_f, d_log_f = jax.nn.log_sigmoid(f_raw), jax.nn.sigmoid(-f_raw)
        else:
            log_f, d_log_f = f_raw, jnp.ones_like(f_raw)
        forget_side = log_f + carry.m
        empty = carry.n == 0
        m_new = jnp.where(empty, i_raw, jnp.maximum(i_raw, forget_side))
        i_gate = jnp.exp(i_raw - m_new)
        # -inf, not the difference: on an empty state log f + m may exceed i~ (exp overflows).
        f_gate = jnp.exp(jnp.where(empty, -jnp.inf, forget_side - m_new))
        z_gate, o_gate = jnp.tanh(z_raw), jax.nn.sigmoid(o_raw)
        c_new = f_gate * carry.c + i_gate * z_gate
        n_new = f_gate * carry.n + i_gate
        h_new = o_gate * c_new / n_new
        share_i = jnp.where(i_raw > forget_side, 1.0, jnp.where(i_raw == forget_side, 0.5, 0.0))
        share_i = jnp.where(empty, 1.0, share_i).astype(z.dtype)
        new_carry = SLSTMCarry(h_new, c_new, n_new, m_new)
        residuals = SLSTMResiduals(x, carry, i_gate, f_gate, z_gate, o_gate, d_log_f, share_i,
                                   new_carry)  # fmt: skip
        return new_carry, h_new, residuals

    def step_backward(self, params, residuals: SLSTMResiduals, d_h, d_carry: SLSTMCarry):
        """Hand-written VJP of ``step``: ``(d_params, d_x (B, I), d_carry_prev)``::

        dh   = dh' + dcarry.h;   q = c'/n'
        dc'  = dcarry.c + dh o / n';   dn' = dcarry.n - dh o q / n';   do = dh q
        da   = i' (dc' tanh(z~) + dn');   db = f' (dc' c + dn' n)      (exponents' adjoints)
        dm'  = dcarry.m - da - db                (the stabiliser's: 0 for a loss of h alone)
        di~  = da + s_i dm';   d(log f) = db + (1 - s_i) dm' = dm_prev     (s_i: the max's share)
        df~  = d(log f) sigmoid(-f~) (or d(log f) for exp);  dz~ = dc' i' (1 - tanh^2);
        do~  = do o (1 - o);   dc_prev = f' dc';  dn_prev = f' dn';  dh_prev = R^T dz
        """
        x, carry, i_gate, f_gate, z_gate, o_gate, d_log_f, share_i, new = residuals
        d_out = d_h + d_carry.h
        ratio = new.c / new.n
        d_c = d_carry.c + d_out * o_gate / new.n
        d_n = d_carry.n - d_out * o_gate * ratio / new.n
        d_a = i_gate * (d_c * z_gate + d_n)
        d_b = f_gate * (d_c * carry.c + d_n * carry.n)
        d_m_new = d_carry.m - d_a - d_b
        d_forget_side = d_b + (1 - share_i) * d_m_new
        d_z = jnp.concatenate(
            [
                d_a + share_i * d_m_new,
                d_forget_side * d_log_f,
                d_c * i_gate * (1 - z_gate * z_gate),
                d_out * ratio * o_gate * (1 - o_gate),
            ],
            axis=-1,
        )
        d_params, d_x = input_weight_backward(params, x, d_z)
        d_params["r"] = recurrent_weight_backward(carry.h, d_z, params["r"].shape)
        d_h_prev = recurrent_product_transposed(params["r"], d_z)
        d_prev = SLSTMCarry(d_h_prev, f_gate * d_c, f_gate * d_n, d_forget_side)
        return {name: d_params[name] for name in ("w_x", "r", "b")}, d_x, d_prev


def recurrent_product(r, h):
    """``R h``: ``r (K, D, 4, D)``, ``h (B, K*D)`` -> ``(B, 4*K*D)``, gates side by side, each
    gate's columns head by head (the layout of ``w_x``'s columns)."""
    heads, head_dim = r.shape[:2]
    by_head = h.reshape(h.shape[0], heads, head_dim)
    return jnp.einsum("bkd,kdge->bgke", by_head, r).reshape(h.shape[0], -1)


def recurrent_product_transposed(r, d_z):
    """``R^T dz``: ``d_z (B, 4*K*D)`` -> ``(B, K*D)``."""
    heads, head_dim = r.shape[:2]
    by_gate = d_z.reshape(d_z.shape[0], NUM_GATES, heads, head_dim)
    return jnp.einsum("bgke,kdge->bkd", by_gate, r).reshape(d_z.shape[0], -1)


def recurrent_weight_backward(h, d_z, shape):
    """``d r[k, d, g, e] = sum_b h[b, k, d] dz[b, g, k, e]``, any number of rows ``b``."""
    heads, head_dim = shape[:2]
    by_head = h.reshape(-1, heads, head_dim)
    by_gate = d_z.reshape(-1, NUM_GATES, heads, head_dim)
    return jnp.einsum("bkd,bgke->kdge", by_head, by_gate)


def _bias(key, bias_init, heads, head_dim, block_index, num_blocks, dtype):
    """``(4H,)``, gate-major then head-major: ``xlstm``'s ``reset_parameters`` (``init``)."""
    shape = (NUM_GATES, heads, head_dim)
    if bias_init == "standard":
        return uniform(key, shape, 1 / math.sqrt(heads * head_dim), dtype).reshape(-1)
    bias = jnp.zeros(shape, dtype)
    if bias_init == "powerlaw_blockdependent":
        ratio = block_index / (num_blocks - 1) if num_blocks > 1 else 0.0
        position = jnp.arange(head_dim, dtype=dtype) / max(head_dim - 1, 1)
        bias = bias.at[1].set(-(-5.0 + 12.0 * position ** (0.3 + 1.3 * ratio)))
    elif bias_init == "small_init":
        bias = bias.at[1].set(jnp.linspace(3.0, 6.0, head_dim, dtype=dtype))
    return bias.reshape(-1)


def _check_choice(option: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"slstm {option} must be one of {choices}, got {value!r}")


@functools.cache
def configured(num_heads: int = 4, forget_gate: str = "sigmoid") -> Cell:
    """The sLSTM cell with ``num_heads`` heads (they must divide ``hidden_size``) and a
    ``"sigmoid"`` (the reference's) or ``"exp"`` forget gate. ``rj.slstm`` is the default."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"slstm num_heads must be a positive int, got {num_heads!r}")
    _check_choice("forget_gate", forget_gate, FORGET_GATES)
    name = "slstm" + ("" if num_heads == 4 else f"_h{num_heads}")
    name += "" if forget_gate == "sigmoid" else f"_{forget_gate}"
    return cell_of_functions(name, SLSTM(num_heads, forget_gate))


cell = configured()

init = cell.init
zero_carry = cell.zero_carry
hidden_of = cell.hidden_of
step = cell.step
step_forward = cell.step_forward
step_backward = cell.step_backward
