"""What every cell shares.

A cell here is two fused matrix products followed by element-wise gate math:

    z_x = x @ w_x + b_x           (B, G*H)   the input path
    z_h = h @ w_h [+ b_h]         (B, G*H)   the recurrent path
    carry', residuals = pointwise(z_x, z_h, carry)

Only ``pointwise`` (and its hand-written backward) differs between Elman, LSTM and GRU;
the projections, their backward, the carry helpers and the ``step`` / ``step_forward`` /
``step_backward`` functions are written once, here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cell import Cell, backward_of_parts, default_hidden_of, step_of_forward, with_hidden

__all__ = ["FusedGates", "LSTMCarry", "fused_cell", "split_gates"]  # fmt: skip

Array = jax.Array
Params = dict[str, Array]


class LSTMCarry(NamedTuple):
    """The LSTM state: hidden ``h`` and cell ``c``, each ``(B, H)``."""

    h: Array
    c: Array


Carry = Array | LSTMCarry


class StepResiduals(NamedTuple):
    """What one forward step keeps for its backward: input, previous carry, gate values."""

    x: Array  # (B, I)
    carry: Any  # the carry the step read
    gates: Any  # cell-specific, from ``pointwise``


hidden_of = default_hidden_of  # the hidden state h (B, H) inside any carry


def bias_names(params: Params) -> tuple[str, ...]:
    """The fused cell's bias names: ``("b",)`` (one fused bias) or ``("b_x", "b_h")``."""
    return ("b",) if "b" in params else ("b_x", "b_h")


def matmul(a: Array, b: Array, matmul_dtype=None) -> Array:
    """``a @ b``; with ``matmul_dtype`` (e.g. ``"bfloat16"``) the operands are cast to it and
    the product accumulates and returns in ``a``'s dtype (mixed precision: only the matrix
    products run in low precision, carries and gate math stay in float32)."""
    if matmul_dtype is None:
        return a @ b
    return jnp.matmul(
        a.astype(matmul_dtype), b.astype(matmul_dtype), preferred_element_type=a.dtype
    )


def rows_product(x: Array, w: Array) -> Array:
    """``x (..., K) @ w (K, N)`` as one 2-D product of ``x``'s rows: on XLA:CPU the weight
    gradient of a 3-D ``(B, T, K)`` contraction is ~3x slower than the same product on
    ``(B*T, K)`` rows. ``x`` may have no rows (T = 0)."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(x.shape[:-1] + (w.shape[-1],))


def input_projection(params: Params, x: Array, matmul_dtype=None) -> Array:
    """``(..., I) -> (..., G*H)``: ``x @ w_x`` plus the input-side bias."""
    return matmul(x, params["w_x"], matmul_dtype) + params[bias_names(params)[0]]


def hidden_projection(params: Params, h: Array, matmul_dtype=None) -> Array:
    """``(..., H) -> (..., G*H)``: ``h @ w_h`` plus the recurrent-side bias, if the cell has one."""
    z_h = matmul(h, params["w_h"], matmul_dtype)
    return z_h + params["b_h"] if "b_h" in params else z_h


def input_weight_backward(params: Params, x: Array, d_zx: Array, matmul_dtype=None):
    """Backward of the input projection, for any number of rows.

    x ``(N, I)``, d_zx ``(N, G*H)`` -> ``(d_params, d_x (N, I))``: ``d_w_x = x^T d_zx``, the
    input-side bias (the fused ``b`` of cells whose d_zx is d_zh) the column sum, and
    ``d_x = d_zx w_x^T``. BPTT calls it once per *sequence* (rows = T*B): one large product
    instead of T small ones.
    """
    d_params = {"w_x": matmul(x.T, d_zx, matmul_dtype), bias_names(params)[0]: d_zx.sum(0)}
    return d_params, matmul(d_zx, params["w_x"].T, matmul_dtype)


def hidden_weight_backward(params: Params, h_prev: Array, d_zh: Array, matmul_dtype=None):
    """Backward of the recurrent projection: ``{"w_h": h_prev^T d_zh}`` plus ``b_h``'s column
    sum if the cell has one. h_prev ``(N, H)``, d_zh ``(N, G*H)``."""
    d_params = {"w_h": matmul(h_prev.T, d_zh, matmul_dtype)}
    if "b_h" in params:
        d_params["b_h"] = d_zh.sum(0)
    return d_params


class ProjectedGates(NamedTuple):
    """What a step with an output projection ``h' = m @ w_hr`` keeps for its backward."""

    gates: Any  # the cell's own, from ``pointwise``
    m: Array  # (B, H): the output before the projection


