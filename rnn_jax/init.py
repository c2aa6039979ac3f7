"""Weight initialisers for the fused-gate parameter layout.

Every cell stores ``w_x: (I, G*H)``, ``w_h: (H, G*H)`` with the G gates side by side,
so initialisers that care about per-gate structure (orthogonal) work block by block.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = [  # fmt: skip
    "INITIALIZERS", "fused_params", "glorot_uniform", "orthogonal_blocks", "set_gate_bias",
    "uniform",
]

INITIALIZERS = ("default", "torch")


def glorot_uniform(key, shape, dtype=jnp.float32):
    """Glorot/Xavier uniform over the whole fused kernel, as Keras does for ``kernel``.

    Examples:
      >>> import jax
      >>> from rnn_jax.init import glorot_uniform
      >>> w = glorot_uniform(jax.random.PRNGKey(0), (28, 512))
      >>> bool(abs(w).max() <= (6 / (28 + 512)) ** 0.5)  # U(-sqrt(6 / (fan_in + fan_out)), ...)
      True
    """
    return jax.nn.initializers.glorot_uniform()(key, shape, dtype)


def orthogonal_blocks(key, hidden_size: int, num_gates: int, dtype=jnp.float32, *,
                      rows: int | None = None):  # fmt: skip
    """``(H, G*H)``: one orthogonal ``(H, H)`` block per gate (``rows=P < H``: ``(P, G*H)``,
    each ``(P, H)`` block with orthonormal rows, for a recurrent product that reads a
    projected ``h (B, P)``).

    Per-gate blocks keep each gate's recurrent map norm-preserving, which a single
    orthogonal ``(H, G*H)`` matrix (Keras' choice) does not.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from rnn_jax.init import orthogonal_blocks
      >>> w_h = orthogonal_blocks(jax.random.PRNGKey(0), hidden_size=4, num_gates=3)
      >>> w_h.shape
      (4, 12)
      >>> block = w_h[:, 4:8]  # the second gate's (H, H) block
      >>> bool(jnp.allclose(block.T @ block, jnp.eye(4), atol=1e-5))
      True
    """
    keys = jax.random.split(key, num_gates)
    shape = (hidden_size if rows is None else rows, hidden_size)
    blocks = [jax.nn.initializers.orthogonal()(k, shape, dtype) for k in keys]
    return jnp.concatenate(blocks, axis=1)


def uniform(key, shape, bound: float, dtype=jnp.float32):
    """U(-bound, bound), PyTorch's RNN default with ``bound = 1/sqrt(H)``.

    Examples:
      >>> import jax
      >>> from rnn_jax.init import uniform
      >>> w = uniform(jax.random.PRNGKey(0), (64, 256), bound=1 / 64**0.5)
      >>> bool(abs(w).max() <= 0.125)
      True
    """
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def fused_params(
    key,
    input_size: int,
    hidden_size: int,
    num_gates: int,
    bias_names: tuple[str, ...],
    *,
    initializer: str = "default",
    dtype=jnp.float32,
) -> dict:
    """Parameters ``{"w_x": (I, G*H), "w_h": (H, G*H), <bias>: (G*H,) ...}``.

    ``"default"``: Glorot-uniform ``w_x``, per-gate orthogonal ``w_h``, zero biases.
    ``"torch"``: every entry U(±1/sqrt(H)); a bias that PyTorch splits in two
    (``b = b_ih + b_hh``) is drawn as the sum of two such draws, so its distribution
    matches ``nn.LSTM``/``nn.RNN`` exactly.

    Examples:
      >>> import jax
      >>> from rnn_jax.init import fused_params
      >>> p = fused_params(jax.random.PRNGKey(0), 3, 4, num_gates=3, bias_names=("b_x", "b_h"))
      >>> {name: value.shape for name, value in p.items()}
      {'w_x': (3, 12), 'w_h': (4, 12), 'b_x': (12,), 'b_h': (12,)}
      >>> torch_like = fused_params(jax.random.PRNGKey(0), 3, 4, 1, ("b",), initializer="torch")
      >>> bool(abs(torch_like["w_h"]).max() <= 0.5)  # U(-1/sqrt(H), 1/sqrt(H)), H = 4
      True
    """
    if initializer not in INITIALIZERS:
        raise ValueError(f"initializer must be one of {INITIALIZERS}, got {initializer!r}")
    if input_size < 1 or hidden_size < 1:
        raise ValueError(
            f"input_size and hidden_size must be >= 1, got input_size={input_size}, "
            f"hidden_size={hidden_size}"
        )
    # Draw in at least float32, then cast: the orthogonal initializer's QR has no bfloat16
    # kernel. float64 draws stay float64 so W^T W = I holds to float64 round-off.
    draw_dtype = jnp.promote_types(dtype, jnp.float32)
    params = _draw(key, input_size, hidden_size, num_gates, bias_names, initializer, draw_dtype)
    return {name: value.astype(dtype) for name, value in params.items()}


def _draw(key, input_size, hidden_size, num_gates, bias_names, initializer, dtype):
    width = num_gates * hidden_size
    k_x, k_h, *k_b = jax.random.split(key, 2 + 2 * len(bias_names))
    if initializer == "default":
        params = {
            "w_x": glorot_uniform(k_x, (input_size, width), dtype),
            "w_h": orthogonal_blocks(k_h, hidden_size, num_gates, dtype),
        }
        params.update({name: jnp.zeros((width,), dtype) for name in bias_names})
        return params
    bound = 1.0 / math.sqrt(hidden_size)
    params = {
        "w_x": uniform(k_x, (input_size, width), bound, dtype),
        "w_h": uniform(k_h, (hidden_size, width), bound, dtype),
    }
    # A single fused bias stands for PyTorch's b_ih + b_hh; split biases map one to one.
    per_bias = 2 if bias_names == ("b",) else 1
    for i, name in enumerate(bias_names):
        draws = [uniform(k_b[2 * i + j], (width,), bound, dtype) for j in range(per_bias)]
        params[name] = sum(draws[1:], draws[0])
    return params


def set_gate_bias(bias, gate: int, hidden_size: int, value: float):
    """Return ``bias`` with gate ``gate``'s slice ``[gate*H:(gate+1)*H]`` set to ``value``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from rnn_jax.init import set_gate_bias
      >>> set_gate_bias(jnp.zeros(8), gate=1, hidden_size=2, value=1.0)  # LSTM i, f, g, o: f = 1
      Array([0., 0., 1., 1., 0., 0., 0., 0.], dtype=float32)
    """
    return bias.at[gate * hidden_size : (gate + 1) * hidden_size].set(value)
