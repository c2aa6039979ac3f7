"""Weight converters between rnn_jax parameters and PyTorch, Flax linen and Keras, the
``xlstm`` package's sLSTM (``slstm_from_xlstm``, ``slstm_to_xlstm``) and recurrentgemma's
Griffin/Hawk layers (``rglru_*``, ``hawk_block_*``, ``carry_*_recurrentgemma``).

Every converter works on plain arrays, so none of those frameworks is imported here: a
PyTorch state_dict may hold tensors (read through ``.detach().cpu().numpy()``) or numpy
arrays, Flax variables are nested mappings of arrays, Keras weights are the list that
``layer.get_weights()`` returns. Only ``to_torch(..., as_tensors=True)`` imports torch, when
it is called.

rnn_jax layouts (see ``docs/design.md``): ``w_x (I, G*H)``, ``w_h (H, G*H)``, gates side by side
in PyTorch's order (LSTM i, f, g, o; GRU r, z, n); a stack is a list of layers, a
bidirectional layer ``{"fwd": p, "bwd": p}``.

Round trips:
  * rnn_jax -> X -> rnn_jax is bitwise exact for all three frameworks.
  * X -> rnn_jax -> X is bitwise exact for Keras and Flax. For PyTorch's Elman/LSTM the two
    biases ``bias_ih + bias_hh`` are fused into one ``b`` (the model is the same function),
    so going back gives ``bias_ih = b`` and ``bias_hh = -0.0``: equal as a model, equal in
    ``bias_ih + bias_hh`` up to one rounding, not equal entry by entry.

A bias the other side lacks is written as ``-0.0``: it is the additive identity of every
float, ``-0.0`` included (``+0.0`` is not: ``-0.0 + 0.0 == +0.0``), so folding it back into
the other bias leaves that bias bitwise unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.cell import Cell, keys_of
from rnn_jax.cells import rglru, slstm
from rnn_jax.cells.base import LSTMCarry
from rnn_jax.checks import as_cell, check_params, spatial_rank
from rnn_jax.layers import directions, is_bidirectional

_ZERO = -0.0

__all__ = [
    "carry_from_flax",
    "carry_from_recurrentgemma",
    "carry_to_recurrentgemma",
    "carry_to_flax",
    "from_flax",
    "from_keras",
    "from_torch",
    "hawk_block_from_recurrentgemma",
    "hawk_block_to_recurrentgemma",
    "rglru_from_recurrentgemma",
    "rglru_to_recurrentgemma",
    "slstm_from_xlstm",
    "slstm_to_xlstm",
    "to_flax",
    "to_keras",
    "to_torch",
]


# ---------------------------------------------------------------------------------------
# shared helpers


def _numpy(value) -> np.ndarray:
    """A numpy array from a torch tensor, a jax array or anything ``np.asarray`` reads."""
    if hasattr(value, "detach"):  # a torch tensor; duck-typed so torch is never imported
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16 of its own
            return value.float().numpy().astype(jnp.bfloat16)
        return value.numpy()
    return np.asarray(value)


def _zeros(width: int, dtype) -> np.ndarray:
    return np.full((width,), _ZERO, dtype)


def _bias_pair(layer: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(input side, recurrent side)`` biases, each ``(G*H,)``: ``b_x, b_h``, or a fused
    ``b`` and ``-0.0`` (module docstring), as every framework here keeps them."""
    if "b" in layer:
        return layer["b"], _zeros(layer["b"].shape[0], layer["b"].dtype)
    return layer["b_x"], layer["b_h"]


def _biases(b_in: np.ndarray, b_rec: np.ndarray, cell: Cell) -> dict:
    """``_bias_pair``'s inverse for a fused cell: its ``b_x, b_h``, or ``b = b_in + b_rec``
    (the same model where the gate math reads only ``z_x + z_h``)."""
    if cell.fused.sums_products:
        return {"b": b_in + b_rec}
    return {"b_x": b_in, "b_h": b_rec}


