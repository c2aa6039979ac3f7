"""THE cell type: ``Cell``, the protocol every rnn_jax cell follows, and ``make_cell``.

Every cell, built in or a user's, is one frozen ``Cell`` of these pure functions:

    init(key, input_size, hidden_size, *, dtype=jnp.float32, **options) -> params   any pytree
    zero_carry(batch_size, hidden_size, dtype=jnp.float32) -> carry   pytree, leaves (B, ...)
    hidden_of(carry) -> h (B, H_out)                 what the layer outputs at each step
    step(params, carry, x (B, I)) -> (carry', h')
    step_forward(params, carry, x) -> (carry', h', residuals)
    step_backward(params, residuals, d_h, d_carry) -> (d_params, d_x, d_carry_prev)

``step_backward`` is the VJP of ``step``: ``d_h`` is dL/dh' (B, H_out), ``d_carry``
dL/dcarry' (same pytree as the carry); the result has the structures of ``params``, ``x`` and
``carry``. It must be linear in ``(d_h, d_carry)`` (every VJP is): BPTT relies on that to
mask padded rows and to run truncation slots through it with ``jax.vmap``.

Every carry leaf has the batch as its first axis (``lengths`` and masks act along it).

Beyond the protocol a cell may declare *capabilities*, which the drivers test for presence
(never by class):

- ``fused``: the fused-gate form (``rnn_jax.cells.base.FusedGates``: two fused products and
  element-wise gate math), which BPTT uses for its after-loop weight products and which
  ``matmul_dtype`` and the fused backends need;
- ``parallel``: a form that runs a whole sequence at once (``rj.unroll``'s
  ``mode="parallel"``). A linear recurrence states only its ``LinearForm`` (the coefficients
  of ``state_t = a_t * state_{t-1} + b_t`` and a readout) and ``linear_parallel`` does the
  rest for every such cell: the scan, lengths, masks, resets and the final carry, and the
  hand-written reverse scan as its gradient (``gradient="manual"``). ``parallel_backward``
  says a ``parallel`` function takes ``gradient=`` and has a hand-written backward for
  ``"manual"`` (True for every ``LinearForm`` and ``rj.rglru``); without it (``rj.mlstm``'s
  chunkwise form) JAX differentiates it and ``gradient="manual"`` is refused there;
- ``recurrent_dropout``: where recurrent dropout acts. ``"read"``: ``step_forward`` takes
  ``h_read=`` (what the recurrent products read instead of the carry's ``h``) and
  ``step_backward_parts`` returns dL/d(h read) apart; ``"carry"``: the carry's ``h`` is read
  only by recurrent products, so scaling it is exact; None: refused by name;
- ``spatial_rank``: how many spatial axes inputs and carry leaves have after the batch (0 for
  a cell of vectors, n for ``rj.conv_lstm`` over n-D inputs);
- ``output_size``: ``output_size(hidden_size) -> width of h`` (``hidden_width`` for a cell
  whose h is ``(B, [*spatial,] H)``); None: the layers read it from ``hidden_of`` of a zero
  carry (``rnn_jax.checks.cell_output_size``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from rnn_jax.ops.linear_recurrence import scan_states

__all__ = [  # fmt: skip
    "Cell", "LinearForm", "PROTOCOL", "RecurrentCell", "make_cell",
]

PyTree = Any


@runtime_checkable
class RecurrentCell(Protocol):
    """The cell protocol (module docstring), for type annotations and ``isinstance``."""

    name: str

    def init(self, key, input_size: int, hidden_size: int, *, dtype=jnp.float32, **options): ...

    def zero_carry(self, batch_size: int, hidden_size: int, dtype=jnp.float32): ...

    def hidden_of(self, carry): ...

    def step(self, params, carry, x): ...

    def step_forward(self, params, carry, x): ...

    def step_backward(self, params, residuals, d_h, d_carry): ...


PROTOCOL = ("init", "zero_carry", "hidden_of", "step", "step_forward", "step_backward")


RECURRENT_DROPOUT_SITES = (None, "read", "carry")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell: the protocol's pure functions plus its capabilities (module docstring);
    hashable, so a static jit argument.

    ``sizes(params) -> (input_size, hidden_size)`` reads the sizes back from parameters;
    ``hand_written`` is False when ``step_backward`` was derived with ``jax.vjp``.
    """

    name: str
    init: Callable
    step: Callable
    zero_carry: Callable
    hidden_of: Callable
    step_forward: Callable
    step_backward: Callable
    sizes: Callable
    hand_written: bool = True
    parallel: Callable | None = None
    spatial_rank: int = 0
    fused: Any = None  # rnn_jax.cells.base.FusedGates, or None
    parallel_backward: bool = False  # parallel takes gradient=, and "manual" is by hand
    recurrent_dropout: str | None = None
    step_backward_parts: Callable | None = None
    output_size: Callable | None = None  # hidden_size -> width of h; None: probed
    linear: LinearForm | None = None  # a linear recurrence's form (what parallel runs)

    def __post_init__(self):
        if self.recurrent_dropout not in RECURRENT_DROPOUT_SITES:
            raise ValueError(
                f"{self.name}: recurrent_dropout must be one of {RECURRENT_DROPOUT_SITES}, "
                f"got {self.recurrent_dropout!r}"
            )
        if self.recurrent_dropout == "read" and self.step_backward_parts is None:
            raise ValueError(
                f"{self.name}: recurrent_dropout='read' needs step_backward_parts (the "
                "backward with dL/d(h read) apart from the rest of dL/dcarry_prev)"
            )

    def with_projection(self, proj_size: int) -> Cell:
        """This cell with its output projected to ``proj_size`` features (PyTorch
        ``nn.LSTM(proj_size=P)``); only a fused cell that is ``projectable`` (the LSTM)."""
        if self.fused is None:
            raise ValueError(f"{self.name} has no output projection (only the LSTM has)")
        return self.fused.with_projection(proj_size).cell

    def with_matmul_dtype(self, matmul_dtype) -> Cell:
        """This fused cell with its matrix products in ``matmul_dtype`` (None: off)."""
        if self.fused is None:
            raise ValueError(f"{self.name} is not a fused-gate cell: it has no matmul_dtype")
        name = None if matmul_dtype is None else jnp.dtype(matmul_dtype).name
        return dataclasses.replace(self.fused, matmul_dtype=name).cell