def project_output(params: Params, carry: Carry, gates, matmul_dtype=None):
    """The output projection (PyTorch ``nn.LSTM(proj_size=P)``): the pointwise carry's
    ``m (B, H)`` -> ``h' = m @ w_hr (B, P)``, ``w_hr (H, P)``. Returns ``(carry with h',
    ProjectedGates(gates, m))``."""
    m = hidden_of(carry)
    return with_hidden(carry, matmul(m, params["w_hr"], matmul_dtype)), ProjectedGates(gates, m)


def pointwise_backward_of(params: Params, gates, d_carry: Carry, pointwise_backward,
                          matmul_dtype=None):  # fmt: skip
    """``pointwise_backward(gates, d_carry)``, through the output projection when ``params``
    have one: ``d_m = d_h' @ w_hr^T`` (B, H) goes into the gate math. Returns ``(d_zx, d_zh,
    d_carry_direct)``, the last shaped like ``d_carry`` (any leading slot axes too).

    ``d_w_hr = m^T d_h'`` is left to the caller (one product per step or per sequence).
    """
    if "w_hr" not in params:
        return pointwise_backward(gates, d_carry)
    d_h = hidden_of(d_carry)
    d_m = matmul(d_h, params["w_hr"].T, matmul_dtype)
    d_zx, d_zh, d_prev = pointwise_backward(gates.gates, with_hidden(d_carry, d_m))
    # A projectable cell's h reaches h' only through w_h (FusedGates.projectable), so the direct
    # part of dL/dh_prev is zero: the LSTM's pointwise_backward returns zeros (B, H) here.
    return d_zx, d_zh, with_hidden(d_prev, jnp.zeros_like(d_h))


def recurrent_backward(
    params: Params, gates, d_carry: Carry, pointwise_backward, matmul_dtype=None
):
    """The part of a step's backward that the previous step waits for.

    ``d_carry`` may carry extra leading axes (BPTT's truncation slots); the gate residuals
    broadcast against them. Returns ``(d_zx, d_zh, d_carry_prev)``.
    """
    d_zx, d_zh, d_prev = pointwise_backward_of(
        params, gates, d_carry, pointwise_backward, matmul_dtype
    )
    d_h_prev = hidden_of(d_prev) + matmul(d_zh, params["w_h"].T, matmul_dtype)
    return d_zx, d_zh, with_hidden(d_prev, d_h_prev)


