"""Models as ``(init_fn, apply_fn)`` pairs of pure functions, in the style of ``stax``.

init_fn, apply_fn = classifier(rj.lstm, hidden_size=128, num_classes=10)
params = init_fn(key, input_size=28)
logits = apply_fn(params, images)            # images (B, T=28, I=28) -> (B, 10)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.blocks import apply_hawk, apply_residual, hawk_heads, init_hawk, init_residual
from rnn_jax.cell import last_valid
from rnn_jax.checks import as_cell
from rnn_jax.layers import (
    MERGES,
    init_stack,
    output_size,
    unroll_stack,
)
from rnn_jax.options import check_choice, parse
from rnn_jax.sequence import accepts_unbatched, valid_mask


class Model(NamedTuple):
    """A model as ``(init, apply)`` pure functions (``stax`` style)."""

    init: Callable
    apply: Callable


def dense_init(key, in_size: int, out_size: int, dtype=jnp.float32) -> dict:
    """``{"w": (in, out) Glorot-uniform, "b": (out,) zeros}``.

    Examples:
      >>> import jax
      >>> from rnn_jax.models import dense_init
      >>> p = dense_init(jax.random.PRNGKey(0), 128, 10)
      >>> p["w"].shape, p["b"].tolist() == [0.0] * 10
      ((128, 10), True)
    """
    w = jax.nn.initializers.glorot_uniform()(key, (in_size, out_size), dtype)
    return {"w": w, "b": jnp.zeros((out_size,), dtype)}


def dense(params: dict, x: jax.Array) -> jax.Array:
    """``x @ w + b``: ``(..., in) -> (..., out)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from rnn_jax.models import dense
      >>> dense({"w": jnp.eye(2), "b": jnp.array([1.0, -1.0])}, jnp.array([[3.0, 4.0]]))
      Array([[4., 3.]], dtype=float32)
    """
    return x @ params["w"] + params["b"]


def classifier(
    cell,
    hidden_size: int,
    num_classes: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    merge: str = "concat",
    dropout: float = 0.0,
    gradient: str | None = None,
    matmul_dtype=None,
    backend: str = "scan",
    input_dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    zoneout=None,
    block: str = "plain",
    expansion: int = 2,
    pool: str = "last",
    mode: str | None = None,
    **init_kwargs,
) -> Model:
    """Recurrent layer(s) -> dense readout of the last valid hidden state.

    ``init_fn(key, input_size, dtype=float32) -> {"rnn": [...], "readout": {"w", "b"}}``
    ``apply_fn(params, xs (B, T, I), *, lengths=None, key=None) -> logits (B, num_classes)``;
    one unbatched sequence ``xs (T, I)`` (``lengths`` a scalar) gives ``(num_classes,)``.
    ``key`` turns on dropout between layers (training); evaluation passes none.
    ``matmul_dtype`` (e.g. ``jnp.bfloat16``): the recurrent layers' matrix products in that
    dtype, state and readout in float32 (``rj.unroll``'s mixed precision).
    ``backend``: ``rj.unroll``'s (``"fused_cpu"`` runs each layer as one fused CPU kernel).
    ``input_dropout``, ``recurrent_dropout``, ``zoneout``: ``rj.unroll``'s regularisers in
    every layer, in training (a ``key``) only; zoneout's evaluation mix without one.
    ``block="residual"``: ``num_layers`` residual blocks of width ``hidden_size`` instead of
    plain layers (``rnn_jax.blocks``: norm -> recurrence -> gated MLP with ``expansion``; the
    deep stacks linear recurrences need), ``cell`` one cell or a list of one per block;
    ``block="hawk"``: Griffin's Hawk blocks (``cell`` an RG-LRU, ``rnn_jax.blocks.init_hawk``'s
    options in ``init_kwargs``). ``pool``: ``"last"`` reads the state after the last
    valid step, ``"mean"`` the mean output over valid steps. ``mode``: ``rj.unroll``'s.

    Examples:
      >>> import jax, jax.numpy as jnp, rnn_jax as rj
      >>> from rnn_jax import models
      >>> model = models.classifier(rj.lstm, hidden_size=8, num_classes=10)
      >>> params = model.init(jax.random.PRNGKey(0), input_size=28)
      >>> images = jnp.zeros((4, 28, 28))  # MNIST read row by row: 28 steps of 28 pixels
      >>> model.apply(params, images).shape
      (4, 10)
      >>> lengths = jnp.array([28, 20, 10, 1])  # padded sequences: the state at each last step
      >>> model.apply(params, images, lengths=lengths).shape
      (4, 10)
      >>> model.apply(params, images[0]).shape  # one sequence (T, I), as PyTorch accepts
      (10,)
    """
    _check_block(block, bidirectional=bidirectional, dropout=dropout)
    cell = _cells_for(block, cell)
    # Parsed once, at build: a bad option or combination raises here, not in the first step.
    options = parse(gradient=gradient, matmul_dtype=matmul_dtype, backend=backend, mode=mode,
                    input_dropout=input_dropout, recurrent_dropout=recurrent_dropout,
                    zoneout=zoneout)  # fmt: skip
    check_choice("pool", pool, POOLS)
    stack = _stack(block, cell, expansion, init_kwargs, bidirectional=bidirectional, merge=merge,
                   dropout=dropout)  # fmt: skip

    def init_fn(key, input_size: int, dtype=jnp.float32):
        k_rnn, k_out = jax.random.split(key)
        rnn = stack.init(k_rnn, input_size, hidden_size, num_layers, dtype=dtype)
        width = stack.width(hidden_size)
        return {"rnn": rnn, "readout": dense_init(k_out, width, num_classes, dtype)}

    @accepts_unbatched(arrays=("lengths",), results=None)
    def apply_fn(params, xs, *, lengths=None, key=None):
        finals, hs = stack.apply(params["rnn"], xs, lengths=lengths, key=key, options=options)
        pooled = mean_over_valid(hs, lengths) if pool == "mean" else stack.last(finals, hs, lengths)
        return dense(params["readout"], pooled)

    return Model(init_fn, apply_fn)


def language_model(
    cell,
    vocab_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    embed_size: int | None = None,
    dropout: float = 0.0,
    gradient: str | None = None,
    block: str = "plain",
    expansion: int = 2,
    **init_kwargs,
) -> Model:
    """Tokens -> embedding (one-hot when ``embed_size`` is None) -> recurrent layer(s) ->
    a softmax over the vocabulary at every step (``yhat<t> = softmax(W_ya a<t> + b_y)``).

    ``init_fn(key, dtype=float32) -> {"embed": (V, E)?, "rnn": [...], "readout": ...}``
    ``apply_fn(params, tokens (B, T) int, carry=None, *, key=None, **unroll_kwargs)
    -> (logits (B, T, V), final_carries)``; pass ``final_carries`` back as ``carry`` to
    continue a stream (truncated BPTT over consecutive chunks, sampling); ``unroll_kwargs``
    may hold ``rj.unroll``'s regularisers (``recurrent_dropout=``...). Tokens outside
    ``[0, V)`` raise ValueError when concrete; under ``jit`` they cannot be seen (see
    ``_check_tokens``). ``block="residual"`` or ``"hawk"``: blocks (``rnn_jax.blocks``) of
    width ``hidden_size`` instead of plain layers, as in ``classifier`` (a list of cells, one
    per residual block, mixes them: ``[rj.mlstm, rj.slstm, rj.mlstm]``).

    Examples:
      >>> import jax, jax.numpy as jnp, rnn_jax as rj
      >>> from rnn_jax import models
      >>> model = models.language_model(rj.gru, vocab_size=27, hidden_size=16, embed_size=8)
      >>> params = model.init(jax.random.PRNGKey(0))
      >>> tokens = jnp.zeros((2, 5), jnp.int32)
      >>> logits, carries = model.apply(params, tokens)
      >>> logits.shape, carries[0].shape  # per-step logits; one final carry per layer
      ((2, 5, 27), (2, 16))
      >>> logits2, _ = model.apply(params, tokens, carries)  # continue the stream from there
    """
    _check_block(block, dropout=dropout)
    cell = _cells_for(block, cell)
    stack = _stack(block, cell, expansion, init_kwargs, dropout=dropout)
    base = parse(gradient=gradient)

    def init_fn(key, dtype=jnp.float32):
        k_embed, k_rnn, k_out = jax.random.split(key, 3)
        params = {}
        input_size = vocab_size
        if embed_size is not None:
            params["embed"] = jax.random.normal(k_embed, (vocab_size, embed_size), dtype) * 0.1
            input_size = embed_size
        params["rnn"] = stack.init(k_rnn, input_size, hidden_size, num_layers, dtype=dtype)
        params["readout"] = dense_init(k_out, stack.width(hidden_size), vocab_size, dtype)
        return params

    def apply_fn(params, tokens, carry=None, *, key=None, **unroll_kwargs):
        tokens = _check_tokens(tokens, vocab_size)
        if "embed" in params:
            xs = params["embed"][tokens]
        else:
            xs = jax.nn.one_hot(tokens, vocab_size, dtype=params["readout"]["w"].dtype)
        finals, hs = stack.apply(params["rnn"], xs, carry, key=key, options=base, **unroll_kwargs)
        return dense(params["readout"], hs), finals

    return Model(init_fn, apply_fn)


BLOCKS = ("plain", "residual", "hawk")
POOLS = ("last", "mean")


def _check_block(block: str, **plain_only) -> None:
    """``block`` is known; the options only plain layers have are off for blocks."""
    check_choice("block", block, BLOCKS)
    used = sorted(name for name, value in plain_only.items() if value)
    if block != "plain" and used:
        raise ValueError(f"block={block!r} does not take {used}: those options belong to "
                         "plain layers (rnn_jax.layers)")  # fmt: skip


def _cells_for(block: str, cell):
    """The cell (or, for residual blocks, the list of one cell per block) a model runs."""
    if isinstance(cell, (list, tuple)):
        if block != "residual":
            raise ValueError(f"a list of cells (one per block) needs block='residual', "
                             f"got block={block!r}")  # fmt: skip
        return [as_cell(one) for one in cell]
    return as_cell(cell)


class _Stack(NamedTuple):
    """A model's recurrent layers: ``init(key, input_size, hidden_size, num_layers, *,
    dtype)``, ``apply(params, xs, carries, **options) -> (finals, hs)``, ``width(hidden_size)``
    of the outputs, and ``last(finals, hs, lengths) -> (B, width)``, what each row's last
    valid step leaves."""

    init: Callable
    apply: Callable
    width: Callable
    last: Callable


def _stack(block: str, cell, expansion: int, init_kwargs: dict, *, bidirectional=False,
           merge="concat", dropout=0.0) -> _Stack:  # fmt: skip
    """``block="plain"``: ``init_stack``/``unroll_stack`` of ``cell``, read at the end from
    the final carries (both directions'); ``block="residual"``: ``init_residual``/
    ``apply_residual`` of ``cell``; ``block="hawk"``: ``init_hawk``/``apply_hawk`` with the
    RG-LRU ``cell``'s heads. Blocks are as wide as ``hidden_size``, read at the end from
    their outputs."""
    if block == "plain":
        init = functools.partial(init_stack, cell, bidirectional=bidirectional, merge=merge,
                                 **init_kwargs)  # fmt: skip
        apply = functools.partial(unroll_stack, cell, merge=merge, dropout=dropout)
        width = functools.partial(output_size, bidirectional=bidirectional, merge=merge, cell=cell)

        def last(finals, hs, lengths):
            """``(B, H_out)``: the last layer's state after its last valid step; a
            bidirectional layer's two final states (the backward one has read position 0),
            merged."""
            if bidirectional:
                fwd, bwd = finals[-1]
                return MERGES[merge](cell.hidden_of(fwd), cell.hidden_of(bwd))
            return cell.hidden_of(finals[-1])

        return _Stack(init, apply, width, last)
    if block == "hawk":
        init = functools.partial(init_hawk, num_heads=hawk_heads(cell), expansion=expansion,
                                 **init_kwargs)  # fmt: skip
        apply = apply_hawk
    else:
        init = functools.partial(init_residual, cell, expansion=expansion, **init_kwargs)
        apply = functools.partial(apply_residual, cell)
    last = lambda finals, hs, lengths: _last_valid_output(hs, lengths)  # noqa: E731
    return _Stack(init, apply, lambda hidden_size: hidden_size, last)


def mean_over_valid(hs, lengths):
    """``hs (B, T, H)`` -> ``(B, H)``: the mean over each row's first ``lengths`` steps."""
    if lengths is None:
        return hs.mean(axis=1)
    valid = valid_mask(jnp.asarray(lengths), hs.shape[1]).T  # (B, T)
    total = jnp.where(valid[..., None], hs, 0).sum(axis=1)
    return total / jnp.maximum(valid.sum(axis=1), 1)[:, None].astype(hs.dtype)


def _last_valid_output(hs, lengths):
    """``hs (B, T, H)`` at each row's last valid step (zeros for an empty row)."""
    valid = None if lengths is None else valid_mask(jnp.asarray(lengths), hs.shape[1])
    return last_valid(jnp.swapaxes(hs, 0, 1), valid, jnp.zeros_like(hs[:, 0]))


def _check_tokens(tokens, vocab_size: int):
    """Shape and dtype always; values when ``tokens`` is concrete (numpy, or a jax array
    outside ``jit``): fetched to the host, the first token outside ``[0, vocab_size)`` is
    named with its position. Under ``jit`` the values are unknown and not checked: an
    embedding lookup would clamp them and one-hot give zeros, so encode with a
    ``rnn_jax.data.Vocab`` (which refuses unknown characters) or check before jitting."""
    if getattr(tokens, "ndim", None) != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f"tokens must be an integer array (batch, time), got "
            f"{getattr(tokens, 'shape', type(tokens).__name__)} {getattr(tokens, 'dtype', '')}"
        )
    if not isinstance(tokens, jax.core.Tracer):
        host = np.asarray(tokens)
        bad = np.argwhere((host < 0) | (host >= vocab_size))
        if bad.size:
            where = tuple(int(i) for i in bad[0])
            raise ValueError(
                f"token {host[where]} at (batch, time) {where} is outside the vocabulary "
                f"[0, {vocab_size}) ({len(bad)} such tokens)"
            )
    return tokens


__all__ = ["Model", "classifier", "dense", "dense_init", "language_model"]
