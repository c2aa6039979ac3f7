"""Residual blocks for deep stacks of (linear) recurrences, as pure functions.

A linear recurrence (``rj.mingru``, ``rj.minlstm``, ``rj.lru``) mixes information over time but
is linear in its state; depth and non-linearity come from the block around it (the LRU paper's
and Griffin's design):

    u = rms_norm(x)                                   (B, T, D)
    v = unroll(cell, u)                               the recurrence, width D -> D
    x = x + w_out(gelu(v @ w_gate) * (v @ w_up))      a gated MLP, hidden width expansion * D

``init_residual`` / ``apply_residual`` build an encoder ``I -> D``, ``num_layers`` such blocks
and a final norm; ``rnn_jax.models.classifier`` and ``language_model`` use them with
``block="residual"``. Any cell works (an LSTM too), and each block may have its own (a list of
cells, e.g. xLSTM's mix of mLSTM and sLSTM blocks); the gradient of each recurrence is its own
(``gradient=`` as in ``rj.unroll``), the rest is autodiff. ``init_hawk`` / ``apply_hawk`` build
Griffin's Hawk stack around the RG-LRU (``block="hawk"``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cells import rglru
from rnn_jax.cells.base import rows_product as _product
from rnn_jax.checks import as_cell
from rnn_jax.options import UnrollOptions, parse
from rnn_jax.scan import unroll
from rnn_jax.sequence import valid_mask

__all__ = [  # fmt: skip
    "HawkCarry", "apply_hawk", "apply_residual", "block_cells", "causal_conv1d", "hawk_block",
    "hawk_heads", "init_hawk", "init_residual", "rms_norm", "zero_hawk_carry",
]

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


def block_cells(cell, num_blocks: int) -> list:
    """One cell per block: ``cell`` itself ``num_blocks`` times, or a list/tuple of that many
    cells (block ``i`` runs ``cell[i]``)."""
    if not isinstance(cell, (list, tuple)):
        return [as_cell(cell)] * num_blocks
    if len(cell) != num_blocks:
        raise ValueError(f"a list of cells needs one cell per block ({num_blocks}), "
                         f"got {len(cell)}")  # fmt: skip
    return [as_cell(one) for one in cell]


def init_residual(cell, key, input_size: int, width: int, num_layers: int, *,
                  expansion: int = 2, dtype=jnp.float32, **init_kwargs) -> dict:  # fmt: skip
    """``{"encoder": {"w" (I, D), "b"}, "blocks": [...], "norm": (D,)}``; each block
    ``{"norm": (D,), "rnn": cell.init(key, D, D), "w_gate", "w_up": (D, E*D), "w_out": (E*D, D)}``.
    ``cell``: one cell for every block, or a list of ``num_layers`` cells (see ``block_cells``).
    """
    if num_layers < 1 or width < 1 or expansion < 1:
        raise ValueError(f"num_layers, width and expansion must be >= 1, got {num_layers}, "
                         f"{width}, {expansion}")  # fmt: skip
    cells = block_cells(cell, num_layers)
    keys = jax.random.split(key, num_layers + 1)
    glorot = jax.nn.initializers.glorot_uniform()
    encoder = {"w": glorot(keys[0], (input_size, width), dtype), "b": jnp.zeros(width, dtype)}
    blocks = []
    for cell, block_key in zip(cells, keys[1:], strict=True):
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

    ``cell``: one cell, or one per block (as ``init_residual``'s).
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
    opts = parse(options, **option_kwargs)
    blocks = params["blocks"]
    cells = block_cells(cell, len(blocks))
    carries = [None] * len(blocks) if carries is None else list(carries)
    if len(carries) != len(blocks):
        raise ValueError(f"carries must hold one carry per block ({len(blocks)}), "
                         f"got {len(carries)}")  # fmt: skip
    x = _product(xs, params["encoder"]["w"]) + params["encoder"]["b"]
    finals = []
    keys = [None] * len(blocks) if key is None else list(jax.random.split(key, len(blocks)))
    for cell, block, carry, block_key in zip(cells, blocks, carries, keys, strict=True):
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


# ---------------------------------------------------------------------------------------
# Hawk (De et al. 2024): the residual block of recurrentgemma with a RecurrentBlock.
#
#   u = rms_norm(x)                                                  (B, T, D)
#   x = x + w_out(gelu(u @ w_y + b_y) * rglru(conv1d(u @ w_x + b_x)))   width L inside
#   x = x + w_down(gelu(v @ w_gate + b_gate) * (v @ w_up + b_up)) + b_down,  v = rms_norm(x)
#
# The short causal convolution (width K, per channel) reads the K - 1 inputs before each step;
# its carry is those inputs (B, K-1, L), zeros in a fresh carry. At a reset a segment starts
# from the initial carry (every rnn_jax reset's rule), so its first steps read the initial
# conv carry, not the previous segment: from the zero carry that is recurrentgemma's document
# mask (the window stops at a segment_pos == 0). Past a row's length the outputs are zero and
# the final conv carry holds the last K-1 valid inputs (read as the same rule fills them).


class HawkCarry(NamedTuple):
    """One Hawk block's carry: ``rglru (RGLRUCarry)``, ``conv (B, K-1, L)`` its last inputs."""

    rglru: Any
    conv: jax.Array


