"""Seed notebook 3, the deeplearning.ai cell-by-cell RNN and LSTM, redone with rnn_jax.

The notebook's functions (verbatim in ``seed3_notebook_cells.txt``) run as written next to
rnn_jax on the same random numbers (``np.random.seed(1)``, the assignment's sizes: 3
features, batch 10, hidden 5, 2 outputs). The notebook uses column vectors (``a`` is
``(n_a, m)``, ``Wax`` is ``(n_a, n_x)``, the LSTM's gates act on ``[a_prev; xt]``); rnn_jax
uses row vectors and fused gates, so its parameters are the notebook's transposed and
stacked in the order i, f, g, o.

Checked: ``rnn_cell_forward``, ``rnn_forward``, ``lstm_cell_forward`` and ``lstm_forward``
against ``rj.simple`` / ``rj.lstm`` (values and shapes); ``rnn_cell_backward`` and
``rnn_backward`` against ``rj.simple.step_backward`` and ``rj.bptt``; the LSTM step's
gradients (the notebook has no LSTM backward) against ``jax.vjp`` of the notebook's own
``lstm_cell_forward`` run on ``jax.numpy``. All in float64.

    python experiments/seeds/seed3_cell_functions.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from seedlib import row, table

import rnn_jax as rj

# The notebook's code cells, verbatim, kept as text: run as written on numpy and on jax.numpy.
NOTEBOOK_SOURCE = (Path(__file__).parent / "seed3_notebook_cells.txt").read_text()
N_X, M, N_A, N_Y = 3, 10, 5, 2  # features, batch, hidden, outputs (the assignment's sizes)
GATES = ("i", "f", "c", "o")  # rnn_jax's LSTM order i, f, g, o; the notebook calls g "c"


def notebook(np_module) -> dict:
    """The notebook's functions, bound to ``np_module`` (numpy, or jax.numpy to differentiate)."""
    namespace = {"np": np_module}
    exec(NOTEBOOK_SOURCE, namespace)  # noqa: S102 -- our own constant: the notebook's cells
    return namespace


def rnn_params(p) -> dict:
    """Notebook RNN parameters (column vectors) -> ``rj.simple``'s (row vectors)."""
    return {"w_x": p["Wax"].T, "w_h": p["Waa"].T, "b": p["ba"][:, 0]}


def lstm_params(p) -> dict:
    """Notebook LSTM parameters -> ``rj.lstm``'s: ``W (n_a, n_a + n_x)`` acts on
    ``[a_prev; xt]``, so its first n_a columns are the recurrent weights."""
    return {
        "w_x": np.concatenate([p[f"W{g}"][:, N_A:].T for g in GATES], axis=1),
        "w_h": np.concatenate([p[f"W{g}"][:, :N_A].T for g in GATES], axis=1),
        "b": np.concatenate([p[f"b{g}"][:, 0] for g in GATES]),
    }


def readout(p, w: str, h):
    """The notebook's ``softmax(W h + b_y)`` on rnn_jax's row-vector states: ``(B, n_y)``."""
    return jax.nn.softmax(h @ p[w].T + p["by"][:, 0], axis=-1)


def rnn_checks(nb, rng) -> list[tuple]:
    xt, a_prev = rng.standard_normal((N_X, M)), rng.standard_normal((N_A, M))
    p = {"Waa": rng.standard_normal((N_A, N_A)), "Wax": rng.standard_normal((N_A, N_X)),
         "Wya": rng.standard_normal((N_Y, N_A)), "ba": rng.standard_normal((N_A, 1)),
         "by": rng.standard_normal((N_Y, 1))}  # fmt: skip
    params = rnn_params(p)
    a_next, yt_pred, cache = nb["rnn_cell_forward"](xt, a_prev, p)
    carry, h = rj.simple.step(params, a_prev.T, xt.T)
    rows = [("rnn_cell_forward: a_next shape (column vs row vectors)", a_next.shape, h.shape),
            row("rnn_cell_forward: a_next", a_next.T, h),
            row("rnn_cell_forward: yt_pred", yt_pred.T, readout(p, "Wya", h))]  # fmt: skip
    da_next = rng.standard_normal((N_A, M))
    grads = nb["rnn_cell_backward"](da_next, cache)
    _, _, residuals = rj.simple.step_forward(params, a_prev.T, xt.T)
    d_params, d_x, d_prev = rj.simple.step_backward(params, residuals, da_next.T)
    rows += [row("rnn_cell_backward: dxt", grads["dxt"].T, d_x),
             row("rnn_cell_backward: da_prev", grads["da_prev"].T, d_prev),
             row("rnn_cell_backward: dWax", grads["dWax"].T, d_params["w_x"]),
             row("rnn_cell_backward: dWaa", grads["dWaa"].T, d_params["w_h"]),
             row("rnn_cell_backward: dba", grads["dba"][:, 0], d_params["b"])]  # fmt: skip
    # Whole sequences, T_x = 4: rnn_forward / rnn_backward vs rj.unroll / rj.bptt.
    x, a0 = rng.standard_normal((N_X, M, 4)), rng.standard_normal((N_A, M))
    a, y_pred, caches = nb["rnn_forward"](x, a0, p)
    xs = x.transpose(1, 2, 0)  # (n_x, m, T) -> (m, T, n_x)
    _, hs = rj.unroll(rj.simple, params, xs, a0.T)
    da = rng.standard_normal((N_A, M, 4))
    seq = nb["rnn_backward"](da, caches)
    d_params, d_xs, d_a0 = rj.bptt(rj.simple, params, xs, da.transpose(1, 2, 0), a0.T)
    rows += [row("rnn_forward: a (all steps)", a.transpose(1, 2, 0), hs),
             row("rnn_forward: y_pred", y_pred.transpose(1, 2, 0), readout(p, "Wya", hs)),
             row("rnn_backward vs rj.bptt: dx", seq["dxt"].transpose(1, 2, 0), d_xs),
             row("rnn_backward vs rj.bptt: da0", seq["da0"].T, d_a0),
             row("rnn_backward vs rj.bptt: dWax", seq["dWax"].T, d_params["w_x"]),
             row("rnn_backward vs rj.bptt: dWaa", seq["dWaa"].T, d_params["w_h"]),
             row("rnn_backward vs rj.bptt: dba", seq["dba"][:, 0], d_params["b"])]  # fmt: skip
    return rows


