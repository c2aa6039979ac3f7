"""Elman RNN: ``h' = tanh(x @ w_x + h @ w_h + b)`` (or ReLU via ``rnn_jax.simple.relu``, or any
element-wise activation via ``rnn_jax.simple.with_activation``).

Parameters ``{"w_x": (I, H), "w_h": (H, H), "b": (H,)}``; carry ``h`` (B, H).

Examples:
  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> params = rj.simple.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
  >>> h, out = rj.simple.relu.step(params, rj.simple.zero_carry(2, 4), jnp.ones((2, 3)))
  >>> bool(jnp.all(h >= 0)), rj.count_params(params)         # I*H + H*H + H
  (True, 32)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from rnn_jax.cell import Cell, protocol_of
from rnn_jax.cells.base import fused_cell
from rnn_jax.init import fused_params

__all__ = [  # fmt: skip
    "cell", "hidden_of", "init", "relu", "step", "step_backward", "step_forward",
    "with_activation", "zero_carry",
]


def init(key, input_size: int, hidden_size: int, *, dtype=jnp.float32, initializer="default"):
    """``{"w_x": (I, H), "w_h": (H, H), "b": (H,)}``; ``I*H + H*H + H`` parameters (Keras')."""
    return fused_params(
        key, input_size, hidden_size, 1, ("b",), initializer=initializer, dtype=dtype
    )


def output_pointwise(activation, derivative, z_x, z_h, h):
    """``z_x, z_h (B, H)`` -> ``(h', activation'(z))``, ``h' = activation(z)`` at
    ``z = z_x + z_h``: the new carry, and the derivative for the backward, which ``derivative``
    reads from h' (tanh: ``1 - h'^2``; relu: ``[h' > 0]``, the subgradient 0 at z = 0 as
    ``jax.nn.relu``)."""
    h_new = activation(z_x + z_h)
    return h_new, derivative(h_new)


def activation_pointwise(activation, z_x, z_h, h):
    """``z_x, z_h (B, H)`` -> ``(h', activation'(z))``: the new carry, and the derivative at
    ``z = z_x + z_h`` (one forward-mode pass gives both; the backward needs nothing else)."""
    z = z_x + z_h
    return jax.jvp(activation, (z,), (jnp.ones_like(z),))


def pointwise_backward(derivative, d_h):
    """``d_z = d_h * activation'(z)``: the activation acts element by element, so its
    Jacobian is diagonal (``with_activation`` checks this); h reaches h' only through
    ``w_h``, so no direct term."""
    d_z = d_h * derivative
    return d_z, d_z, jnp.zeros_like(d_h)


tanh_pointwise = functools.partial(output_pointwise, jnp.tanh, lambda h: 1 - h * h)
relu_pointwise = functools.partial(output_pointwise, jax.nn.relu, lambda h: (h > 0).astype(h.dtype))
cell = fused_cell("simple", 1, init, tanh_pointwise, pointwise_backward, kernel="tanh")
relu = fused_cell("simple_relu", 1, init, relu_pointwise, pointwise_backward, kernel="relu")


@functools.cache
def with_activation(activation: str | Callable) -> Cell:
    """The Elman cell ``h' = activation(x @ w_x + h @ w_h + b)`` (Keras ``SimpleRNN(activation=)``,
    Flax ``SimpleCell(activation_fn=)``), with the same parameters as ``rj.simple``.

    ``"tanh"``/``jnp.tanh`` and ``"relu"``/``jax.nn.relu`` return ``rj.simple`` and
    ``rj.simple.relu`` themselves (hand-written derivatives). Any other element-wise JAX
    function gets a cell whose forward keeps ``activation'(z)`` (B, H) from ``jax.jvp`` for
    the backward. The result is cached per function, so it is hashable and the same object
    each time: pass the same function (not a fresh lambda) to reuse compiled code.

    Raises ``TypeError`` for a non-callable and ``ValueError`` for a function that is not
    element-wise (e.g. a softmax: its Jacobian is not diagonal), checked once on a probe.

    Examples:
      >>> import jax, jax.numpy as jnp, rnn_jax as rj
      >>> gelu = rj.simple.with_activation(jax.nn.gelu)
      >>> gelu is rj.simple.with_activation(jax.nn.gelu), gelu.name   # static for jit
      (True, 'simple_gelu')
      >>> rj.simple.with_activation("relu") is rj.simple.relu
      True
      >>> params = rj.simple.init(jax.random.PRNGKey(0), 3, 4)
      >>> xs = jnp.ones((2, 5, 3))
      >>> carry, hs = rj.unroll(gelu, params, xs, gradient="manual")
      >>> hs.shape
      (2, 5, 4)
    """
    if activation in ("tanh", "relu") or activation is jnp.tanh or activation is jax.nn.relu:
        return cell if activation in ("tanh", jnp.tanh) else relu
    if isinstance(activation, str) or not callable(activation):
        raise TypeError(
            f"activation must be 'tanh', 'relu' or an element-wise JAX function, got {activation!r}"
        )
    _check_elementwise(activation)
    name = getattr(activation, "__name__", type(activation).__name__)
    pointwise = functools.partial(activation_pointwise, activation)
    return fused_cell(f"simple_{name}", 1, init, pointwise, pointwise_backward)


def _check_elementwise(activation) -> None:
    """Raise unless ``activation`` maps a (2, 3) probe to (2, 3) with a diagonal Jacobian."""
    probe = jnp.linspace(-1.5, 1.3, 6, dtype=jnp.float32).reshape(2, 3)
    out = jax.eval_shape(activation, probe)
    if getattr(out, "shape", None) != probe.shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"activation must keep the shape of its input: (2, 3) -> {got}")
    jacobian = jax.jacfwd(activation)(probe).reshape(6, 6)
    if bool(jnp.any(jacobian * (1 - jnp.eye(6)) != 0)):
        raise ValueError(
            f"activation {activation!r} is not element-wise: its output mixes units (e.g. a "
            "softmax), so the Elman backward's diagonal derivative would be wrong"
        )


zero_carry, hidden_of, step, step_forward, step_backward = protocol_of(cell)[1:]
