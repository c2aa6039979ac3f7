"""Regularisers of the recurrence: variational dropout and zoneout, for any cell.

* **Input dropout** (Gal & Ghahramani 2016; Keras ``dropout``): one mask ``(B, I)`` per
  sequence, values 0 or ``1/(1-rate)``, on every step's ``x``. It is an element-wise scaling
  of ``xs`` before the scan, so both gradients see it through autodiff of the product.
* **Recurrent dropout** (Keras ``recurrent_dropout``): one mask ``(B, H)`` per sequence on
  ``h_{t-1}`` where the recurrent product reads it; the carry that flows (the LSTM's ``c``,
  the GRU's ``z * h`` term, zoneout's previous value) is not dropped.
* **Zoneout** (Krueger et al. 2016): during training each unit of ``h`` (and of the LSTM's
  ``c``) keeps its previous value with probability ``z_h`` (``z_c``), a fresh mask per step;
  at evaluation ``h' = z * h + (1 - z) * h_new``.

``rj.regularized(cell, ...)`` is the cell that runs them, on the open cell protocol with a
hand-written ``step_backward`` that calls the inner cell's and applies the masks' chain rule.
Its per-step input is ``[x, m_h, k_h, k_c]`` ``(B, I + extra)``: the recurrent mask
``m_h (B, H)`` (the same at every step) and the zoneout masks ``k_h, k_c`` ride in the
input, so the carry, the final state, ``resets`` and ``lengths`` are the inner cell's
unchanged and BPTT (full, truncated, remat) needs nothing new. ``rj.unroll(...,
input_dropout=, recurrent_dropout=, zoneout=, key=, training=)`` draws the masks and builds it.

Where recurrent dropout acts is the cell's own declaration (``Cell.recurrent_dropout``):
``"read"`` (the fused cells ``rj.simple``, ``rj.lstm``, ``rj.gru``, ``rj.mgu`` and
``rj.gru.reset_before``): the mask scales ``h`` where the recurrent products read it and
nowhere else, as Keras (the GRU's ``z * h`` keeps the whole ``h``); ``"carry"`` (the peephole,
layer-norm and convolutional LSTMs, which read ``h`` only through their recurrent product):
the mask scales the carry's ``h`` the step reads, the same thing; None (the linear
recurrences ``rj.mingru``, ``rj.minlstm``, ``rj.lru``, whose gates read no ``h``): refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from rnn_jax.cells.base import with_hidden
from rnn_jax.checks import as_cell, check_params, one_zero_carry, spatial_rank
from rnn_jax.options import check_recurrent_dropout, check_zoneout, zoneout_for


@dataclasses.dataclass(frozen=True)
class Regularized:
    """``cell`` with recurrent dropout and/or zoneout (module docstring); hashable.

    ``drops_recurrent``: the input carries a recurrent mask ``m_h (B, H_out)``.
    ``zoneout_h``, ``zoneout_c``: zoneout rates of ``h`` and ``c`` (None: off). With
    ``training`` the input carries the 0/1 keep masks ``k_h (B, H_out)``, ``k_c (B, H)``;
    without, the step mixes ``z * previous + (1 - z) * new``.
    """

    inner: Any
    drops_recurrent: bool = False
    zoneout_h: float | None = None
    zoneout_c: float | None = None
    training: bool = True

    @property
    def name(self) -> str:
        return f"{self.inner.name}_regularized"

    @property
    def spatial_rank(self) -> int:
        """The inner cell's: a ConvLSTM's masks are ``(B, *spatial, width)``."""
        return spatial_rank(self.inner)

    def segments(self, carry) -> list[tuple[str, int]]:
        """``(name, width)`` of the masks after ``x`` in the step's input, for ``carry``."""
        wanted = {"m_h": self.drops_recurrent,
                  "k_h": self.training and self.zoneout_h is not None,
                  "k_c": self.training and self.zoneout_c is not None}  # fmt: skip
        width = lambda name: (carry.c if name == "k_c" else self.inner.hidden_of(carry)).shape[-1]
        return [(name, width(name)) for name, on in wanted.items() if on]

    def extra(self, hidden_size: int) -> int:
        """How many input features the masks add to the inner cell's ``input_size``."""
        zero = jax.eval_shape(lambda: one_zero_carry(self.inner, hidden_size))
        return sum(width for _, width in self.segments(zero))

    def init(self, key, input_size: int, hidden_size: int, *, dtype=jnp.float32, **options):
        """The inner cell's params for ``input_size - extra`` features."""
        inner = input_size - self.extra(hidden_size)
        return self.inner.init(key, inner, hidden_size, dtype=dtype, **options)

    def sizes(self, params) -> tuple[int, int]:
        """``(input_size including the masks, hidden_size)``."""
        input_size, hidden_size = check_params(self.inner, params)
        return input_size + self.extra(hidden_size), hidden_size

    def zero_carry(self, batch_size: int, hidden_size: int, dtype=jnp.float32):
        return self.inner.zero_carry(batch_size, hidden_size, dtype)

    def hidden_of(self, carry):
        return self.inner.hidden_of(carry)

    def split(self, carry, x):
        """``x (B, I + extra)`` -> ``(x (B, I), {mask name: (B, width)})``."""
        masks, end = {}, x.shape[-1]
        for name, width in reversed(self.segments(carry)):
            masks[name], end = x[..., end - width : end], end - width
        return x[..., :end], masks

    def step_forward(self, params, carry, x):
        """``(params, carry, x (B, I + extra)) -> (carry', h', residuals)``."""
        x, masks = self.split(carry, x)
        if "m_h" not in masks:
            new, _, inner = self.inner.step_forward(params, carry, x)
        else:
            read = masks["m_h"] * self.inner.hidden_of(carry)
            if self.inner.recurrent_dropout == "read":  # drop h in the products only, as Keras
                new, _, inner = self.inner.step_forward(params, carry, x, h_read=read)
            else:
                new, _, inner = self.inner.step_forward(params, with_hidden(carry, read), x)
        out = new
        for leaf, keep in self._keeps(masks).items():
            prev, fresh = get_leaf(carry, leaf), get_leaf(new, leaf)
            out = set_leaf(out, leaf, keep * prev + (1 - keep) * fresh)
        return out, self.inner.hidden_of(out), (inner, carry, new, masks)

    def step(self, params, carry, x):
        """``(params, carry, x (B, I + extra)) -> (carry', h')``."""
        out, h, _ = self.step_forward(params, carry, x)
        return out, h

    def step_backward(self, params, residuals, d_h, d_carry):
        """Hand-written VJP: ``(d_params, d_x (B, I + extra), d_carry_prev)``.

        Zoneout ``out = k * prev + (1 - k) * new``: ``d_prev += k * d_out``, the inner step
        gets ``(1 - k) * d_out``, ``d_k = d_out * (prev - new)``. Recurrent dropout
        ``read = m_h * h``: ``d_h_prev += m_h * d_read``, ``d_m_h = h * d_read``.
        """
        inner, carry, new, masks = residuals
        keeps = self._keeps(masks)
        d_masks, d_zoned = {}, {}
        if keeps:  # the step's output is the zoned carry: its h gets d_h too
            d_carry = with_hidden(d_carry, self.inner.hidden_of(d_carry) + d_h)
            d_h = jnp.zeros_like(d_h)
            for leaf, keep in keeps.items():
                d_out = get_leaf(d_carry, leaf)
                d_carry = set_leaf(d_carry, leaf, (1 - keep) * d_out)
                d_zoned[leaf] = keep * d_out
                d_masks["k_" + leaf] = d_out * (get_leaf(carry, leaf) - get_leaf(new, leaf))
        if "m_h" not in masks:
            d_params, d_x, d_prev = self.inner.step_backward(params, inner, d_h, d_carry)
        else:
            d_params, d_x, d_prev, d_read = self._backward_parts(params, inner, d_h, d_carry)
            d_prev = with_hidden(d_prev, self.inner.hidden_of(d_prev) + masks["m_h"] * d_read)
            d_masks["m_h"] = self.inner.hidden_of(carry) * d_read
        for leaf, d_leaf in d_zoned.items():
            d_prev = set_leaf(d_prev, leaf, get_leaf(d_prev, leaf) + d_leaf)
        d_x = jnp.concatenate([d_x] + [d_masks[name] for name, _ in self.segments(carry)], -1)
        return d_params, d_x, d_prev

    def _backward_parts(self, params, inner, d_h, d_carry):
        """The inner backward with dL/d(h read) apart from the rest of dL/dcarry_prev."""
        if self.inner.recurrent_dropout == "read":
            return self.inner.step_backward_parts(params, inner, d_h, d_carry)
        d_params, d_x, d_in = self.inner.step_backward(params, inner, d_h, d_carry)
        d_read = self.inner.hidden_of(d_in)  # the protocol step read all of h as m_h * h
        return d_params, d_x, with_hidden(d_in, jnp.zeros_like(d_read)), d_read

    def _keeps(self, masks) -> dict:
        """``{"h"|"c": keep}``: the 0/1 masks while training, the rate ``z`` at evaluation."""
        rates = {"h": self.zoneout_h, "c": self.zoneout_c}
        if self.training:
            return {leaf: masks["k_" + leaf] for leaf in rates if "k_" + leaf in masks}
        return {leaf: rate for leaf, rate in rates.items() if rate is not None}


