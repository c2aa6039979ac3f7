"""Weight converters between rnn_jax parameters and PyTorch, Flax linen and Keras.

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

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from rnn_jax.cells.base import Cell, LSTMCarry
from rnn_jax.checks import as_cell, check_params
from rnn_jax.layers import is_bidirectional

_ZERO = -0.0

__all__ = [
    "carry_from_flax",
    "carry_to_flax",
    "from_flax",
    "from_keras",
    "from_torch",
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


def _finish(cell: Cell, params: dict, dtype) -> dict:
    """numpy -> jax arrays (cast to ``dtype`` if given), then the same checks as ``unroll``."""
    params = {k: jnp.asarray(v, dtype=dtype) for k, v in params.items()}
    check_params(cell, params)
    return params


def _fused(cell: Cell) -> bool:
    """True for cells with one bias ``b`` (Elman, LSTM); False for the GRU's ``b_x, b_h``."""
    return cell.biases == ("b",)


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
    for part in (layer["fwd"], layer["bwd"]) if is_bidirectional(layer) else (layer,):
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


def _check_torch_module(module, cell: Cell) -> None:
    mode = _torch_mode(module)
    expected = _TORCH_MODES.get(mode)
    if expected is None:
        raise TypeError(
            f"expected torch nn.RNN, nn.LSTM, nn.GRU or their Cell versions, got "
            f"{type(module).__name__}"
        )
    if expected != cell.name:
        raise ValueError(
            f"the torch module is a {type(module).__name__} ({mode}), which is rnn_jax's "
            f"{expected!r} cell, but cell={cell.name!r} was given"
        )
    if getattr(module, "proj_size", 0):
        raise ValueError(
            f"torch LSTM with proj_size={module.proj_size} has no rnn_jax equivalent "
            "(the hidden state would be projected); use proj_size=0"
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
    hidden = w_hh.shape[-1]
    width = cell.num_gates * hidden
    if w_hh.shape != (width, hidden) or w_ih.ndim != 2 or w_ih.shape[0] != width:
        raise ValueError(
            f"{cell.name} has {cell.num_gates} gate(s): expected {names[0]} ({width}, I) and "
            f"{names[1]} ({width}, {hidden}), got {w_ih.shape} and {w_hh.shape} (is it "
            f"another kind of RNN?)"
        )
    if b_ih is None:  # bias=False
        b_ih, b_hh = np.zeros((width,), w_ih.dtype), np.zeros((width,), w_ih.dtype)
    params = {"w_x": w_ih.T, "w_h": w_hh.T}
    if _fused(cell):
        params["b"] = b_ih + b_hh  # PyTorch adds both; the sum is the same model
    else:
        params["b_x"], params["b_h"] = b_ih, b_hh
    return params


def from_torch(module_or_state_dict, cell, *, dtype=None):
    """PyTorch RNN weights -> rnn_jax params.

    Args:
      module_or_state_dict: an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (any ``num_layers``,
        ``bidirectional``, ``bias``), or its ``state_dict()`` (tensors or numpy arrays).
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
      zero biases. For a Cell module/state_dict, the cell's params dict itself.

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
    state = module_or_state_dict
    if hasattr(state, "state_dict") and callable(state.state_dict):
        _check_torch_module(state, cell)
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise TypeError(f"expected a torch RNN module or a state_dict, got {type(state)}")
    state = {k: _numpy(v) for k, v in state.items()}
    projections = sorted(k for k in state if k.startswith("weight_hr"))
    if projections:
        raise ValueError(
            f"torch LSTM weights with a projection ({projections}, from proj_size > 0) have no "
            "rnn_jax equivalent (the hidden state would be projected)"
        )
    used: set = set()
    if "weight_ih" in state:  # nn.RNNCell / LSTMCell / GRUCell
        result = _finish(cell, _layer_from_torch(state, "", cell, used), dtype)
    else:
        num_layers = 0
        while f"weight_ih_l{num_layers}" in state:
            num_layers += 1
        if num_layers == 0:
            raise ValueError(
                f"expected PyTorch RNN weights named weight_ih_l0, weight_hh_l0, ...; got keys "
                f"{sorted(state)}"
            )
        bidirectional = "weight_ih_l0_reverse" in state
        result = []
        for k in range(num_layers):
            fwd = _finish(cell, _layer_from_torch(state, f"_l{k}", cell, used), dtype)
            if bidirectional:
                bwd = _layer_from_torch(state, f"_l{k}_reverse", cell, used)
                result.append({"fwd": fwd, "bwd": _finish(cell, bwd, dtype)})
            else:
                result.append(fwd)
    extra = sorted(set(state) - used)
    if extra:
        raise ValueError(f"torch state_dict has weights rnn_jax cannot represent: {extra}")
    return result


def _layer_to_torch(layer: dict, suffix: str, cell: Cell, bias: bool) -> dict:
    layer = _np_params(layer)
    out = {f"weight_ih{suffix}": layer["w_x"].T, f"weight_hh{suffix}": layer["w_h"].T}
    if _fused(cell):
        b_ih, b_hh = layer["b"], _zeros(layer["b"].shape[0], layer["b"].dtype)
    else:
        b_ih, b_hh = layer["b_x"], layer["b_h"]
    if bias:
        out[f"bias_ih{suffix}"], out[f"bias_hh{suffix}"] = b_ih, b_hh
    elif np.any(b_ih) or np.any(b_hh):
        raise ValueError("bias=False, but the params have non-zero biases that would be lost")
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
        of ``nn.RNN/LSTM/GRU`` (``weight_ih_l{k}[_reverse]``, ...); a single cell's params
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
    layers, is_stack = _layers_of(params)
    state: dict = {}
    for k, layer in enumerate(layers):
        _check_layer(cell, layer)
        suffix = f"_l{k}" if is_stack or is_bidirectional(layer) else ""
        if is_bidirectional(layer):
            state.update(_layer_to_torch(layer["fwd"], suffix, cell, bias))
            state.update(_layer_to_torch(layer["bwd"], suffix + "_reverse", cell, bias))
        else:
            state.update(_layer_to_torch(layer, suffix, cell, bias))
    if as_tensors:
        state = {k: _as_tensor(v) for k, v in state.items()}
    else:
        state = {k: np.ascontiguousarray(v) for k, v in state.items()}
    return state


# ---------------------------------------------------------------------------------------
# Flax linen: SimpleCell, LSTMCell, OptimizedLSTMCell, GRUCell (and nn.RNN, nn.Bidirectional)
#
# Flax keeps one Dense per gate and path, kernels (in, out) like ours:
#   SimpleCell          i {kernel, bias}, h {kernel}
#   (Optimized)LSTMCell ii, if, ig, io {kernel};  hi, hf, hg, ho {kernel, bias}
#   GRUCell             ir, iz, in {kernel, bias};  hr, hz {kernel};  hn {kernel, bias}
# GRUCell computes n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1-z) n + z h: our
# reset-after GRU, with the recurrent r/z biases folded into the input ones.

_LSTM_GATES = ("i", "f", "g", "o")
_GRU_GATES = ("r", "z", "n")


def _flax_kind(cell: Cell) -> str:
    return {"simple": "simple", "simple_relu": "simple", "lstm": "lstm", "gru": "gru"}[cell.name]


def _flax_names(cell: Cell) -> set:
    kind = _flax_kind(cell)
    if kind == "simple":
        return {"i", "h"}
    gates = _LSTM_GATES if kind == "lstm" else _GRU_GATES
    return {p + g for p in "ih" for g in gates}


def _unwrap_flax(tree):
    """Strip ``{"params": ...}`` and nn.RNN's ``{"cell": ...}``."""
    for key in ("params", "cell"):
        if isinstance(tree, Mapping) and set(tree) == {key}:
            tree = tree[key]
    return tree


def _cell_from_flax(tree, cell: Cell, dtype) -> dict:
    tree = _unwrap_flax(tree)
    expected = _flax_names(cell)
    if not isinstance(tree, Mapping) or set(tree) != expected:
        got = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
        raise ValueError(
            f"expected the params of a Flax {_flax_kind(cell)} cell with submodules "
            f"{sorted(expected)}, got {got}"
        )
    kernel = lambda name: _numpy(tree[name]["kernel"])  # noqa: E731
    bias = lambda name: _numpy(tree[name]["bias"])  # noqa: E731
    kind = _flax_kind(cell)
    if kind == "simple":
        params = {"w_x": kernel("i"), "w_h": kernel("h"), "b": bias("i")}
    elif kind == "lstm":
        params = {
            "w_x": np.concatenate([kernel("i" + g) for g in _LSTM_GATES], axis=1),
            "w_h": np.concatenate([kernel("h" + g) for g in _LSTM_GATES], axis=1),
            "b": np.concatenate([bias("h" + g) for g in _LSTM_GATES]),
        }
    else:
        b_hn = bias("hn")
        params = {
            "w_x": np.concatenate([kernel("i" + g) for g in _GRU_GATES], axis=1),
            "w_h": np.concatenate([kernel("h" + g) for g in _GRU_GATES], axis=1),
            "b_x": np.concatenate([bias("i" + g) for g in _GRU_GATES]),
            "b_h": np.concatenate([_zeros(2 * b_hn.shape[0], b_hn.dtype), b_hn]),
        }
    return _finish(cell, params, dtype)


def from_flax(variables_or_params, cell, *, dtype=None):
    """Flax linen cell variables -> rnn_jax params.

    Accepts the variables (``{"params": ...}``) or params of a ``SimpleCell``,
    ``LSTMCell``, ``OptimizedLSTMCell`` (same tree as ``LSTMCell``) or ``GRUCell``, or of an
    ``nn.RNN`` around one (``{"cell": ...}``) -> the cell's params dict; of an
    ``nn.Bidirectional`` of two ``nn.RNN`` -> ``{"fwd", "bwd"}``. ``dtype``: as in
    ``from_torch``. GRU: ``b_x = [b_ir, b_iz, b_in]``, ``b_h = [0, 0, b_hn]``.

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
    if isinstance(tree, Mapping) and set(tree) == {"forward_rnn", "backward_rnn"}:
        return {
            "fwd": _cell_from_flax(tree["forward_rnn"], cell, dtype),
            "bwd": _cell_from_flax(tree["backward_rnn"], cell, dtype),
        }
    return _cell_from_flax(tree, cell, dtype)


def _cell_to_flax(layer: dict, cell: Cell) -> dict:
    p = _np_params(layer)
    hidden = p["w_h"].shape[0]
    chunk = lambda a, k: a[..., k * hidden : (k + 1) * hidden]  # noqa: E731
    kind = _flax_kind(cell)
    if kind == "simple":
        return {"i": {"kernel": p["w_x"], "bias": p["b"]}, "h": {"kernel": p["w_h"]}}
    if kind == "lstm":
        tree = {"i" + g: {"kernel": chunk(p["w_x"], k)} for k, g in enumerate(_LSTM_GATES)}
        for k, g in enumerate(_LSTM_GATES):
            tree["h" + g] = {"kernel": chunk(p["w_h"], k), "bias": chunk(p["b"], k)}
        return tree
    # GRU: Flax has no recurrent r/z biases; they only ever add to the input ones.
    b_x, b_h = p["b_x"], p["b_h"]
    return {
        "ir": {"kernel": chunk(p["w_x"], 0), "bias": chunk(b_x, 0) + chunk(b_h, 0)},
        "iz": {"kernel": chunk(p["w_x"], 1), "bias": chunk(b_x, 1) + chunk(b_h, 1)},
        "in": {"kernel": chunk(p["w_x"], 2), "bias": chunk(b_x, 2)},
        "hr": {"kernel": chunk(p["w_h"], 0)},
        "hz": {"kernel": chunk(p["w_h"], 1)},
        "hn": {"kernel": chunk(p["w_h"], 2), "bias": chunk(b_h, 2)},
    }


def to_flax(params, cell, *, rnn: bool = False) -> dict:
    """rnn_jax params -> Flax linen variables ``{"params": ...}`` (jax arrays).

    A cell's params -> variables of ``SimpleCell``/``LSTMCell``/``OptimizedLSTMCell``/
    ``GRUCell`` (``rnn=True``: of ``nn.RNN(cell)``, nested under ``"cell"``); a
    ``{"fwd", "bwd"}`` layer -> variables of ``nn.Bidirectional(nn.RNN(c), nn.RNN(c))``.
    The GRU's recurrent r/z biases are folded into Flax's input biases (the same model;
    exact when they are zero, as ``from_flax`` makes them).

    Examples:
      >>> import jax, rnn_jax as rj
      >>> from rnn_jax import interop
      >>> variables = interop.to_flax(rj.lstm.init(jax.random.PRNGKey(0), 2, 3), rj.lstm)
      >>> sorted(variables["params"])  # flax.linen.LSTMCell's submodules
      ['hf', 'hg', 'hi', 'ho', 'if', 'ig', 'ii', 'io']
    """
    cell = as_cell(cell)
    if not isinstance(params, Mapping):
        raise TypeError(f"expected one layer's params (a dict), got {type(params).__name__}")
    _check_layer(cell, params)
    to_jax = lambda tree: {k: {n: jnp.asarray(a) for n, a in v.items()} for k, v in tree.items()}  # noqa: E731
    if is_bidirectional(params):
        return {
            "params": {
                "forward_rnn": {"cell": to_jax(_cell_to_flax(params["fwd"], cell))},
                "backward_rnn": {"cell": to_jax(_cell_to_flax(params["bwd"], cell))},
            }
        }
    tree = to_jax(_cell_to_flax(params, cell))
    return {"params": {"cell": tree} if rnn else tree}


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
    if as_cell(cell).has_cell_state:
        c, h = carry
        return LSTMCarry(h, c)
    return carry


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
    if as_cell(cell).has_cell_state:
        h, c = carry
        return (c, h)
    return carry


# ---------------------------------------------------------------------------------------
# Keras: SimpleRNN, LSTM, GRU(reset_after=True), as ``layer.get_weights()`` lists
#
#   SimpleRNN  [kernel (I, H),  recurrent_kernel (H, H),  bias (H,)]
#   LSTM       [kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,)]    gates i, f, c, o
#   GRU        [kernel (I, 3H), recurrent_kernel (H, 3H), bias (2, 3H)]  gates z, r, h;
#              bias[0] input side, bias[1] recurrent side
# (no bias entry with use_bias=False). Keras' LSTM order is ours; the GRU's first two gate
# blocks swap (z, r <-> r, z), a permutation that is its own inverse.


def _swap_first_two_gates(array: np.ndarray, hidden: int) -> np.ndarray:
    return np.concatenate(
        [array[..., hidden : 2 * hidden], array[..., :hidden], array[..., 2 * hidden :]],
        axis=-1,
    )


def _cell_from_keras(weights: Sequence, cell: Cell, dtype) -> dict:
    if len(weights) not in (2, 3):
        raise ValueError(
            f"expected Keras weights [kernel, recurrent_kernel, bias] (or without bias), got "
            f"{len(weights)} arrays"
        )
    kernel, recurrent = _numpy(weights[0]), _numpy(weights[1])
    hidden = recurrent.shape[0]
    width = cell.num_gates * hidden
    if kernel.ndim != 2 or kernel.shape[1] != width or recurrent.shape != (hidden, width):
        raise ValueError(
            f"{cell.name} has {cell.num_gates} gate(s): expected kernel (I, {width}) and "
            f"recurrent_kernel ({hidden}, {width}), got {kernel.shape} and {recurrent.shape}"
        )
    gru = not _fused(cell)
    bias_shape = (2, width) if gru else (width,)
    bias = _numpy(weights[2]) if len(weights) == 3 else np.zeros(bias_shape, kernel.dtype)
    if gru and bias.shape == (width,):
        raise ValueError(
            "Keras GRU weights with a (3H,) bias come from reset_after=False, which applies "
            "the reset gate before the recurrent matmul; rnn_jax's GRU is reset_after=True "
            "(the Keras 2+ default, as PyTorch and cuDNN)"
        )
    if bias.shape != bias_shape:
        raise ValueError(
            f"expected a Keras {cell.name} bias of shape {bias_shape}, got {bias.shape}"
        )
    if not gru:
        return _finish(cell, {"w_x": kernel, "w_h": recurrent, "b": bias}, dtype)
    swap = lambda a: _swap_first_two_gates(a, hidden)  # noqa: E731
    params = {
        "w_x": swap(kernel),
        "w_h": swap(recurrent),
        "b_x": swap(bias[0]),
        "b_h": swap(bias[1]),
    }
    return _finish(cell, params, dtype)


def from_keras(weights: Sequence, cell, *, bidirectional: bool = False, dtype=None) -> dict:
    """Keras ``SimpleRNN``/``LSTM``/``GRU`` ``layer.get_weights()`` -> rnn_jax params.

    ``bidirectional=True`` reads a ``keras.layers.Bidirectional`` layer's list (forward
    layer's weights, then the backward layer's) -> ``{"fwd", "bwd"}``. The GRU must be
    ``reset_after=True`` (the Keras default); its gates are reordered z, r, h -> r, z, n.

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
        return {
            "fwd": _cell_from_keras(weights[:half], cell, dtype),
            "bwd": _cell_from_keras(weights[half:], cell, dtype),
        }
    return _cell_from_keras(weights, cell, dtype)