def make_cell(
    name: str,
    init: Callable,
    step: Callable | None = None,
    *,
    zero_carry: Callable | None = None,
    hidden_of: Callable | None = None,
    step_forward: Callable | None = None,
    step_backward: Callable | None = None,
    sizes: Callable | None = None,
    parallel: Callable | None = None,
    linear: LinearForm | None = None,
    spatial_rank: int = 0,
    recurrent_dropout: str | None = None,
    step_backward_parts: Callable | None = None,
    output_size: Callable | None = None,
) -> Cell:
    """A cell from plain functions, usable everywhere a library cell is.

    Args:
      name: shown in errors and reports.
      init: ``init(key, input_size, hidden_size, *, dtype=jnp.float32, **options) -> params``.
      step: ``step(params, carry, x (B, I)) -> (carry', h' (B, H_out))``; None: your
        ``step_forward`` without its residuals (give it and ``step_backward``).
      zero_carry: ``(batch_size, hidden_size, dtype) -> carry``; default zeros ``(B, H)``.
      hidden_of: ``carry -> h``; default the carry itself if it is an array, else its ``h``
        field, else its first element.
      step_forward: ``(params, carry, x) -> (carry', h', residuals)``, keeping what your
        ``step_backward`` needs. Default: ``step`` plus the residuals ``(carry, x)``.
      step_backward: ``(params, residuals, d_h, d_carry) -> (d_params, d_x, d_carry_prev)``,
        the hand-written VJP. Default: ``jax.vjp`` of ``step`` from ``(carry, x)``, so you
        can start with autodiff and write the backward later.
      sizes: ``params -> (input_size, hidden_size)``; default reads ``w_x (I, ...)`` and
        ``w_h (H, ...)`` of a dict of parameters.
      parallel: for a recurrence that can run over a whole sequence at once (a linear one,
        see ``rj.linear_scan``): ``(params, xs (T, B, I), carry, valid (T, B) | None, starts,
        *, method) -> (final_carry, hs (T, B, H_out))``, time-major, past a row's length
        the carry frozen and the output zero, ``starts (T, B) | None`` where the carry
        restarts from the initial one. ``rj.unroll`` uses it with ``mode="parallel"``; its
        gradient is JAX's autodiff through it (``gradient="manual"`` is refused there).
      linear: for a recurrence ``state_t = a_t * state_{t-1} + b_t``, its ``LinearForm``
        in place of ``parallel``: the library then scans it and applies lengths, masks,
        resets and the final carry.
      spatial_rank: n > 0 for a cell over n-D inputs (a convolutional cell): each step
        reads ``x (B, *spatial, I)``, sequences are ``(B, T, *spatial, I)``, and
        ``zero_carry`` takes the carry's leading shape ``(B, *spatial)`` in place of
        ``batch_size`` (the checks build it from ``xs``). 0 (default): vectors.
      recurrent_dropout: where ``rj.unroll(..., recurrent_dropout=)`` acts. ``"carry"``: your
        step reads the carry's ``h`` only through recurrent products, so the mask scales
        it there; ``"read"``: your ``step_forward`` takes ``h_read=`` (what the products read)
        and ``step_backward_parts`` returns ``(d_params, d_x, d_carry_direct, d_read)``;
        None (default): recurrent dropout is refused for this cell.
      step_backward_parts: with ``recurrent_dropout="read"``, as above; ``step_backward``
        defaults to it, its two parts summed (``backward_of_parts``).
      output_size: ``hidden_size -> width of h'`` (``rnn_jax.cell.hidden_width`` when h is
        ``(B, H)``); None (default): read from ``hidden_of`` of a zero carry.

    Examples:
      >>> import jax, jax.numpy as jnp, rnn_jax as rj
      >>> def init(key, input_size, hidden_size, *, dtype=jnp.float32):
      ...     k1, k2 = jax.random.split(key)
      ...     return {"w_x": 0.1 * jax.random.normal(k1, (input_size, hidden_size), dtype),
      ...             "w_h": 0.1 * jax.random.normal(k2, (hidden_size, hidden_size), dtype)}
      >>> def step(params, h, x):
      ...     h = jnp.tanh(x @ params["w_x"] + h @ params["w_h"])
      ...     return h, h
      >>> cell = rj.make_cell("my_tanh", init, step)
      >>> params = cell.init(jax.random.PRNGKey(0), 3, 5)
      >>> carry, hs = rj.unroll(cell, params, jnp.ones((2, 7, 3)), gradient="manual")
      >>> hs.shape
      (2, 7, 5)
    """
    if step_backward is None and step_backward_parts is not None:
        step_backward = functools.partial(backward_of_parts, step_backward_parts)
    if (step_forward is None) != (step_backward is None):
        pair = ("step_forward", "step_backward")
        given, missing = pair if step_backward is None else pair[::-1]
        raise ValueError(
            f"{name}: {given} was given without {missing}. A hand-written backward reads the "
            "residuals its step_forward keeps, (params, carry, x) -> (carry', h', residuals): "
            "the derived backward cannot read yours, nor was yours written for the default "
            "(carry, x). Give both, or neither (the backward is then derived with jax.vjp)."
        )
    if step is None:
        if step_forward is None:
            raise TypeError(f"{name}: give step, or step_forward and step_backward")
        step = functools.partial(step_of_forward, step_forward)
    if linear is not None:
        if parallel is not None:
            raise ValueError(f"{name}: give parallel= or linear= (which builds it), not both")
        parallel = functools.partial(linear_parallel, linear, hidden_of or default_hidden_of)
    hand_written = step_backward is not None
    if step_forward is None:
        step_forward = functools.partial(_forward_keeping_inputs, step)
    if step_backward is None:
        step_backward = functools.partial(_vjp_backward, step)
    return Cell(
        name=name,
        init=init,
        step=step,
        zero_carry=zero_carry or _zero_hidden,
        hidden_of=hidden_of or default_hidden_of,
        step_forward=step_forward,
        step_backward=step_backward,
        sizes=sizes or fused_sizes,
        hand_written=hand_written,
        parallel=parallel,
        parallel_backward=linear is not None,
        spatial_rank=spatial_rank,
        recurrent_dropout=recurrent_dropout,
        step_backward_parts=step_backward_parts,
        output_size=output_size,
        linear=linear,
    )


