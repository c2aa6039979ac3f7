"""mLSTM, the matrix-memory LSTM of xLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term
Memory"): per head a matrix memory ``C`` written with the outer product ``k v^T`` under an
exponential input gate and a sigmoid forget gate, read with a query ``q``.

From ``x (B, I)``, one fused product ``z = x @ w_x + b`` gives, per head ``a`` of ``NH``:
``q, k (B, NH, d_k)``, ``v (B, NH, d_v)``, the output gate pre-activation ``o (B, H)`` and the
scalar input and forget gate pre-activations ``i, f (B, NH)``. With ``log_f = log sigmoid(f)``::

    m'  = max(log_f + m, i)                                    the stabiliser (B, NH)
    f~  = exp(log_f + m - m'),   i~ = exp(i - m')              the stabilised gates
    C'  = f~ C + i~ k v^T                                      (B, NH, d_k, d_v)
    n'  = f~ n + i~ k                                          (B, NH, d_k)
    q_s = q / sqrt(d_k)
    h~  = (q_s^T C') / (max(|q_s^T n'|, exp(-m')) + eps)       (B, NH, d_v), eps = 1e-6
    h'  = sigmoid(o) * h~  (heads side by side: (B, H), H = NH * d_v)

``C, n`` are the memory and normaliser scaled by ``exp(-m)``: the true ones,
``exp(m) C`` and ``exp(m) n``, overflow, these do not. ``m`` cancels from ``h~`` except in the
lower bound ``exp(-m')`` of the denominator (where it is the true one, ``1``, in the true
scale) and in ``eps``: that is the reference's normalisation, matched exactly here, with ``q``
(not ``k``) scaled by ``1/sqrt(d_k)`` and ``eps`` added after the ``max``.

The reference is ``mlstm-kernels`` 2.0.6 (NX-AI): the recurrent step
``mlstm_kernels/torch/recurrent/native_step.py`` (``mlstm_recurrent_step__native_fw``; the same
maths in ``mlstm_kernels/jax/recurrent/native_step.py``) and its sequence loop
``torch/recurrent/native_sequence.py``, with the initial state ``C = 0, n = 0, m = 0``; the
chunkwise form ``mlstm_kernels/torch/chunkwise/native/fw.py`` (``mlstm_chunkwise_fw``: the
inter-chunk states ``mlstm_chunkwise__recurrent_fw_C``, the outputs within each chunk
``mlstm_chunkwise__parallel_fw_H``). ``tests/test_mlstm.py`` runs both on the same
``q, k, v, i, f`` in float64. The fully parallel ``torch/parallel/native/fw.py`` computes the
stabiliser without the initial state's ``m = 0`` term, so its denominators differ from the
recurrent ones where ``exp(-m)`` wins; it is not matched here.

Parameters ``{"w_x": (I, Z), "b": (Z,)}``, ``Z = 2 NH d_k + 2 H + 2 NH``, column blocks in the
order ``q (NH d_k) | k (NH d_k) | v (H) | o (H) | i (NH) | f (NH)``, each head-major (head
``a``'s ``q`` is columns ``a d_k .. (a+1) d_k``). The initialisation is xLSTM's
(``xlstm/blocks/mlstm/layer.py``, ``cell.py``): ``q, k, v, o`` weights normal with std
``sqrt(2 / (5 I))`` ("small init"), zero biases; the gate weights zero, the input gate bias
``N(0, 0.1^2)``, the forget gate bias ``linspace(3, 6, NH)``.

The carry is ``MLSTMCarry(h (B, H), C (B, NH, d_k, d_v), n (B, NH, d_k), m (B, NH))``; ``h`` is
the last output (what ``hidden_of`` reads; the step does not read it). ``rj.mlstm`` has one
head and ``d_k = d_v = H``; ``rj.mlstm.variant(num_heads=, key_size=, chunk_size=)`` is the
cell for other sizes. Those are cell variants, not ``init`` options, because ``zero_carry``
must know them and sees only ``hidden_size`` (as ``rj.lru.with_state_size``).

Two forms, equal to 1e-10 in float64 with lengths, masks and resets (``tests/test_mlstm.py``):

- the recurrent step (``mode="sequential"``) with a hand-written ``step_backward``
  (``gradient="manual"``);
- the chunkwise-parallel form (``mode="parallel"``, the default where no option needs steps,
  through the cell's ``parallel`` hook): within a chunk of ``chunk_size`` steps the outputs
  are one quadratic, masked ``(L, L)`` product as in attention, across chunks the states
  ``(C, n, m)`` are carried by a scan over chunks. ``chunk_size`` need not divide the length
  (the last chunk is padded with steps that keep the state). Its gradient is autodiff
  through the chunkwise form for either ``gradient=`` (it has no hand-written backward; the
  step's is used in sequential mode). A row's length ends its sequence and a mask skips a
  step by turning that step into the identity (forget gate 1, input gate 0, exactly); a
  reset restarts the state from the initial carry: within a chunk, terms of other episodes
  are masked out and the initial carry enters at the episode's first step.

At a tie of a ``max`` the backward splits the gradient evenly between the two sides, as
``jnp.maximum``'s derivative does (ties have measure zero with real data).

Examples:
  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> cell = rj.mlstm.variant(num_heads=2, chunk_size=4)
  >>> params = cell.init(jax.random.PRNGKey(0), input_size=3, hidden_size=8)
  >>> xs = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 3))
  >>> carry, hs = rj.unroll(cell, params, xs)                     # chunkwise
  >>> hs.shape, carry.C.shape, carry.m.shape
  ((2, 10, 8), (2, 2, 4, 4), (2, 2))
  >>> _, hs_steps = rj.unroll(cell, params, xs, mode="sequential")
  >>> bool(jnp.allclose(hs, hs_steps, atol=1e-5))
  True
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cell import Cell, cell_of_functions, hidden_width, last_valid

__all__ = [  # fmt: skip
    "MLSTMCarry", "cell", "chunkwise", "hidden_of", "init", "parallel", "step",
    "step_backward", "step_forward", "variant", "zero_carry",
]

EPS = 1e-6  # added to the denominator after the max, as mlstm-kernels' default eps
DEFAULT_CHUNK = 64  # mlstm-kernels' default chunk_size


class MLSTMCarry(NamedTuple):
    """``h (B, H)`` the last output; ``C (B, NH, d_k, d_v)`` the memory, ``n (B, NH, d_k)``
    the normaliser, both scaled by ``exp(-m)``; ``m (B, NH)`` the stabiliser (log scale)."""

    h: jax.Array
    C: jax.Array
    n: jax.Array
    m: jax.Array


class Projections(NamedTuple):
    """One step's (or sequence's) projections; leading axes ``(..., )`` as ``x``'s rows."""

    q: jax.Array  # (..., NH, d_k)
    k: jax.Array  # (..., NH, d_k)
    v: jax.Array  # (..., NH, d_v)
    o: jax.Array  # (..., H) pre-activation
    i: jax.Array  # (..., NH) pre-activation
    f: jax.Array  # (..., NH) pre-activation