def _reorder_gates(array: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """``array (..., G*H)`` with its G gate blocks rearranged: block k of the result is block
    ``order[k]`` of ``array``."""
    blocks = np.split(array, len(order), axis=-1)
    return np.concatenate([blocks[k] for k in order], axis=-1)


def _finish(cell: Cell, params: dict, dtype) -> dict:
    """numpy -> jax arrays (cast to ``dtype`` if given), then the same checks as ``unroll``."""
    params = {k: jnp.asarray(v, dtype=dtype) for k, v in params.items()}
    check_params(cell, params)
    return params


def _has_cell_state(cell) -> bool:
    """Whether a fused cell carries ``LSTMCarry(h, c)`` (the LSTM)."""
    return getattr(as_cell(cell).fused, "has_cell_state", False)  # fused is None: no


def _layers_of(params) -> tuple[list, bool]:
    """``(layers, was_a_stack)``: a stack (list), or one layer treated as a stack of one."""
    if isinstance(params, (list, tuple)):
        if not params:
            raise ValueError("stack params must be a non-empty list of layer params")
        return list(params), True
    if isinstance(params, Mapping):
        return [params], False
    raise TypeError(f"expected a cell's params dict or a list of layers, got {type(params)}")


def _check_layer(cell: Cell, layer) -> None:
    """Every direction's params, as ``unroll`` checks them (one layer's: a mapping)."""
    if not isinstance(layer, Mapping):
        raise TypeError(f"expected one layer's params (a dict), got {type(layer).__name__}")
    for part in directions(layer):
        check_params(cell, dict(part))


def _np_params(layer) -> dict:
    return {k: _numpy(v) for k, v in layer.items()}


# ---------------------------------------------------------------------------------------
# PyTorch: nn.RNN / nn.LSTM / nn.GRU (and the one-step nn.RNNCell / LSTMCell / GRUCell)

# nn.RNNBase.mode -> our cell's name
_TORCH_MODES = {"RNN_TANH": "simple", "RNN_RELU": "simple_relu", "LSTM": "lstm", "GRU": "gru"}


def _torch_mode(module) -> str:
    mode = getattr(module, "mode", None)
    if mode is not None:
        return mode
    kind = type(module).__name__
    if kind == "RNNCell":
        return "RNN_" + str(getattr(module, "nonlinearity", "tanh")).upper()
    return {"LSTMCell": "LSTM", "GRUCell": "GRU"}.get(kind, kind)


def _torch_name(cell: Cell) -> str:
    """The cell's name among ``_TORCH_MODES``: a projected LSTM is PyTorch's LSTM too."""
    form = cell.fused
    return "lstm" if form is not None and form.proj_size and form.projectable else cell.name


def _check_torch_module(module, cell: Cell) -> None:
    mode = _torch_mode(module)
    expected = _TORCH_MODES.get(mode)
    if expected is None:
        raise TypeError(
            f"expected torch nn.RNN, nn.LSTM, nn.GRU or their Cell versions, got "
            f"{type(module).__name__}"
        )
    if expected != _torch_name(cell):
        raise ValueError(
            f"the torch module is a {type(module).__name__} ({mode}), which is rnn_jax's "
            f"{expected!r} cell, but cell={cell.name!r} was given"
        )


def _check_torch_cell(cell) -> None:
    if _torch_name(cell) not in _TORCH_MODES.values():
        raise ValueError(
            f"PyTorch has no module with the weights of rnn_jax's {cell.name!r} cell; the torch "
            f"converters handle {sorted(_TORCH_MODES.values())}"
        )


def _layer_from_torch(state: dict, suffix: str, cell: Cell, used: set) -> dict:
    """One direction of one layer: ``weight_ih{suffix}`` ... -> a cell's params (numpy)."""
    names = [f"{n}{suffix}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    w_ih, w_hh, b_ih, b_hh = (state.get(n) for n in names)
    if w_ih is None or w_hh is None:
        raise ValueError(f"missing {names[0]} or {names[1]} in the torch state_dict")
    if (b_ih is None) != (b_hh is None):
        raise ValueError(f"the torch state_dict has only one of {names[2]}, {names[3]}")
    used.update(n for n in names if n in state)
    w_hr = state.get(f"weight_hr{suffix}")  # (P, H): nn.LSTM(proj_size=P)'s projection
    hidden = w_hh.shape[-1] if w_hr is None else w_hr.shape[-1]
    reads = hidden if w_hr is None else w_hr.shape[0]  # what w_hh reads: h (B, H) or (B, P)
    width = cell.fused.num_gates * hidden
    if w_hh.shape != (width, reads) or w_ih.ndim != 2 or w_ih.shape[0] != width:
        raise ValueError(
            f"{cell.name} has {cell.fused.num_gates} gate(s): expected {names[0]} ({width}, I) "
            f"and {names[1]} ({width}, {reads}), got {w_ih.shape} and {w_hh.shape} (is it "
            "another kind of RNN?)"
        )
    if b_ih is None:  # bias=False
        b_ih, b_hh = np.zeros((width,), w_ih.dtype), np.zeros((width,), w_ih.dtype)
    params = {"w_x": w_ih.T, "w_h": w_hh.T} | _biases(b_ih, b_hh, cell)
    if w_hr is not None:
        used.add(f"weight_hr{suffix}")
        params["w_hr"] = w_hr.T
    return params


def from_torch(module_or_state_dict, cell, *, dtype=None):
    """PyTorch RNN weights -> rnn_jax params.

    Args:
      module_or_state_dict: an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (any ``num_layers``,
        ``bidirectional``, ``bias``, the LSTM's ``proj_size``), or its ``state_dict()``
        (tensors or numpy arrays).
        An ``nn.RNNCell``/``nn.LSTMCell``/``nn.GRUCell`` (keys without ``_l0``) works too.
      cell: ``rj.simple`` (``nonlinearity="tanh"``), ``rj.simple.relu``, ``rj.lstm`` or
        ``rj.gru``; checked against a module's kind.
      dtype: cast to this dtype; None keeps the weights' own.

    Returns:
      A stack for ``rj.unroll_stack``: a list with one entry per layer, each the cell's
      params ``{"w_x": weight_ih.T, "w_h": weight_hh.T, ...}`` or, when bidirectional,
      ``{"fwd": ..., "bwd": ...}`` (the ``_reverse`` weights). Elman/LSTM get
      ``b = bias_ih + bias_hh``, the GRU ``b_x = bias_ih, b_h = bias_hh`` (its reset gate
      scales ``h @ W_hn + b_hn`` alone, so the two cannot be fused). ``bias=False`` gives
      zero biases. ``proj_size=P`` adds ``w_hr = weight_hr.T (H, P)``: pass
      ``cell=rj.lstm.with_projection(P)``, the cell that runs them. For a Cell
      module/state_dict, the cell's params dict itself.

    Examples:
      >>> import numpy as np, rnn_jax as rj
      >>> from rnn_jax import interop
      >>> rng = np.random.default_rng(0)
      >>> state_dict = {  # what torch.nn.RNN(input_size=2, hidden_size=3).state_dict() holds
      ...     "weight_ih_l0": rng.normal(size=(3, 2)), "weight_hh_l0": rng.normal(size=(3, 3)),
      ...     "bias_ih_l0": np.ones(3), "bias_hh_l0": np.full(3, 0.5)}
      >>> (layer,) = interop.from_torch(state_dict, rj.simple)
      >>> layer["w_x"].shape, layer["b"].tolist()  # weight_ih transposed; two biases fused
      ((2, 3), [1.5, 1.5, 1.5])
    """
    cell = as_cell(cell)
    _check_torch_cell(cell)
    state = module_or_state_dict
    if hasattr(state, "state_dict") and callable(state.state_dict):
        _check_torch_module(state, cell)
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise TypeError(f"expected a torch RNN module or a state_dict, got {type(state)}")
    state = {k: _numpy(v) for k, v in state.items()}
    used: set = set()
    read = lambda suffix: _finish(cell, _layer_from_torch(state, suffix, cell, used), dtype)  # noqa: E731
    if "weight_ih" in state:  # nn.RNNCell / LSTMCell / GRUCell
        result = read("")
    else:
        if "weight_ih_l0" not in state:
            raise ValueError(
                f"expected PyTorch RNN weights named weight_ih_l0, weight_hh_l0, ...; got keys "
                f"{sorted(state)}"
            )
        bidirectional = "weight_ih_l0_reverse" in state
        result = []
        for k in itertools.takewhile(lambda k: f"weight_ih_l{k}" in state, itertools.count()):
            fwd = read(f"_l{k}")
            result.append({"fwd": fwd, "bwd": read(f"_l{k}_reverse")} if bidirectional else fwd)
    extra = sorted(set(state) - used)
    if extra:
        raise ValueError(f"torch state_dict has weights rnn_jax cannot represent: {extra}")
    return result


def _layer_to_torch(layer: dict, suffix: str, bias: bool) -> dict:
    layer = _np_params(layer)
    out = {f"weight_ih{suffix}": layer["w_x"].T, f"weight_hh{suffix}": layer["w_h"].T}
    b_ih, b_hh = _bias_pair(layer)
    if bias:
        out[f"bias_ih{suffix}"], out[f"bias_hh{suffix}"] = b_ih, b_hh
    elif np.any(b_ih) or np.any(b_hh):
        raise ValueError("bias=False, but the params have non-zero biases that would be lost")
    if "w_hr" in layer:  # after the biases, where nn.LSTM(proj_size=P) keeps it
        out[f"weight_hr{suffix}"] = layer["w_hr"].T
    return out


def _as_tensor(array: np.ndarray):
    import torch  # only here: the library itself never needs torch

    array = np.array(array, order="C")  # a writable copy: jax-backed arrays are read-only
    if array.dtype == jnp.bfloat16:
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(array)


def to_torch(params, cell, *, bias: bool = True, as_tensors: bool = True) -> dict:
    """rnn_jax params -> a PyTorch ``state_dict`` for ``module.load_state_dict``.

    Args:
      params: a stack (list of layers, each a cell's params or ``{"fwd", "bwd"}``) -> keys
        of ``nn.RNN/LSTM/GRU`` (``weight_ih_l{k}[_reverse]``, ..., ``weight_hr_l{k}`` for an
        LSTM with a projection ``w_hr``: ``nn.LSTM(proj_size=P)``); a single cell's params
        -> keys of ``nn.RNNCell/LSTMCell/GRUCell``; a single bidirectional layer -> a
        one-layer bidirectional module.
      cell: the params' cell.
      bias: False for a module built with ``bias=False`` (the biases must then be zero).
      as_tensors: torch tensors (imports torch); False gives numpy arrays.

    A fused ``b`` goes to ``bias_ih``, and ``-0.0`` to ``bias_hh`` (see module docstring);
    the GRU's ``b_x``, ``b_h`` map one to one. Weights are transposed: ``weight_ih = w_x.T``.

    Examples:
      >>> import jax, rnn_jax as rj
      >>> from rnn_jax import interop
      >>> params = rj.lstm.init(jax.random.PRNGKey(0), 2, 3)
      >>> state = interop.to_torch([params], rj.lstm, as_tensors=False)  # for nn.LSTM(2, 3)
      >>> {name: value.shape for name, value in state.items()}
      {'weight_ih_l0': (12, 2), 'weight_hh_l0': (12, 3), 'bias_ih_l0': (12,), 'bias_hh_l0': (12,)}
      >>> interop.from_torch(state, rj.lstm)[0]["b"].tolist() == params["b"].tolist()
      True
    """
    cell = as_cell(cell)
    _check_torch_cell(cell)
    layers, is_stack = _layers_of(params)
    state: dict = {}
    for k, layer in enumerate(layers):
        _check_layer(cell, layer)
        suffix = f"_l{k}" if is_stack or is_bidirectional(layer) else ""
        for part, reverse in zip(directions(layer), ("", "_reverse"), strict=False):
            state.update(_layer_to_torch(part, suffix + reverse, bias))
    convert = _as_tensor if as_tensors else np.ascontiguousarray
    return {k: convert(v) for k, v in state.items()}


# ---------------------------------------------------------------------------------------
# Flax linen: SimpleCell, LSTMCell, OptimizedLSTMCell, GRUCell, MGUCell (and nn.RNN,
# nn.Bidirectional)
#
# Flax keeps one Dense per gate and path, kernels (in, out) like ours:
#   SimpleCell          i {kernel, bias}, h {kernel}
#   (Optimized)LSTMCell ii, if, ig, io {kernel};  hi, hf, hg, ho {kernel, bias}
#   GRUCell             ir, iz, in {kernel, bias};  hr, hz {kernel};  hn {kernel, bias}
#   MGUCell             if, in {kernel, bias};  hf {kernel};  hn {kernel, bias if reset_gate}
# GRUCell computes n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1-z) n + z h: our
# reset-after GRU, with the recurrent r/z biases folded into the input ones; MGUCell the same
# with r = z = f (our rj.mgu), or without the reset, n = tanh(W_in x + b_in + W_hn h).

# Per kind: the gate names (Dense "i" + gate on the input, "h" + gate on h) and which Denses
# have a bias. The reset-after kinds (GRU, MGU) keep n's recurrent bias, inside the reset; any
# other recurrent bias only ever adds to its input one. Elman cells of any activation are
# SimpleCell's.
_FLAX_LAYOUTS = {
    "simple": (("",), {"i"}),
    "lstm": (("i", "f", "g", "o"), {"hi", "hf", "hg", "ho"}),
    "gru": (("r", "z", "n"), {"ir", "iz", "in", "hn"}),
    "mgu": (("f", "n"), {"if", "in", "hn"}),
    "mgu_without_reset": (("f", "n"), {"if", "in"}),
}


# Our bidirectional layer's directions -> nn.Bidirectional's two nn.RNN submodules.
_FLAX_DIRECTIONS = {"fwd": "forward_rnn", "bwd": "backward_rnn"}


def _flax_kind(cell: Cell) -> str:
    if cell.fused is not None and cell.fused.num_gates == 1:
        return "simple"  # any activation: Flax's SimpleCell(activation_fn=...)
    if cell.name not in _FLAX_LAYOUTS:
        raise ValueError(
            f"Flax linen has no cell with the weights of rnn_jax's {cell.name!r} cell; the Flax "
            f"converters handle the Elman cells and {sorted(set(_FLAX_LAYOUTS) - {'simple'})}"
        )
    return cell.name


def _check_flax_mgu_bias(tree, kind: str) -> None:
    """MGUCell's ``hn`` has a bias exactly when ``reset_gate=True``: say which cell fits."""
    has_bias = isinstance(tree["hn"], Mapping) and "bias" in tree["hn"]
    if has_bias != (kind == "mgu"):
        source = ("an hn bias: they come from reset_gate=True (the default), which is rj.mgu"
                  if has_bias else "no hn bias: they come from reset_gate=False, which is "
                  "rj.mgu.without_reset")  # fmt: skip
        raise ValueError(f"these Flax MGUCell params have {source}")


def _check_submodules(tree, expected: set, module: str) -> None:
    if not isinstance(tree, Mapping) or set(tree) != expected:
        raise ValueError(f"expected the params of a Flax {module} with submodules "
                         f"{sorted(expected)}, got {keys_of(tree)}")  # fmt: skip


def _unwrap_flax(tree):
    """Strip ``{"params": ...}`` and nn.RNN's ``{"cell": ...}``."""
    for key in ("params", "cell"):
        if isinstance(tree, Mapping) and set(tree) == {key}:
            tree = tree[key]
    return tree


def _conv_from_flax(tree, cell, dtype) -> dict:
    """``ConvLSTMCell``'s ``ih``/``hh`` convolutions (gates i, g, f, o, a bias in each, +1 on
    f inside the step) -> ``{"w_x", "w_h", "b"}`` (gates i, f, g, o, one bias)."""
    _check_submodules(tree, {"ih", "hh"}, "ConvLSTMCell")
    kernel_x, kernel_h = _numpy(tree["ih"]["kernel"]), _numpy(tree["hh"]["kernel"])
    bias = np.zeros(kernel_h.shape[-1], kernel_h.dtype)
    for side in ("ih", "hh"):  # absent with use_bias=False
        bias = bias + (_numpy(tree[side]["bias"]) if "bias" in tree[side] else 0.0)
    params = {"w_x": kernel_x, "w_h": kernel_h, "b": bias}
    params = {name: _reorder_gates(value, _CONV_GATES) for name, value in params.items()}
    params["b"] = params["b"] + _conv_forget(params["b"])
    return _finish(cell, params, dtype)


def _conv_to_flax(p: dict) -> dict:
    flax = lambda a: _reorder_gates(a, _CONV_GATES)  # noqa: E731
    return {
        "ih": {"kernel": flax(p["w_x"]), "bias": flax(p["b"] - _conv_forget(p["b"]))},
        "hh": {"kernel": flax(p["w_h"]), "bias": np.zeros_like(p["b"])},
    }


# Flax's ConvLSTMCell gate blocks i, g, f, o <-> ours i, f, g, o (a swap: its own inverse).
_CONV_GATES = (0, 2, 1, 3)


def _conv_forget(b: np.ndarray) -> np.ndarray:
    """The 1 Flax's ConvLSTMCell adds to f inside its step, as a bias ``(4H,)`` in our order."""
    return np.repeat(np.array([0, 1, 0, 0], b.dtype), b.shape[0] // 4)  # gates i, f, g, o


def _cell_from_flax(tree, cell: Cell, dtype) -> dict:
    tree = _unwrap_flax(tree)
    if spatial_rank(cell):
        return _conv_from_flax(tree, cell, dtype)
    kind = _flax_kind(cell)
    gates, biased = _FLAX_LAYOUTS[kind]
    _check_submodules(tree, {side + g for side in "ih" for g in gates}, f"{kind} cell")
    if kind.startswith("mgu"):
        _check_flax_mgu_bias(tree, kind)
    kernel = lambda side: np.concatenate([_numpy(tree[side + g]["kernel"]) for g in gates], 1)  # noqa: E731
    w_x, w_h = kernel("i"), kernel("h")
    absent = _zeros(w_h.shape[0], w_h.dtype)  # a bias Flax does not have
    bias = lambda side: np.concatenate(  # noqa: E731
        [_numpy(tree[side + g]["bias"]) if side + g in biased else absent for g in gates]
    )
    params = {"w_x": w_x, "w_h": w_h} | _biases(bias("i"), bias("h"), cell)
    return _finish(cell, params, dtype)


def from_flax(variables_or_params, cell, *, dtype=None):
    """Flax linen cell variables -> rnn_jax params.

    Accepts the variables (``{"params": ...}``) or params of a ``SimpleCell``,
    ``LSTMCell``, ``OptimizedLSTMCell`` (same tree as ``LSTMCell``), ``GRUCell`` or
    ``MGUCell`` (``rj.mgu``; ``reset_gate=False``: ``rj.mgu.without_reset``), or of an
    ``nn.RNN`` around one (``{"cell": ...}``) -> the cell's params dict; of an
    ``nn.Bidirectional`` of two ``nn.RNN`` -> ``{"fwd", "bwd"}``. ``dtype``: as in
    ``from_torch``. GRU: ``b_x = [b_ir, b_iz, b_in]``, ``b_h = [0, 0, b_hn]``; MGU:
    ``b_x = [b_if, b_in]``, ``b_h = [0, b_hn]`` (without reset ``b = [b_if, b_in]``).
    ``SimpleCell(activation_fn=f)`` reads into ``rj.simple.with_activation(f)``. A
    ``ConvLSTMCell`` reads into ``rj.conv_lstm(kernel_size)``: its gates i, g, f, o become
    i, f, g, o, ``b = b_ih + b_hh`` plus the 1 Flax adds to f inside its step.

    Examples:
      >>> import jax, numpy as np, rnn_jax as rj
      >>> from rnn_jax import interop
      >>> params = rj.gru.init(jax.random.PRNGKey(0), 2, 3)
      >>> back = interop.from_flax(interop.to_flax(params, rj.gru), rj.gru)
      >>> all(np.array_equal(back[k], params[k]) for k in params)  # zero r/z recurrent biases
      True
    """
    cell = as_cell(cell)
    tree = _unwrap_flax(variables_or_params)
    if isinstance(tree, Mapping) and set(tree) == set(_FLAX_DIRECTIONS.values()):
        return {d: _cell_from_flax(tree[name], cell, dtype) for d, name in _FLAX_DIRECTIONS.items()}
    return _cell_from_flax(tree, cell, dtype)


def _cell_to_flax(layer: dict, cell: Cell) -> dict:
    p = _np_params(layer)
    if spatial_rank(cell):
        return _conv_to_flax(p)
    gates, biased = _FLAX_LAYOUTS[_flax_kind(cell)]
    hidden = p["w_h"].shape[-1] // len(gates)
    chunk = lambda a, k: a[..., k * hidden : (k + 1) * hidden]  # noqa: E731
    paths = (("i", "w_x"), ("h", "w_h"))
    tree = {side + g: {"kernel": chunk(p[w], k)} for side, w in paths for k, g in enumerate(gates)}
    b_in, b_rec = _bias_pair(p)
    for k, g in enumerate(gates):
        names = [side + g for side in "ih" if side + g in biased]
        parts = [chunk(b_in, k), chunk(b_rec, k)]
        if len(names) == 1:  # Flax has one of the two: their sum (the same model)
            parts = [parts[0] + parts[1]]
        for name, part in zip(names, parts, strict=True):
            tree[name]["bias"] = part
    return tree


def to_flax(params, cell, *, rnn: bool = False) -> dict:
    """rnn_jax params -> Flax linen variables ``{"params": ...}`` (jax arrays).

    A cell's params -> variables of ``SimpleCell``/``LSTMCell``/``OptimizedLSTMCell``/
    ``GRUCell``/``MGUCell`` (``rnn=True``: of ``nn.RNN(cell)``, nested under ``"cell"``); a
    ``{"fwd", "bwd"}`` layer -> variables of ``nn.Bidirectional(nn.RNN(c), nn.RNN(c))``.
    The GRU's recurrent r/z biases (the MGU's f bias) are folded into Flax's input biases
    (the same model; exact when they are zero, as ``from_flax`` makes them).
    ``rj.conv_lstm`` params -> ``ConvLSTMCell`` variables (``hh`` bias zero, the 1 Flax adds
    to f taken off ``ih``'s).

    Examples:
      >>> import jax, rnn_jax as rj
      >>> from rnn_jax import interop
      >>> variables = interop.to_flax(rj.lstm.init(jax.random.PRNGKey(0), 2, 3), rj.lstm)
      >>> sorted(variables["params"])  # flax.linen.LSTMCell's submodules
      ['hf', 'hg', 'hi', 'ho', 'if', 'ig', 'ii', 'io']
    """
    cell = as_cell(cell)
    _check_layer(cell, params)
    if is_bidirectional(params):
        sides = _FLAX_DIRECTIONS.items()
        tree = {name: {"cell": _cell_to_flax(params[d], cell)} for d, name in sides}
    else:
        tree = _cell_to_flax(params, cell)
        tree = {"cell": tree} if rnn else tree
    return {"params": jax.tree.map(jnp.asarray, tree)}


def carry_from_flax(carry, cell):
    """A Flax cell's carry -> ours: the LSTM's ``(c, h)`` becomes ``LSTMCarry(h, c)``.

    Examples:
      >>> import jax.numpy as jnp, rnn_jax as rj
      >>> from rnn_jax import interop
      >>> c, h = jnp.zeros((1, 3)), jnp.ones((1, 3))
      >>> carry = interop.carry_from_flax((c, h), rj.lstm)  # Flax's LSTMCell carries (c, h)
      >>> float(carry.h.sum()), float(carry.c.sum())
      (3.0, 0.0)
    """
    return LSTMCarry(*carry[::-1]) if _has_cell_state(cell) else carry


def carry_to_flax(carry, cell):
    """Our carry -> a Flax cell's: ``LSTMCarry(h, c)`` becomes ``(c, h)``.

    Examples:
      >>> import jax.numpy as jnp, rnn_jax as rj
      >>> from rnn_jax import interop
      >>> carry = rj.LSTMCarry(h=jnp.ones((1, 3)), c=jnp.zeros((1, 3)))
      >>> c, h = interop.carry_to_flax(carry, rj.lstm)
      >>> float(h.sum()), float(c.sum())
      (3.0, 0.0)
    """
    return tuple(carry)[::-1] if _has_cell_state(cell) else carry


# ---------------------------------------------------------------------------------------
# Keras: SimpleRNN, LSTM, GRU, as ``layer.get_weights()`` lists
#
#   SimpleRNN  [kernel (I, H),  recurrent_kernel (H, H),  bias (H,)]
#   LSTM       [kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,)]    gates i, f, c, o
#   GRU        [kernel (I, 3H), recurrent_kernel (H, 3H), bias (2, 3H)]  gates z, r, h;
#              bias[0] input side, bias[1] recurrent side (reset_after=True, rj.gru)
#   GRU        [kernel (I, 3H), recurrent_kernel (H, 3H), bias (3H,)]    reset_after=False
#              (rj.gru.reset_before)
# (no bias entry with use_bias=False). Keras' LSTM order is ours; the GRU's first two gate
# blocks swap (z, r <-> r, z), a permutation that is its own inverse.

# cell name -> (Keras' gate blocks in our order, two bias rows); Elman cells of any
# activation are SimpleRNN's.
_KERAS_LAYOUTS = {
    "lstm": ((0, 1, 2, 3), False),
    "gru": ((1, 0, 2), True),
    "gru_reset_before": ((1, 0, 2), False),
}


def _keras_layout(cell) -> tuple[tuple[int, ...], bool]:
    if cell.fused is not None and cell.fused.num_gates == 1:
        return (0,), False
    if cell.name not in _KERAS_LAYOUTS:
        raise ValueError(
            f"Keras has no layer with the weights of rnn_jax's {cell.name!r} cell; the Keras "
            f"converters handle the Elman cells (SimpleRNN) and {sorted(_KERAS_LAYOUTS)}"
        )
    return _KERAS_LAYOUTS[cell.name]


def _keras_bias_error(cell, got: tuple, expected: tuple) -> str:
    """What a wrong bias shape means; for the GRU, which ``reset_after`` it came from."""
    if cell.name == "gru" and got == expected[1:]:
        return (
            "Keras GRU weights with a (3H,) bias come from reset_after=False, which applies the "
            "reset gate before the recurrent matmul: load them into rj.gru.reset_before "
            "(rj.gru is reset_after=True, the Keras default, as PyTorch and cuDNN)"
        )
    if cell.name == "gru_reset_before" and got == (2, *expected):
        return (
            "Keras GRU weights with a (2, 3H) bias come from reset_after=True (the Keras "
            "default): load them into rj.gru; rj.gru.reset_before is reset_after=False"
        )
    return f"expected a Keras {cell.name} bias of shape {expected}, got {got}"


def _cell_from_keras(weights: Sequence, cell: Cell, dtype) -> dict:
    if len(weights) not in (2, 3):
        raise ValueError(
            f"expected Keras weights [kernel, recurrent_kernel, bias] (or without bias), got "
            f"{len(weights)} arrays"
        )
    if spatial_rank(cell):  # ConvLSTM1D/2D/3D: rj.conv_lstm's params are Keras' as they are
        arrays = [_numpy(w) for w in weights]
        if len(arrays) == 2:  # use_bias=False
            arrays.append(np.zeros(arrays[1].shape[-1], arrays[1].dtype))
        return _finish(cell, dict(zip(("w_x", "w_h", "b"), arrays, strict=True)), dtype)
    order, two_biases = _keras_layout(cell)
    num_gates = len(order)
    kernel, recurrent = _numpy(weights[0]), _numpy(weights[1])
    hidden = recurrent.shape[0]
    width = num_gates * hidden
    if kernel.ndim != 2 or kernel.shape[1] != width or recurrent.shape != (hidden, width):
        raise ValueError(
            f"{cell.name} has {num_gates} gate(s): expected kernel (I, {width}) and "
            f"recurrent_kernel ({hidden}, {width}), got {kernel.shape} and {recurrent.shape}"
        )
    bias_shape = (2, width) if two_biases else (width,)
    bias = _numpy(weights[2]) if len(weights) == 3 else np.zeros(bias_shape, kernel.dtype)
    if bias.shape != bias_shape:
        raise ValueError(_keras_bias_error(cell, bias.shape, bias_shape))
    params = {"w_x": kernel, "w_h": recurrent}
    params |= {"b_x": bias[0], "b_h": bias[1]} if two_biases else {"b": bias}
    return _finish(cell, {k: _reorder_gates(v, order) for k, v in params.items()}, dtype)


def from_keras(weights: Sequence, cell, *, bidirectional: bool = False, dtype=None) -> dict:
    """Keras ``SimpleRNN``/``LSTM``/``GRU`` ``layer.get_weights()`` -> rnn_jax params.

    ``bidirectional=True`` reads a ``keras.layers.Bidirectional`` layer's list (forward
    layer's weights, then the backward layer's) -> ``{"fwd", "bwd"}``. A ``GRU`` goes into
    ``rj.gru`` (``reset_after=True``, the Keras default) or ``rj.gru.reset_before``
    (``reset_after=False``); its gates are reordered z, r, h -> r, z, n. A
    ``SimpleRNN(activation=f)`` goes into ``rj.simple.with_activation(f)``; a
    ``ConvLSTM1D/2D/3D`` into ``rj.conv_lstm(kernel_size)`` (the same arrays).

    Examples:
      >>> import numpy as np, rnn_jax as rj
      >>> from rnn_jax import interop
      >>> rng = np.random.default_rng(0)
      >>> weights = [rng.normal(size=(2, 9)), rng.normal(size=(3, 9)), rng.normal(size=(2, 9))]
      >>> params = interop.from_keras(weights, rj.gru)  # keras.layers.GRU(3), I = 2
      >>> r_z_n = [3, 4, 5, 0, 1, 2, 6, 7, 8]  # Keras' gate blocks z, r, h -> ours r, z, n
      >>> np.allclose(params["b_x"], weights[2][0][r_z_n])
      True
    """
    cell = as_cell(cell)
    weights = list(weights)
    if bidirectional:
        if len(weights) % 2:
            raise ValueError(
                f"a bidirectional layer has an even number of arrays, got {len(weights)}"
            )
        half = len(weights) // 2
        halves = {"fwd": weights[:half], "bwd": weights[half:]}
        return {d: _cell_from_keras(part, cell, dtype) for d, part in halves.items()}
    return _cell_from_keras(weights, cell, dtype)


def _cell_to_keras(layer: dict, cell: Cell, use_bias: bool) -> list:
    p = _np_params(layer)
    if spatial_rank(cell):  # ConvLSTM: the arrays as they are
        weights, bias = [p["w_x"], p["w_h"]], p["b"]
    else:
        order, two_biases = _keras_layout(cell)  # its own inverse
        p = {name: _reorder_gates(value, order) for name, value in p.items()}
        weights = [p["w_x"], p["w_h"]]
        bias = np.stack([p["b_x"], p["b_h"]]) if two_biases else p["b"]
    if use_bias:
        return [np.ascontiguousarray(w) for w in [*weights, bias]]
    if np.any(bias):
        raise ValueError("use_bias=False, but the params have non-zero biases that would be lost")
    return [np.ascontiguousarray(w) for w in weights]


def to_keras(params, cell, *, use_bias: bool = True) -> list:
    """rnn_jax params -> the list for a Keras layer's ``set_weights`` (numpy arrays).

    A cell's params -> ``SimpleRNN``/``LSTM``/``GRU(reset_after=True)`` (``rj.gru``)/
    ``GRU(reset_after=False)`` (``rj.gru.reset_before``); ``{"fwd", "bwd"}``
    -> ``keras.layers.Bidirectional`` (forward weights then backward). ``use_bias=False``
    for a layer built without bias (the biases must then be zero). ``rj.conv_lstm`` params
    -> ``ConvLSTM1D/2D/3D`` (kernel, recurrent_kernel, bias as they are).

    Examples:
      >>> import jax, rnn_jax as rj
      >>> from rnn_jax import interop
      >>> weights = interop.to_keras(rj.simple.init(jax.random.PRNGKey(0), 10, 3), rj.simple)
      >>> [w.shape for w in weights]  # keras.layers.SimpleRNN(3) on 10 features: 42 parameters
      [(10, 3), (3, 3), (3,)]
    """
    cell = as_cell(cell)
    _check_layer(cell, params)
    return [w for part in directions(params) for w in _cell_to_keras(part, cell, use_bias)]


# ---------------------------------------------------------------------------------------
# xLSTM's sLSTM (the ``xlstm`` package's ``sLSTMCell``)

XLSTM_BACKENDS = ("vanilla", "cuda")


def _xlstm_backend(module_or_state_dict, backend):
    """``(state_dict, backend)``: a module's own backend (``config.backend``), else ``backend``."""
    state = module_or_state_dict
    if hasattr(state, "state_dict") and callable(state.state_dict):
        backend = getattr(getattr(state, "config", None), "backend", backend)
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise TypeError(f"expected an xlstm sLSTMCell or its state_dict, got {type(state)}")
    if backend not in XLSTM_BACKENDS:
        raise ValueError(f"backend must be one of {XLSTM_BACKENDS}, got {backend!r}")
    return state, backend


def slstm_from_xlstm(module_or_state_dict, input_weight, *, backend="vanilla", dtype=None):
    """An ``xlstm`` sLSTM cell's weights -> ``rj.slstm.configured(num_heads=K)``'s params.

    Args:
      module_or_state_dict: an ``xlstm.sLSTMCell`` (its ``config.backend`` says the layout)
        or its ``state_dict()``: ``_recurrent_kernel_`` and ``_bias_``, whose internal layouts
        differ by backend (``xlstm/blocks/slstm/cell.py``, ``sLSTMCell_vanilla`` and
        ``sLSTMCell_cuda``'s ``_ext2int``): vanilla ``(K, 4D, D)`` and ``(4*K*D,)`` gate-major,
        cuda ``(K, D, 4D)`` and ``(K*4*D,)`` head-major.
      input_weight: ``(4H, I)``, PyTorch ``nn.Linear`` layout: the projection whose product
        ``x @ input_weight.T`` is the cell's input (``sLSTMLayer``'s four gate projections,
        rows i, f, z, o); the xlstm cell has none of its own. It becomes ``w_x``.
      backend: the state_dict's layout, ``"vanilla"`` or ``"cuda"`` (a module says its own).
      dtype: cast to this dtype; None keeps the weights' own.

    Returns ``{"w_x": input_weight.T, "r": (K, D, 4, D), "b": (4H,)}``: ``r`` is xlstm's
    external ``recurrent_kernel`` layout ``[head, d_in, gate, d_out]``, ``b`` gate-major.

    Examples:
      >>> import numpy as np, rnn_jax as rj
      >>> from rnn_jax import interop
      >>> normal = lambda *shape: np.random.default_rng(0).normal(size=shape).astype("float32")
      >>> state = {"_recurrent_kernel_": normal(2, 8, 2), "_bias_": normal(16)}  # K=2, D=2
      >>> params = interop.slstm_from_xlstm(state, normal(16, 3))  # input_weight (4H, I)
      >>> params["r"].shape
      (2, 2, 4, 2)
      >>> back, w = interop.slstm_to_xlstm(params, as_tensors=False)
      >>> bool(np.array_equal(back["_recurrent_kernel_"], state["_recurrent_kernel_"]))
      True
    """
    state, backend = _xlstm_backend(module_or_state_dict, backend)
    missing = {"_recurrent_kernel_", "_bias_"} - set(state)
    if missing:
        raise ValueError(f"an xlstm sLSTMCell state_dict has _recurrent_kernel_ and _bias_; "
                         f"missing {sorted(missing)} in {sorted(state)}")  # fmt: skip
    kernel, bias = _numpy(state["_recurrent_kernel_"]), _numpy(state["_bias_"])
    w_in = _numpy(input_weight)
    heads = kernel.shape[0] if kernel.ndim == 3 else 0
    head_dim = kernel.shape[2] if backend == "vanilla" else kernel.shape[1]
    hidden = heads * head_dim
    want = (
        (heads, 4 * head_dim, head_dim) if backend == "vanilla" else (heads, head_dim, 4 * head_dim)
    )
    if kernel.ndim != 3 or kernel.shape != want or bias.shape != (4 * hidden,):
        raise ValueError(
            f"xlstm {backend} sLSTMCell weights must be _recurrent_kernel_ (K, "
            + ("4D, D)" if backend == "vanilla" else "D, 4D)")
            + f" and _bias_ (4KD,); got {kernel.shape} and {bias.shape}"
        )
    if w_in.ndim != 2 or w_in.shape[0] != 4 * hidden:
        raise ValueError(f"input_weight must be (4H, I) = ({4 * hidden}, I) for H={hidden}, "
                         f"got {w_in.shape}")  # fmt: skip
    if backend == "vanilla":  # [k, g*D + e, d] -> [k, d, g, e]; bias already [g, k, e]
        r = kernel.reshape(heads, 4, head_dim, head_dim).transpose(0, 3, 1, 2)
        b = bias
    else:  # [k, d, g*D + e] -> [k, d, g, e]; bias [k, g, e] -> [g, k, e]
        r = kernel.reshape(heads, head_dim, 4, head_dim)
        b = bias.reshape(heads, 4, head_dim).transpose(1, 0, 2).reshape(-1)
    params = {"w_x": w_in.T, "r": r, "b": b}
    return _finish(slstm.configured(heads), params, dtype)


def slstm_to_xlstm(params, *, backend="vanilla", as_tensors=True):
    """``rj.slstm`` params -> ``(state_dict, input_weight)`` for an ``xlstm.sLSTMCell`` of
    ``num_heads = r.shape[0]`` with that ``backend`` (``module.load_state_dict(state_dict)``)
    and the ``(4H, I)`` input projection its input is made with (``x @ input_weight.T``).
    The inverse of ``slstm_from_xlstm``, bitwise. ``as_tensors=False``: numpy arrays."""
    if backend not in XLSTM_BACKENDS:
        raise ValueError(f"backend must be one of {XLSTM_BACKENDS}, got {backend!r}")
    if not isinstance(params, Mapping):
        raise TypeError(f"expected one rj.slstm layer's params dict, got {type(params)}")
    p = _np_params(params)
    if set(p) != {"w_x", "r", "b"} or p["r"].ndim != 4:
        raise ValueError(f"expected rj.slstm params w_x, r (K, D, 4, D), b; got "
                         f"{ {k: getattr(v, 'shape', None) for k, v in p.items()} }")  # fmt: skip
    heads, head_dim = p["r"].shape[:2]
    check_params(slstm.configured(heads), params)
    if backend == "vanilla":
        kernel = p["r"].transpose(0, 2, 3, 1).reshape(heads, 4 * head_dim, head_dim)
        bias = p["b"]
    else:
        kernel = p["r"].reshape(heads, head_dim, 4 * head_dim)
        bias = p["b"].reshape(4, heads, head_dim).transpose(1, 0, 2).reshape(-1)
    state = {"_recurrent_kernel_": kernel, "_bias_": bias}
    w_in = p["w_x"].T
    if as_tensors:
        return {k: _as_tensor(v) for k, v in state.items()}, _as_tensor(w_in)
    return {k: np.array(v) for k, v in state.items()}, np.array(w_in)


# ---------------------------------------------------------------------------------------
# recurrentgemma (Griffin/Hawk, JAX/flax linen): its RGLRU layer's parameters
#   {"a_param": (D,), "a_gate": {"w": (heads, D/heads, D/heads), "b": (heads, D/heads)},
#    "input_gate": {"w", "b"}},  log a = -softplus(a_param); rnn_jax's lam = -a_param.
# Negation is exact, so both round trips are bitwise.

_RGLRU_GATES = (("a_gate", "r"), ("input_gate", "i"))


def rglru_from_recurrentgemma(variables_or_params, *, dtype=None) -> dict:
    """``rj.rglru`` parameters from recurrentgemma's ``RGLRU`` variables (``{"params": ...}``
    or the inner mapping); run them with ``rj.rglru.with_heads(heads)`` (the gates' ``w``
    have ``heads`` blocks: ``rj.rglru.num_heads_of(params)``).

    Examples:
      >>> import jax, numpy as np, rnn_jax as rj
      >>> from rnn_jax.interop import rglru_from_recurrentgemma, rglru_to_recurrentgemma
      >>> params = rj.rglru.with_heads(2).init(jax.random.PRNGKey(0), 4, 4)
      >>> tree = rglru_to_recurrentgemma(params)
      >>> sorted(tree), tree["a_gate"]["w"].shape
      (['a_gate', 'a_param', 'input_gate'], (2, 2, 2))
      >>> back = rglru_from_recurrentgemma({"params": tree})
      >>> all(np.array_equal(back[k], params[k]) for k in params)
      True
    """
    tree = _unwrap_flax(variables_or_params)
    expected = {"a_param", "a_gate", "input_gate"}
    if not isinstance(tree, Mapping) or set(tree) != expected:
        got = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
        raise ValueError(f"recurrentgemma RGLRU parameters have {sorted(expected)} (only_real="
                         f"True); got {got}")  # fmt: skip
    params = {"lam": -_numpy(tree["a_param"])}
    for theirs, ours in _RGLRU_GATES:
        params[f"w_{ours}"] = _numpy(tree[theirs]["w"])
        params[f"b_{ours}"] = _numpy(tree[theirs]["b"])
    params = {k: jnp.asarray(v, dtype=dtype) for k, v in params.items()}
    check_params(rglru.with_heads(rglru.num_heads_of(params)), params)
    return params


def rglru_to_recurrentgemma(params) -> dict:
    """recurrentgemma ``RGLRU`` parameters (the mapping under ``"params"``) from ``rj.rglru``'s;
    numpy arrays."""
    check_params(rglru.with_heads(rglru.num_heads_of(params)), params)
    tree = {"a_param": -np.asarray(params["lam"])}
    for theirs, ours in _RGLRU_GATES:
        tree[theirs] = {"w": np.asarray(params[f"w_{ours}"]), "b": np.asarray(params[f"b_{ours}"])}
    return tree


def carry_from_recurrentgemma(state, *, dtype=None) -> rglru.RGLRUCarry:
    """An ``rj.rglru`` carry from recurrentgemma's RG-LRU cache ``h (B, D)``: a segment that
    goes on (``fresh = 0``), as the reference reads a cache at ``segment_pos > 0``."""
    h = jnp.asarray(state, dtype=dtype)  # jnp, not numpy: traceable (a cache under jax.grad)
    return rglru.RGLRUCarry(h, jnp.zeros(h.shape[:1], h.dtype))


def carry_to_recurrentgemma(carry: rglru.RGLRUCarry):
    """recurrentgemma's RG-LRU cache ``h (B, D)`` from an ``rj.rglru`` carry (the reference's
    cache has no ``fresh``: its resets come from ``segment_pos``)."""
    return carry.h


# recurrentgemma's ResidualBlock with a RecurrentBlock (Hawk) <-> one block of
# rnn_jax.blocks.init_hawk. Its RMSNorm multiplies by (scale + 1), ours by the scale: the
# norms convert by +-1 (exact for scales in [-1, 2] and near there: one rounding at most).

_HAWK_DENSE = (("linear_y", "y"), ("linear_x", "x"), ("linear_out", "out"))


def hawk_block_from_recurrentgemma(variables_or_params, *, dtype=None) -> dict:
    """One ``rnn_jax.blocks.init_hawk`` block from recurrentgemma's ``ResidualBlock``
    (``temporal_block_type=RECURRENT``, ``use_mlp=True``) variables."""
    tree = _unwrap_flax(variables_or_params)
    expected = {"temporal_pre_norm", "recurrent_block", "channel_pre_norm", "mlp_block"}
    if not isinstance(tree, Mapping) or set(tree) != expected:
        got = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
        raise ValueError(f"a recurrentgemma recurrent ResidualBlock has {sorted(expected)}; "
                         f"got {got}")  # fmt: skip
    recurrent, mlp = tree["recurrent_block"], tree["mlp_block"]
    block = {
        "temporal_norm": _numpy(tree["temporal_pre_norm"]["scale"]) + 1,
        "channel_norm": _numpy(tree["channel_pre_norm"]["scale"]) + 1,
        "conv_w": _numpy(recurrent["conv_1d"]["w"]),
        "conv_b": _numpy(recurrent["conv_1d"]["b"]),
        "w_gate": _numpy(mlp["ffw_up"]["w"])[0],
        "w_up": _numpy(mlp["ffw_up"]["w"])[1],
        "b_gate": _numpy(mlp["ffw_up"]["b"])[0].reshape(-1),
        "b_up": _numpy(mlp["ffw_up"]["b"])[1].reshape(-1),
        "w_down": _numpy(mlp["ffw_down"]["kernel"]),
        "b_down": _numpy(mlp["ffw_down"]["bias"]),
    }
    for theirs, ours in _HAWK_DENSE:
        block[f"w_{ours}"] = _numpy(recurrent[theirs]["kernel"])
        block[f"b_{ours}"] = _numpy(recurrent[theirs]["bias"])
    block = {k: jnp.asarray(v, dtype=dtype) for k, v in block.items()}
    block["rglru"] = rglru_from_recurrentgemma(recurrent["rg_lru"], dtype=dtype)
    return block


def hawk_block_to_recurrentgemma(block) -> dict:
    """recurrentgemma ``ResidualBlock`` (recurrent) parameters from one Hawk block; numpy."""
    arr = lambda name: np.asarray(block[name])
    recurrent = {theirs: {"kernel": arr(f"w_{ours}"), "bias": arr(f"b_{ours}")}
                 for theirs, ours in _HAWK_DENSE}  # fmt: skip
    recurrent["conv_1d"] = {"w": arr("conv_w"), "b": arr("conv_b")}
    recurrent["rg_lru"] = rglru_to_recurrentgemma(block["rglru"])
    up_b = np.stack([arr("b_gate"), arr("b_up")])
    return {
        "temporal_pre_norm": {"scale": arr("temporal_norm") - 1},
        "recurrent_block": recurrent,
        "channel_pre_norm": {"scale": arr("channel_norm") - 1},
        "mlp_block": {
            "ffw_up": {"w": np.stack([arr("w_gate"), arr("w_up")]),
                       "b": up_b.reshape(2, 1, 1, -1)},
            "ffw_down": {"kernel": arr("w_down"), "bias": arr("b_down")},
        },
    }  # fmt: skip