def backward_of_parts(step_backward_parts, params, residuals, d_h, d_carry=None):
    """``step_backward`` from ``step_backward_parts``: dL/dh_prev is the direct part's ``h``
    plus ``d_read``. ``functools.partial(backward_of_parts, parts)``."""
    d_params, d_x, d_direct, d_read = step_backward_parts(params, residuals, d_h, d_carry)
    return d_params, d_x, with_hidden(d_direct, default_hidden_of(d_direct) + d_read)


def with_hidden(carry, h):
    """``carry`` with its hidden state replaced by ``h``: ``h`` itself for an array carry,
    else the carry (a NamedTuple: ``LSTMCarry``, a custom cell's) with its ``h`` field set."""
    return h if hasattr(carry, "shape") else carry._replace(h=h)


def step_of_forward(step_forward, params, carry, x):
    """``step`` from a ``step_forward``: the same computation without the residuals (unused
    outputs are dead code under jit). ``functools.partial(step_of_forward, forward)``."""
    new_carry, h, _ = step_forward(params, carry, x)
    return new_carry, h


def _forward_keeping_inputs(step, params, carry, x):
    new_carry, h = step(params, carry, x)
    return new_carry, h, (carry, x)


def _vjp_backward(step, params, residuals, d_h, d_carry):
    """The backward of ``step`` by ``jax.vjp``, recomputing the step from ``(carry, x)``."""
    carry, x = residuals
    _, vjp = jax.vjp(step, params, carry, x)
    d_params, d_carry_prev, d_x = vjp((d_carry, d_h))
    return d_params, d_x, d_carry_prev


