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

For the fused cells (``rj.simple``, ``rj.lstm``, ``rj.gru`` and their variants) the recurrent
mask scales ``h`` in ``h @ w_h`` only, as Keras. A protocol cell's step cannot be split at its
product, so there the mask scales the ``h`` the step reads (the same for cells that read ``h``
only through products, as the peephole and layer-norm LSTMs; for GRU-like protocol cells,
``rj.gru.reset_before`` and ``rj.mgu``, it also drops ``h`` in ``z * h``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from rnn_jax.cells.base import Cell
from rnn_jax.checks import as_cell, one_zero_carry, spatial_rank


@dataclasses.dataclass(frozen=True)
class Regularized:
    """``cell`` with recurrent dropout and/or zoneout (module docstring); hashable.

    ``recurrent_dropout``: the input carries a recurrent mask ``m_h (B, H_out)``.
    ``zoneout_h``, ``zoneout_c``: zoneout rates of ``h`` and ``c`` (None: off). With
    ``training`` the input carries the 0/1 keep masks ``k_h (B, H_out)``, ``k_c (B, H)``;
    without, the step mixes ``z * previous + (1 - z) * new``.
    """

    inner: Any
    recurrent_dropout: bool = False
    zoneout_h: float | None = None
    zoneout_c: float | None = None
    training: bool = True
    parallel = None

    @property
    def name(self) -> str:
        return f"{self.inner.name}_regularized"

    @property
    def spatial_rank(self) -> int:
        """The inner cell's: a ConvLSTM's masks are ``(B, *spatial, width)``."""
        return spatial_rank(self.inner)

    def segments(self, carry) -> list[tuple[str, int]]:
        """``(name, width)`` of the masks after ``x`` in the step's input, for ``carry``."""
        width = {"m_h": lambda: self.inner.hidden_of(carry).shape[-1],
                 "k_h": lambda: self.inner.hidden_of(carry).shape[-1],
                 "k_c": lambda: carry.c.shape[-1]}  # fmt: skip
        wanted = {"m_h": self.recurrent_dropout,
                  "k_h": self.training and self.zoneout_h is not None,
                  "k_c": self.training and self.zoneout_c is not None}  # fmt: skip
        return [(name, width[name]()) for name, on in wanted.items() if on]

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
        input_size, hidden_size = self.inner.check_params(params)
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
            if isinstance(self.inner, Cell):  # drop h in h @ w_h only, as Keras
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
            h = self.inner.hidden_of(carry)
            d_prev = with_hidden(d_prev, self.inner.hidden_of(d_prev) + masks["m_h"] * d_read)
            d_masks["m_h"] = h * d_read
        for leaf, d_leaf in d_zoned.items():
            d_prev = set_leaf(d_prev, leaf, get_leaf(d_prev, leaf) + d_leaf)
        d_x = jnp.concatenate([d_x] + [d_masks[name] for name, _ in self.segments(carry)], -1)
        return d_params, d_x, d_prev

    def _backward_parts(self, params, inner, d_h, d_carry):
        """The inner backward with dL/d(h read) apart from the rest of dL/dcarry_prev."""
        if isinstance(self.inner, Cell):
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
    z_h, z_c = zoneout_rates(zoneout)
    inner = as_cell(cell)
    fields = _carry_fields(inner)
    if not isinstance(zoneout, (tuple, list)) and "c" not in fields:
        z_c = None  # one rate: h, and c where the carry has one
    wrapped = Regularized(inner, bool(recurrent_dropout), z_h, z_c, bool(training))
    needs_h = wrapped.recurrent_dropout or z_h is not None
    if needs_h and "h" not in fields:
        raise ValueError(
            f"recurrent dropout and zoneout need {inner.name}'s hidden state as its carry or "
            "the carry's h field (a NamedTuple); its hidden_of computes it"
        )
    if z_c is not None and "c" not in fields:
        raise ValueError(f"zoneout of c needs a carry with a c field; {inner.name}'s has none: "
                         "pass zoneout=(z_h, None)")  # fmt: skip
    return wrapped


def zoneout_rates(zoneout) -> tuple[float | None, float | None]:
    """``zoneout`` (None, ``z`` or ``(z_h, z_c)``) -> ``(z_h, z_c)``, 0 counted as off."""
    if zoneout is None:
        return None, None
    pair = tuple(zoneout) if isinstance(zoneout, (tuple, list)) else (zoneout, zoneout)
    if len(pair) != 2:
        raise ValueError(f"zoneout must be a rate or a pair (z_h, z_c), got {zoneout!r}")
    return tuple(
        None if z is None else check_rate(f"zoneout {leaf}", z) or None
        for leaf, z in zip("hc", pair, strict=True)
    )


def check_rate(name: str, rate) -> float:
    """A rate in ``[0, 1)`` as a float; anything else raises ``ValueError``."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} rate must be a number in [0, 1), got {rate!r}")
    return float(rate)


def _carry_fields(cell) -> set[str]:
    """Which of ``h``, ``c`` the wrapper can set in ``cell``'s carry: ``h`` when
    ``hidden_of`` returns the carry itself or its ``h`` field, ``c`` for a ``c`` field."""
    fields = set()

    def probe():
        carry = one_zero_carry(cell, 2)
        h = cell.hidden_of(carry)
        settable = hasattr(carry, "_replace")
        if h is carry or (settable and h is getattr(carry, "h", None)):
            fields.add("h")
        if settable and hasattr(carry, "c"):
            fields.add("c")
        return carry

    jax.eval_shape(probe)
    return fields


def get_leaf(carry, leaf: str):
    """The carry's ``h`` (the carry itself when it is an array) or ``c``."""
    return carry if leaf == "h" and hasattr(carry, "shape") else getattr(carry, leaf)


def set_leaf(carry, leaf: str, value):
    """``carry`` with its ``h`` or ``c`` replaced by ``value``."""
    return value if leaf == "h" and hasattr(carry, "shape") else carry._replace(**{leaf: value})


def with_hidden(carry, h):
    """``carry`` with its hidden state replaced by ``h``."""
    return set_leaf(carry, "h", h)


# --------------------------------------------------------------------------------------
# The options of rj.unroll: checked before compute, masks drawn from the key.


@dataclasses.dataclass(frozen=True)
class Options:
    """The checked regulariser options of one ``rj.unroll`` call (``options``)."""

    input_dropout: float
    recurrent_dropout: float
    zoneout_h: float | None
    zoneout_c: float | None
    training: bool

    def as_dict(self) -> dict:
        """For ``backends.dispatch``: each option that is on, by its ``rj.unroll`` name."""
        zoneout = (self.zoneout_h, self.zoneout_c)
        return {"input_dropout": self.input_dropout or None,
                "recurrent_dropout": self.recurrent_dropout or None,
                "zoneout": None if zoneout == (None, None) else zoneout}  # fmt: skip


def options(input_dropout=0.0, recurrent_dropout=0.0, zoneout=None, key=None, training=None):
    """Check ``rj.unroll``'s regulariser arguments; None when they change nothing.

    ``training`` None means "training when a key is given". In evaluation dropout is off and
    only zoneout acts (its mix); so None also when no regulariser acts (the default path).
    """
    input_dropout = check_rate("input_dropout", input_dropout)
    recurrent_dropout = check_rate("recurrent_dropout", recurrent_dropout)
    z_h, z_c = zoneout_rates(zoneout)
    if training is None:
        training = key is not None
    if training is not True and training is not False:
        raise TypeError(f"training must be True, False or None, got {training!r}")
    dropping = training and (input_dropout > 0 or recurrent_dropout > 0)
    if (dropping or (training and (z_h or z_c))) and key is None:
        raise ValueError("dropout and zoneout in training draw masks: pass key= (a PRNG key), "
                         "or training=False for evaluation")  # fmt: skip
    if not dropping and z_h is None and z_c is None:
        return None
    rates = (input_dropout, recurrent_dropout) if training else (0.0, 0.0)
    return Options(*rates, z_h, z_c, training)


def apply(opts: Options, cell, xs_tm, carry, key):
    """``(cell', xs_tm')`` running ``opts`` over ``xs_tm (T, B, I)`` from ``carry``: the
    input mask applied to ``xs``, the other masks appended to its features (``Regularized``).
    A spatial cell's ``xs_tm (T, B, *spatial, C)`` gets masks ``(B, *spatial, width)``, one
    value per position and channel, as Keras' ``ConvLSTM`` draws them."""
    keys = jax.random.split(key, 3) if opts.training else (None,) * 3
    if opts.input_dropout:
        xs_tm = xs_tm * dropout_mask(keys[0], xs_tm.shape[1:], opts.input_dropout, xs_tm.dtype)
    if not opts.recurrent_dropout and opts.zoneout_h is None and opts.zoneout_c is None:
        return cell, xs_tm  # input dropout alone: the plain cell on the dropped inputs
    zoneout = (opts.zoneout_h, opts.zoneout_c)
    wrapped = regularized(cell, recurrent_dropout=opts.recurrent_dropout > 0, zoneout=zoneout,
                          training=opts.training)  # fmt: skip
    parts = [xs_tm]
    for name, width in wrapped.segments(carry):
        parts.append(_mask(opts, name, keys, (*xs_tm.shape[:-1], width), xs_tm.dtype))
    return as_cell(wrapped), jnp.concatenate(parts, axis=-1)


def _mask(opts: Options, name: str, keys, shape, dtype):
    """The ``(T, B, [*spatial,] width)`` mask ``name``: ``m_h`` one per sequence, ``k_*`` per
    step."""
    if name == "m_h":
        mask = dropout_mask(keys[1], shape[1:], opts.recurrent_dropout, dtype)
        return jnp.broadcast_to(mask, shape)
    rate = opts.zoneout_h if name == "k_h" else opts.zoneout_c
    key = keys[2] if name == "k_h" else jax.random.fold_in(keys[2], 1)
    return zoneout_mask(key, shape, rate, dtype)


def dropout_mask(key, shape, rate: float, dtype=jnp.float32):
    """Inverted-dropout mask: 0 with probability ``rate``, else ``1/(1-rate)``; mean 1."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, 1.0 / (1.0 - rate), 0.0).astype(dtype)


def zoneout_mask(key, shape, rate: float, dtype=jnp.float32):
    """Zoneout keep mask: 1 (keep the previous value) with probability ``rate``, else 0."""
    return jax.random.bernoulli(key, rate, shape).astype(dtype)
