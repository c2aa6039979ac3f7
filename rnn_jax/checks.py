"""Input validation shared by ``unroll``, ``bptt`` and the layers.

Everything here looks only at shapes, dtypes and (when concrete) values, so it runs at trace
time, before any compute, and raises ``ValueError``/``TypeError`` naming what was expected
and what arrived, instead of letting XLA fail later with a shape error deep in a scan.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.cell import PROTOCOL, Cell, cell_of_functions
from rnn_jax.cells.base import LSTMCarry, bias_names


def as_cell(cell):
    """A cell object from a cell or a cell module.

    Accepts a ``Cell``; a module or object whose ``.cell`` is one (``rj.lstm``); or any
    object with the protocol's functions (``rnn_jax.cell``), which is wrapped in a ``Cell``.
    """
    if isinstance(cell, Cell):
        return cell
    found = getattr(cell, "cell", None)
    if isinstance(found, Cell):
        return found
    missing = [name for name in PROTOCOL if not callable(getattr(cell, name, None))]
    if missing == list(PROTOCOL) or isinstance(cell, str):
        raise TypeError(f"expected a cell such as rj.lstm or rj.simple.relu, got {cell!r}")
    if missing:
        raise TypeError(
            f"{cell!r} is not a cell: it lacks {missing} (a cell has {list(PROTOCOL)}); "
            "build one from your functions with rj.make_cell"
        )
    name = getattr(cell, "name", None) or getattr(cell, "__name__", type(cell).__name__)
    return cell_of_functions(str(name), cell)


def check_params(cell, params) -> tuple[int, int]:
    """Validate any cell's parameters; return ``(input_size, hidden_size)``: the fused
    layout for a cell with the fused-gate form, else the structure of ``init``'s."""
    cell = as_cell(cell)
    if cell.fused is not None:
        return check_fused_params(cell.fused, params)
    return check_generic_params(cell, params)


def params_dtype(params):
    """The one floating dtype of a parameter pytree (a complex leaf counts as its real part)."""
    dtypes = _float_dtypes(params)
    if len(dtypes) != 1:
        raise TypeError(f"params must share one floating dtype, got {dtypes}")
    return jnp.dtype(dtypes[0])


def _float_dtypes(params) -> list[str]:
    """The sorted names of the floating dtypes of a pytree's leaves (complex: its real part's)."""
    dtypes = [leaf.dtype for leaf in jax.tree.leaves(params)]
    return sorted({jnp.finfo(d).dtype.name for d in dtypes if jnp.issubdtype(d, jnp.inexact)})


def check_generic_params(cell, params) -> tuple[int, int]:
    """``params`` must have the structure, shapes and dtype of ``cell.init``'s."""
    leaves = jax.tree.leaves(params)
    if not leaves or not all(hasattr(leaf, "shape") for leaf in leaves):
        raise TypeError(f"{cell.name} params must be a pytree of arrays, got {params!r:.200}")
    try:
        input_size, hidden_size = cell.sizes(params)
    except (KeyError, IndexError, AttributeError, TypeError) as err:
        raise ValueError(f"{cell.name}: sizes(params) failed ({err!r})") from err
    try:
        dtype = params_dtype(params)
    except TypeError as err:
        for found in map(jnp.dtype, _float_dtypes(params)):  # is init the cause?
            check_init_dtype(cell, init_shapes(cell, input_size, hidden_size, found), found)
        raise TypeError(f"{cell.name} {err}") from None
    expected = init_shapes(cell, input_size, hidden_size, dtype)
    check_init_dtype(cell, expected, dtype)
    where = f"{cell.name} params (input_size={input_size}, hidden_size={hidden_size})"
    check_like(expected, params, where)
    return input_size, hidden_size


def init_shapes(cell, input_size: int, hidden_size: int, dtype):
    """The shapes and dtypes of ``cell.init``'s params (``jax.eval_shape``: no compute)."""
    return jax.eval_shape(
        lambda key: cell.init(key, input_size, hidden_size, dtype=dtype), jax.random.PRNGKey(0)
    )


