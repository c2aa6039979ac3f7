"""Seed notebook 0, a numpy RNN trained by truncated BPTT(10) on MNIST rows, redone with rnn_jax.

The notebook: a tanh RNN (input 28, hidden 100, output 10, no biases) reads a digit row by
row; its output ``o_t = s_t V`` at *every* step is pulled towards the one-hot label (per-step
squared error, ``delta_o = o - y``); the gradient of each step's output goes back at most 10
steps; plain SGD, lr 0.001 on the *sum* over a batch of 50; 100 epochs.

What it does as written: ``U``, ``V`` and ``W`` start at zero, so every state is 0, every
output 0, and every gradient exactly 0 (``delta_V = s^T delta_o = 0``, and ``delta_s`` is
multiplied by ``V = 0``): the weights never move, and every digit is classified as 0 (9.80%
of the test set). Its evaluation would not even get there: ``np.argmax(rnn.forward(x))``
takes the argmax of the tuple ``(o, s)`` (numpy raises), and the epoch loss
``'%f' % (o[-1] - y)`` formats a vector (TypeError).

rnn_jax: the same model and loss (``rj.simple`` with its bias held at zero, a bias-free
readout ``V``), its gradient by ``rj.unroll(..., gradient="manual", truncate=10)``, which is
proved here equal to the notebook's own ``bptt`` (on non-zero weights); the same SGD update
(lr 0.05 on the batch *mean* = 0.001 on the sum of 50); rnn_jax's initialisation (Glorot
``U`` and ``V``, orthogonal ``W``). Accuracy is the argmax of the last step's output, on all
10,000 test digits.

    python experiments/seeds/seed0_numpy_tbptt.py                 # the stated budget
    python experiments/seeds/seed0_numpy_tbptt.py --steps 200     # a quick look
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from seedlib import accuracy, add_budget_flags, load_digits, row, table

import rnn_jax as rj
from rnn_jax import models, train
from rnn_jax.data import batch_indices

HIDDEN, BATCH, TRUNCATE, NOTEBOOK_LR, NOTEBOOK_EPOCHS = 100, 50, 10, 0.001, 100


class NotebookRNN:
    """The notebook's class, verbatim but for ``train`` (whose loss print crashes)."""

    def __init__(self, input_size, hidden_size, output_size):
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = output_size

        # only 1 hidden layer
        self.U = np.zeros((input_size, hidden_size))
        self.V = np.zeros((hidden_size, output_size))
        self.W = np.zeros((hidden_size, hidden_size))

    def forward(self, input_x):
        time_steps = len(input_x)

        # initial state (1, hidden_size) + state at each timestep (time_steps, hidden_size)
        s = np.zeros((time_steps + 1, self.hidden_size))
        s[-1] = np.zeros(self.hidden_size)

        # output at each timestep
        o = np.zeros((time_steps, self.output_size))
        # go throught all time steps
        for t in range(time_steps):
            s[t] = np.tanh(np.dot(input_x[t], self.U) + np.dot(self.W, s[t - 1]))
            o[t] = np.dot(s[t], self.V)

        return o, s

    def bptt(self, x, y):
        time_steps = len(x)
        # forward pass
        # o(time_steps, output_size), s(1 + time_steps, hidden_size)
        o, s = self.forward(x)

        delta_U = np.zeros_like(self.U)
        delta_V = np.zeros_like(self.V)
        delta_W = np.zeros_like(self.W)

        # delta_o(time_steps, output_size), y(1, output_size)
        delta_o = o - y

        for t in range(time_steps - 1, -1, -1):
            delta_V += np.outer(s[t], delta_o[t])

            delta_s = self.tanh_prime(np.dot(x[t], self.U) + np.dot(self.W, s[t - 1]))
            delta_s = delta_s * np.dot(delta_o[t], self.V.T)

            # backward 10 time_steps at most
            for k in range(t, max(-1, t - 10), -1):
                delta_U += np.outer(x[k], delta_s)
                delta_W += np.outer(delta_s, s[k - 1].T)

                temp = self.tanh_prime(np.dot(x[k - 1], self.U) + np.dot(self.W, s[k - 2]))
                delta_s = temp * np.dot(delta_s, self.W)

        return delta_U, delta_V, delta_W

    def update(self, batch, lr):
        du = np.zeros_like(self.U)
        dv = np.zeros_like(self.V)
        dw = np.zeros_like(self.W)

        for x, y in batch:
            delta_u, delta_v, delta_w = self.bptt(x, y)
            du += delta_u
            dv += delta_v
            dw += delta_w

        self.U -= lr * du
        self.V -= lr * dv
        self.W -= lr * dw

    def tanh_prime(self, x):
        return 1 - np.tanh(x) ** 2


