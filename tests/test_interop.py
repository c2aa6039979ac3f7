# ruff: noqa: E501  (expected error messages read best on one line)
"""Weight converters: exact round trips, parity with the real frameworks' layers on the
converted weights, and clear errors for weights rnn_jax cannot represent."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    CELLS,
    assert_close,
    optional_import,
    random_carry,
    random_params,
    random_stack,
)

import rnn_jax as rj
from rnn_jax import interop

torch, needs_torch = optional_import("torch")


def assert_bitwise(a, b):
    """Same structure, same dtypes, same bits (-0.0 vs +0.0 would differ)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_core_never_imports_torch_keras_or_tensorflow():
    code = (
        "import sys, rnn_jax, rnn_jax.interop, rnn_jax.nnx, rnn_jax.models\n"
        "bad = [m for m in ('torch', 'keras', 'tensorflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- PyTorch -----------------------------------------------------------------------------

TORCH_MODULES = {
    "simple": lambda *a, **kw: torch.nn.RNN(*a, nonlinearity="tanh", **kw),
    "relu": lambda *a, **kw: torch.nn.RNN(*a, nonlinearity="relu", **kw),
    "lstm": lambda *a, **kw: torch.nn.LSTM(*a, **kw),
    "gru": lambda *a, **kw: torch.nn.GRU(*a, **kw),
}
TORCH_CELLS = {
    "simple": lambda *a, **kw: torch.nn.RNNCell(*a, nonlinearity="tanh", **kw),
    "relu": lambda *a, **kw: torch.nn.RNNCell(*a, nonlinearity="relu", **kw),
    "lstm": lambda *a, **kw: torch.nn.LSTMCell(*a, **kw),
    "gru": lambda *a, **kw: torch.nn.GRUCell(*a, **kw),
}


@needs_torch
@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize(("num_layers", "bidirectional"), [(1, False), (2, True), (3, False)])
def test_rnn_jax_to_torch_to_rnn_jax_is_bitwise(x64, name, num_layers, bidirectional):
    cell = CELLS[name]
    stack = random_stack(
        np.random.default_rng(0), cell, 3, 4, num_layers, bidirectional=bidirectional
    )
    module = TORCH_MODULES[name](3, 4, num_layers=num_layers, bidirectional=bidirectional).double()
    module.load_state_dict(interop.to_torch(stack, cell))  # strict: same keys, same shapes
    assert_bitwise(interop.from_torch(module, cell), stack)
    # without torch tensors: the numpy state_dict reads back the same
    assert_bitwise(interop.from_torch(interop.to_torch(stack, cell, as_tensors=False), cell), stack)


@needs_torch
@pytest.mark.parametrize("name", sorted(CELLS))
def test_torch_to_rnn_jax_to_torch_equal_up_to_bias_split(x64, name):
    cell = CELLS[name]
    torch.manual_seed(0)
    module = TORCH_MODULES[name](3, 4, num_layers=2, bidirectional=True).double()
    state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    back = interop.to_torch(interop.from_torch(module, cell), cell, as_tensors=False)
    assert set(back) == set(state)
    for key in state:
        if key.startswith("weight") or name == "gru":
            assert state[key].tobytes() == back[key].tobytes(), key
    if name != "gru":  # b_ih + b_hh fused into one bias: only the sum survives
        for key in (k for k in state if k.startswith("bias_ih")):
            hh = key.replace("bias_ih", "bias_hh")
            np.testing.assert_array_equal(back[key] + back[hh], state[key] + state[hh])
            assert np.all(back[hh] == 0) and np.all(np.signbit(back[hh]))  # -0.0


@needs_torch
@pytest.mark.parametrize("name", sorted(CELLS))
def test_rnn_jax_params_run_identically_in_torch(x64, name):
    """The other direction of the parity tests in test_unroll: rnn_jax params -> torch."""
    cell = CELLS[name]
    rng = np.random.default_rng(1)
    stack = random_stack(rng, cell, 3, 5, 2, bidirectional=True)
    module = TORCH_MODULES[name](3, 5, num_layers=2, bidirectional=True, batch_first=True)
    module.double().load_state_dict(interop.to_torch(stack, cell))
    xs = rng.normal(size=(2, 6, 3))
    out, _ = module(torch.from_numpy(xs))
    _, hs = rj.unroll_stack(cell, stack, jnp.asarray(xs))
    assert_close(hs, out.detach().numpy())


@needs_torch
@pytest.mark.parametrize("name", sorted(CELLS))
def test_torch_cell_modules(x64, name):
    """nn.RNNCell/LSTMCell/GRUCell <-> a single cell's params dict; one step agrees."""
    cell = CELLS[name]
    torch.manual_seed(1)
    module = TORCH_CELLS[name](3, 4).double()
    params = interop.from_torch(module, cell)
    assert isinstance(params, dict) and params["w_x"].shape == (3, 4 * cell.fused.num_gates)
    rng = np.random.default_rng(2)
    x, carry = rng.normal(size=(2, 3)), random_carry(rng, cell, 2, 4)
    if name == "lstm":
        h, c = module(torch.from_numpy(x), tuple(torch.from_numpy(np.array(v)) for v in carry))
        want = rj.LSTMCarry(h.detach().numpy(), c.detach().numpy())
    else:
        want = module(torch.from_numpy(x), torch.from_numpy(np.array(carry))).detach().numpy()
    new_carry, _ = cell.step(params, carry, jnp.asarray(x))
    assert_close(new_carry, want)
    back = interop.to_torch(params, cell)
    assert set(back) == set(module.state_dict())
    module.load_state_dict(back)
    assert_bitwise(interop.from_torch(module, cell), params)


@needs_torch
@pytest.mark.parametrize("name", sorted(CELLS))
def test_torch_without_bias(x64, name):
    cell = CELLS[name]
    torch.manual_seed(2)
    module = TORCH_MODULES[name](3, 4, bias=False, batch_first=True).double()
    (params,) = interop.from_torch(module, cell)
    for bias in cell.fused.biases:
        np.testing.assert_array_equal(np.asarray(params[bias]), 0.0)
    xs = np.random.default_rng(3).normal(size=(2, 5, 3))
    out, _ = module(torch.from_numpy(xs))
    assert_close(rj.unroll(cell, params, jnp.asarray(xs))[1], out.detach().numpy())
    module.load_state_dict(interop.to_torch([params], cell, bias=False))  # strict keys
    with pytest.raises(ValueError, match=r"bias=False, but the params have non-zero biases"):
        nonzero = {**params, cell.fused.biases[0]: params[cell.fused.biases[0]] + 1}
        interop.to_torch([nonzero], cell, bias=False)


@needs_torch
def test_torch_dtypes():
    module = torch.nn.GRU(2, 3)  # float32
    (params,) = interop.from_torch(module, rj.gru)
    assert {str(v.dtype) for v in params.values()} == {"float32"}
    (params16,) = interop.from_torch(module.to(torch.bfloat16), rj.gru)
    assert {str(v.dtype) for v in params16.values()} == {"bfloat16"}
    state = interop.to_torch([params16], rj.gru)
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    (cast,) = interop.from_torch(module.float(), rj.gru, dtype=jnp.bfloat16)
    assert {str(v.dtype) for v in cast.values()} == {"bfloat16"}


@needs_torch
def test_torch_errors():
    with pytest.raises(
        ValueError,
        match=r"torch module is a GRU \(GRU\), which is rnn_jax's 'gru' cell, but cell='lstm'",
    ):
        interop.from_torch(torch.nn.GRU(2, 3), rj.lstm)
    with pytest.raises(ValueError, match=r"RNN_RELU.*'simple_relu' cell, but cell='simple'"):
        interop.from_torch(torch.nn.RNN(2, 3, nonlinearity="relu"), rj.simple)
    gru_state = torch.nn.GRU(2, 3).state_dict()
    with pytest.raises(
        ValueError,
        match=r"lstm has 4 gate\(s\): expected weight_ih_l0 \(12, I\) and weight_hh_l0 \(12, 3\), got \(9, 2\)",
    ):
        interop.from_torch(gru_state, rj.lstm)
    with pytest.raises(ValueError, match=r"lstm_proj1 expects w_hr \(H, 1\).*got w_hr \(3, 2\)"):
        interop.from_torch(torch.nn.LSTM(2, 3, proj_size=2), rj.lstm.with_projection(1))
    with pytest.raises(ValueError, match=r"cannot represent: \['extra'\]"):
        interop.from_torch({**gru_state, "extra": np.zeros(2)}, rj.gru)
    with pytest.raises(
        ValueError, match=r"expected PyTorch RNN weights named weight_ih_l0.*got keys \['weight'\]"
    ):
        interop.from_torch({"weight": np.zeros((2, 2))}, rj.gru)
    with pytest.raises(TypeError, match=r"expected torch nn.RNN, nn.LSTM, nn.GRU .* got Linear"):
        interop.from_torch(torch.nn.Linear(2, 3), rj.gru)
    with pytest.raises(ValueError, match=r"gru params must have keys"):
        interop.to_torch([rj.lstm.init(jax.random.PRNGKey(0), 2, 3)], rj.gru)


# --- Flax linen --------------------------------------------------------------------------

FLAX = {
    "SimpleCell": (fnn.SimpleCell, rj.simple),
    "LSTMCell": (fnn.LSTMCell, rj.lstm),
    "OptimizedLSTMCell": (fnn.OptimizedLSTMCell, rj.lstm),
    "GRUCell": (fnn.GRUCell, rj.gru),
}


def flax_variables(flax_cls, rng, inputs=3, hidden=4):
    module = flax_cls(hidden, param_dtype=jnp.float64)
    carry = module.initialize_carry(jax.random.PRNGKey(0), (2, inputs))
    variables = module.init(jax.random.PRNGKey(1), carry, jnp.ones((2, inputs)))
    # redraw every leaf: Flax's zero biases would hide a misplaced one
    return module, jax.tree.map(lambda v: jnp.asarray(rng.normal(0, 0.6, v.shape)), variables)


@pytest.mark.parametrize("flax_name", sorted(FLAX))
def test_flax_to_rnn_jax_to_flax_is_bitwise_and_steps_agree(x64, flax_name):
    flax_cls, cell = FLAX[flax_name]
    rng = np.random.default_rng(4)
    module, variables = flax_variables(flax_cls, rng)
    params = interop.from_flax(variables, cell)
    assert_bitwise(interop.to_flax(params, cell), variables)
    assert_bitwise(interop.from_flax(variables["params"], cell), params)  # bare params too
    carry = random_carry(rng, cell.cell, 2, 4)
    x = jnp.asarray(rng.normal(size=(2, 3)))
    flax_carry, flax_h = module.apply(variables, interop.carry_to_flax(carry, cell), x)
    new_carry, h = cell.step(params, carry, x)
    assert_close(h, flax_h)
    assert_close(new_carry, interop.carry_from_flax(flax_carry, cell))


@pytest.mark.parametrize("flax_name", sorted(FLAX))
def test_rnn_jax_to_flax_runs_identically(x64, flax_name):
    """Our params with every bias non-zero (the GRU's recurrent r/z biases too, which Flax
    folds into its input biases) give the same step in the Flax cell."""
    flax_cls, cell = FLAX[flax_name]
    rng = np.random.default_rng(5)
    params = random_params(rng, cell.cell, 3, 4)
    module = flax_cls(4, param_dtype=jnp.float64)
    carry = random_carry(rng, cell.cell, 2, 4)
    x = jnp.asarray(rng.normal(size=(2, 3)))
    variables = interop.to_flax(params, cell)
    flax_carry, flax_h = module.apply(variables, interop.carry_to_flax(carry, cell), x)
    new_carry, h = cell.step(params, carry, x)
    assert_close(h, flax_h)
    assert_close(new_carry, interop.carry_from_flax(flax_carry, cell))
    back = interop.from_flax(variables, cell)
    if cell is rj.gru:  # only the sums b_x + b_h of the r and z gates survive
        for key in ("w_x", "w_h"):
            assert_bitwise(back[key], params[key])
        np.testing.assert_array_equal(back["b_x"][8:], params["b_x"][8:])
        np.testing.assert_array_equal(back["b_h"][8:], params["b_h"][8:])
        np.testing.assert_array_equal(back["b_x"][:8], (params["b_x"] + params["b_h"])[:8])
        np.testing.assert_array_equal(back["b_h"][:8], 0.0)
    else:
        assert_bitwise(back, params)


def test_flax_rnn_and_bidirectional_wrappers(x64):
    rng = np.random.default_rng(6)
    layer = {d: random_params(rng, rj.lstm.cell, 3, 4) for d in ("fwd", "bwd")}
    xs = jnp.asarray(rng.normal(size=(2, 5, 3)))
    lengths = jnp.array([5, 2])
    bi = fnn.Bidirectional(
        fnn.RNN(fnn.OptimizedLSTMCell(4, param_dtype=jnp.float64)),
        fnn.RNN(fnn.OptimizedLSTMCell(4, param_dtype=jnp.float64)),
    )
    variables = interop.to_flax(layer, rj.lstm)
    flax_hs = bi.apply(variables, xs, seq_lengths=lengths)
    _, hs = rj.bidirectional(rj.lstm, layer, xs, lengths=lengths)
    valid = (np.arange(5)[None, :] < np.asarray(lengths)[:, None])[..., None]
    assert_close(jnp.where(valid, flax_hs, 0.0), hs)
    assert_bitwise(interop.from_flax(variables, rj.lstm), layer)
    rnn_vars = interop.to_flax(layer["fwd"], rj.lstm, rnn=True)
    assert set(rnn_vars["params"]) == {"cell"}
    flax_hs = fnn.RNN(fnn.LSTMCell(4, param_dtype=jnp.float64)).apply(rnn_vars, xs)
    assert_close(flax_hs, rj.unroll(rj.lstm, layer["fwd"], xs)[1])
    assert_bitwise(interop.from_flax(rnn_vars, rj.lstm), layer["fwd"])


def test_flax_errors(x64):
    _, variables = flax_variables(fnn.GRUCell, np.random.default_rng(7))
    with pytest.raises(
        ValueError,
        match=r"expected the params of a Flax lstm cell with submodules \['hf', 'hg'.*got \['hn', 'hr'",
    ):
        interop.from_flax(variables, rj.lstm)
    with pytest.raises(TypeError, match=r"expected one layer's params \(a dict\), got list"):
        interop.to_flax([rj.gru.init(jax.random.PRNGKey(0), 2, 3)], rj.gru)


# --- Keras -------------------------------------------------------------------------------

KERAS_SHAPES = {  # what layer.get_weights() returns for I=3, H=4
    "simple": [(3, 4), (4, 4), (4,)],
    "lstm": [(3, 16), (4, 16), (16,)],
    "gru": [(3, 12), (4, 12), (2, 12)],
}


def keras_weights(name, rng, dtype=np.float64):
    return [rng.normal(size=shape).astype(dtype) for shape in KERAS_SHAPES[name]]


@pytest.mark.parametrize("name", sorted(KERAS_SHAPES))
def test_keras_round_trips_are_bitwise(x64, name):
    cell = CELLS[name]
    rng = np.random.default_rng(8)
    weights = keras_weights(name, rng)
    assert_bitwise(interop.to_keras(interop.from_keras(weights, cell), cell), weights)
    params = random_params(rng, cell, 3, 4)
    assert_bitwise(interop.from_keras(interop.to_keras(params, cell), cell), params)
    layer = {"fwd": params, "bwd": random_params(rng, cell, 3, 4)}
    both = interop.to_keras(layer, cell)
    assert len(both) == 6
    assert_bitwise(interop.from_keras(both, cell, bidirectional=True), layer)


def test_keras_gru_gate_order_is_reordered():
    """Keras' GRU blocks are z, r, h; ours r, z, n. Label each block by its value."""
    blocks = lambda rows, values: np.concatenate([np.full((rows, 2), v) for v in values], 1)  # noqa: E731
    z, r, h = 10.0, 20.0, 30.0
    weights = [
        blocks(3, (z, r, h)),
        blocks(2, (z, r, h)),
        np.stack([blocks(1, (z, r, h))[0], blocks(1, (-z, -r, -h))[0]]),
    ]
    params = interop.from_keras(weights, rj.gru)
    for key, sign in (("w_x", 1), ("w_h", 1), ("b_x", 1), ("b_h", -1)):
        got = np.asarray(params[key]).reshape(-1, 3, 2)[..., 0]
        np.testing.assert_array_equal(got[0], sign * np.array([r, z, h]))


def test_keras_without_bias_and_errors(x64):
    rng = np.random.default_rng(9)
    weights = keras_weights("lstm", rng)[:2]  # use_bias=False
    params = interop.from_keras(weights, rj.lstm)
    np.testing.assert_array_equal(np.asarray(params["b"]), 0.0)
    assert_bitwise(interop.to_keras(params, rj.lstm, use_bias=False), weights)
    gru = keras_weights("gru", rng)
    with pytest.raises(ValueError, match=r"\(3H,\) bias come from reset_after=False"):
        interop.from_keras([gru[0], gru[1], gru[2][0]], rj.gru)
    with pytest.raises(
        ValueError,
        match=r"lstm has 4 gate\(s\): expected kernel \(I, 16\) and recurrent_kernel \(4, 16\), got \(3, 12\) and \(4, 12\)",
    ):
        interop.from_keras(gru, rj.lstm)
    with pytest.raises(
        ValueError, match=r"expected Keras weights \[kernel, recurrent_kernel, bias\].*got 1 arrays"
    ):
        interop.from_keras(gru[:1], rj.gru)
    with pytest.raises(
        ValueError, match=r"expected a Keras lstm bias of shape \(16,\), got \(2, 16\)"
    ):
        interop.from_keras([*weights, np.zeros((2, 16))], rj.lstm)
    with pytest.raises(ValueError, match=r"even number of arrays, got 3"):
        interop.from_keras(gru, rj.gru, bidirectional=True)
    with pytest.raises(ValueError, match=r"use_bias=False, but the params have non-zero biases"):
        interop.to_keras(random_params(rng, rj.gru.cell, 3, 4), rj.gru, use_bias=False)


def _import_keras():
    os.environ["KERAS_BACKEND"] = "jax"  # only read when keras is first imported
    try:
        keras = importlib.import_module("keras")
    except ImportError:
        pytest.skip("keras is not installed (pip install 'keras>=3')")
    if keras.backend.backend() != "jax":
        pytest.skip(f"keras was already imported with the {keras.backend.backend()} backend")
    return keras


KERAS_LAYERS = {"simple": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}


@pytest.mark.parametrize("name", sorted(KERAS_LAYERS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_keras_layer_parity(name, bidirectional):
    """Real Keras layers (JAX backend, float32: Keras 3's JAX RNN does not run in float64)
    on our weights, and our unroll on theirs, with a mask equal to ``lengths``."""
    keras = _import_keras()
    cell = CELLS[name]
    rng = np.random.default_rng(10)
    xs = rng.normal(size=(3, 5, 3)).astype(np.float32)
    lengths = np.array([5, 2, 4])
    mask = np.arange(5)[None, :] < lengths[:, None]
    layer = getattr(keras.layers, KERAS_LAYERS[name])(4, return_sequences=True)
    if bidirectional:
        layer = keras.layers.Bidirectional(layer)
    layer(xs)  # build
    # our params -> Keras
    ours = {d: random_params(rng, cell, 3, 4, dtype=np.float32) for d in ("fwd", "bwd")}
    ours = ours if bidirectional else ours["fwd"]
    layer.set_weights(interop.to_keras(ours, cell))
    run = rj.bidirectional if bidirectional else rj.unroll
    _, hs = run(cell, ours, jnp.asarray(xs), lengths=lengths)
    keras_hs = np.where(mask[..., None], np.asarray(layer(xs, mask=mask)), 0.0)
    assert float(np.abs(keras_hs - np.asarray(hs)).max()) < 1e-5
    # Keras' own (randomly initialised) weights -> ours
    layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    theirs = interop.from_keras(layer.get_weights(), cell, bidirectional=bidirectional)
    _, hs = run(cell, theirs, jnp.asarray(xs), lengths=lengths)
    keras_hs = np.where(mask[..., None], np.asarray(layer(xs, mask=mask)), 0.0)
    assert float(np.abs(keras_hs - np.asarray(hs)).max()) < 1e-5