def init_hawk(key, input_size: int, width: int, num_layers: int, *, num_heads: int = 1,
              lru_width: int | None = None, expansion: int = 3, conv_width: int = 4,
              dtype=jnp.float32) -> dict:  # fmt: skip
    """``{"encoder": {"w" (I, D), "b"}, "blocks": [...], "norm": (D,)}``, each block
    ``{"temporal_norm", "channel_norm": (D,), "w_y", "w_x": (D, L), "b_y", "b_x": (L,),
    "conv_w": (K, L), "conv_b": (L,), "rglru": rj.rglru.with_heads(num_heads) params,
    "w_out": (L, D), "b_out": (D,), "w_gate", "w_up": (D, E), "b_gate", "b_up": (E,),
    "w_down": (E, D), "b_down": (D,)}`` with ``L = lru_width or D``, ``E = expansion * D``.
    Weights normal with fan-in variance as recurrentgemma's (the convolution's scaled by
    0.01), biases zero, norm scales one."""
    lru_width = lru_width or width
    if min(num_layers, width, lru_width, expansion, conv_width) < 1:
        sizes = (num_layers, width, lru_width, expansion, conv_width)
        raise ValueError("num_layers, width, lru_width, expansion and conv_width must be >= 1, "
                         f"got {sizes}")  # fmt: skip
    cell = rglru.with_heads(num_heads)
    keys = jax.random.split(key, num_layers + 1)
    glorot = jax.nn.initializers.glorot_uniform()
    encoder = {"w": glorot(keys[0], (input_size, width), dtype), "b": jnp.zeros(width, dtype)}

    def fan_in(k, shape, scale=1.0):
        return jax.random.normal(k, shape, dtype) * jnp.sqrt(scale / shape[0]).astype(dtype)

    inner = expansion * width
    blocks = []
    for block_key in keys[1:]:
        k = jax.random.split(block_key, 8)
        blocks.append({
            "temporal_norm": jnp.ones(width, dtype),
            "w_y": fan_in(k[0], (width, lru_width)), "b_y": jnp.zeros(lru_width, dtype),
            "w_x": fan_in(k[1], (width, lru_width)), "b_x": jnp.zeros(lru_width, dtype),
            "conv_w": fan_in(k[2], (conv_width, lru_width), 0.01),
            "conv_b": jnp.zeros(lru_width, dtype),
            "rglru": cell.init(k[3], lru_width, lru_width, dtype=dtype),
            "w_out": fan_in(k[4], (lru_width, width)), "b_out": jnp.zeros(width, dtype),
            "channel_norm": jnp.ones(width, dtype),
            "w_gate": fan_in(k[5], (width, inner)), "b_gate": jnp.zeros(inner, dtype),
            "w_up": fan_in(k[6], (width, inner)), "b_up": jnp.zeros(inner, dtype),
            "w_down": fan_in(k[7], (inner, width)), "b_down": jnp.zeros(width, dtype),
        })  # fmt: skip
    return {"encoder": encoder, "blocks": blocks, "norm": jnp.ones(width, dtype)}


