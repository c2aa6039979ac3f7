"""``unroll``: run a cell over a sequence with ``jax.lax.scan``."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rnn_jax import regularize
from rnn_jax.backends import check_backend, dispatch
from rnn_jax.bptt import _check_truncate, manual_scan
from rnn_jax.cells.base import Cell
from rnn_jax.remat import remat_scan_forward, segment_length
from rnn_jax.sequence import (
    accepts_unbatched,
    flip_valid,
    prepare,
    reading_order,
    scan_forward,
    to_layout,
)

GRADIENTS = ("autodiff", "manual")
MODES = ("sequential", "parallel")


@accepts_unbatched(arrays=("lengths", "mask", "resets"), trees=("carry",), results=(0, 1, 2))
def unroll(
    cell,
    params,
    xs,
    carry=None,
    *,
    lengths=None,
    mask=None,
    resets=None,
    return_carries: bool = False,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int = 1,
    gradient: str = "autodiff",
    truncate: int | None = None,
    remat: int | str | None = None,
    matmul_dtype=None,
    backend: str = "scan",
    mode: str | None = None,
    input_dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    zoneout=None,
    key=None,
    training: bool | None = None,
):
    """Run ``cell`` over ``xs``; returns ``(final_carry, hs)``.

    Args:
      cell: ``rj.simple``, ``rj.lstm``, ``rj.gru``, a variant such as ``rj.simple.relu``, or
        any cell of the protocol (``rj.make_cell``).
      params: the cell's parameters (for the library cells a dict, ``rj.lstm.init``'s).
      xs: ``(B, T, I)``, or ``(T, B, I)`` with ``time_major=True``; or one sequence
        ``(T, I)``, as PyTorch accepts: then the carry is unbatched too (``(H,)``), ``lengths``
        a scalar, ``mask``/``resets`` ``(T,)``, and the results lose their batch axis.
      carry: initial carry, as ``cell.zero_carry`` returns (``(B, H)``, ``LSTMCarry``, or a
        custom cell's pytree); None means zeros.
      lengths: optional ``(B,)`` ints in ``[0, T]``. Outputs past a row's length are zero and
        its final carry is the carry after its last valid step. The fast path for right
        padding; ``mask`` for gaps.
      mask: optional ``(B, T)`` bool (``(T, B)`` time-major), False at steps to skip: there
        the carry is kept and the output is zero. Keras' masking instead repeats the previous
        output at a masked step; its carries and its outputs at unmasked steps are the same as
        here. Combined with ``lengths`` a step runs where both allow it.
      resets: optional ``(B, T)`` bool (``(T, B)`` time-major): where True, step t reads the
        initial ``carry`` instead of the previous one (episode boundaries, as Haiku's
        ``ResetCore``): the same as running each segment separately from ``carry``, values and
        gradients; with ``reverse`` too (each episode read backwards, so a bidirectional layer
        equals one per episode; not combined with ``mask``). A reset at a masked or padded
        step is ignored.
      return_carries: also return the carry after every step (``(final, hs, carries)``),
        ``carries`` the carry's pytree with leaves ``(B, T, ...)`` (``(T, B, ...)`` if
        time-major), e.g. ``LSTMCarry(h, c)`` holding every ``c_t``; at a masked or padded
        step the kept carry. Differentiable with either gradient (``"manual"``: each step's
        carry cotangent joins the hand-written backward where it enters that step, and with
        ``truncate=k`` travels at most k steps, as an output's); not with ``remat`` or in
        ``mode="parallel"``.
      reverse: read each sequence backwards (only its valid prefix when ``lengths`` is given).
        Outputs stay aligned with the inputs: ``hs[:, t]`` is the state right after reading
        ``xs[:, t]``; the final carry is the state after reading position 0.
      unroll: ``lax.scan`` unroll factor.
      gradient: ``"autodiff"``, or ``"manual"`` for the same forward whose gradient is the
        hand-written BPTT (``jax.custom_vjp``).
      truncate: with ``gradient="manual"``, truncated BPTT (see ``rj.bptt``).
      remat: memory-bounded BPTT: an int k checkpoints every k steps and recomputes each
        segment's forward in the backward, ``"sqrt"`` uses k = sqrt(T); residual memory
        O(T/k + k) instead of O(T), for about one extra forward pass. Same values and
        gradients, with either ``gradient``, ``mask`` and ``resets`` (not with ``truncate``
        or ``return_carries``). None: off.
      matmul_dtype: e.g. ``jnp.bfloat16`` to run the matrix products (forward and the
        hand-written backward) in that dtype with accumulation, carries, gate math and
        outputs in the parameters' dtype. None: off (full precision).
      backend: ``"scan"`` (this function's ``lax.scan``), ``"onednn"`` (CPU) or ``"cudnn"``
        (GPU, LSTM) for a fused per-sequence kernel with its own fused backward (``unroll``
        and ``gradient`` do not apply), or ``"auto"``: fused where it applies, else scan.
        See ``rnn_jax.backends`` for what each supports.
      mode: ``"sequential"`` (the cell's ``step`` in ``lax.scan``) or ``"parallel"`` (the
        whole sequence at once, for a cell with a ``parallel`` path: the linear recurrences
        ``rj.mingru``, ``rj.minlstm``, ``rj.lru``, through ``rj.linear_scan``). Same values and
        gradients. None: parallel where the cell has it, else sequential.
      input_dropout, recurrent_dropout: variational dropout rates in ``[0, 1)`` (Gal &
        Ghahramani 2016, Keras ``dropout``/``recurrent_dropout``): one mask per sequence,
        ``(B, I)`` on every ``x`` and ``(B, H)`` on ``h_{t-1}`` in the recurrent product
        (``rj.regularized`` says where for custom cells), values 0 or ``1/(1-rate)``.
      zoneout: None, ``z`` or ``(z_h, z_c)`` in ``[0, 1)`` (Krueger et al. 2016): in
        training each unit of ``h`` (``c``) keeps its previous value with probability ``z``,
        a fresh mask per step; in evaluation ``h' = z * h + (1 - z) * h_new``.
      key: PRNG key the masks are drawn from (split per mask kind).
      training: None: training when ``key`` is given. Out of training dropout is off (the
        plain cell's results exactly) and zoneout mixes. Works with both ``gradient``s,
        ``truncate``, ``remat``, ``lengths``/``mask``/``resets``; sequential mode only.

    Returns:
      ``(final_carry, hs)`` with ``hs (B, T, H)`` (``(T, B, H)`` if time-major); with
      ``return_carries``, ``(final_carry, hs, carries)``.

    Examples:
      >>> import jax, jax.numpy as jnp, rnn_jax as rj
      >>> params = rj.gru.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
      >>> xs = jnp.ones((2, 5, 3))                               # (batch, time, features)
      >>> carry, hs = rj.unroll(rj.gru, params, xs, lengths=jnp.array([5, 2]))
      >>> hs.shape, carry.shape
      ((2, 5, 4), (2, 4))
      >>> bool(jnp.all(hs[1, 2:] == 0))                          # past row 1's length
      True

      Two episodes in one row, every step's LSTM carry, one unbatched sequence:

      >>> params = rj.lstm.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
      >>> resets = jnp.array([[False, False, True, False, False]])   # episode 2 starts at t=2
      >>> final, hs, carries = rj.unroll(rj.lstm, params, jnp.ones((1, 5, 3)), resets=resets,
      ...                                return_carries=True)
      >>> carries.c.shape, bool(jnp.allclose(hs[0, 2:4], hs[0, :2]))
      ((1, 5, 4), True)
      >>> rj.unroll(rj.lstm, params, jnp.ones((5, 3)))[1].shape        # (T, I) -> (T, H)
      (5, 4)
    """
    check_backend(backend)
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
    if truncate is not None and gradient != "manual":
        raise ValueError("truncate=k needs gradient='manual' (autodiff gives full BPTT)")
    truncate = _check_truncate(truncate)
    if not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be an int >= 1, got {unroll!r}")
    regs = regularize.options(input_dropout, recurrent_dropout, zoneout, key, training)
    steps = dict(mask=mask, resets=resets, reverse=reverse)
    prep = prepare(cell, params, xs, carry, lengths, time_major=time_major, **steps)
    _check_return_carries(remat, return_carries)
    scan_only = dict(lengths=lengths, truncate=truncate, remat=remat, matmul_dtype=matmul_dtype,
                     mask=mask, resets=resets, return_carries=return_carries or None,
                     **({} if regs is None else regs.as_dict()))  # fmt: skip
    fused = dispatch(
        backend, prep.cell, params, xs, prep.carry, reverse=reverse, time_major=time_major,
        options=scan_only,
    )  # fmt: skip
    if fused is not None:
        return fused
    segment = segment_length(remat, prep.xs.shape[0])
    if segment is not None and truncate is not None:
        raise ValueError("remat with truncate is not supported: windows would cross segments")
    cell = prep.cell
    if matmul_dtype is not None:
        if not isinstance(cell, Cell):
            raise ValueError(
                f"matmul_dtype is an option of the fused cells (rj.simple, rj.lstm, rj.gru); "
                f"{cell.name} is a custom cell: cast inside its own step instead"
            )
        # The dtype rides on the (hashable, static) Cell so the manual backward sees it too.
        cell = dataclasses.replace(cell, matmul_dtype=jnp.dtype(matmul_dtype).name)
    if regs is not None:  # masks in the inputs, the cell wrapped (rnn_jax.regularize)
        cell, xs_regularized = regularize.apply(regs, cell, prep.xs, prep.carry, key)
        prep = prep._replace(xs=xs_regularized)
    xs_tm, valid, resets = reading_order(prep, reverse)
    if resolve_mode(mode, cell) == "parallel":
        _check_parallel_options(cell, truncate, remat, return_carries)
        final, hs = cell.parallel(params, xs_tm, prep.carry, valid, resets)
        return final, _to_caller(hs, prep.lengths, reverse, time_major)
    manual = gradient == "manual"
    if segment is not None:
        final, hs = remat_scan_forward(
            cell, params, xs_tm, prep.carry, valid, segment=segment, unroll=unroll,
            manual=manual, resets=resets,
        )  # fmt: skip
    elif manual:
        final, hs = manual_scan(
            cell, params, xs_tm, prep.carry, valid, resets, truncate, unroll, return_carries
        )
    else:
        final, hs, _ = scan_forward(
            cell, params, xs_tm, prep.carry, valid, resets=resets, unroll=unroll,
            keep_carries=return_carries,
        )  # fmt: skip
    if return_carries:
        hs, carries = hs
        carries = jax.tree.map(lambda c: _to_caller(c, prep.lengths, reverse, time_major), carries)
        return final, _to_caller(hs, prep.lengths, reverse, time_major), carries
    hs = flip_valid(hs, prep.lengths) if reverse else hs
    return final, to_layout(hs, time_major)


def resolve_mode(mode: str | None, cell) -> str:
    """``mode`` of ``unroll``: None picks ``"parallel"`` where ``cell`` has a parallel path."""
    has_parallel = getattr(cell, "parallel", None) is not None
    if mode is None:
        return "parallel" if has_parallel else "sequential"
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} or None, got {mode!r}")
    if mode == "parallel" and not has_parallel:
        raise ValueError(
            f"mode='parallel' needs a cell with a parallel path (a linear recurrence such as "
            f"rj.mingru, rj.minlstm, rj.lru); {cell.name} runs step by step: use "
            "mode='sequential'"
        )
    return mode


def _check_parallel_options(cell, truncate, remat, return_carries) -> None:
    """The options that need step-by-step evaluation, refused in parallel mode."""
    asked = {"truncate": truncate, "remat": remat, "return_carries": return_carries or None}
    for option, value in asked.items():
        if value is not None:
            raise ValueError(
                f"{option}={value!r} runs step by step: pass mode='sequential' to use it with "
                f"{cell.name} (mode='parallel' is its default)"
            )


def _to_caller(seq_tm, lengths, reverse: bool, time_major: bool):
    """A time-major sequence in reading order back to input positions and the caller's layout."""
    return to_layout(flip_valid(seq_tm, lengths) if reverse else seq_tm, time_major)


def _check_return_carries(remat, return_carries: bool) -> None:
    """``return_carries`` must be a bool, and is not built with ``remat``: refused before any
    compute."""
    if return_carries is not True and return_carries is not False:
        raise TypeError(f"return_carries must be True or False, got {return_carries!r}")
    if return_carries and remat is not None:
        raise ValueError(
            "return_carries=True with remat is not supported: remat keeps only each segment's "
            "first carry (that is its memory saving); use remat=None"
        )