def check_init_dtype(cell, shapes, dtype) -> None:
    """``shapes`` (``jax.eval_shape`` of ``cell.init(..., dtype=dtype)``) must all be of
    ``dtype`` (a complex leaf counts as its real part's): else the fault is ``init``'s, and
    the message says so rather than blaming the parameters made from it."""
    dtype = jnp.dtype(dtype)
    wrong: dict[str, list[str]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        if jnp.issubdtype(leaf.dtype, jnp.inexact) and jnp.finfo(leaf.dtype).dtype != dtype:
            wrong.setdefault(jnp.dtype(leaf.dtype).name, []).append(jax.tree_util.keystr(path))
    if wrong:
        found = "; ".join(f"{name} at {', '.join(paths)}" for name, paths in wrong.items())
        raise TypeError(
            f"{cell.name}.init(..., dtype={dtype.name}) returned params of dtype {found}: "
            "init must create every parameter in the dtype it is given (pass dtype= on to "
            "jax.random.normal, jnp.zeros, ...)"
        )


def check_step_contract(cell, params, carry, x) -> None:
    """``cell.step(params, carry, x)`` must return ``(new_carry, h)``, ``new_carry`` with the
    structure, shapes and dtypes of ``carry``. Checked abstractly (``jax.eval_shape``, no
    compute), so a ``step`` that returns only ``h'`` is named here, not by ``lax.scan``."""
    contract = (
        f"{cell.name}.step(params, carry, x) must return a pair (new_carry, h): new_carry "
        "like the carry it was given (the same structure, shapes and dtypes), h the step's "
        "output (B, H_out), e.g. `return h, h` for a cell whose carry is its output"
    )
    try:
        out = jax.eval_shape(cell.step, params, carry, x)
    except Exception as err:  # the step's own error, kept as it is, with the contract noted
        err.add_note(f"while checking that {contract} (carry {_describe(carry)}, x "
                     f"{_describe(x)})")  # fmt: skip
        raise
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        alone = " (only h'?)" if hasattr(out, "shape") else ""
        raise TypeError(f"{contract}; got {_describe(out)}{alone}")
    try:
        check_like(jax.eval_shape(lambda: carry), out[0], f"{cell.name}.step's new_carry")
    except (TypeError, ValueError) as err:
        raise type(err)(f"{contract}; {err} (the carry given: {_describe(carry)})") from None


def _describe(tree) -> str:
    """A pytree of arrays in a few words: ``array (2, 4) float32``, ``LSTMCarry(h=..., c=...)``."""
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return f"array {tuple(tree.shape)} {jnp.dtype(tree.dtype).name}"
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        parts = ", ".join(f"{k}={_describe(v)}" for k, v in zip(tree._fields, tree, strict=True))
        return f"{type(tree).__name__}({parts})"
    if isinstance(tree, (tuple, list)):
        return f"{type(tree).__name__} of {len(tree)}: ({', '.join(map(_describe, tree))})"
    if isinstance(tree, dict):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in tree.items()) + "}"
    return type(tree).__name__


def check_like(expected, got, where: str) -> None:
    """``got`` must have ``expected``'s pytree structure, leaf shapes and dtypes."""
    expected_def, got_def = jax.tree.structure(expected), jax.tree.structure(got)
    if expected_def != got_def:
        if isinstance(expected, dict) and isinstance(got, dict) and set(expected) != set(got):
            raise TypeError(f"{where} must have keys {sorted(expected)}, got {sorted(got)}")
        raise TypeError(f"{where} must have the structure {expected_def}, got {got_def}")
    for (path, want), have in zip(
        jax.tree_util.tree_flatten_with_path(expected)[0], jax.tree.leaves(got), strict=True
    ):
        name = jax.tree_util.keystr(path)
        if getattr(have, "shape", None) != want.shape:
            shape = getattr(have, "shape", type(have).__name__)
            raise ValueError(f"{where}{name} must be {want.shape}, got {shape}")
        if have.dtype != want.dtype:
            raise TypeError(f"{where}{name} dtype {have.dtype} != expected {want.dtype}")