def hawk_heads(cell) -> int:
    """The gate blocks of the RG-LRU ``cell`` a Hawk stack runs (``rj.rglru``: 1,
    ``rj.rglru.with_heads(n)``: n); any other cell is refused by name."""
    cell = as_cell(cell)
    if not isinstance(cell.init, rglru.Init):
        raise ValueError(f"a Hawk stack runs the RG-LRU (rj.rglru or rj.rglru.with_heads(n)), "
                         f"got the cell {cell.name!r}")  # fmt: skip
    return cell.init.num_heads


def zero_hawk_carry(block: dict, batch_size: int) -> HawkCarry:
    """A fresh carry for one Hawk block: the RG-LRU's zero carry, a zero conv window."""
    conv_width, lru_width = block["conv_w"].shape
    dtype = block["conv_w"].dtype
    return HawkCarry(
        rglru.zero_carry(batch_size, lru_width, dtype),
        jnp.zeros((batch_size, conv_width - 1, lru_width), dtype),
    )


def apply_hawk(params, xs, carries=None, *, lengths=None, resets=None, key=None,
               options: UnrollOptions | None = None, **option_kwargs):  # fmt: skip
    """``xs (B, T, I)`` -> ``(finals, hs (B, T, D))``: a ``HawkCarry`` per block and the
    normalised output of the last (zero past each row's length).

    ``carries``: one ``HawkCarry`` per block (None: fresh ones). ``lengths``, ``resets`` and
    the options (``mode=``, ``gradient=``, ...) go to every RG-LRU's ``rj.unroll``; ``key`` is
    split between the blocks. A Hawk block reads forwards and batch-major: ``reverse=``,
    ``time_major=``, ``return_carries=`` are refused by name.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from rnn_jax.blocks import apply_hawk, init_hawk
      >>> params = init_hawk(jax.random.PRNGKey(0), 3, width=8, num_layers=2, num_heads=2)
      >>> xs = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 3))
      >>> finals, hs = apply_hawk(params, xs)
      >>> carries, first = apply_hawk(params, xs[:, :6])           # the same in two chunks
      >>> second = apply_hawk(params, xs[:, 6:], carries)[1]
      >>> hs.shape, bool(jnp.allclose(jnp.concatenate([first, second], 1), hs, atol=1e-5))
      ((2, 10, 8), True)
    """
    opts = parse(options, **option_kwargs)
    for name in ("reverse", "time_major", "return_carries"):
        if getattr(opts, name):
            raise ValueError(f"{name}= with the Hawk block: its convolution is causal and "
                             "batch-major; run it forwards on (B, T, I)")  # fmt: skip
    blocks = params["blocks"]
    input_size = params["encoder"]["w"].shape[0]
    if xs.ndim != 3 or xs.shape[-1] != input_size:
        raise ValueError(f"apply_hawk reads xs (B, T, {input_size}), got {tuple(xs.shape)}")
    batch_size, num_steps = xs.shape[:2]
    if carries is None:
        carries = [zero_hawk_carry(block, batch_size) for block in blocks]
    if len(carries) != len(blocks):
        raise ValueError(f"carries must hold one carry per block ({len(blocks)}), "
                         f"got {len(carries)}")  # fmt: skip
    starts = _segment_starts(resets, batch_size, num_steps)
    x = _product(xs, params["encoder"]["w"]) + params["encoder"]["b"]
    keys = [None] * len(blocks) if key is None else list(jax.random.split(key, len(blocks)))
    finals = []
    for block, carry, block_key in zip(blocks, carries, keys, strict=True):
        x, final = hawk_block(block, x, carry, starts=starts, lengths=lengths, resets=resets,
                              key=block_key, options=opts)  # fmt: skip
        finals.append(final)
    hs = rms_norm(params["norm"], x)
    if lengths is not None:
        valid = valid_mask(jnp.asarray(lengths), num_steps).T  # (B, T)
        hs = jnp.where(valid[..., None], hs, 0)
    return finals, hs