@dataclasses.dataclass(frozen=True)
class MLSTM:
    """The cell's functions for one head layout and chunk size; hashable (jit-static).

    ``num_heads``: NH; ``key_size``: ``d_k`` per head (None: ``d_v = H / NH``);
    ``chunk_size``: the steps per chunk of the parallel form.
    """

    num_heads: int = 1
    key_size: int | None = None
    chunk_size: int = DEFAULT_CHUNK
    output_size = staticmethod(hidden_width)

    # -- sizes -----------------------------------------------------------------------------

    def head_sizes(self, hidden_size: int) -> tuple[int, int]:
        """``(d_k, d_v)`` for ``hidden_size``; a size that does not split into the heads is
        refused."""
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"mlstm: hidden_size must be a positive int, got {hidden_size!r}")
        if hidden_size % self.num_heads:
            raise ValueError(
                f"mlstm with num_heads={self.num_heads}: hidden_size={hidden_size} does not "
                f"divide into {self.num_heads} heads (H = num_heads * d_v); pass a multiple "
                f"of {self.num_heads}"
            )
        value_size = hidden_size // self.num_heads
        return self.key_size or value_size, value_size

    def widths(self, hidden_size: int) -> tuple[int, ...]:
        """The column widths of ``q | k | v | o | i | f`` in ``w_x``."""
        key_size, _ = self.head_sizes(hidden_size)
        heads = self.num_heads
        return (heads * key_size, heads * key_size, hidden_size, hidden_size, heads, heads)

    def sizes(self, params) -> tuple[int, int]:
        input_size, width = params["w_x"].shape
        heads = self.num_heads
        if self.key_size is None:  # Z = 4 H + 2 NH
            hidden_size = (width - 2 * heads) // 4
        else:  # Z = 2 NH d_k + 2 H + 2 NH
            hidden_size = (width - 2 * heads - 2 * heads * self.key_size) // 2
        if hidden_size < 1 or hidden_size % heads or sum(self.widths(hidden_size)) != width:
            raise ValueError(
                f"mlstm with num_heads={heads}, key_size={self.key_size}: params['w_x'] "
                f"{tuple(params['w_x'].shape)} has {width} columns, which is no "
                "q | k | v | o | i | f layout of these heads (were the params made by another "
                "variant?)"
            )
        return input_size, hidden_size

    # -- the protocol ----------------------------------------------------------------------

    def init(self, key, input_size: int, hidden_size: int, *, dtype=jnp.float32):
        """xLSTM's initialisation (module docstring)."""
        widths = self.widths(hidden_size)
        k_w, k_i = jax.random.split(key)
        projections = sum(widths[:4])
        scale = math.sqrt(2 / (5 * max(input_size, 1)))
        w_x = jnp.concatenate([
            scale * jax.random.normal(k_w, (input_size, projections), dtype),
            jnp.zeros((input_size, 2 * self.num_heads), dtype),
        ], axis=1)  # fmt: skip
        b = jnp.concatenate([
            jnp.zeros((projections,), dtype),
            0.1 * jax.random.normal(k_i, (self.num_heads,), dtype),
            jnp.linspace(3.0, 6.0, self.num_heads, dtype=dtype),
        ])  # fmt: skip
        return {"w_x": w_x, "b": b}

    def zero_carry(self, batch_size: int, hidden_size: int, dtype=jnp.float32):
        key_size, value_size = self.head_sizes(hidden_size)
        heads = self.num_heads
        return MLSTMCarry(
            jnp.zeros((batch_size, hidden_size), dtype),
            jnp.zeros((batch_size, heads, key_size, value_size), dtype),
            jnp.zeros((batch_size, heads, key_size), dtype),
            jnp.zeros((batch_size, heads), dtype),
        )

    @staticmethod
    def hidden_of(carry):
        return carry.h

    def step(self, params, carry, x):
        """``x (B, I)`` -> ``(MLSTMCarry(h', C', n', m'), h' (B, H))``."""
        new_carry, h, _ = self.step_forward(params, carry, x)
        return new_carry, h

    def step_forward(self, params, carry, x):
        p = self.project(params, x)
        log_f = jax.nn.log_sigmoid(p.f)
        m = jnp.maximum(log_f + carry.m, p.i)
        f_act, i_act = jnp.exp(log_f + carry.m - m), jnp.exp(p.i - m)
        memory = f_act[..., None, None] * carry.C + i_act[..., None, None] * outer(p.k, p.v)
        normaliser = f_act[..., None] * carry.n + i_act[..., None] * p.k
        q_s = p.q * p.q.shape[-1] ** -0.5
        numerator = jnp.einsum("bak,bakv->bav", q_s, memory)
        qn = jnp.einsum("bak,bak->ba", q_s, normaliser)
        denominator = jnp.maximum(jnp.abs(qn), jnp.exp(-m)) + EPS
        h_tilde = numerator / denominator[..., None]
        gate = jax.nn.sigmoid(p.o)
        h = gate * merge_heads(h_tilde)
        residuals = (x, carry, p, log_f, m, f_act, i_act, memory, normaliser, qn, denominator,
                     h_tilde, gate)  # fmt: skip
        return MLSTMCarry(h, memory, normaliser, m), h, residuals

    def step_backward(self, params, residuals, d_h, d_carry):
        """The chain rule through ``step_forward`` in reverse, by hand."""
        (x, carry, p, log_f, m, f_act, i_act, memory, normaliser, qn, denominator,
         h_tilde, gate) = residuals  # fmt: skip
        d_out = d_h + d_carry.h  # h' is both the output and the carry's h
        d_o = d_out * merge_heads(h_tilde) * gate * (1 - gate)
        d_h_tilde = split_heads(d_out * gate, self.num_heads)
        # h~ = numerator / denominator
        d_numerator = d_h_tilde / denominator[..., None]
        d_denominator = -jnp.sum(d_h_tilde * h_tilde, axis=-1) / denominator
        lower = jnp.exp(-m)
        to_qn, to_lower = max_weights(jnp.abs(qn), lower)
        d_qn = d_denominator * to_qn * jnp.sign(qn)
        d_m = d_carry.m - d_denominator * to_lower * lower
        # numerator = q_s^T C', qn = q_s^T n'
        scale = p.q.shape[-1] ** -0.5
        q_s = p.q * scale
        d_q = scale * (jnp.einsum("bav,bakv->bak", d_numerator, memory)
                       + d_qn[..., None] * normaliser)  # fmt: skip
        d_memory = d_carry.C + outer(q_s, d_numerator)
        d_normaliser = d_carry.n + d_qn[..., None] * q_s
        # C' = f~ C + i~ k v^T, n' = f~ n + i~ k
        d_f_act = jnp.sum(d_memory * carry.C, axis=(-2, -1)) + jnp.sum(d_normaliser * carry.n, -1)
        d_memory_k = jnp.einsum("bakv,bav->bak", d_memory, p.v) + d_normaliser
        d_i_act = jnp.sum(d_memory_k * p.k, axis=-1)
        d_k = i_act[..., None] * d_memory_k
        d_v = i_act[..., None] * jnp.einsum("bakv,bak->bav", d_memory, p.k)
        # f~ = exp(log_f + m - m'), i~ = exp(i - m')
        d_f_exponent, d_i = d_f_act * f_act, d_i_act * i_act
        d_m = d_m - d_f_exponent - d_i
        # m' = max(log_f + m, i)
        to_forget, to_input = max_weights(log_f + carry.m, p.i)
        d_forget_side = d_f_exponent + d_m * to_forget  # d(log_f + m)
        d_i = d_i + d_m * to_input
        d_f = d_forget_side * jax.nn.sigmoid(-p.f)  # d log sigmoid(f) / df = sigmoid(-f)
        d_z = jnp.concatenate([
            d_q.reshape(x.shape[0], -1), d_k.reshape(x.shape[0], -1), merge_heads(d_v), d_o,
            d_i, d_f,
        ], axis=-1)  # fmt: skip
        d_params = {"w_x": x.T @ d_z, "b": jnp.sum(d_z, axis=0)}
        d_carry_prev = MLSTMCarry(
            jnp.zeros_like(d_out),
            f_act[..., None, None] * d_memory,
            f_act[..., None] * d_normaliser,
            d_forget_side,
        )
        return d_params, d_z @ params["w_x"].T, d_carry_prev

    # -- the chunkwise-parallel form -------------------------------------------------------

    def parallel(self, params, xs, carry, valid, starts=None):
        """Time-major ``xs (T, B, I)`` -> ``(final MLSTMCarry, hs (T, B, H))`` by the chunkwise
        form (module docstring); ``valid (T, B)``: past a row's length (or at a masked step)
        the state is kept and the output zero; ``starts (T, B)``: the state before that step
        is ``carry``'s. JAX differentiates it (``gradient="manual"`` is refused here)."""
        num_steps, batch_size, _ = xs.shape
        if num_steps == 0:
            return carry, jnp.zeros((0, batch_size, carry.h.shape[-1]), carry.h.dtype)
        p = self.project(params, xs)  # leading axes (T, B)
        log_f, gate_i = jax.nn.log_sigmoid(p.f), p.i
        if valid is not None:  # a skipped step is the identity: f = 1, i = 0 exactly
            log_f = jnp.where(valid[..., None], log_f, 0)
            gate_i = jnp.where(valid[..., None], gate_i, -jnp.inf)
            starts = None if starts is None else starts & valid
        heads_first = lambda a: jnp.moveaxis(a, 0, 2)  # (T, B, NH, ...) -> (B, NH, T, ...)
        q_s = p.q * p.q.shape[-1] ** -0.5
        h_tilde, (memory, normaliser, m) = chunkwise(
            heads_first(q_s), heads_first(p.k), heads_first(p.v),
            jnp.moveaxis(gate_i, 0, -1), jnp.moveaxis(log_f, 0, -1),
            None if starts is None else starts.T, (carry.C, carry.n, carry.m), self.chunk_size,
        )  # fmt: skip
        hs = jax.nn.sigmoid(p.o) * merge_heads(jnp.moveaxis(h_tilde, 2, 0))
        final_h = last_valid(hs, valid, carry.h)
        if valid is not None:
            hs = jnp.where(valid[..., None], hs, 0)
        return MLSTMCarry(final_h, memory, normaliser, m), hs

    # -- shared ----------------------------------------------------------------------------

    def project(self, params, x) -> Projections:
        """``z = x @ w_x + b`` split into the heads' projections; ``x (..., I)``."""
        width = params["w_x"].shape[1]
        heads = self.num_heads
        _, hidden_size = self.sizes(params)
        rows = x.reshape(-1, x.shape[-1])  # a 2-D product (its gradient is faster on CPU)
        z = (rows @ params["w_x"] + params["b"]).reshape(*x.shape[:-1], width)
        cuts = list(itertools.accumulate(self.widths(hidden_size)))[:-1]
        q, k, v, o, i, f = jnp.split(z, cuts, axis=-1)
        return Projections(split_heads(q, heads), split_heads(k, heads),
                           split_heads(v, heads), o, i, f)  # fmt: skip


