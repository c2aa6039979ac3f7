"""The LSTM with an output projection (PyTorch ``nn.LSTM(proj_size=P)``): ``h' = (o *
tanh(c')) @ w_hr``, ``h (B, P)``, ``c (B, H)``. Its hand-written backward against ``jax.grad``
(``rj.check_cell``: one step, full and truncated BPTT with lengths), and parity with
``torch.nn.LSTM(proj_size=P)`` on converted weights: 2 layers, bidirectional, packed variable
lengths, forward and gradients, all in float64. Tiny shapes: CI time is short."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, optional_import

import rnn_jax as rj
from rnn_jax import interop, models

torch, needs_torch = optional_import("torch")

IN, HID, PROJ = 3, 5, 2  # input, hidden (c), projection (h and outputs)
PROJECTED = rj.lstm.with_projection(PROJ)


def test_check_cell_float64(x64):
    """Contract, one step vs jax.vjp, full and truncated (k=2) BPTT with uneven lengths vs
    jax.grad and finite differences, d_params.w_hr included: float64 round-off."""
    report = rj.check_cell(PROJECTED, 2, 3, batch_size=2, num_steps=3,
                           truncate=2, num_directions=1)  # fmt: skip
    assert report.ok and max(max(row.errors) for row in report.rows) < 1e-12
    assert "d_params.w_hr" in [row.path for row in report.rows]


def test_shapes_and_sizes_of_the_projected_cell():
    """rj.lstm.with_projection(P) runs params with w_hr: outputs and h have P features, c has
    H; a stack feeds 2P features to the layer above, and a classifier's readout reads 2P (the
    cell declares its output size)."""
    params = PROJECTED.init(jax.random.PRNGKey(0), IN, HID)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, params,
                                     rj.lstm.init(jax.random.PRNGKey(0), IN, HID, proj_size=PROJ)))
    assert params["w_h"].shape == (PROJ, 4 * HID) and params["w_hr"].shape == (HID, PROJ)
    block = params["w_h"][:, HID : 2 * HID]  # the forget gate's (P, H) block: orthonormal rows
    assert_close(block @ block.T, jnp.eye(PROJ), 1e-6)
    carry, hs = jax.eval_shape(lambda: rj.unroll(PROJECTED, params, jnp.ones((2, 4, IN))))
    assert hs.shape == (2, 4, PROJ) and carry.h.shape == (2, PROJ) and carry.c.shape == (2, HID)
    stack = jax.eval_shape(lambda: rj.init_stack(PROJECTED, jax.random.PRNGKey(1), IN, HID, 2,
                                                 bidirectional=True))  # fmt: skip
    assert stack[1]["fwd"]["w_x"].shape == (2 * PROJ, 4 * HID)
    model = models.classifier(PROJECTED, HID, 3, num_layers=2, bidirectional=True)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(2), IN))
    assert shapes["readout"]["w"].shape == (2 * PROJ, 3)
    logits = jax.eval_shape(model.apply, shapes, jnp.ones((2, 4, IN)), lengths=jnp.array([4, 1]))
    assert logits.shape == (2, 3)


def _torch_lstm():
    torch.manual_seed(0)
    return torch.nn.LSTM(IN, HID, num_layers=2, bidirectional=True, proj_size=PROJ,
                         batch_first=True).double()  # fmt: skip


@needs_torch
def test_torch_parity_packed_two_layers_bidirectional(x64):
    """torch.nn.LSTM(proj_size=P), 2 layers, bidirectional, on a packed batch (lengths 4, 1,
    3) from given initial (h0 (P), c0 (H)): outputs, final (h, c), and the gradients of a loss
    on all of them w.r.t. every weight, the input and the initial state, in float64."""
    module = _torch_lstm()
    stack = interop.from_torch(module, PROJECTED)
    rng = np.random.default_rng(1)
    batch, steps = 3, 4
    lengths = np.array([4, 1, 3])
    xs = rng.normal(size=(batch, steps, IN))
    xs[np.arange(steps)[None, :] >= lengths[:, None]] = 7.0  # padding must not leak in
    h0, c0 = rng.normal(size=(4, batch, PROJ)), rng.normal(size=(4, batch, HID))
    w_out, w_h, w_c = (rng.normal(size=s) for s in ((batch, steps, 2 * PROJ), h0.shape, c0.shape))

    xs_t, h0_t, c0_t = (torch.tensor(a, requires_grad=True) for a in (xs, h0, c0))
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        xs_t, torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
    )
    out_packed, (h_n, c_n) = module(packed, (h0_t, c0_t))
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_packed, True, total_length=steps)
    torch_loss = sum((t * torch.from_numpy(w)).sum() for t, w in
                     ((out, w_out), (h_n, w_h), (c_n, w_c)))  # fmt: skip
    torch_loss.backward()

    def to_carries(h, c):  # torch's (layer * 2 + direction, B, .) -> per layer (fwd, bwd)
        pair = lambda k: tuple(rj.LSTMCarry(h[2 * k + d], c[2 * k + d]) for d in (0, 1))
        return [pair(0), pair(1)]

    def run(stack, xs, h0, c0):
        finals, hs = rj.unroll_stack(PROJECTED, stack, xs, to_carries(h0, c0),
                                     lengths=jnp.asarray(lengths), gradient="manual")  # fmt: skip
        h_n = jnp.stack([c.h for pair in finals for c in pair])
        c_n = jnp.stack([c.c for pair in finals for c in pair])
        return hs, h_n, c_n

    def loss(*args):
        outputs = run(*args)
        return sum(jnp.sum(t * w) for t, w in zip(outputs, (w_out, w_h, w_c), strict=True)), outputs

    args = (stack, *map(jnp.asarray, (xs, h0, c0)))
    # One jit: about a third of the CPU time of the same gradient traced op by op.
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
    (d_stack, d_xs, d_h0, d_c0), outputs = grads(*args)
    numpy = lambda t: t.detach().numpy()
    assert_close(outputs, tuple(map(numpy, (out, h_n, c_n))))
    ours = interop.to_torch(d_stack, PROJECTED, as_tensors=False)
    theirs = {name: numpy(p.grad) for name, p in module.named_parameters()}
    assert sorted(ours) == sorted(theirs) and any(name.startswith("weight_hr") for name in ours)
    # b = bias_ih + bias_hh: its gradient is each one's (to_torch writes it to bias_ih).
    assert_close({k: v for k, v in ours.items() if not k.startswith("bias_hh")},
                 {k: v for k, v in theirs.items() if not k.startswith("bias_hh")})  # fmt: skip
    assert_close((d_xs, d_h0, d_c0), tuple(map(lambda t: numpy(t.grad), (xs_t, h0_t, c0_t))))


@needs_torch
def test_torch_round_trip_is_bitwise(x64):
    """rnn_jax -> torch (strict load into nn.LSTM(proj_size=P), weight_hr_l{k}[_reverse])
    -> rnn_jax is bitwise; plain rj.lstm refuses the projected weights, naming the cell."""
    with pytest.raises(ValueError, match=rf"run them with rj.lstm.with_projection\({PROJ}\)"):
        interop.from_torch(_torch_lstm(), rj.lstm)
    stack = interop.from_torch(_torch_lstm(), PROJECTED)
    stack = jax.tree.map(lambda a: a + 0.5, stack)  # not torch's own draws
    top = stack[1]["bwd"]
    assert top["w_hr"].shape == (HID, PROJ) and top["w_x"].shape[0] == 2 * PROJ
    module = _torch_lstm()
    module.load_state_dict(interop.to_torch(stack, PROJECTED))  # strict: same keys and shapes
    back = interop.from_torch(module, PROJECTED)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), back, stack))


def test_clear_errors():
    """proj_size outside (0, H), as torch refuses; fused backends name the option; params
    and cells that disagree about the projection (plain rj.lstm names with_projection(P))."""
    key = jax.random.PRNGKey(0)
    for bad in (HID, HID + 1, 0, -1):
        with pytest.raises(ValueError, match="proj_size must be"):
            rj.lstm.init(key, IN, HID, proj_size=bad)
    params = rj.lstm.init(key, IN, HID, proj_size=PROJ)
    xs = jnp.ones((2, 3, IN))
    for backend in ("fused_cpu", "cudnn"):
        message = rf"backend='{backend}' does not support an LSTM with an output projection"
        with pytest.raises(ValueError, match=message + rf" \(proj_size={PROJ}"):
            rj.unroll(PROJECTED, params, xs, backend=backend)
    assert_close(rj.unroll(PROJECTED, params, xs, backend="auto"), rj.unroll(PROJECTED, params, xs))
    refused = rf"run them with rj.lstm.with_projection\({PROJ}\), the cell whose h has {PROJ}"
    with pytest.raises(ValueError, match=refused):
        rj.checks.check_params(rj.lstm.cell, params)
    for run in (rj.unroll, rj.unroll_stack, rj.check_gradients):  # no implicit swap
        with pytest.raises(ValueError, match=refused):
            run(rj.lstm, [params] if run is rj.unroll_stack else params, xs)
    with pytest.raises(ValueError, match=refused):  # at init, before a layer is sized for H
        rj.init_stack(rj.lstm, key, IN, HID, 2, bidirectional=True, proj_size=PROJ)
    plain = rj.lstm.init(key, IN, HID)
    with pytest.raises(ValueError, match="must have keys"):
        rj.unroll(rj.lstm.with_projection(PROJ), plain, xs)
    with pytest.raises(ValueError, match="no output projection"):
        rj.gru.cell.with_projection(PROJ)