def hawk_block(block, x, carry: HawkCarry, *, starts, lengths=None, resets=None, key=None,
               options: UnrollOptions | None = None, **option_kwargs):  # fmt: skip
    """One Hawk block over ``x (B, T, D)`` -> ``(x', HawkCarry)``; ``starts (B, T)`` the
    segment starts (step 0 and the resets); the options go to the RG-LRU's ``rj.unroll``."""
    options = parse(options, **option_kwargs)
    u = rms_norm(block["temporal_norm"], x)
    y = jax.nn.gelu(_product(u, block["w_y"]) + block["b_y"])
    v = _product(u, block["w_x"]) + block["b_x"]
    conv_out, conv_final = causal_conv1d(block["conv_w"], block["conv_b"], v, carry.conv,
                                         starts=starts, lengths=lengths)  # fmt: skip
    cell = rglru.with_heads(rglru.num_heads_of(block["rglru"]))
    rglru_final, mixed = unroll(cell, block["rglru"], conv_out, carry.rglru, lengths=lengths,
                                resets=resets, key=key, options=options)  # fmt: skip
    x = x + _product(mixed * y, block["w_out"]) + block["b_out"]
    v = rms_norm(block["channel_norm"], x)
    hidden = jax.nn.gelu(_product(v, block["w_gate"]) + block["b_gate"])
    hidden = hidden * (_product(v, block["w_up"]) + block["b_up"])
    x = x + _product(hidden, block["w_down"]) + block["b_down"]
    return x, HawkCarry(rglru_final, conv_final)


def causal_conv1d(w, b, v, history, *, starts, lengths=None):
    """``out_t = b + sum_k w[K-1-k] * v_{t-k}`` per channel; ``w (K, L)``, ``v (B, T, L)``,
    ``history (B, K-1, L)`` the inputs before step 0 (oldest first). A lag that reaches past
    the segment's start (the last of ``starts (B, T)`` at or before t) reads ``history`` as if
    the segment were the sequence's start. Returns ``(out (B, T, L), final history)``, the
    final one the K-1 inputs before each row's length (``lengths`` None: T)."""
    conv_width = w.shape[0]
    batch_size, num_steps, _ = v.shape
    steps = jnp.arange(num_steps)
    segment_start = jax.lax.cummax(jnp.where(starts, steps, 0), axis=1)  # (B, T)
    # the inputs, history first: virtual position p is at index p + K - 1
    padded = jnp.concatenate([history.astype(v.dtype), v], axis=1)

    def read(source, start):
        """The input at positions ``source (B, N)`` of segments starting at ``start``."""
        index = jnp.where(source >= start, source, source - start) + conv_width - 1
        return jnp.take_along_axis(padded, index[..., None], axis=1)

    # Each lag is a static slice (a gather's gradient is a slow scatter on the CPU); a lag that
    # crosses a reset reads the history instead, one select per history slot.
    out = b
    for lag in range(conv_width):
        term = padded[:, conv_width - 1 - lag: conv_width - 1 - lag + num_steps]
        behind = steps - lag - segment_start  # < 0: before this segment's start
        for slot in range(conv_width - 1):  # history slot j holds position j - (K - 1)
            crossed = (segment_start > 0) & (behind == slot - (conv_width - 1))
            term = jnp.where(crossed[..., None], history[:, slot][:, None].astype(v.dtype), term)
        out = out + w[conv_width - 1 - lag] * term
    end = jnp.full((batch_size,), num_steps) if lengths is None else jnp.asarray(lengths)
    last_start = jnp.take_along_axis(segment_start, jnp.maximum(end - 1, 0)[:, None], axis=1)
    last_start = jnp.where(end[:, None] > 0, last_start, 0)
    window = end[:, None] - (conv_width - 1) + jnp.arange(conv_width - 1)  # (B, K-1)
    return out, read(window, last_start).astype(history.dtype)


def _segment_starts(resets, batch_size: int, num_steps: int):
    """``(B, T)`` bool: step 0 and the resets."""
    starts = jnp.arange(num_steps)[None, :] == 0
    starts = jnp.broadcast_to(starts, (batch_size, num_steps))
    return starts if resets is None else starts | jnp.asarray(resets, bool)
