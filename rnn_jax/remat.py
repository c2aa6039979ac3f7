"""Memory-bounded BPTT by rematerialisation (``rj.unroll(..., remat=k)``).

Autodiff through a plain ``lax.scan`` keeps every step's gate residuals, O(T) memory. Here
the T steps are cut into ceil(T/k) segments of k steps: an outer scan over segments whose
body, an inner scan over the k steps, is wrapped in ``jax.checkpoint``. The backward pass
keeps only the carry at each segment start and re-runs one segment's forward at a time, so
residual memory is O(T/k + k) carries/gates instead of O(T), for about one extra forward.
``remat="sqrt"`` picks k = round(sqrt(T)), which minimises T/k + k.

With ``gradient="manual"`` each segment is a hand-written-BPTT scan (``manual_scan``): the
backward re-runs a segment's forward, then its hand-written backward, and autodiff of the
outer scan only chains the carry cotangents from segment to segment and sums the weight
gradients. Truncation windows would cross segment boundaries, so ``truncate`` is refused.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnn_jax.bptt import manual_scan
from rnn_jax.cell import Cell
from rnn_jax.sequence import scan_forward


def segment_length(remat, num_steps: int) -> int | None:
    """Steps per checkpointed segment for a parsed ``remat`` (``rnn_jax.options``: None, an
    int >= 1 or ``"sqrt"``); None: no remat."""
    return max(1, round(math.sqrt(num_steps))) if remat == "sqrt" else remat


def remat_scan_forward(
    cell: Cell, params, xs, carry, valid, *, segment: int, unroll: int = 1, manual: bool = False,
    resets=None,
):  # fmt: skip
    """``scan_forward`` (no gates) with ``jax.checkpoint`` every ``segment`` steps.

    ``xs (T, B, I)`` time-major, ``valid``/``resets`` ``(T, B)`` or None. Returns
    ``(final_carry, hs (T, B, H))``, equal to ``scan_forward``'s. A last partial segment is
    padded with invalid steps, which freeze the carry and output zeros, then trimmed.
    ``manual``: hand-written BPTT inside each segment. A reset in any segment reads the
    sequence's initial ``carry`` (each segment's scan gets it as ``start``).
    """
    num_steps, batch_size = xs.shape[:2]
    num_segments = -(-num_steps // segment)
    pad = num_segments * segment - num_steps
    if pad:
        if valid is None:
            valid = jnp.ones((num_steps, batch_size), bool)
        padded = lambda a: jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
        xs, valid, resets = jax.tree.map(padded, (xs, valid, resets))  # None stays None
    start = None if resets is None else carry

    @jax.checkpoint
    def run_segment(carry, inputs):
        xs_k, valid_k, resets_k = inputs
        if manual:
            return manual_scan(
                cell, params, xs_k, carry, valid_k, resets_k, None, unroll, False, start
            )
        final, hs_k, _ = scan_forward(
            cell, params, xs_k, carry, valid_k, resets=resets_k, unroll=unroll, start=start
        )
        return final, hs_k

    by_segment = lambda a: a.reshape(num_segments, segment, *a.shape[1:])
    segments = jax.tree.map(by_segment, (xs, valid, resets))
    final, hs = jax.lax.scan(run_segment, carry, segments)
    hs = hs.reshape(num_segments * segment, *hs.shape[2:])[:num_steps]
    return final, hs