@dataclasses.dataclass(frozen=True)
class FusedGates:
    """The fused-gate form of a cell: a ``Cell``'s ``fused`` capability (``rnn_jax.cell``).

    Two fused products and element-wise gate math (module docstring); BPTT for such a cell
    computes the weight gradients as single large products after the backward loop. A
    record of pure functions, hashable, so it can be a static argument.

    ``pointwise(z_x, z_h, carry) -> (carry', gates)``: the element-wise gate math.
    ``pointwise_backward(gates, d_carry') -> (d_zx, d_zh, d_carry_direct)``: its hand-written
    VJP, where ``d_carry_direct`` is the part of ``d_carry`` that skips ``w_h``.
    ``matmul_dtype``: None (products in the parameters' dtype) or a dtype name such as
    ``"bfloat16"`` for mixed precision; ``rj.unroll(..., matmul_dtype=)`` sets it.
    ``projectable``: the carry's h reaches h' only through ``w_h`` (the LSTM), so params with
    an output projection ``w_hr (H, P)`` are exact in the hand-written backward; the steps
    project whenever the params have ``w_hr``. ``proj_size``: P, set by ``with_projection``:
    the zero carry's h is then ``(B, P)``, and the params must have ``w_hr``.
    ``kernel``: ``"tanh"``, ``"relu"``, ``"lstm"`` or ``"gru"`` for the forms that the fused
    sequence kernels (``rnn_jax.backends``) implement; None for any other.
    """

    name: str
    num_gates: int
    init: Callable[..., Params]
    pointwise: Callable
    pointwise_backward: Callable
    biases: tuple[str, ...] = ("b",)
    has_cell_state: bool = False
    matmul_dtype: str | None = None
    projectable: bool = False
    proj_size: int | None = None
    kernel: str | None = None  # the fused sequence kernels' name for this form (backends)

    @property
    def sums_products(self) -> bool:
        """The gate math reads the products only as their sum ``z_x + z_h`` (one fused bias
        ``b``: Elman, LSTM), so ``pointwise_backward``'s ``d_zx`` and ``d_zh`` are equal and
        BPTT computes both weight gradients after the loop from one stacked array."""
        return self.biases == ("b",)

    @property
    def cell(self) -> Cell:
        """The ``Cell`` whose protocol functions are this form's (the same object for equal
        forms: a static jit argument)."""
        return _cell_of(self)

    def sizes(self, params: Params) -> tuple[int, int]:
        """``(input_size, hidden_size)`` of the fused layout (``rnn_jax.checks`` validates it)."""
        w_hr = params.get("w_hr") if self.proj_size is not None else None
        hidden = w_hr.shape[0] if w_hr is not None else params["w_h"].shape[0]
        return params["w_x"].shape[0], hidden

    def zero_carry(self, batch_size: int, hidden_size: int, dtype=jnp.float32) -> Carry:
        """Zeros: ``(B, H)``, or ``LSTMCarry`` of two ``(B, H)`` (h ``(B, P)`` with a
        ``proj_size``)."""
        h = jnp.zeros((batch_size, hidden_size), dtype)
        if self.proj_size is not None:
            return LSTMCarry(jnp.zeros((batch_size, self.proj_size), dtype), h)
        return LSTMCarry(h, jnp.zeros_like(h)) if self.has_cell_state else h

    def output_size(self, hidden_size: int) -> int:
        """The width of h: P with an output projection, else ``hidden_size``."""
        return self.proj_size or hidden_size

    def with_projection(self, proj_size: int) -> FusedGates:
        """This cell with its output projected to ``proj_size`` features (PyTorch
        ``nn.LSTM(proj_size=P)``): ``init`` adds ``w_hr (H, P)``, the zero carry's h is
        ``(B, P)``. The same object for the same P (a static jit argument)."""
        return _with_projection(self, proj_size)

    def step_forward(self, params: Params, carry: Carry, x: Array, h_read=None):
        """One step that also returns what its backward needs: ``(carry', h', StepResiduals)``.

        ``h_read`` (B, H): what the recurrent product ``h @ w_h`` reads instead of the carry's
        ``h``, which the gate math still sees (recurrent dropout, ``rj.regularized``: Keras
        drops ``h`` in the product only). None: the carry's ``h``.
        """
        z_x = input_projection(params, x, self.matmul_dtype)
        read = hidden_of(carry) if h_read is None else h_read
        z_h = hidden_projection(params, read, self.matmul_dtype)
        new_carry, gates = self.pointwise(z_x, z_h, carry)
        if "w_hr" in params:  # pytree structure: decided while tracing
            new_carry, gates = project_output(params, new_carry, gates, self.matmul_dtype)
        # The residual carry's h is what w_h read: its gradient is read^T d_zh.
        kept = carry if h_read is None else with_hidden(carry, h_read)
        return new_carry, hidden_of(new_carry), StepResiduals(x, kept, gates)

    def step_backward_parts(self, params: Params, residuals: StepResiduals, d_h, d_carry=None):
        """The hand-written VJP of ``step``, dL/dh_prev left in its two parts (the cell's
        ``step_backward``, ``backward_of_parts``, sums them). ``d_h`` (B, H) is dL/dh' from the
        step's output, ``d_carry`` dL/dcarry' from the next step (None: zero). Returns
        ``(d_params, d_x (B, I), d_carry_direct, d_read (B, H))``: ``d_carry_direct`` the part
        that skips ``w_h`` and ``d_read = d_zh @ w_h^T`` the gradient of what the product read
        (``h_read``). Recurrent dropout scales only ``d_read``."""
        if d_carry is None:
            d_carry = jax.tree.map(jnp.zeros_like, residuals.carry)
        d_carry = with_hidden(d_carry, hidden_of(d_carry) + d_h)
        d_zx, d_zh, d_prev = pointwise_backward_of(
            params, residuals.gates, d_carry, self.pointwise_backward, self.matmul_dtype
        )
        d_read = matmul(d_zh, params["w_h"].T, self.matmul_dtype)
        d_params, d_x = input_weight_backward(params, residuals.x, d_zx, self.matmul_dtype)
        h_prev = hidden_of(residuals.carry)
        d_params |= hidden_weight_backward(params, h_prev, d_zh, self.matmul_dtype)
        if "w_hr" in params:
            d_params["w_hr"] = matmul(residuals.gates.m.T, hidden_of(d_carry), self.matmul_dtype)
        return d_params, d_x, d_prev, d_read


