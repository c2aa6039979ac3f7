"""Seed notebook 1, the scratch RNN classifier, redone with rnn_jax.

The notebook's worked example (Problem 2): a tanh RNN with ``b = 1`` reads a batch of one
sequence of three 2-feature steps; its final state is printed to 8 decimals. rnn_jax's
``rj.simple`` on the same numbers gives the same state (float64). The notebook's backward
(Problem 3) never ran (``for i in enumerate(inputs)`` indexes with a tuple; ``d_Whh``,
``d_Wxh`` and ``self.Whh`` are never defined); here the gradient of a loss on the final state
is rnn_jax's hand-written BPTT, checked against ``jax.grad`` and against the notebook's loop
with those names fixed.

    python experiments/seeds/seed1_scratch_classifier.py
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from seedlib import row, table

import rnn_jax as rj

# Problem 2, as in the notebook: (batch 1, 3 steps, 2 features), (2, 4), (4, 4), b = 1.
X = np.array([[[1, 2], [2, 3], [3, 4]]]) / 100
W_X = np.array([[1, 3, 5, 7], [3, 5, 7, 8]]) / 100
W_H = np.array([[1, 3, 5, 7], [2, 4, 6, 8], [3, 5, 7, 8], [4, 6, 8, 10]]) / 100
B = np.array([1, 1, 1, 1])
NOTEBOOK_FINAL_H = np.array([[0.79494228, 0.81839002, 0.83939649, 0.85584174]])  # Out[53]


def notebook_forward(x, w_x, w_h, b):
    """Problem 2's ``forward``: ``h = tanh(x_t @ w_x + h @ w_h + b)``; every state kept."""
    h = np.zeros((x.shape[0], w_x.shape[1]))
    states = [h]
    for n in range(x.shape[1]):
        h = np.tanh(x[:, n, :] @ w_x + h @ w_h + b)
        states.append(h)
    return states


def notebook_backward_fixed(x, w_h, states, d_h):
    """Problem 3's BPTT loop with its undefined names fixed (row vectors, batch first):
    ``temp = (1 - h_t^2) * d_h``; ``d_b += temp``; ``d_W_h += h_{t-1}^T temp``;
    ``d_W_x += x_t^T temp``; ``d_h = temp @ W_h^T``."""
    d_w_x, d_w_h, d_b = 0.0, 0.0, 0.0
    for t in reversed(range(x.shape[1])):
        temp = (1 - states[t + 1] ** 2) * d_h
        d_b = d_b + temp.sum(0)
        d_w_h = d_w_h + states[t].T @ temp
        d_w_x = d_w_x + x[:, t, :].T @ temp
        d_h = temp @ w_h.T
    return {"w_x": d_w_x, "w_h": d_w_h, "b": d_b}


def main(argv=None) -> dict:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    with jax.enable_x64(True):
        params = {"w_x": jnp.asarray(W_X), "w_h": jnp.asarray(W_H), "b": jnp.asarray(B, float)}
        final_h, hs = rj.unroll(rj.simple, params, jnp.asarray(X))
        states = notebook_forward(X, W_X, W_H, B)
        forward_rows = [
            row("final state h_3 (Out[53], 8 decimals)", NOTEBOOK_FINAL_H, final_h),
            row("final state h_3 (notebook code, float64)", states[-1], final_h),
        ] + [row(f"state after step {t + 1}", states[t + 1], hs[:, t]) for t in range(3)]
        # Problem 3: gradients of L = sum(h_3) (the notebook's d_y = dL/dh = ones).
        d_h = np.ones_like(NOTEBOOK_FINAL_H)
        fixed = notebook_backward_fixed(X, W_H, states, d_h)
        d_params, _, _ = rj.bptt(
            rj.simple, params, jnp.asarray(X), jnp.zeros_like(hs), d_carry=jnp.asarray(d_h)
        )
        autodiff = jax.grad(lambda p: jnp.sum(rj.unroll(rj.simple, p, jnp.asarray(X))[0]))(params)
        backward_rows = []
        for name in ("w_x", "w_h", "b"):
            backward_rows.append(row(f"dL/d{name}: notebook (fixed)", fixed[name], d_params[name]))
            backward_rows.append(row(f"dL/d{name}: jax.grad", autodiff[name], d_params[name]))
    print(table("Problem 2: the worked forward example", forward_rows))
    print(table("Problem 3: backpropagation through time, L = sum(h_3)", backward_rows))
    return {"forward": forward_rows, "backward": backward_rows}


if __name__ == "__main__":
    main()