def _cell_to_keras(layer: dict, cell: Cell, use_bias: bool) -> list:
    p = _np_params(layer)
    if _fused(cell):
        weights, bias = [p["w_x"], p["w_h"]], p["b"]
    else:
        hidden = p["w_h"].shape[0]
        swap = lambda a: _swap_first_two_gates(a, hidden)  # noqa: E731
        weights = [swap(p["w_x"]), swap(p["w_h"])]
        bias = np.stack([swap(p["b_x"]), swap(p["b_h"])])
    if use_bias:
        return [np.ascontiguousarray(w) for w in [*weights, bias]]
    if np.any(bias):
        raise ValueError("use_bias=False, but the params have non-zero biases that would be lost")
    return [np.ascontiguousarray(w) for w in weights]


def to_keras(params, cell, *, use_bias: bool = True) -> list:
    """rnn_jax params -> the list for a Keras layer's ``set_weights`` (numpy arrays).

    A cell's params -> ``SimpleRNN``/``LSTM``/``GRU(reset_after=True)``; ``{"fwd", "bwd"}``
    -> ``keras.layers.Bidirectional`` (forward weights then backward). ``use_bias=False``
    for a layer built without bias (the biases must then be zero).

    Examples:
      >>> import jax, rnn_jax as rj
      >>> from rnn_jax import interop
      >>> weights = interop.to_keras(rj.simple.init(jax.random.PRNGKey(0), 10, 3), rj.simple)
      >>> [w.shape for w in weights]  # keras.layers.SimpleRNN(3) on 10 features: 42 parameters
      [(10, 3), (3, 3), (3,)]
    """
    cell = as_cell(cell)
    if not isinstance(params, Mapping):
        raise TypeError(f"expected one layer's params (a dict), got {type(params).__name__}")
    _check_layer(cell, params)
    if is_bidirectional(params):
        return _cell_to_keras(params["fwd"], cell, use_bias) + _cell_to_keras(
            params["bwd"], cell, use_bias
        )
    return _cell_to_keras(params, cell, use_bias)