def regularized(cell, *, recurrent_dropout: bool = False, zoneout=None, training: bool = True):
    """``cell`` with recurrent dropout and/or zoneout, as a protocol cell (module docstring).

    Args:
      cell: any cell whose carry is ``h`` itself or has an ``h`` field that ``hidden_of``
        returns (and a ``c`` field for ``z_c``): the library cells, ``LSTMCarry`` cells.
      recurrent_dropout: the step's input carries a mask ``m_h (B, H)`` after ``x``.
      zoneout: None, ``z`` (``h`` and, for an LSTM, ``c``) or ``(z_h, z_c)``, in ``[0, 1)``.
      training: zoneout by 0/1 masks ``k_h``/``k_c`` in the input (after ``m_h``); False: the
        evaluation mix ``z * previous + (1 - z) * new``, no masks.

    Returns a cell whose ``step(params, carry, x (B, I + extra))`` reads
    ``x = [x (B, I), m_h, k_h, k_c]`` (those that are on), with the inner cell's params.

    Examples:
      >>> import jax, jax.numpy as jnp, rnn_jax as rj
      >>> cell = rj.regularized(rj.lstm, recurrent_dropout=True, zoneout=(0.1, 0.05))
      >>> params = rj.lstm.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
      >>> x, m_h = jnp.ones((2, 3)), jnp.full((2, 4), 2.0)         # 0 or 1/(1-rate)
      >>> k_h, k_c = jnp.zeros((2, 4)), jnp.ones((2, 4))           # 1: keep the previous
      >>> carry, h = cell.step(params, rj.lstm.zero_carry(2, 4),
      ...                      jnp.concatenate([x, m_h, k_h, k_c], -1))
      >>> h.shape, bool(jnp.all(carry.c == 0))                     # c kept everywhere
      ((2, 4), True)
    """
    inner = as_cell(cell)
    z_h, z_c = zoneout_for(check_zoneout(zoneout), inner, inner.name)
    if recurrent_dropout:
        check_recurrent_dropout(inner, inner.name)
    return Regularized(inner, bool(recurrent_dropout), z_h, z_c, bool(training))