def lstm_checks(nb, nb_jax, rng) -> list[tuple]:
    xt, a_prev, c_prev = (rng.standard_normal(s) for s in [(N_X, M), (N_A, M), (N_A, M)])
    p = {}
    for g in ("f", "i", "o", "c"):  # the assignment's draw order
        p[f"W{g}"], p[f"b{g}"] = (
            rng.standard_normal((N_A, N_A + N_X)),
            rng.standard_normal((N_A, 1)),
        )
    p["Wy"], p["by"] = rng.standard_normal((N_Y, N_A)), rng.standard_normal((N_Y, 1))
    params = lstm_params(p)
    a_next, c_next, yt_pred, _ = nb["lstm_cell_forward"](xt, a_prev, c_prev, p)
    carry, h = rj.lstm.step(params, rj.LSTMCarry(a_prev.T, c_prev.T), xt.T)
    rows = [("lstm_cell_forward: c_next shape", c_next.shape, carry.c.shape),
            row("lstm_cell_forward: a_next", a_next.T, h),
            row("lstm_cell_forward: c_next", c_next.T, carry.c),
            row("lstm_cell_forward: yt_pred", yt_pred.T, readout(p, "Wy", h))]  # fmt: skip
    # Gradients of the step: jax.vjp of the notebook's own function (on jax.numpy).
    da, dc = rng.standard_normal((N_A, M)), rng.standard_normal((N_A, M))

    def step(xt, a_prev, c_prev, p):
        a_next, c_next, _, _ = nb_jax["lstm_cell_forward"](xt, a_prev, c_prev, p)
        return a_next, c_next

    _, vjp = jax.vjp(step, xt, a_prev, c_prev, p)
    d_xt, d_a_prev, d_c_prev, d_p = vjp((jnp.asarray(da), jnp.asarray(dc)))
    _, _, residuals = rj.lstm.step_forward(params, rj.LSTMCarry(a_prev.T, c_prev.T), xt.T)
    d_params, d_x, d_prev = rj.lstm.step_backward(
        params, residuals, jnp.zeros((M, N_A)), rj.LSTMCarry(da.T, dc.T)
    )
    reference = lstm_params({k: np.asarray(v) for k, v in d_p.items()})
    rows += [row("LSTM step gradient: dxt", d_xt.T, d_x),
             row("LSTM step gradient: da_prev", d_a_prev.T, d_prev.h),
             row("LSTM step gradient: dc_prev", d_c_prev.T, d_prev.c)]  # fmt: skip
    rows += [row(f"LSTM step gradient: {k}", reference[k], d_params[k]) for k in params]
    # Whole sequence, T_x = 7: lstm_forward vs rj.unroll.
    x, a0 = rng.standard_normal((N_X, M, 7)), rng.standard_normal((N_A, M))
    a, y, c, _ = nb["lstm_forward"](x, a0, p)
    carry0 = rj.LSTMCarry(a0.T, np.zeros((M, N_A)))
    (_, c_last), hs = rj.unroll(rj.lstm, params, x.transpose(1, 2, 0), carry0)
    rows += [row("lstm_forward: a (all steps)", a.transpose(1, 2, 0), hs),
             row("lstm_forward: y", y.transpose(1, 2, 0), readout(p, "Wy", hs)),
             row("lstm_forward: c at the last step", c[:, :, -1].T, c_last)]  # fmt: skip
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="np.random.seed (assignment: 1)")
    args = parser.parse_args(argv)
    rng = np.random.RandomState(args.seed)  # np.random.seed(1); np.random.randn(...)
    with jax.enable_x64(True):
        nb, nb_jax = notebook(np), notebook(jnp)
        rnn_rows = rnn_checks(nb, rng)
        lstm_rows = lstm_checks(nb, nb_jax, rng)
    print(table("RNN cell and sequence (rj.simple)", rnn_rows))
    print(table("LSTM cell and sequence (rj.lstm)", lstm_rows))
    return {"rnn": rnn_rows, "lstm": lstm_rows}


if __name__ == "__main__":
    main()
