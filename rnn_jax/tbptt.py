"""Chunked truncated BPTT over a long stream, as a training utility.

A long stream (a book, a speech signal) is cut into consecutive chunks of length L (see
:func:`rnn_jax.data.text.contiguous_batches`). Each chunk gets one optimizer update, and the
recurrent state reached at the end of a chunk is handed to the next one as a *constant*: the
forward pass is exact across chunks (the state at any character is the state of reading the
whole stream up to it), while gradients flow back at most to the start of the chunk. This is
TBPTT(k1, k2) with k1 = k2 = L (Williams & Peng), the char-rnn training scheme.

Conventions (a chunk-level twin of :mod:`rnn_jax.train`'s)::

    loss_fn(params, carry, chunk, rng) -> (loss, (new_carry, metrics))
    metric_fn(params, carry, chunk)    -> ({"count": n, name: sum, ...}, new_carry)

``carry`` is any pytree whose leaves have a leading batch axis (a model's final carries),
``chunk`` any pytree of arrays (e.g. ``(inputs, targets)``, each ``(B, L)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_jax.train import TrainState, make_train_step

PyTree = Any
ChunkLossFn = Callable[[PyTree, PyTree, PyTree, jax.Array], tuple[jax.Array, tuple[PyTree, dict]]]
ChunkMetricFn = Callable[[PyTree, PyTree, PyTree], tuple[dict, PyTree]]

# The new carry rides out of the jitted train step inside its metrics dict, under this key.
_CARRY = "__carry__"

__all__ = ["evaluate_stream", "make_chunk_eval", "make_chunk_step", "zero_carry"]


def zero_carry(carry_fn: Callable[..., PyTree], *args) -> PyTree:
    """Zeros shaped like the carry that ``carry_fn(*args)`` returns, without running it.

    E.g. ``zero_carry(lambda p, t: apply(p, t)[1], params, inputs)`` for a language model.
    Start a stream with this rather than ``None``: a jitted step sees the same pytree
    structure on its first call as on every later one, so it compiles once. (All rnn_jax
    cells treat a ``None`` carry as zeros, so the two are the same computation.)
    """
    shapes = jax.eval_shape(carry_fn, *args)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def make_chunk_step(
    loss_fn: ChunkLossFn,
    optimizer: optax.GradientTransformation,
    *,
    donate: bool = True,
) -> Callable[[TrainState, PyTree, PyTree], tuple[TrainState, PyTree, dict]]:
    """Builds ``step(state, carry, chunk) -> (new_state, new_carry, metrics)``: one update.

    The gradient is ``d loss / d params`` with the incoming ``carry`` held constant: the carry
    is an input of the step, not a function of the parameters, so no gradient reaches the
    previous chunk (that is the truncation). ``new_carry`` goes through
    ``jax.lax.stop_gradient`` too, so composing steps inside a larger differentiated function
    keeps the same truncation.

    Built on :func:`rnn_jax.train.make_train_step` (jit, state donation, the rng split per
    step, ``metrics["grad_norm"]``); ``metrics`` holds ``"loss"``, ``loss_fn``'s metrics and
    ``"grad_norm"``. Donation covers the state, not the carry: keep using your carry.
    """

    def batch_loss(params, batch, rng):
        carry, chunk = batch
        loss, (new_carry, metrics) = loss_fn(params, carry, chunk, rng)
        if _CARRY in metrics:
            raise ValueError(f"loss_fn metrics must not use the reserved key {_CARRY!r}")
        return loss, {**metrics, _CARRY: jax.lax.stop_gradient(new_carry)}

    train_step = make_train_step(batch_loss, optimizer, donate=donate)

    def step(state: TrainState, carry: PyTree, chunk: PyTree):
        state, metrics = train_step(state, (carry, chunk))
        new_carry = metrics.pop(_CARRY)
        return state, new_carry, metrics

    return step


def make_chunk_eval(
    metric_fn: ChunkMetricFn,
) -> Callable[[PyTree, PyTree, PyTree], tuple[dict, PyTree]]:
    """``jax.jit(metric_fn)``: ``(params, carry, chunk) -> (sums with "count", new_carry)``."""
    return jax.jit(metric_fn)


def evaluate_stream(
    eval_chunk: Callable[[PyTree, PyTree, PyTree], tuple[dict, PyTree]],
    params: PyTree,
    chunks: Iterable[PyTree],
    carry: PyTree,
) -> tuple[dict[str, float], PyTree]:
    """Means of per-chunk sums over consecutive chunks, carrying the state across them.

    Args:
      eval_chunk: from :func:`make_chunk_eval` (or any ``(params, carry, chunk) ->
        (sums, new_carry)``; ``sums`` has a ``"count"`` entry, e.g. the number of targets).
      params: the parameters.
      chunks: consecutive chunks of one split, in order (row ``b`` of chunk ``k+1`` continues
        row ``b`` of chunk ``k``), e.g. a :class:`~rnn_jax.data.text.ContiguousBatches`.
      carry: the state to start from (e.g. :func:`zero_carry`).

    Returns:
      ``({name: total_sum / total_count, ..., "count": total_count}, final_carry)``; sums are
      accumulated in float64 on the host after one fetch (no sync per chunk).
    """
    results = []
    for chunk in chunks:
        sums, carry = eval_chunk(params, carry, chunk)
        results.append(sums)
    if not results:
        raise ValueError("evaluate_stream got no chunks")
    host = jax.device_get(results)
    if "count" not in host[0]:
        raise KeyError(f"eval_chunk sums must have a 'count' entry, got keys {sorted(host[0])}")
    totals = {k: math.fsum(float(np.asarray(r[k], np.float64)) for r in host) for k in host[0]}
    count = totals.pop("count")
    if count <= 0:
        raise ValueError(f"evaluate_stream saw {count} targets")
    return {**{k: v / count for k, v in totals.items()}, "count": count}, carry
