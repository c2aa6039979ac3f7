"""Layers over cells: bidirectional layers and multi-layer stacks.

Parameters stay plain pytrees: a bidirectional layer is ``{"fwd": p, "bwd": p}``, a stack
is a list of layer params (each a cell's dict or a bidirectional dict).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnn_jax.cell import keys_of
from rnn_jax.checks import (
    as_cell,
    carry_lead,
    cell_output_size,
    check_carry,
    check_params,
    params_dtype,
    spatial_rank,
)
from rnn_jax.options import UnrollOptions, check_choice, parse
from rnn_jax.regularize import dropout_mask
from rnn_jax.scan import unroll
from rnn_jax.sequence import accepts_unbatched, prepare

__all__ = [  # fmt: skip
    "MERGES", "bidirectional", "init_bidirectional", "init_stack", "output_size",
    "unroll_stack",
]

DIRECTIONS = ("fwd", "bwd")  # a bidirectional layer's keys
MERGES = {
    "concat": lambda f, b: jnp.concatenate([f, b], axis=-1),
    "sum": lambda f, b: f + b,
    "mean": lambda f, b: (f + b) / 2,
    "mul": lambda f, b: f * b,
}


def output_size(hidden_size: int, *, bidirectional: bool, merge: str = "concat", cell=None) -> int:
    """Feature size of a layer's outputs (both directions merged): of a cell whose output is
    its hidden state, or with ``cell`` of that cell's outputs (e.g. a projection's P)."""
    check_choice("merge", merge, sorted(MERGES))
    width = hidden_size if cell is None else cell_output_size(as_cell(cell), hidden_size)
    return 2 * width if bidirectional and merge == "concat" else width


def is_bidirectional(layer_params) -> bool:
    """Whether a layer's params are a bidirectional ``{"fwd": ..., "bwd": ...}`` pair."""
    return isinstance(layer_params, dict) and set(layer_params) == set(DIRECTIONS)


def directions(layer_params) -> tuple:
    """A layer's params per direction: ``(fwd, bwd)`` of a bidirectional layer, else ``(p,)``."""
    if is_bidirectional(layer_params):
        return tuple(layer_params[d] for d in DIRECTIONS)
    return (layer_params,)


def init_bidirectional(cell, key, input_size: int, hidden_size: int, **init_kwargs) -> dict:
    """``{"fwd": params, "bwd": params}``, two independent cells."""
    cell = as_cell(cell)
    keys = dict(zip(DIRECTIONS, jax.random.split(key), strict=True))
    return {d: cell.init(k, input_size, hidden_size, **init_kwargs) for d, k in keys.items()}


@accepts_unbatched(arrays=("lengths", "mask", "resets"), trees=("carry",), results=(0, 1))
def bidirectional(
    cell, params, xs, carry=None, *, lengths=None, mask=None, resets=None, key=None,
    merge="concat", options: UnrollOptions | None = None, **option_kwargs,
):  # fmt: skip
    """Run a forward and a backward cell over ``xs`` and merge their outputs.

    ``xs (B, T, I)``, or one sequence ``(T, I)`` with unbatched carries and results (as
    ``rj.unroll``). ``carry``: None or ``(carry_fwd, carry_bwd)``. With ``lengths`` the
    backward cell reads each valid prefix backwards, as PyTorch's bidirectional RNN on a
    packed batch. ``mask``, ``resets`` and the options (``options=`` an ``rj.UnrollOptions``
    and/or keywords) go to both directions' ``rj.unroll``; ``key`` is split between them.
    Returns ``((final_fwd, final_bwd), hs)``; ``hs`` is ``(B, T, 2H)`` for ``"concat"``,
    ``(B, T, H)`` otherwise; both halves aligned with the input positions.
    """
    check_choice("merge", merge, sorted(MERGES))
    opts = parse(options, **option_kwargs)
    if opts.reverse:
        raise ValueError("reverse= with bidirectional=: a bidirectional layer reads both "
                         "directions itself (its backward half has reverse=True)")  # fmt: skip
    if not is_bidirectional(params):
        raise ValueError(f"bidirectional params must be {{'fwd', 'bwd'}}, got keys "
                         f"{keys_of(params)}")  # fmt: skip
    carry_fwd, carry_bwd = (None, None) if carry is None else carry
    # The backward direction is checked before the forward one runs (no compute on bad input).
    steps = dict(mask=mask, resets=resets)
    prepare(cell, params["bwd"], xs, carry_bwd, lengths, time_major=opts.time_major,
            reverse=True, **steps)  # fmt: skip
    keys = (None, None) if key is None else tuple(jax.random.split(key))  # masks per direction
    final_fwd, hs_fwd = unroll(cell, params["fwd"], xs, carry_fwd, lengths=lengths, key=keys[0],
                               options=opts, **steps)  # fmt: skip
    final_bwd, hs_bwd = unroll(cell, params["bwd"], xs, carry_bwd, lengths=lengths, key=keys[1],
                               options=opts.replace(reverse=True), **steps)  # fmt: skip
    return (final_fwd, final_bwd), MERGES[merge](hs_fwd, hs_bwd)


