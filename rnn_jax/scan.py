"""``unroll``: run a cell over a sequence with ``jax.lax.scan``."""

from __future__ import annotations

import jax

from rnn_jax import regularize
from rnn_jax.backends import dispatch, fused_linear, linear_backend
from rnn_jax.bptt import manual_scan
from rnn_jax.options import UnrollOptions, parse, plan
from rnn_jax.remat import remat_scan_forward, segment_length
from rnn_jax.sequence import (
    accepts_unbatched,
    flip_valid,
    prepare,
    reading_order,
    scan_forward,
    to_layout,
)


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
    key=None,
    options: UnrollOptions | None = None,
    **option_kwargs,
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
      unroll: ``lax.scan`` unroll factor (the sequential mode's).
      gradient: ``"autodiff"``, or ``"manual"`` for the same forward whose gradient is the
        hand-written BPTT (``jax.custom_vjp``). In ``mode="parallel"`` ``"manual"`` is the
        linear recurrence's hand-written reverse scan (``rj.linear_scan``'s backward) with the
        time-independent products and gates differentiated by autodiff, and ``"autodiff"`` is
        autodiff of the whole path. None (default): ``"manual"`` in parallel mode (the faster
        there), ``"autodiff"`` in sequential mode.
      truncate: with ``gradient="manual"``, truncated BPTT (see ``rj.bptt``): the gradient
        from each step's output travels back at most ``k`` steps that ran (a masked step is
        no step: it does not count toward ``k``; a padded one ends the row); the initial carry
        receives only what arrives within ``k`` steps of it (at a reset, that episode's own).
      remat: memory-bounded BPTT: an int k checkpoints every k steps and recomputes each
        segment's forward in the backward, ``"sqrt"`` uses k = sqrt(T); residual memory
        O(T/k + k) instead of O(T), for about one extra forward pass. Same values and
        gradients, with either ``gradient``, ``mask`` and ``resets`` (not with ``truncate``
        or ``return_carries``). None: off.
      matmul_dtype: e.g. ``jnp.bfloat16`` to run the matrix products (forward and the
        hand-written backward) in that dtype with accumulation, carries, gate math and
        outputs in the parameters' dtype. None: off (full precision).
      backend: ``"scan"`` (this function's ``lax.scan``, or the linear cells' parallel
        path), ``"fused_cpu"`` (rnn_jax's CPU kernels: Elman, LSTM, GRU and the linear
        cells) or ``"cudnn"`` (GPU, LSTM) for a fused per-sequence kernel
        with its own fused backward (``unroll`` and ``gradient`` do not apply), or
        ``"auto"``: fused where it applies and is measured faster, else scan. See
        ``rnn_jax.backends`` for what each supports.
      mode: ``"sequential"`` (the cell's ``step`` in ``lax.scan``) or ``"parallel"`` (the
        whole sequence at once, for a cell with a ``parallel`` path: the linear recurrences
        ``rj.mingru``, ``rj.minlstm``, ``rj.lru``, through ``rj.linear_scan``). Same values and
        gradients. None: parallel where the cell has it and no option needs steps
        (``truncate``, ``remat``, ``return_carries``, ``unroll``, recurrent dropout, zoneout),
        else sequential.
      input_dropout, recurrent_dropout: variational dropout rates in ``[0, 1)``: one mask
        per sequence, ``(B, I)`` on every ``x`` and ``(B, H)`` on ``h_{t-1}`` (where each
        cell reads it, and which cells refuse it: ``rnn_jax.regularize``).
      zoneout: None, ``z`` or ``(z_h, z_c)`` in ``[0, 1)`` (``rnn_jax.regularize``); one
        ``z`` acts on ``h`` and, where the carry has one (the LSTMs), on ``c``.
      key: PRNG key the masks are drawn from (split per mask kind).
      options: an ``rj.UnrollOptions`` holding any of the options below (what the layers
        forward); keywords given as well override it.
      training: None: training when ``key`` is given. Out of training dropout is off (the
        plain cell's results exactly) and zoneout mixes. Works with both ``gradient``s,
        ``truncate``, ``remat``, ``lengths``/``mask``/``resets``; sequential mode only.

    Every combination of options either works or raises ``ValueError`` naming both
    (``rnn_jax.options`` holds the rules).

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
    opts = parse(options, **option_kwargs)
    steps = dict(mask=mask, resets=resets, reverse=opts.reverse)
    prep = prepare(cell, params, xs, carry, lengths, time_major=opts.time_major, **steps)
    how = plan(opts, prep.cell, lengths=lengths, mask=mask, resets=resets, key=key)
    fused = dispatch(
        opts.backend, prep.cell, params, xs, prep.carry, reverse=opts.reverse,
        time_major=opts.time_major, options=how.scan_only(lengths=lengths, mask=mask,
                                                          resets=resets),
    )  # fmt: skip
    if fused is not None:
        return fused
    cell = prep.cell
    if opts.matmul_dtype is not None:  # rides on the (static) cell: the backward sees it too
        cell = cell.with_matmul_dtype(opts.matmul_dtype)
    if how.input_dropout or how.wraps_cell:  # masks in the inputs, the cell wrapped
        cell, xs_regularized = regularize.apply(how, cell, prep.xs, prep.carry, key)
        prep = prep._replace(xs=xs_regularized)
    xs_tm, valid, resets = reading_order(prep, opts.reverse)
    defaults = opts.gradient is None and not how.input_dropout  # what "auto" leaves to JAX
    linear = how.mode == "parallel" and linear_backend(
        opts.backend, cell, (params, prep.xs, prep.carry), defaults=defaults) == "fused_cpu"
    if linear:  # a linear cell's kernel (dispatch leaves it to this parallel path)
        return fused_linear.parallel(cell, params, prep, valid, resets, reverse=opts.reverse,
                                     time_major=opts.time_major)  # fmt: skip
    # A time-major sequence in reading order back to input positions and the caller's layout.
    to_caller = lambda seq: to_layout(flip_valid(seq, prep.lengths) if opts.reverse else seq,
                                      opts.time_major)  # fmt: skip
    if how.mode == "parallel":
        # Only a LinearForm's path has a hand-written backward to choose; others are autodiff.
        gradient = {"gradient": how.gradient} if cell.parallel_backward else {}
        final, hs = cell.parallel(params, xs_tm, prep.carry, valid, resets, **gradient)
        return final, to_caller(hs)
    final, hs = _sequential(cell, params, xs_tm, prep.carry, valid, resets, opts, how.gradient)
    if opts.return_carries:
        hs, carries = hs
        return final, to_caller(hs), jax.tree.map(to_caller, carries)
    return final, to_caller(hs)


def _sequential(cell, params, xs_tm, carry, valid, resets, opts: UnrollOptions, gradient: str):
    """The step-by-step scan: plain, hand-written BPTT, or checkpointed (``remat``)."""
    manual = gradient == "manual"
    segment = segment_length(opts.remat, xs_tm.shape[0])
    if segment is not None:
        return remat_scan_forward(
            cell, params, xs_tm, carry, valid, segment=segment, unroll=opts.unroll,
            manual=manual, resets=resets,
        )  # fmt: skip
    if manual:
        return manual_scan(cell, params, xs_tm, carry, valid, resets, opts.truncate,
                           opts.unroll, opts.return_carries)  # fmt: skip
    final, hs, _ = scan_forward(
        cell, params, xs_tm, carry, valid, resets=resets, unroll=opts.unroll,
        keep_carries=opts.return_carries,
    )  # fmt: skip
    return final, hs
