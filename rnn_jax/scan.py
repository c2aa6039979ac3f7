"""``unroll``: run a cell over a sequence with ``jax.lax.scan``."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from rnn_jax.backends import check_backend, dispatch
from rnn_jax.bptt import _check_truncate, manual_scan
from rnn_jax.cells.base import Cell
from rnn_jax.remat import remat_scan_forward, segment_length
from rnn_jax.sequence import flip_valid, prepare, scan_forward, to_layout

GRADIENTS = ("autodiff", "manual")


def unroll(
    cell,
    params,
    xs,
    carry=None,
    *,
    lengths=None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int = 1,
    gradient: str = "autodiff",
    truncate: int | None = None,
    remat: int | str | None = None,
    matmul_dtype=None,
    backend: str = "scan",
):
    """Run ``cell`` over ``xs``; returns ``(final_carry, hs)``.

    Args:
      cell: ``rj.simple``, ``rj.lstm``, ``rj.gru``, a variant such as ``rj.simple.relu``, or
        any cell of the protocol (``rj.make_cell``).
      params: the cell's parameters (for the library cells a dict, ``rj.lstm.init``'s).
      xs: ``(B, T, I)``, or ``(T, B, I)`` with ``time_major=True``.
      carry: initial carry, as ``cell.zero_carry`` returns (``(B, H)``, ``LSTMCarry``, or a
        custom cell's pytree); None means zeros.
      lengths: optional ``(B,)`` ints in ``[0, T]``. Outputs past a row's length are zero and
        its final carry is the carry after its last valid step.
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
        gradients, with either ``gradient`` (not with ``truncate``). None: off.
      matmul_dtype: e.g. ``jnp.bfloat16`` to run the matrix products (forward and the
        hand-written backward) in that dtype with accumulation, carries, gate math and
        outputs in the parameters' dtype. None: off (full precision).
      backend: ``"scan"`` (this function's ``lax.scan``), ``"onednn"`` (CPU) or ``"cudnn"``
        (GPU, LSTM) for a fused per-sequence kernel with its own fused backward (``unroll``
        and ``gradient`` do not apply), or ``"auto"``: fused where it applies, else scan.
        See ``rnn_jax.backends`` for what each supports.

    Returns:
      ``(final_carry, hs)`` with ``hs (B, T, H)`` (``(T, B, H)`` if time-major).

    Examples:
      >>> import jax, jax.numpy as jnp, rnn_jax as rj
      >>> params = rj.gru.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
      >>> xs = jnp.ones((2, 5, 3))                               # (batch, time, features)
      >>> carry, hs = rj.unroll(rj.gru, params, xs, lengths=jnp.array([5, 2]))
      >>> hs.shape, carry.shape
      ((2, 5, 4), (2, 4))
      >>> bool(jnp.all(hs[1, 2:] == 0))                          # past row 1's length
      True
    """
    check_backend(backend)
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
    if truncate is not None and gradient != "manual":
        raise ValueError("truncate=k needs gradient='manual' (autodiff gives full BPTT)")
    truncate = _check_truncate(truncate)
    if not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be an int >= 1, got {unroll!r}")
    prep = prepare(cell, params, xs, carry, lengths, time_major=time_major)
    scan_only = dict(lengths=lengths, truncate=truncate, remat=remat, matmul_dtype=matmul_dtype)
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
    xs_tm = flip_valid(prep.xs, prep.lengths) if reverse else prep.xs
    manual = gradient == "manual"
    if segment is not None:
        final, hs = remat_scan_forward(
            cell, params, xs_tm, prep.carry, prep.valid, segment=segment, unroll=unroll,
            manual=manual,
        )  # fmt: skip
    elif manual:
        final, hs = manual_scan(cell, params, xs_tm, prep.carry, prep.valid, truncate, unroll)
    else:
        final, hs, _ = scan_forward(cell, params, xs_tm, prep.carry, prep.valid, unroll=unroll)
    hs = flip_valid(hs, prep.lengths) if reverse else hs
    return final, to_layout(hs, time_major)