def get_leaf(carry, leaf: str):
    """The carry's ``h`` (the carry itself when it is an array) or ``c``."""
    return carry if leaf == "h" and hasattr(carry, "shape") else getattr(carry, leaf)


def set_leaf(carry, leaf: str, value):
    """``carry`` with its ``h`` or ``c`` replaced by ``value``."""
    return value if leaf == "h" and hasattr(carry, "shape") else carry._replace(**{leaf: value})


# --------------------------------------------------------------------------------------
# rj.unroll's regularisers: the plan (rnn_jax.options) applied, masks drawn from the key.


def apply(plan, cell, xs_tm, carry, key):
    """``(cell', xs_tm')`` running ``plan``'s regularisers (``rnn_jax.options.Plan``) over
    ``xs_tm (T, B, I)`` from ``carry``: the input mask applied to ``xs``, the other masks
    appended to its features (``Regularized``). A spatial cell's ``xs_tm (T, B, *spatial,
    C)`` gets masks ``(B, *spatial, width)``, one value per position and channel, as Keras'
    ``ConvLSTM`` draws them."""
    keys = jax.random.split(key, 3) if plan.training else (None,) * 3
    if plan.input_dropout:
        xs_tm = xs_tm * dropout_mask(keys[0], xs_tm.shape[1:], plan.input_dropout, xs_tm.dtype)
    if not plan.wraps_cell:
        return cell, xs_tm  # input dropout alone: the plain cell on the dropped inputs
    wrapped = Regularized(cell, plan.recurrent_dropout > 0, plan.zoneout_h, plan.zoneout_c,
                          plan.training)  # fmt: skip
    masks = [_mask(plan, name, keys, (*xs_tm.shape[:-1], width), xs_tm.dtype)
             for name, width in wrapped.segments(carry)]  # fmt: skip
    return as_cell(wrapped), jnp.concatenate([xs_tm, *masks], axis=-1)


def _mask(plan, name: str, keys, shape, dtype):
    """The ``(T, B, [*spatial,] width)`` mask ``name``: ``m_h`` one per sequence, ``k_*`` per
    step."""
    if name == "m_h":
        mask = dropout_mask(keys[1], shape[1:], plan.recurrent_dropout, dtype)
        return jnp.broadcast_to(mask, shape)
    rate = plan.zoneout_h if name == "k_h" else plan.zoneout_c
    key = keys[2] if name == "k_h" else jax.random.fold_in(keys[2], 1)
    return zoneout_mask(key, shape, rate, dtype)


def dropout_mask(key, shape, rate: float, dtype=jnp.float32):
    """Inverted-dropout mask: 0 with probability ``rate``, else ``1/(1-rate)``; mean 1."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, 1.0 / (1.0 - rate), 0.0).astype(dtype)


def zoneout_mask(key, shape, rate: float, dtype=jnp.float32):
    """Zoneout keep mask: 1 (keep the previous value) with probability ``rate``, else 0."""
    return jax.random.bernoulli(key, rate, shape).astype(dtype)