def hidden_width(hidden_size: int) -> int:
    """A cell's ``output_size`` when its h is ``(B, [*spatial,] H)``: the hidden size."""
    return hidden_size


def _zero_hidden(batch_size: int, hidden_size: int, dtype=jnp.float32):
    return jnp.zeros((batch_size, hidden_size), dtype)


def default_hidden_of(carry):
    """The carry itself (an array), its ``h`` field, or its first element."""
    if hasattr(carry, "shape"):
        return carry
    if hasattr(carry, "h"):
        return carry.h
    if isinstance(carry, (tuple, list)) and carry:
        return carry[0]
    raise TypeError(
        f"cannot tell the hidden state inside a carry of type {type(carry).__name__}: "
        "pass hidden_of= to rj.make_cell"
    )


def cell_of_functions(name: str, functions) -> Cell:
    """A ``Cell`` from an object (a module, a class instance) that has ``init`` and the other
    protocol functions as attributes (any it lacks take ``make_cell``'s defaults), and
    optionally ``sizes``, ``parallel`` (or ``linear``, a ``LinearForm``), ``spatial_rank``,
    ``recurrent_dropout``, ``step_backward_parts`` and ``output_size``."""
    optional = (*PROTOCOL[1:], "sizes", "parallel", "linear", "spatial_rank",
                "recurrent_dropout", "step_backward_parts", "output_size")  # fmt: skip
    found = {name: getattr(functions, name) for name in optional if hasattr(functions, name)}
    return make_cell(name, functions.init, **found)


def protocol_of(cell: Cell) -> tuple[Callable, ...]:
    """``cell``'s functions in ``PROTOCOL`` order (``init, zero_carry, hidden_of, step,
    step_forward, step_backward``): what a cell module exports under the same names."""
    return tuple(getattr(cell, name) for name in PROTOCOL)