def check_proj_size(proj_size) -> None:
    """An output projection's width P must be a positive int (``with_projection``, ``init``)."""
    if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 1:
        raise ValueError(f"proj_size must be a positive int, got {proj_size!r}")


@functools.cache
def _with_projection(cell: FusedGates, proj_size: int) -> FusedGates:
    if not cell.projectable:
        raise ValueError(f"{cell.name} has no output projection (only the LSTM has, as PyTorch)")
    check_proj_size(proj_size)
    if cell.proj_size is not None:
        raise ValueError(f"{cell.name} is already projected to {cell.proj_size}")
    init = functools.partial(cell.init, proj_size=proj_size)
    return dataclasses.replace(cell, name=f"{cell.name}_proj{proj_size}", init=init,
                               proj_size=proj_size)  # fmt: skip


@functools.cache
def _cell_of(form: FusedGates) -> Cell:
    return Cell(
        name=form.name, init=form.init, step=functools.partial(step_of_forward, form.step_forward),
        zero_carry=form.zero_carry, hidden_of=hidden_of, step_forward=form.step_forward,
        step_backward=functools.partial(backward_of_parts, form.step_backward_parts),
        sizes=form.sizes, fused=form, recurrent_dropout="read", output_size=form.output_size,
        step_backward_parts=form.step_backward_parts,
    )  # fmt: skip


def fused_cell(name: str, num_gates: int, init, pointwise, pointwise_backward, **form) -> Cell:
    """A ``Cell`` with the fused-gate form (module docstring): ``pointwise(z_x, z_h, carry)
    -> (carry', gates)`` and its hand-written ``pointwise_backward``; ``form`` as
    ``FusedGates``' fields (``biases``, ``has_cell_state``, ``projectable``)."""
    return FusedGates(name, num_gates, init, pointwise, pointwise_backward, **form).cell


def split_gates(z: Array, num_gates: int) -> list[Array]:
    """``(..., G*H) -> G x (..., H)``, gate order as stored."""
    return jnp.split(z, num_gates, axis=-1)