def chunkwise(q_s, k, v, gate_i, log_f, starts, initial, chunk_size: int):
    """The mLSTM over a sequence, chunk by chunk; batch and heads first.

    ``q_s`` (already scaled by ``1/sqrt(d_k)``), ``k (B, NH, T, d_k)``, ``v (B, NH, T, d_v)``,
    ``gate_i``, ``log_f (B, NH, T)`` (a skipped step: ``-inf`` and ``0``), ``starts (B, T)``
    bool or None, ``initial = (C, n, m)``. Returns ``(h~ (B, NH, T, d_v), (C, n, m) after the
    last step)``.

    In the log scale a step ``t`` reads a term ``j <= t`` of its own episode with the weight
    ``D[t, j] = sum(log_f[j+1..t]) + i[j]``, the state before its chunk with
    ``sum(log_f[chunk start..t]) + m_prev`` (if its episode began before the chunk), and the
    initial carry with ``sum(log_f[r..t]) + m_0`` (if its episode began at a reset ``r`` in
    the chunk); ``m_t`` is the largest weight (the recurrence's stabiliser, unrolled), and
    each term enters scaled by ``exp(weight - m_t)``.
    """
    batch, heads, num_steps, _ = q_s.shape
    size = chunk_size
    num_chunks = -(-num_steps // size)
    pad = num_chunks * size - num_steps
    if pad:  # steps that keep the state, cut off the outputs below
        time_pad = lambda a, value: jnp.pad(
            a, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 3), constant_values=value
        )
        q_s, k, v, log_f = (time_pad(a, 0) for a in (q_s, k, v, log_f))
        gate_i = time_pad(gate_i, -jnp.inf)
        if starts is not None:
            starts = jnp.pad(starts, [(0, 0), (0, pad)])
    chunked = lambda a: a.reshape(batch, heads, num_chunks, size, *a.shape[3:])
    q_s, k, v, gate_i, log_f = map(chunked, (q_s, k, v, gate_i, log_f))
    minus_inf = jnp.asarray(-jnp.inf, log_f.dtype)

    decay = jnp.cumsum(log_f, axis=-1)  # sum(log_f[chunk start..t])    (B, NH, NC, L)
    same = jnp.tril(jnp.ones((size, size), bool))  # j <= t
    from_prev = None  # where the state before the chunk reaches t: no reset in [start, t]
    init_log = None  # log weight of the initial carry at t (without m_0), -inf if none
    if starts is not None:
        starts = starts.reshape(batch, 1, num_chunks, size)
        episode = jnp.cumsum(starts, axis=-1)  # episode index within the chunk
        same = same & (episode[..., :, None] == episode[..., None, :])
        from_prev = episode == 0
        opens = same & starts[..., None, :]  # j is the reset that opened t's episode
        before = decay - log_f  # sum(log_f[chunk start..j-1])
        init_log = jnp.max(
            jnp.where(opens, decay[..., :, None] - before[..., None, :], minus_inf), axis=-1
        )
    log_d = jnp.where(same, decay[..., :, None] - decay[..., None, :] + gate_i[..., None, :],
                      minus_inf)  # fmt: skip
    prev_log = decay if from_prev is None else jnp.where(from_prev, decay, minus_inf)

    memory0, normaliser0, m0 = initial
    if init_log is not None:
        init_log = init_log + m0[..., None, None]

    def across(state, chunk):
        """The state after a chunk from the one before it: the weights of its last step."""
        memory, normaliser, m = state
        k_c, v_c, prev_e, init_e, log_d_e = chunk
        weights = [prev_e + m, jnp.max(log_d_e, axis=-1)]
        if init_e is not None:
            weights.append(init_e)
        m_new = functools.reduce(jnp.maximum, weights)
        prev_w = jnp.exp(prev_e + m - m_new)
        in_w = jnp.exp(log_d_e - m_new[..., None])  # (B, NH, L)
        memory_new = prev_w[..., None, None] * memory + jnp.einsum(
            "bal,balk,balv->bakv", in_w, k_c, v_c
        )
        normaliser_new = prev_w[..., None] * normaliser + jnp.einsum("bal,balk->bak", in_w, k_c)
        if init_e is not None:
            init_w = jnp.exp(init_e - m_new)
            memory_new = memory_new + init_w[..., None, None] * memory0
            normaliser_new = normaliser_new + init_w[..., None] * normaliser0
        return (memory_new, normaliser_new, m_new), state

    chunks_first = lambda a: None if a is None else jnp.moveaxis(a, 2, 0)
    last_step = lambda a: None if a is None else chunks_first(a[..., -1])
    final, before_chunk = jax.lax.scan(
        across, (memory0, normaliser0, m0),
        (chunks_first(k), chunks_first(v), last_step(prev_log), last_step(init_log),
         chunks_first(log_d[..., -1, :])),
    )  # fmt: skip
    memory_prev, normaliser_prev, m_prev = (jnp.moveaxis(a, 0, 2) for a in before_chunk)

    # Every step's output, all chunks at once.
    prev_log = prev_log + m_prev[..., None]
    weights = [prev_log, jnp.max(log_d, axis=-1)]
    if init_log is not None:
        weights.append(init_log)
    m = functools.reduce(jnp.maximum, weights)  # (B, NH, NC, L)
    prev_w = jnp.exp(prev_log - m)[..., None]
    scores = jnp.einsum("bactk,bacsk->bacts", q_s, k)  # q_t . k_s within each chunk
    mixed = scores * jnp.exp(log_d - m[..., None])  # (B, NH, NC, L, L)
    numerator = prev_w * jnp.einsum("bactk,backv->bactv", q_s, memory_prev) + jnp.einsum(
        "bacts,bacsv->bactv", mixed, v
    )
    qn = prev_w[..., 0] * jnp.einsum("bactk,back->bact", q_s, normaliser_prev) + mixed.sum(-1)
    if init_log is not None:
        init_w = jnp.exp(init_log - m)
        numerator = numerator + init_w[..., None] * jnp.einsum("bactk,bakv->bactv", q_s, memory0)
        qn = qn + init_w * jnp.einsum("bactk,bak->bact", q_s, normaliser0)
    h_tilde = numerator / (jnp.maximum(jnp.abs(qn), jnp.exp(-m)) + EPS)[..., None]
    h_tilde = h_tilde.reshape(batch, heads, num_chunks * size, -1)[:, :, :num_steps]
    return h_tilde, final