def keys_of(tree) -> list | str:
    """For error messages: a mapping's sorted keys, else the type's name."""
    return sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__


def fused_sizes(params) -> tuple[int, int]:
    """``(input_size, hidden_size)`` from ``params["w_x"] (I, ...)``, ``params["w_h"] (H, ...)``."""
    if not isinstance(params, dict) or "w_x" not in params or "w_h" not in params:
        raise ValueError(
            "the default sizes() reads input_size from params['w_x'] (I, ...) and hidden_size "
            f"from params['w_h'] (H, ...); these params have {keys_of(params)}: pass sizes= to "
            "rj.make_cell"
        )
    return int(params["w_x"].shape[0]), int(params["w_h"].shape[0])


@dataclasses.dataclass(frozen=True)
class LinearForm:
    """A recurrence ``state_t = a_t * state_{t-1} + b_t`` (element-wise) and its readout.

    ``coefficients(params, xs (T, B, I), carry) -> (a, b (T, B, ...), state0 (B, ...))``;
    ``readout(params, states (T, B, ...), xs) -> hs (T, B, H)`` (None: the states are the
    outputs); ``carry_of(carry0, state, h) -> carry`` (None: the carry is the state).
    ``fused_gates`` names the gate maths a fused kernel computes itself from
    ``preactivations(params, xs, carry) -> (k (T, B, G*H), bias (G*H,), state0)``
    (``"mingru"``: ``a = 1 - sigmoid(k_z + b_z)``, ``b = sigmoid(k_z + b_z) * (k_h + b_h)``;
    ``"minlstm"``: ``rj.minlstm``'s normalised gates; no readout), a map of each position
    alone, so it may be given ``xs (B, T, I)`` too; None: the kernel reads ``a, b``.
    """

    coefficients: Callable
    readout: Callable | None = None
    carry_of: Callable | None = None
    fused_gates: str | None = None
    preactivations: Callable | None = None


def linear_parallel(form: LinearForm, hidden_of, params, xs, carry, valid, starts=None, *,
                    method="auto", gradient="manual"):  # fmt: skip
    """A cell's ``parallel`` from its ``LinearForm``: time-major ``xs (T, B, I)`` ->
    ``(final carry, hs (T, B, H))``; past a row's length (``valid (T, B)``) the carry is
    frozen and the output zero, and at ``starts (T, B)`` the state restarts from the carry's
    (``rnn_jax.ops.linear_recurrence.scan_states``)."""
    a, b, state0 = form.coefficients(params, xs, carry)
    final_state, states = scan_states(a, b, state0, valid=valid, starts=starts, method=method,
                                      gradient=gradient)  # fmt: skip
    return linear_readout(form, hidden_of, params, xs, carry, valid, final_state, states)


def linear_readout(form: LinearForm, hidden_of, params, xs, carry, valid, final_state, states):
    """``(final carry, hs (T, B, H))`` from the scanned ``states (T, B, ...)`` and the final
    state: the form's readout, outputs zero past each row's length (``valid (T, B)``)."""
    if form.readout is None:
        return final_state, states
    hs = form.readout(params, states, xs)
    final_h = last_valid(hs, valid, hidden_of(carry))
    if valid is not None:
        hs = jnp.where(valid.reshape(valid.shape + (1,) * (hs.ndim - 2)), hs, 0)
    return form.carry_of(carry, final_state, final_h), hs


def last_valid(hs, valid, initial):
    """For a parallel form: each row's output at its last valid step (``initial`` if it has
    none); ``hs (T, B, H)``, ``valid (T, B)`` bool or None."""
    if hs.shape[0] == 0:
        return initial
    if valid is None:
        return hs[-1]
    last = hs.shape[0] - 1 - jnp.argmax(valid[::-1], axis=0)
    picked = hs[last, jnp.arange(hs.shape[1])]
    return jnp.where(valid.any(axis=0)[:, None], picked, initial)