def init_params(key, zeros: bool = False) -> dict:
    """``{"rnn": {"w_x": U, "w_h": W^T}, "V": (H, 10)}``: rnn_jax's init, or the notebook's
    zeros."""
    k_rnn, k_out = jax.random.split(key)
    rnn = rj.simple.init(k_rnn, 28, HIDDEN)
    params = {"rnn": {"w_x": rnn["w_x"], "w_h": rnn["w_h"]},
              "V": models.dense_init(k_out, HIDDEN, 10)["w"]}  # fmt: skip
    return jax.tree.map(jnp.zeros_like, params) if zeros else params


def outputs(params, images, truncate=TRUNCATE):
    """``o_t = s_t V`` at every step, ``(B, 28, 10)``; the bias is held at zero (none in the
    notebook); the backward is the hand-written BPTT truncated to ``truncate`` steps."""
    cell_params = {**params["rnn"], "b": jnp.zeros(HIDDEN, params["V"].dtype)}
    _, hs = rj.unroll(rj.simple, cell_params, images, gradient="manual", truncate=truncate)
    return hs @ params["V"]


def summed_loss(params, images, targets, truncate=TRUNCATE):
    """The notebook's objective: sum over examples and steps of ``0.5 |o_t - y|^2``."""
    return 0.5 * jnp.sum((outputs(params, images, truncate) - targets[:, None, :]) ** 2)


def gradient_rows(images, labels) -> list[tuple]:
    """The notebook's ``bptt`` (summed over 5 examples, random non-zero weights) vs rnn_jax."""
    rng = np.random.default_rng(0)
    net = NotebookRNN(28, HIDDEN, 10)
    net.U, net.V, net.W = (rng.normal(0, 0.1, w.shape) for w in (net.U, net.V, net.W))
    x, y = images[:5].astype(np.float64), np.eye(10)[labels[:5]]
    deltas = [net.bptt(xi, yi) for xi, yi in zip(x, y, strict=True)]
    d_u, d_v, d_w = (sum(d[i] for d in deltas) for i in range(3))
    with jax.enable_x64(True):
        params = {"rnn": {"w_x": jnp.asarray(net.U), "w_h": jnp.asarray(net.W.T)},
                  "V": jnp.asarray(net.V)}  # fmt: skip
        grads = jax.grad(summed_loss)(params, jnp.asarray(x), jnp.asarray(y))
        full = jax.grad(lambda p: summed_loss(p, jnp.asarray(x), jnp.asarray(y), None))(params)
    return [
        row("dU (notebook bptt) vs d w_x (truncate=10)", d_u, grads["rnn"]["w_x"]),
        row("dW^T (notebook bptt) vs d w_h (truncate=10)", d_w.T, grads["rnn"]["w_h"]),
        row("dV (notebook bptt) vs d V", d_v, grads["V"]),
        row("dU (notebook) vs d w_x with full BPTT: not the same", d_u, full["rnn"]["w_x"]),
    ]