def outer(a, b):
    """``a (..., K)``, ``b (..., V)`` -> ``a b^T (..., K, V)``."""
    return a[..., :, None] * b[..., None, :]


def split_heads(a, num_heads: int):
    """``(..., NH * d)`` -> ``(..., NH, d)``, head-major."""
    return a.reshape(*a.shape[:-1], num_heads, a.shape[-1] // num_heads)


def merge_heads(a):
    """``(..., NH, d)`` -> ``(..., NH * d)``."""
    return a.reshape(*a.shape[:-2], -1)


def max_weights(a, b):
    """How ``jnp.maximum(a, b)``'s derivative splits between ``a`` and ``b``: 1/0, 0.5 at a
    tie."""
    to_a = jnp.where(a > b, 1.0, jnp.where(a == b, 0.5, 0.0)).astype(a.dtype)
    return to_a, 1 - to_a


@functools.cache
def variant(*, num_heads: int = 1, key_size: int | None = None,
            chunk_size: int = DEFAULT_CHUNK) -> Cell:  # fmt: skip
    """The mLSTM cell with ``num_heads`` heads (``hidden_size`` must be a multiple),
    ``key_size`` = ``d_k`` per head (None: ``d_v = hidden_size / num_heads``) and the
    parallel form's ``chunk_size`` (steps per chunk, any length works)."""
    for name, value in (("num_heads", num_heads), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"mlstm: {name} must be a positive int, got {value!r}")
    if key_size is not None and (
        isinstance(key_size, bool) or not isinstance(key_size, int) or key_size < 1
    ):
        raise ValueError(f"mlstm: key_size must be a positive int or None, got {key_size!r}")
    name = "mlstm" if (num_heads, key_size, chunk_size) == (1, None, DEFAULT_CHUNK) else (
        f"mlstm_h{num_heads}" + (f"_k{key_size}" if key_size else "") + f"_l{chunk_size}"
    )  # fmt: skip
    return cell_of_functions(name, MLSTM(num_heads, key_size, chunk_size))


cell = variant()

init = cell.init
zero_carry = cell.zero_carry
hidden_of = cell.hidden_of
step = cell.step
step_forward = cell.step_forward
step_backward = cell.step_backward
parallel = cell.parallel