def check_fused_params(cell, params) -> tuple[int, int]:
    """Validate a fused cell's parameter dict (``cell`` its ``FusedGates``); return
    ``(input_size, hidden_size)``."""
    if not isinstance(params, dict):
        raise TypeError(f"{cell.name} params must be a dict of arrays, got {type(params).__name__}")
    if cell.projectable and cell.proj_size is None and "w_hr" in params:
        proj = getattr(params["w_hr"], "shape", (None, "P"))[-1]
        raise ValueError(
            f"{cell.name} params have an output projection w_hr: run them with "
            f"rj.lstm.with_projection({proj}), the cell whose h has {proj} features"
        )
    expected = {"w_x", "w_h", *cell.biases} | ({"w_hr"} if cell.proj_size else set())
    if set(params) != expected:
        raise ValueError(
            f"{cell.name} params must have keys {sorted(expected)}, got {sorted(params)}"
        )
    w_x, w_h = params["w_x"], params["w_h"]
    if w_x.ndim != 2 or w_h.ndim != 2:
        raise ValueError(f"{cell.name} w_x and w_h must be 2-D, got {w_x.shape} and {w_h.shape}")
    hidden_size = w_h.shape[0]
    if cell.proj_size is not None:  # w_h reads the projected h: (P, G*H), w_hr (H, P)
        w_hr, proj = params["w_hr"], cell.proj_size
        if getattr(w_hr, "ndim", None) != 2 or w_hr.shape[1] != proj or w_h.shape[0] != proj:
            raise ValueError(
                f"{cell.name} expects w_hr (H, {proj}) and w_h ({proj}, {cell.num_gates}H); got "
                f"w_hr {getattr(w_hr, 'shape', None)}, w_h {w_h.shape}"
            )
        hidden_size = w_hr.shape[0]
    width = cell.num_gates * hidden_size
    if w_h.shape[1] != width or w_x.shape[1] != width:
        raise ValueError(
            f"{cell.name} with {cell.num_gates} gate(s) expects w_x (I, {width}) and "
            f"w_h ({w_h.shape[0]}, {width}); got w_x {w_x.shape}, w_h {w_h.shape}"
        )
    for name in bias_names(params):
        if params[name].shape != (width,):
            raise ValueError(f"{cell.name} {name} must be ({width},), got {params[name].shape}")
    dtypes = {str(v.dtype) for v in params.values()}
    if len(dtypes) != 1:
        raise TypeError(f"{cell.name} params must share one dtype, got {sorted(dtypes)}")
    return w_x.shape[0], hidden_size


def spatial_rank(cell) -> int:
    """How many spatial axes a cell's inputs and carry leaves have after the batch: 0 for a
    cell of vectors, n for ``rj.conv_lstm`` over n-D inputs (``Cell.spatial_rank``)."""
    return getattr(cell, "spatial_rank", 0)


def carry_lead(cell, step_shape: tuple[int, ...]):
    """``zero_carry``'s first argument for one step's input shape ``(B, *spatial, I)``: the
    batch size ``B`` for a cell of vectors, the carry's leading shape ``(B, *spatial)`` for a
    spatial cell."""
    return step_shape[0] if spatial_rank(cell) == 0 else tuple(step_shape[:-1])


def one_zero_carry(cell, hidden_size: int, dtype=jnp.float32):
    """``cell``'s zero carry for one example (one position per spatial axis), for probing
    shapes and fields with ``jax.eval_shape``."""
    return cell.zero_carry(carry_lead(cell, (1,) * (spatial_rank(cell) + 2)), hidden_size, dtype)


def cell_output_size(cell, hidden_size: int) -> int:
    """Width of the h a cell outputs at each step: its declared ``output_size``, else (a
    user's cell that does not declare it) the last axis of ``hidden_of`` of a zero carry."""
    if cell.output_size is not None:
        return cell.output_size(hidden_size)
    return jax.eval_shape(lambda: cell.hidden_of(one_zero_carry(cell, hidden_size))).shape[-1]


def check_sequence(xs, input_size: int, dtype, *, time_major: bool, name="xs", spatial=0):
    """``xs`` must be a float array ``(B, T, I)`` (``(T, B, I)`` time-major) of ``dtype``;
    ``(B, T, *spatial, I)`` with ``spatial`` axes for a spatial cell (``spatial_rank``)."""
    layout = "(time, batch, input_size)" if time_major else "(batch, time, input_size)"
    if spatial:
        axes = "DHW"[-spatial:] if spatial <= 3 else [f"s{i}" for i in range(spatial)]
        layout = layout.replace("input_size)", f"{', '.join(axes)}, channels={input_size})")
    if not hasattr(xs, "ndim") or xs.ndim != 3 + spatial:
        shape = getattr(xs, "shape", type(xs).__name__)
        one = "" if spatial else " or 2-D (time, input_size) for one sequence"
        raise ValueError(f"{name} must be {3 + spatial}-D {layout}{one}, got shape {shape}")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {xs.dtype}")
    if xs.shape[-1] != input_size:
        where = "last axis" if not spatial else f"last axis (channels) of shape {xs.shape}"
        raise ValueError(
            f"{name} has {xs.shape[-1]} features in its {where} but the cell's w_x expects "
            f"input_size={input_size}"
        )
    if xs.dtype != dtype:
        raise TypeError(
            f"{name} dtype {xs.dtype} does not match the params dtype {dtype}; cast one of them "
            f"(e.g. xs.astype(params['w_x'].dtype))"
        )


