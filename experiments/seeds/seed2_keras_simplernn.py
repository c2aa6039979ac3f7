"""Seed notebook 2, Keras SimpleRNN basics, redone with rnn_jax.

1. ``SimpleRNN(units=3)`` on 10 features has 42 parameters (``model.summary()``); so does
   ``rj.simple.init(key, 10, 3)``, and a real Keras layer given rnn_jax's weights
   (``interop.to_keras``) computes rnn_jax's outputs (shape ``(8, 2, 3)``).
2. The from-scratch loop ``h_t = tanh(Wx x_t + Wh h_{t-1} + b)`` over the notebook's own
   printed inputs (10 steps x 4 features, hidden 8) equals ``rj.unroll`` with
   ``w_x = Wx^T, w_h = Wh^T``. The notebook's weights were ``np.random.random`` and not
   printed; drawn here the same way (seeded), they saturate every state as in the notebook
   (all states from step 2 on are > 0.999, so tanh' < 0.002: gradients vanish), which
   rnn_jax's default initialisation avoids.

    python experiments/seeds/seed2_keras_simplernn.py
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from seedlib import row, table

import rnn_jax as rj
from rnn_jax import interop

# In [16]: the notebook's printed inputs (timesteps 10, input_dim 4), 8 significant digits.
NOTEBOOK_INPUTS = np.array([
    [4.98705738e-01, 3.43579551e-01, 7.29424948e-01, 8.83242390e-01],
    [6.57167566e-01, 2.75695171e-01, 4.18105849e-01, 2.87613807e-01],
    [5.04763833e-01, 8.07398860e-01, 2.44745919e-01, 7.93149621e-01],
    [5.17434268e-01, 5.93458272e-01, 5.39100197e-01, 6.17021694e-01],
    [8.98304903e-04, 3.89044120e-01, 8.07803813e-01, 7.09065966e-01],
    [9.63687096e-01, 7.73384134e-01, 9.84945676e-01, 3.96307645e-01],
    [4.44714669e-01, 6.57832453e-01, 1.38266969e-01, 4.39878920e-01],
    [7.79074827e-01, 8.72103339e-03, 7.89651492e-01, 1.76798585e-01],
    [2.88806605e-01, 3.78584281e-01, 2.04598350e-01, 8.16329346e-01],
    [7.73349873e-01, 4.73593833e-01, 7.84976774e-01, 1.81558486e-02],
])  # fmt: skip
NOTEBOOK_PARAMS = 42  # model.summary(): simple_rnn_6 (SimpleRNN) (8, 2, 3) 42
# In [21]: the smallest hidden value of steps 2-10 the notebook printed (its own random weights).
NOTEBOOK_MIN_STATE_AFTER_STEP_1 = 0.99946534


def notebook_loop(inputs, wx, wh, b):
    """In [18], as written: column vectors, ``Wx (H, I)``, ``Wh (H, H)``."""
    hidden_state_t = np.zeros((wh.shape[0],))
    total_hidden_states = []
    for input_t in inputs:
        output_t = np.tanh(np.dot(wx, input_t) + np.dot(wh, hidden_state_t) + b)
        total_hidden_states.append(list(output_t))
        hidden_state_t = output_t
    return np.array(total_hidden_states)


def keras_rows(params, xs) -> list[tuple]:
    """The real Keras layer (JAX backend) on rnn_jax's weights, if Keras is installed."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError:
        return [("Keras", "not installed (pip install 'keras>=3')", "", None)]
    layer = keras.layers.SimpleRNN(units=3, return_sequences=True)
    layer.build(xs.shape)
    layer.set_weights(interop.to_keras(params, rj.simple))
    _, hs = rj.unroll(rj.simple, params, jnp.asarray(xs))
    keras_hs = np.asarray(layer(xs))
    quantity = "outputs, Keras layer on rnn_jax's weights"
    return [
        ("parameters of a real keras.layers.SimpleRNN(3)", layer.count_params(),
         rj.count_params(params), None),
        ("output shape, batch_input_shape=(8, 2, 10)", keras_hs.shape, hs.shape, None),
        # Shown to 6 decimals: float32's last digits differ between CPUs (AVX2, AVX-512
        # tanh); the max |diff| column is from the unrounded arrays.
        (*row(quantity, _shown(keras_hs), _shown(hs))[:3], row(quantity, keras_hs, hs)[3]),
    ]  # fmt: skip


def _shown(values):
    return np.round(np.asarray(values, np.float64), 6)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    key = jax.random.PRNGKey(args.seed)
    params = rj.simple.init(key, 10, 3)
    xs = np.asarray(jax.random.normal(key, (8, 2, 10)), np.float32)
    count_rows = [("parameters, SimpleRNN(units=3) on 10 features", NOTEBOOK_PARAMS,
                   rj.count_params(params), None)]  # fmt: skip
    count_rows += keras_rows(params, xs)

    rng = np.random.default_rng(args.seed)
    input_dim, hidden_units = 4, 8  # timesteps = 10 rows of NOTEBOOK_INPUTS
    wx = rng.random((hidden_units, input_dim))  # as np.random.random in In [17]
    wh = rng.random((hidden_units, hidden_units))
    b = rng.random((hidden_units,))
    with jax.enable_x64(True):
        loop_states = notebook_loop(NOTEBOOK_INPUTS, wx, wh, b)
        mapped = {"w_x": jnp.asarray(wx.T), "w_h": jnp.asarray(wh.T), "b": jnp.asarray(b)}
        _, hs = rj.unroll(rj.simple, mapped, jnp.asarray(NOTEBOOK_INPUTS)[None])
        default = rj.simple.init(key, input_dim, hidden_units, dtype=jnp.float64)
        _, hs_default = rj.unroll(rj.simple, default, jnp.asarray(NOTEBOOK_INPUTS)[None])
        hs, hs_default = np.asarray(hs[0]), np.asarray(hs_default[0])
    loop_rows = [
        row("all 10 hidden states, uniform[0, 1) weights", loop_states, hs),
        ("smallest state of steps 2-10 (notebook: its own weights)",
         NOTEBOOK_MIN_STATE_AFTER_STEP_1, float(np.min(hs[1:])), None),
        ("largest tanh' = 1 - h^2 over steps 2-10", 1 - NOTEBOOK_MIN_STATE_AFTER_STEP_1**2,
         float(np.max(1 - hs[1:] ** 2)), None),
        ("mean tanh' over steps 2-10: uniform weights vs rnn_jax's default init",
         float(np.mean(1 - loop_states[1:] ** 2)), float(np.mean(1 - hs_default[1:] ** 2)), None),
    ]  # fmt: skip
    print(table("Keras SimpleRNN: 42 parameters", count_rows))
    print(table("The per-step loop (In [16]-[21]) and rj.unroll", loop_rows))
    return {"counts": count_rows, "loop": loop_rows}


if __name__ == "__main__":
    main()