def zero_init_rows(data) -> list[tuple]:
    """One notebook update from its zero init, and the same zeros in rnn_jax."""
    net = NotebookRNN(28, HIDDEN, 10)
    batch = list(zip(data.train_images[:BATCH], np.eye(10)[data.train_labels[:BATCH]], strict=True))
    net.update(batch, NOTEBOOK_LR)
    moved = max(float(np.abs(w).max()) for w in (net.U, net.V, net.W))
    try:
        np.argmax(net.forward(data.test_images[0]))
        argmax_note = "runs"
    except ValueError as error:
        argmax_note = f"ValueError: {str(error).split('.')[0]}"
    zeros = init_params(jax.random.PRNGKey(0), zeros=True)
    x, y = jnp.asarray(data.train_images[:BATCH]), jax.nn.one_hot(data.train_labels[:BATCH], 10)
    grads = jax.grad(summed_loss)(zeros, x, y)
    largest = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
    majority = float(np.mean(data.test_labels == 0))
    return [
        ("largest |weight| after one update from zeros", moved, largest, None),
        ("test accuracy at zero init (every digit -> class 0)", majority,
         accuracy(predict_last, zeros, data.test_images, data.test_labels), None),
        ("the notebook's np.argmax(rnn.forward(x))", argmax_note, "argmax of o[-1]", None),
    ]  # fmt: skip


def sgd_run(data, steps: int, seed: int, lr: float, log=None):
    """Plain SGD with ``lr`` on the batch-mean loss (``lr / 50`` on the notebook's sum)."""
    optimizer = optax.sgd(lr)

    def loss_fn(params, batch, rng):
        return summed_loss(params, batch["x"], jax.nn.one_hot(batch["y"], 10)) / BATCH, {}

    def batch_of(step):
        idx = batch_indices(seed, len(data.train_labels), BATCH, step)
        return {"x": data.train_images[idx], "y": data.train_labels[idx]}

    key = jax.random.PRNGKey(seed)
    state = train.create_train_state(init_params(key), optimizer, key)
    step_fn = train.make_train_step(loss_fn, optimizer)
    return train.train_loop(step_fn, state, batch_of, num_steps=steps, callback=log)[0]


def predict_last(params, images):
    """The class scores: the output at the last step, ``(B, 10)``."""
    return outputs(params, images)[:, -1]


def train_rows(data, steps: int, seed: int, lr: float) -> tuple[list[tuple], list]:
    try:  # the notebook's own rate, on weights that can move
        sgd_run(data, 100, seed, NOTEBOOK_LR * BATCH)
        notebook_rate = "trains for 100 steps"
    except FloatingPointError as error:
        notebook_rate = "diverges: " + str(error).split(":")[0]
    curve = []

    def log(step, metrics, state):
        if step % max(steps // 10, 1) == 0 or step == steps:
            test_acc = accuracy(predict_last, state.params, data.test_images, data.test_labels)
            curve.append((step, metrics["loss"], test_acc))
            print(f"step {step:6d}  loss {metrics['loss']:.4f}  test accuracy {test_acc:.2%}")

    start = time.perf_counter()
    sgd_run(data, steps, seed, lr, log)
    seconds = time.perf_counter() - start
    epochs = steps * BATCH / len(data.train_labels)
    scored = len(data.test_labels)
    return [
        ("lr on the batch sum (rnn_jax: lr on the mean / 50)", NOTEBOOK_LR, lr / BATCH, None),
        ("rnn_jax's init with the notebook's lr", "never moves (zero init)", notebook_rate, None),
        ("budget (steps of 50)", f"{NOTEBOOK_EPOCHS * 1200} ({NOTEBOOK_EPOCHS} epochs)",
         f"{steps} ({epochs:.2f} epochs, {seconds:.0f} s)", None),
        ("test accuracy, " + ("all 10,000 digits" if scored == 10_000 else f"first {scored}"),
         "9.80% at most (zero init)", f"{curve[-1][2]:.2%}", None),
    ], curve  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_budget_flags(parser, steps=6000)
    parser.add_argument("--lr", type=float, default=0.005,
                        help="SGD rate on the batch-mean loss (default: %(default)s)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    args = parser.parse_args(argv)
    data = load_digits(args.test_size)
    gradients = gradient_rows(data.train_images, data.train_labels)
    print(table("The notebook's truncated BPTT(10) is rnn_jax's truncate=10", gradients))
    zero = zero_init_rows(data)
    print(table("What the all-zero initialisation does", zero))
    trained, curve = train_rows(data, args.steps, args.seed, args.lr)
    print(table("Training: the notebook's model, loss and SGD; rnn_jax's init", trained))
    return {"gradients": gradients, "zero_init": zero, "training": trained, "curve": curve}


if __name__ == "__main__":
    main()