def check_steps(flags, name: str, batch_size: int, num_steps: int, *, time_major: bool):
    """Per-step flags (``mask``, ``resets``): bool ``(B, T)``, ``(T, B)`` if ``time_major``.

    Returns them time-major ``(T, B)``, or None for None.
    """
    if flags is None:
        return None
    expected = (num_steps, batch_size) if time_major else (batch_size, num_steps)
    layout = "(time, batch)" if time_major else "(batch, time)"
    shape = getattr(flags, "shape", type(flags).__name__)
    if shape != expected:
        raise ValueError(f"{name} must be {layout} = {expected} bool, got shape {shape}")
    if flags.dtype != jnp.bool_:
        raise TypeError(f"{name} must be bool {expected}, got dtype {flags.dtype}")
    flags = jnp.asarray(flags)
    return flags if time_major else flags.T


def check_carry(cell, carry, batch_size, hidden_size: int, dtype, name="carry"):
    """The carry must be what ``cell.zero_carry(B, H, dtype)`` returns, in structure, shapes
    and dtypes: ``(B, H)`` or, for the LSTM, ``LSTMCarry(h (B, H), c (B, H))``.
    ``batch_size`` is ``(B, *spatial)`` for a spatial cell (``carry_lead``)."""
    expected = jax.eval_shape(lambda: cell.zero_carry(batch_size, hidden_size, dtype))
    if cell.fused is None:
        check_like(expected, carry, f"{cell.name} {name}")
        return carry
    shape = (batch_size, hidden_size)
    if cell.fused.has_cell_state:
        # A plain tuple is refused: (c, h), Flax's order, would pass silently as (h, c).
        if not isinstance(carry, LSTMCarry):
            raise TypeError(
                f"{cell.name} {name} must be LSTMCarry(h, c) of two {shape} arrays, "
                f"got {type(carry).__name__} (wrap a pair as rj.LSTMCarry(h=..., c=...))"
            )
    elif isinstance(carry, tuple) or not hasattr(carry, "shape"):
        raise TypeError(f"{cell.name} {name} must be one {shape} array, got {type(carry).__name__}")
    parts = lambda tree: tree._asdict() if isinstance(tree, LSTMCarry) else {"h": tree}
    for (part, value), want in zip(parts(carry).items(), parts(expected).values(), strict=True):
        if value.shape != want.shape:  # h is (B, P) where the LSTM projects
            raise ValueError(f"{cell.name} {name}.{part} must be {want.shape}, got {value.shape}")
        if value.dtype != dtype:
            raise TypeError(
                f"{cell.name} {name}.{part} dtype {value.dtype} != params dtype {dtype}"
            )
    return carry


def check_lengths(lengths, batch_size: int, num_steps: int):
    """``lengths`` must be integers ``(B,)`` in ``[0, T]``.

    Concrete values are checked here. Traced values (under ``jit``) cannot be, so they are
    clipped to ``[0, T]``: an out-of-range length then acts as 0 or T instead of indexing
    outside the sequence (which produced NaN in the reversed gather).
    """
    if lengths is None:
        return None
    lengths = jnp.asarray(lengths) if not isinstance(lengths, jax.Array) else lengths
    if lengths.shape != (batch_size,):
        raise ValueError(f"lengths must have shape ({batch_size},), got {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
    if not isinstance(lengths, jax.core.Tracer):
        values = np.asarray(lengths)
        if values.size and (values.min() < 0 or values.max() > num_steps):
            raise ValueError(
                f"lengths must lie in [0, {num_steps}] (the sequence length), got min "
                f"{values.min()} and max {values.max()}"
            )
    return jnp.clip(lengths.astype(jnp.int32), 0, num_steps)


def carry_fields(cell) -> set[str]:
    """Which of ``h``, ``c`` the wrapper can set in ``cell``'s carry: ``h`` when
    ``hidden_of`` returns the carry itself or its ``h`` field, ``c`` for a ``c`` field, unless
    the carry's type lists the fields zoneout may keep on their own (``zoneout_fields``, a
    class attribute) without it: ``SLSTMCarry``'s ``c`` is scaled together with ``n``, ``m``."""
    fields = set()

    def probe():
        carry = one_zero_carry(cell, 2)
        h = cell.hidden_of(carry)
        settable = hasattr(carry, "_replace")
        if h is carry or (settable and h is getattr(carry, "h", None)):
            fields.add("h")
        if settable and hasattr(carry, "c") and "c" in getattr(carry, "zoneout_fields", "c"):
            fields.add("c")
        return carry

    jax.eval_shape(probe)
    return fields
