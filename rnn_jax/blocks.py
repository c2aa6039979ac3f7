"""Residual blocks for deep stacks of (linear) recurrences, as pure functions.

A linear recurrence (``rj.mingru``, ``rj.minlstm``, ``rj.lru``) mixes information over time but
is linear in its state; depth and non-linearity come from the block around it (the LRU paper's
and Griffin's design):

    u = rms_norm(x)                                   (B, T, D)
    v = unroll(cell, u)                               the recurrence, width D -> D
    x = x + w_out(gelu(v @ w_gate) * (v @ w_up))      a gated MLP, hidden width expansion * D

``init_residual`` / ``apply_residual`` build an encoder ``I -> D``, ``num_layers`` such blocks
and a final norm; ``rnn_jax.models.classifier`` and ``language_model`` use them with
``block="residual"``. Any cell works (an LSTM too); the gradient of each recurrence is its own
(``gradient=`` as in ``rj.unroll``), the rest is autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnn_jax.checks import as_cell
from rnn_jax.options import UnrollOptions, parse
from rnn_jax.scan import unroll
from rnn_jax.sequence import valid_mask

__all__ = ["apply_residual", "init_residual", "rms_norm"]  # fmt: skip

EPS = 1e-6


def rms_norm(scale, x):
    """``x / rms(x) * scale`` over the last axis; ``scale (D,)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from rnn_jax.blocks import rms_norm
      >>> y = rms_norm(jnp.ones(2), jnp.array([[3.0, 4.0]]))   # rms = sqrt(12.5)
      >>> [round(v, 3) for v in y[0].tolist()]
      [0.849, 1.131]
    """
    mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(mean_square + EPS) * scale


def init_residual(cell, key, input_size: int, width: int, num_layers: int, *,
                  expansion: int = 2, dtype=jnp.float32, **init_kwargs) -> dict:  # fmt: skip
    """``{"encoder": {"w" (I, D), "b"}, "blocks": [...], "norm": (D,)}``; each block
    ``{"norm": (D,), "rnn": cell.init(key, D, D), "w_gate", "w_up": (D, E*D), "w_out": (E*D, D)}``.
    """
    if num_layers < 1 or width < 1 or expansion < 1:
        raise ValueError(f"num_layers, width and expansion must be >= 1, got {num_layers}, "
                         f"{width}, {expansion}")  # fmt: skip
    cell = as_cell(cell)
    keys = jax.random.split(key, num_layers + 1)
    glorot = jax.nn.initializers.glorot_uniform()
    encoder = {"w": glorot(keys[0], (input_size, width), dtype), "b": jnp.zeros(width, dtype)}
    blocks = []
    for block_key in keys[1:]:
        k_rnn, k_gate, k_up, k_out = jax.random.split(block_key, 4)
        inner = expansion * width
        blocks.append({
            "norm": jnp.ones(width, dtype),
            "rnn": cell.init(k_rnn, width, width, dtype=dtype, **init_kwargs),
            "w_gate": glorot(k_gate, (width, inner), dtype),
            "w_up": glorot(k_up, (width, inner), dtype),
            "w_out": glorot(k_out, (inner, width), dtype),
        })  # fmt: skip
    return {"encoder": encoder, "blocks": blocks, "norm": jnp.ones(width, dtype)}


def apply_residual(cell, params, xs, carries=None, *, lengths=None, mask=None, resets=None,
                   key=None, options: UnrollOptions | None = None, **option_kwargs):  # fmt: skip
    """``xs (B, T, I)`` -> ``(finals, hs (B, T, D))``: one final carry per block, and the
    normalised output of the last block (zero past each row's length).

    ``carries``: a list of initial carries, one per block (None: zeros); ``lengths``,
    ``mask``, ``resets`` and the options (``options=`` an ``rj.UnrollOptions`` and/or
    keywords: ``mode=``, ``gradient=``, ``input_dropout=`` ...) go to every ``rj.unroll``;
    ``key`` (the regularisers' masks) is split between the blocks.

    Examples:
      >>> import jax, jax.numpy as jnp, rnn_jax as rj
      >>> from rnn_jax.blocks import apply_residual, init_residual
      >>> params = init_residual(rj.mingru, jax.random.PRNGKey(0), 1, width=16, num_layers=2)
      >>> finals, hs = apply_residual(rj.mingru, params, jnp.ones((3, 784, 1)))  # pixel MNIST
      >>> hs.shape, len(finals), finals[0].shape
      ((3, 784, 16), 2, (3, 16))
    """
    cell = as_cell(cell)
    opts = parse(options, **option_kwargs)
    blocks = params["blocks"]
    carries = [None] * len(blocks) if carries is None else list(carries)
    if len(carries) != len(blocks):
        raise ValueError(f"carries must hold one carry per block ({len(blocks)}), "
                         f"got {len(carries)}")  # fmt: skip
    x = _product(xs, params["encoder"]["w"]) + params["encoder"]["b"]
    finals = []
    keys = [None] * len(blocks) if key is None else list(jax.random.split(key, len(blocks)))
    for block, carry, block_key in zip(blocks, carries, keys, strict=True):
        final, mixed = unroll(cell, block["rnn"], rms_norm(block["norm"], x), carry,
                              lengths=lengths, mask=mask, resets=resets, key=block_key,
                              options=opts)  # fmt: skip
        hidden = jax.nn.gelu(_product(mixed, block["w_gate"])) * _product(mixed, block["w_up"])
        x = x + _product(hidden, block["w_out"])
        finals.append(final)
    hs = rms_norm(params["norm"], x)
    if lengths is not None:
        valid = valid_mask(jnp.asarray(lengths), xs.shape[1]).T  # (B, T)
        hs = jnp.where(valid[..., None], hs, 0)
    return finals, hs


def _product(x, w):
    """``x (..., K) @ w (K, N)`` as one 2-D product: on XLA:CPU the weight gradient of a 3-D
    ``(B, T, K)`` contraction is ~3x slower than the same product on ``(B*T, K)`` rows."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(x.shape[:-1] + (w.shape[-1],))
