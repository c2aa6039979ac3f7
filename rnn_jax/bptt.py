"""Hand-written backpropagation through time.

The backward sweep is its own ``lax.scan`` running from the last step to the first. Per
step only the recurrent part is computed: the cell's hand-written gate backward and
``d_z_h @ w_h^T``, the one product the previous step waits for. The weight gradients
``d_w_x = X^T dZ_x``, ``d_w_h = H_prev^T dZ_h`` and ``d_xs = dZ_x w_x^T`` do not feed the
recurrence, so they are done after the loop as single products over all T*B rows (a GRU,
whose dZ_h differs from dZ_x, accumulates ``d_w_h`` in the loop instead: measured faster).

Truncation (``truncate=k``): the gradient from each step's output flows back through at
most k steps, that step and the k-1 before it, as in the classic numpy tutorials. Since the
backward of a step is linear in the cotangent, we keep k cotangent *slots*, one per age
(steps already travelled); all slots go through a step together (the slot axis broadcasts
against the gate residuals), then shift one age up, and the slot that has travelled k steps
is dropped. Cost: k times the per-step recurrent work; the weight products are unchanged.
The cotangent on the final carry counts as an output of the last step.

Any other cell (``rj.make_cell``, the cell protocol) runs its own ``step_backward`` in the
reverse loop and accumulates its ``d_params`` there. Its truncation slots go through
``jax.vmap`` of that backward (only ``d_carry_prev`` is needed per slot; ``d_params`` and
``d_x`` come from one call on the slots' sum, since a VJP is linear in its cotangent).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

from rnn_jax.cells.base import (
    hidden_of,
    hidden_weight_backward,
    input_weight_backward,
    matmul,
    recurrent_backward,
    with_hidden,
)
from rnn_jax.checks import carry_lead, check_carry
from rnn_jax.options import check_truncate
from rnn_jax.sequence import (
    accepts_unbatched,
    flip_valid,
    keep_where,
    prepare,
    reading_order,
    scan_forward,
    to_layout,
    zero_where_invalid,
)

__all__ = ["bptt"]  # fmt: skip


@accepts_unbatched(
    arrays=("d_hs", "lengths", "mask", "resets"), trees=("carry", "d_carry"), results=(1, 2)
)
def bptt(
    cell,
    params,
    xs,
    d_hs,
    carry=None,
    *,
    d_carry=None,
    lengths=None,
    mask=None,
    resets=None,
    reverse: bool = False,
    time_major: bool = False,
    truncate: int | None = None,
):
    """Gradients of ``L`` through ``unroll`` by hand-written BPTT.

    Args:
      cell: any cell (``rj.lstm``, ``rj.make_cell(...)``, ...); params: its parameters.
      xs: ``(B, T, I)`` (``(T, B, I)`` if ``time_major``), or one sequence ``(T, I)`` (then
        ``d_hs (T, H)``, carries and ``d_carry0`` without the batch axis).
      d_hs: dL/dhs, same layout, ``(B, T, H)``.
      carry: initial carry (None: zeros).
      d_carry: dL/d(final carry) (None: zeros).
      lengths, mask, resets, reverse, time_major: as in ``rj.unroll``.
      truncate: None for full BPTT, else k >= 1 (see module docstring).

    Returns:
      ``(d_params, d_xs, d_carry0)``: same structures as ``params``, ``xs``, ``carry``.

    Examples:
      Equal to ``jax.vjp`` through ``rj.unroll``:

      >>> import jax, jax.numpy as jnp, rnn_jax as rj
      >>> params = rj.lstm.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
      >>> xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
      >>> d_hs = jnp.ones((2, 5, 4))
      >>> d_params, d_xs, d_carry0 = rj.bptt(rj.lstm, params, xs, d_hs)
      >>> _, vjp = jax.vjp(lambda p: rj.unroll(rj.lstm, p, xs)[1], params)
      >>> bool(jnp.allclose(d_params["w_h"], vjp(d_hs)[0]["w_h"], atol=1e-5))
      True
      >>> d_params, _, _ = rj.bptt(rj.lstm, params, xs, d_hs, truncate=2)  # truncated BPTT(2)
    """
    steps = dict(mask=mask, resets=resets, reverse=reverse)
    prep = prepare(cell, params, xs, carry, lengths, time_major=time_major, **steps)
    truncate = check_truncate(truncate)
    want = xs.shape[:-1] + (prep.output_size,)  # hs: (B, T, [*spatial,] H), or time-major
    if getattr(d_hs, "shape", None) != want or d_hs.dtype != xs.dtype:
        raise ValueError(
            f"d_hs must be {want} {xs.dtype} like unroll's hs, got "
            f"{getattr(d_hs, 'shape', None)} {getattr(d_hs, 'dtype', None)}"
        )
    d_hs_tm = d_hs if time_major else jnp.swapaxes(d_hs, 0, 1)
    if d_carry is None:
        d_carry = jax.tree.map(jnp.zeros_like, prep.carry)
    else:
        lead = carry_lead(prep.cell, prep.xs.shape[1:])
        d_carry = check_carry(prep.cell, d_carry, lead, prep.hidden_size, xs.dtype, name="d_carry")
    xs_tm, valid, resets = reading_order(prep, reverse)
    d_hs_tm = flip_valid(d_hs_tm, prep.lengths) if reverse else d_hs_tm
    _, hs, gates = scan_forward(
        prep.cell, params, xs_tm, prep.carry, valid, resets=resets, keep_gates=True
    )
    d_params, d_xs, d_carry0 = backward_sweep(
        prep.cell, params, xs_tm, prep.carry, hs, gates, d_hs_tm, d_carry, valid, truncate,
        resets=resets,
    )  # fmt: skip
    d_xs = flip_valid(d_xs, prep.lengths) if reverse else d_xs
    return d_params, to_layout(d_xs, time_major), d_carry0


def backward_sweep(
    cell, params, xs, carry0, hs, gates, d_hs, d_final, valid, truncate, *, unroll=1, resets=None,
    d_carries=None, start_apart=False,
):
    """The hand-written backward over a whole sequence (all time-major).

    ``xs (T, B, I)``, ``hs (T, B, H)`` and ``gates`` (the stacked residuals) from
    ``scan_forward(keep_gates=True)``; ``d_hs (T, B, H)``, or None when the loss does not read
    ``hs`` (classify from the final carry: nothing per step to add, and no (T, B, H) of zeros
    to stream through the loop); ``d_final`` the cotangent of the final carry; ``valid`` and
    ``resets`` (``(T, B)`` bool or None) as given to ``scan_forward``; ``d_carries`` (leaves
    ``(T, B, ...)``, or None) the cotangents of every step's carry (``return_carries``): each
    joins the carry cotangent where the backward enters its step, as an output of that step.
    Returns ``(d_params, d_xs (T, B, I), d_carry0)``; with ``start_apart`` (and ``resets``)
    ``d_carry0`` is the pair ``(d of the carry before step 0, d of the carry the resets
    read)``, for a scan whose resets read a carry of their own (``remat`` segments).
    """
    num_steps = xs.shape[0]
    if num_steps == 0:  # the final carry is the initial one; nothing else was read
        return jax.tree.map(jnp.zeros_like, params), jnp.zeros_like(xs), d_final
    # k > T never drops anything, so it is full BPTT; k == T still drops at carry0.
    slots = None if truncate is None or truncate > num_steps else truncate
    if cell.fused is None or resets is not None:
        # With resets the forward kept full residuals (scan_forward): the per-step backward.
        d_params, d_xs, d_carry0, d_start = _generic_sweep(
            cell, params, gates, d_hs, d_final, valid, resets, slots, unroll, d_carries
        )
        if start_apart:
            return d_params, d_xs, (d_carry0, d_start)
        if d_start is not None:
            d_carry0 = jax.tree.map(jnp.add, d_carry0, d_start)
        return d_params, d_xs, d_carry0
    return _fused_sweep(
        cell.fused, params, xs, carry0, hs, gates, d_hs, d_final, valid, slots, unroll, d_carries
    )


def _generic_sweep(
    cell, params, residuals, d_hs, d_final, valid, resets, slots, unroll, d_carries=None
):
    """Reverse loop of ``cell.step_backward``; ``d_params`` accumulated in the loop.

    A padded row (``valid`` False) gets zero cotangents into the step, so its (linear)
    backward adds nothing, and its carry cotangent passes the step unchanged. Where a step
    read the initial carry (``resets``), its carry cotangent goes to ``d_start`` and none to
    the step before. Returns ``(d_params, d_xs, d_carry0, d_start)`` (``d_start`` None
    without resets).
    """
    state = _slotted(d_final, slots)
    lead = 0 if slots is None else 1
    d_start = None if resets is None else jax.tree.map(jnp.zeros_like, state)

    def body(loop_state, inputs):
        state, d_params, d_start = loop_state
        res_t, d_h_t, valid_t, reset_t, d_carry_t = inputs
        state = _add_step_carry(state, d_carry_t, slots)
        masked = zero_where_invalid(valid_t, state, lead)
        d_carry = _sum_slots(masked, slots)
        d_h = jnp.zeros_like(cell.hidden_of(d_carry)) if d_h_t is None else d_h_t
        d_h = zero_where_invalid(valid_t, d_h)
        d_p, d_x, d_prev = cell.step_backward(params, res_t, d_h, d_carry)
        if slots is not None:
            prev_of_slot = lambda dh, dc: cell.step_backward(params, res_t, dh, dc)[2]
            d_prev = jax.vmap(prev_of_slot)(_slotted(d_h, slots), masked)
            d_prev = jax.tree.map(_age_one_step, d_prev)
        d_prev = keep_where(valid_t, d_prev, state, lead)
        if reset_t is not None:
            d_start = jax.tree.map(jnp.add, d_start, zero_where_invalid(reset_t, d_prev, lead))
            d_prev = zero_where_invalid(~reset_t, d_prev, lead)
        d_params = jax.tree.map(jnp.add, d_params, d_p)
        return (d_prev, d_params, d_start), zero_where_invalid(valid_t, d_x)

    d_params = jax.tree.map(jnp.zeros_like, params)
    (state, d_params, d_start), d_xs = jax.lax.scan(
        body, (state, d_params, d_start), (residuals, d_hs, valid, resets, d_carries),
        reverse=True, unroll=unroll,
    )  # fmt: skip
    return d_params, d_xs, _sum_slots(state, slots), _sum_slots(d_start, slots)  # None stays None


def _sum_slots(tree, slots):
    """What the slots carry, summed over their ages; ``tree`` as it is without truncation."""
    return tree if slots is None else jax.tree.map(lambda a: a.sum(0), tree)


def _fused_sweep(
    form, params, xs, carry0, hs, gates, d_hs, d_final, valid, slots, unroll, d_carries=None
):
    """The reverse scan of a fused cell (``form`` its ``FusedGates``) plus the after-loop
    input products."""
    num_steps, batch_size = xs.shape[:2]
    state = _slotted(d_final, slots)
    h_prev = jnp.concatenate([hidden_of(carry0)[None], hs[:-1]], axis=0)
    # Elman and LSTM have d_zx == d_zh (FusedGates.sums_products): it is stacked once and both
    # weight gradients are single products over all T*B rows after the loop. A GRU's d_zh
    # differs; stacking it too was slower on XLA:CPU (1.04-1.06x autodiff's train step) than
    # accumulating d_w_h in the loop (0.92-0.95x).
    shared = form.sums_products
    d_hidden = jax.tree.map(jnp.zeros_like, {k: params[k] for k in ("w_h", "b_h") if k in params})

    projected = "w_hr" in params  # h' = m @ w_hr: d_w_hr = M^T dH' after the loop

    def body(loop_state, inputs):
        state, d_hidden = loop_state
        gates_t, d_h_t, valid_t, h_prev_t, d_carry_t = inputs
        state = _add_step_carry(state, d_carry_t, slots)
        d_h_in = hidden_of(state)
        if d_h_t is not None:
            d_h_in = d_h_in + _slotted(d_h_t, slots)
        # dL/dh' of the step (all slots): an invalid step's is zero, as its d_zx.
        d_out = zero_where_invalid(valid_t, _sum_slots(d_h_in, slots)) if projected else None
        d_zx, d_zh, d_prev = recurrent_backward(
            params, gates_t, with_hidden(state, d_h_in), form.pointwise_backward, form.matmul_dtype
        )
        if slots is not None:
            d_zx, d_zh = d_zx.sum(0), None if shared else d_zh.sum(0)
            d_prev = jax.tree.map(_age_one_step, d_prev)
        d_prev = keep_where(valid_t, d_prev, state, 0 if slots is None else 1)
        if not shared:
            d_zh = zero_where_invalid(valid_t, d_zh)
            step_grads = hidden_weight_backward(params, h_prev_t, d_zh, form.matmul_dtype)
            d_hidden = jax.tree.map(jnp.add, d_hidden, step_grads)
        return (d_prev, d_hidden), (zero_where_invalid(valid_t, d_zx), d_out)

    (state, d_hidden), (d_zx, d_outs) = jax.lax.scan(
        body, (state, d_hidden), (gates, d_hs, valid, h_prev, d_carries), reverse=True,
        unroll=unroll,
    )  # fmt: skip
    rows = num_steps * batch_size
    d_zx = d_zx.reshape(rows, -1)
    d_params, d_xs = input_weight_backward(params, xs.reshape(rows, -1), d_zx, form.matmul_dtype)
    if shared:
        d_hidden = hidden_weight_backward(params, h_prev.reshape(rows, -1), d_zx, form.matmul_dtype)
    if projected:
        m = gates.m.reshape(rows, -1)
        d_hidden["w_hr"] = matmul(m.T, d_outs.reshape(rows, -1), form.matmul_dtype)
    return d_params | d_hidden, d_xs.reshape(xs.shape), _sum_slots(state, slots)


def _add_step_carry(state, d_carry_t, slots):
    """The carry cotangent entering a step plus that step's own (``return_carries``), which
    starts its travel there (truncation: slot 0)."""
    if d_carry_t is None:
        return state
    return jax.tree.map(jnp.add, state, _slotted(d_carry_t, slots))


def _slotted(tree, slots):
    """Each leaf ``(B, ...) -> (slots, B, ...)``, its value in slot 0 (age 0), zeros elsewhere;
    ``tree`` as it is without truncation (``slots`` None)."""
    if slots is None:
        return tree
    return jax.tree.map(lambda a: jnp.zeros((slots, *a.shape), a.dtype).at[0].set(a), tree)


def _age_one_step(slotted):
    """Shift slots one age up; the oldest (it has now travelled k steps) is dropped."""
    return jnp.concatenate([jnp.zeros_like(slotted[:1]), slotted[:-1]], axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 6, 7, 8))
def manual_scan(
    cell, params, xs, carry0, valid, resets, truncate, unroll, keep_carries=False, start=None
):
    """``scan_forward`` whose VJP is the hand-written ``backward_sweep``.

    Time-major ``xs (T, B, I)``, ``valid``/``resets`` ``(T, B)`` bool or None; returns
    ``(final_carry, hs (T, B, H))``, with ``keep_carries`` ``(final_carry, (hs, carries))``
    (``carries``: every step's carry, leaves ``(T, B, ...)``, as ``scan_forward``'s).
    ``start``: the carry a reset reads (None: ``carry0``), with its own cotangent.
    """
    final, hs, _ = scan_forward(
        cell, params, xs, carry0, valid, resets=resets, unroll=unroll, keep_carries=keep_carries,
        start=start,
    )  # fmt: skip
    return final, hs


def _manual_scan_fwd(
    cell, params, xs, carry0, valid, resets, truncate, unroll, keep_carries, start
):  # fmt: skip
    # symbolic_zeros=True: every leaf arrives as CustomVJPPrimal(value, perturbed).
    params, xs, carry0, valid, resets, start = jax.tree.map(
        lambda leaf: leaf.value, (params, xs, carry0, valid, resets, start),
        is_leaf=lambda leaf: isinstance(leaf, CustomVJPPrimal),
    )  # fmt: skip
    final, outputs, gates = scan_forward(
        cell, params, xs, carry0, valid, resets=resets, unroll=unroll, keep_gates=True,
        keep_carries=keep_carries, start=start,
    )  # fmt: skip
    hs = outputs[0] if keep_carries else outputs
    return (final, outputs), (params, xs, carry0, valid, resets, hs, gates, start is not None)


def _manual_scan_bwd(cell, truncate, unroll, keep_carries, residuals, cotangents):
    params, xs, carry0, valid, resets, hs, gates, own_start = residuals
    d_final, d_outputs = cotangents
    d_hs, d_carries = d_outputs if keep_carries else (d_outputs, None)
    # A loss that reads only the final carry leaves d_hs a symbolic zero: skip it.
    d_hs = None if isinstance(d_hs, SymbolicZero) else d_hs
    d_final = _zeros_for_symbolic(d_final, carry0)
    symbolic = jax.tree.leaves(d_carries, is_leaf=lambda d: isinstance(d, SymbolicZero))
    if all(isinstance(d, SymbolicZero) for d in symbolic):
        d_carries = None  # the loss reads no carry but the last: stream nothing
    else:
        stacked = lambda leaf: jax.ShapeDtypeStruct((xs.shape[0], *leaf.shape), leaf.dtype)
        d_carries = _zeros_for_symbolic(d_carries, jax.tree.map(stacked, carry0))
    d_params, d_xs, d_carry0 = backward_sweep(
        cell, params, xs, carry0, hs, gates, d_hs, d_final, valid, truncate, unroll=unroll,
        resets=resets, d_carries=d_carries, start_apart=own_start,
    )  # fmt: skip
    d_carry0, d_start = d_carry0 if own_start else (d_carry0, None)
    return d_params, d_xs, d_carry0, None, None, d_start


def _zeros_for_symbolic(cotangent, like):
    """``cotangent`` with its symbolic-zero leaves made zeros shaped as ``like``'s."""
    return jax.tree.map(
        lambda d, leaf: jnp.zeros(leaf.shape, leaf.dtype) if isinstance(d, SymbolicZero) else d,
        cotangent,
        like,
        is_leaf=lambda d: isinstance(d, SymbolicZero),
    )


manual_scan.defvjp(_manual_scan_fwd, _manual_scan_bwd, symbolic_zeros=True)