def init_stack(
    cell,
    key,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    *,
    bidirectional: bool = False,
    merge: str = "concat",
    **init_kwargs,
) -> list:
    """A list of ``num_layers`` layer params; layer l > 0 reads layer l-1's outputs.

    Examples:
      >>> import jax, jax.numpy as jnp, rnn_jax as rj
      >>> stack = rj.init_stack(rj.lstm, jax.random.PRNGKey(0), 3, 8, num_layers=2,
      ...                       bidirectional=True)
      >>> finals, hs = rj.unroll_stack(rj.lstm, stack, jnp.ones((2, 5, 3)), gradient="manual")
      >>> hs.shape, len(finals)
      ((2, 5, 16), 2)
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    cell = as_cell(cell)
    init_layer = functools.partial(init_bidirectional, cell) if bidirectional else cell.init
    layers = []
    for layer_key in jax.random.split(key, num_layers):
        layers.append(init_layer(layer_key, input_size, hidden_size, **init_kwargs))
        input_size = output_size(hidden_size, bidirectional=bidirectional, merge=merge, cell=cell)
    # Params the cell cannot run (rj.lstm with init's proj_size=P) are refused now, not later.
    check_params(cell, layers[0]["fwd"] if bidirectional else layers[0])
    return layers


@accepts_unbatched(arrays=("lengths", "mask", "resets"), trees=("carry",), results=(0, 1))
def unroll_stack(
    cell,
    params: list,
    xs,
    carry=None,
    *,
    lengths=None,
    mask=None,
    resets=None,
    merge: str = "concat",
    dropout: float = 0.0,
    key=None,
    options: UnrollOptions | None = None,
    **option_kwargs,
):
    """Run a stack of layers; returns ``(final_carries, hs)`` of the last layer.

    ``cell``: any cell; ``params``: a list of layer params from ``init_stack`` (``xs (B, T,
    I)`` for the first, each later layer reading the one below; or one sequence ``(T, I)``,
    with unbatched carries and results, as ``rj.unroll``). ``lengths``, ``mask``, ``resets``
    and the options (``options=`` an ``rj.UnrollOptions`` and/or keywords: ``gradient``,
    ``truncate``, ``remat``, ``reverse`` ...) go to every layer's ``rj.unroll``, parsed once.
    ``reverse`` reads every unidirectional layer backwards; a bidirectional layer refuses it.

    ``carry``: None or a list with one entry per layer (a pair for bidirectional layers).
    ``dropout``: rate of inverted dropout on the outputs between layers (not after the
    last). It is applied only when ``key`` is given, so evaluation simply passes no key.
    ``input_dropout``, ``recurrent_dropout``, ``zoneout``, ``training`` regularise every
    layer's recurrence (``rj.unroll``), each layer with masks from its own key
    (``fold_in(layer key, 1)``, so the between-layer masks are those without them).
    """
    if not isinstance(params, (list, tuple)) or not params:
        raise TypeError(f"stack params must be a non-empty list of layer params, got {params!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    # Checked up front: a stack without bidirectional layers never merges.
    check_choice("merge", merge, sorted(MERGES))
    opts = parse(options, **option_kwargs)
    if opts.reverse and any(is_bidirectional(layer) for layer in params):
        raise ValueError(
            "reverse= with bidirectional=: a bidirectional layer reads both directions itself; "
            "reverse= applies to unidirectional stacks"
        )
    carries = [None] * len(params) if carry is None else list(carry)
    if len(carries) != len(params):
        raise ValueError(f"carry has {len(carries)} entries for {len(params)} layers")
    check_stack_sizes(cell, params, xs, merge, carries, time_major=opts.time_major)
    keys = [None] * len(params) if key is None else list(jax.random.split(key, len(params)))
    finals = []
    hs = xs
    for index, (layer, layer_carry) in enumerate(zip(params, carries, strict=True)):
        if index > 0 and dropout > 0.0 and keys[index] is not None:
            hs = hs * dropout_mask(keys[index], hs.shape, dropout, hs.dtype)
        layer_key = None if keys[index] is None else jax.random.fold_in(keys[index], 1)
        data = dict(lengths=lengths, mask=mask, resets=resets, key=layer_key, options=opts)
        if is_bidirectional(layer):
            final, hs = bidirectional(cell, layer, hs, layer_carry, merge=merge, **data)
        else:
            final, hs = unroll(cell, layer, hs, layer_carry, **data)
        finals.append(final)
    return finals, hs


def check_stack_sizes(cell, params: list, xs, merge: str, carries: list, *, time_major=False):
    """Every layer reads what the layer below writes, and every given carry fits its layer;
    checked before any layer runs. ``xs`` is the stack's input (only its shape is read)."""
    cell = as_cell(cell)
    shape = getattr(xs, "shape", (0,))
    input_size = shape[-1]
    lead = None  # the carries' leading shape: B, or (B, *spatial) for a spatial cell
    if len(shape) == 3 + spatial_rank(cell):
        lead = carry_lead(cell, shape[1:] if time_major else shape[:1] + shape[2:])
    for index, (layer, layer_carry) in enumerate(zip(params, carries, strict=True)):
        bidir = is_bidirectional(layer)
        if bidir and layer_carry is None:
            layer_carry = (None, None)
        direction_carries = layer_carry if bidir else (layer_carry,)
        for direction, direction_carry in zip(directions(layer), direction_carries, strict=True):
            expects, hidden_size = check_params(cell, direction)
            if direction_carry is not None and lead is not None:
                dtype = params_dtype(direction)
                check_carry(cell, direction_carry, lead, hidden_size, dtype)
            if expects != input_size:
                source = "xs" if index == 0 else f"layer {index - 1}'s output"
                raise ValueError(
                    f"stack layer {index}: {source} has {input_size} features but its w_x "
                    f"expects input_size={expects}"
                )
        input_size = output_size(hidden_size, bidirectional=bidir, merge=merge, cell=cell)
