"""Seed notebook 4, TensorFlow's ``tf.scan`` RNN on MNIST rows, redone with rnn_jax.

The notebook's model and every hyper-parameter, kept: 28 steps of 28 pixels (``/ 255``), a
tanh RNN of 128 units whose ``Wx``, ``Wh``, ``bx`` start at **zero**, a readout ``Wl``, ``bl``
from ``truncated_normal(stddev=0.01)`` on the last state, mean softmax cross-entropy,
``tf.train.RMSPropOptimizer(0.001)`` (TF1 defaults: decay 0.9, no momentum, epsilon 1e-10
inside the square root, the mean-square accumulator starting at **1**), 5000 steps of batch
128, the minibatch loss and accuracy printed after steps 0, 1000, ... (after the update, on
the batch just trained on), and the test accuracy of the first 128 test digits. rnn_jax:
``rj.simple`` through ``rnn_jax.models.classifier``'s apply, ``optax.rmsprop(..., eps=1e-10,
initial_scale=1.0)``, ``rnn_jax.train``'s jitted step and loop. The notebook printed no
output; its numbers are its settings, and the accuracy is scored here on all 10,000 test
digits too. Its ``DataLoader`` discarded its shuffle (``self._images[permutated]`` without
assignment) and so read the training set in file order; ``--order notebook`` does that, the
default reshuffles every epoch.

    python experiments/seeds/seed4_tf_scan.py                     # 5000 steps, as the notebook
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from seedlib import accuracy, add_budget_flags, load_digits, table

import rnn_jax as rj
from rnn_jax import models, train
from rnn_jax.data import batch_indices

SETTINGS = {  # In [5] and the cells after it
    "element_size": 28,
    "time_steps": 28,
    "num_classes": 10,
    "batch_size": 128,
    "hidden_layer_size": 128,
    "learning_rate": 0.001,
    "epochs (= steps)": 5000,
}
MODEL = models.classifier(rj.simple, SETTINGS["hidden_layer_size"], SETTINGS["num_classes"])


def notebook_params(key) -> dict:
    """Zeros for ``Wx``, ``Wh``, ``bx``; ``truncated_normal(stddev=0.01)`` for ``Wl``, ``bl``
    (TensorFlow truncates at two standard deviations), in the classifier's layout."""
    hidden, classes = SETTINGS["hidden_layer_size"], SETTINGS["num_classes"]
    k_w, k_b = jax.random.split(key)
    rnn = jax.tree.map(jnp.zeros_like, rj.simple.init(key, SETTINGS["element_size"], hidden))
    readout = {"w": 0.01 * jax.random.truncated_normal(k_w, -2.0, 2.0, (hidden, classes)),
               "b": 0.01 * jax.random.truncated_normal(k_b, -2.0, 2.0, (classes,))}  # fmt: skip
    return {"rnn": [rnn], "readout": readout}


def tf1_rmsprop(learning_rate: float) -> optax.GradientTransformation:
    """``tf.train.RMSPropOptimizer(lr)``: ms = 0.9 ms + 0.1 g^2 from ms = 1,
    update = lr g / sqrt(ms + 1e-10)."""
    return optax.rmsprop(learning_rate, decay=0.9, eps=1e-10, initial_scale=1.0)


def loss_and_accuracy(params, batch):
    logits = MODEL.apply(params, batch["x"])
    return train.softmax_cross_entropy(logits, batch["y"]), train.accuracy(logits, batch["y"])


def make_batches(data, order: str, seed: int):
    size, n = SETTINGS["batch_size"], len(data.train_labels)

    def batch_of(step):
        if order == "notebook":  # file order, wrapping around (the discarded shuffle)
            idx = (step * size + np.arange(size)) % n
        else:
            idx = batch_indices(seed, n, size, step)
        return {"x": data.train_images[idx], "y": data.train_labels[idx]}

    return batch_of


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_budget_flags(parser, steps=SETTINGS["epochs (= steps)"])
    parser.add_argument("--order", choices=("shuffled", "notebook"), default="shuffled",
                        help="training batch order (default: %(default)s)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="readout init and batch order")
    args = parser.parse_args(argv)
    data = load_digits(args.test_size)
    optimizer = tf1_rmsprop(SETTINGS["learning_rate"])
    state = train.create_train_state(notebook_params(jax.random.PRNGKey(args.seed)), optimizer,
                                     jax.random.PRNGKey(args.seed))  # fmt: skip
    step_fn = train.make_train_step(lambda p, b, rng: (loss_and_accuracy(p, b)[0], {}), optimizer)
    batch_of = make_batches(data, args.order, args.seed)
    evaluate = jax.jit(loss_and_accuracy)
    log = []

    def report(step, metrics, state):  # the notebook's "if i % 1000 == 0", i = step - 1
        if (step - 1) % 1000 == 0:
            loss, acc = (float(v) for v in evaluate(state.params, batch_of(step - 1)))
            log.append((step - 1, loss, acc))
            print(f"Iter {step - 1}, Minibatch Loss = {loss:.6f}, "
                  f"Training Accuracy = {100 * acc:.5f}")  # fmt: skip

    start = time.perf_counter()
    state, history = train.train_loop(step_fn, state, batch_of, num_steps=args.steps,
                                      callback=report)  # fmt: skip
    elapsed = time.perf_counter() - start
    predict = lambda p, x: MODEL.apply(p, x)
    first_128 = accuracy(predict, state.params, data.test_images[:128], data.test_labels[:128])
    every = accuracy(predict, state.params, data.test_images, data.test_labels)
    x, init = batch_of(0)["x"], notebook_params(jax.random.PRNGKey(args.seed))
    used = {"element_size": x.shape[2], "time_steps": x.shape[1],
            "num_classes": state.params["readout"]["w"].shape[1], "batch_size": x.shape[0],
            "hidden_layer_size": state.params["rnn"][0]["w_h"].shape[0],
            "learning_rate": SETTINGS["learning_rate"]}  # fmt: skip
    rows = [(name, SETTINGS[name], value, None) for name, value in used.items()]
    rows.append(("largest |Wx|, |Wh|, |bx| at init", 0.0,
                 max(float(jnp.abs(w).max()) for w in init["rnn"][0].values()), None))  # fmt: skip
    rows += [
        ("steps", SETTINGS["epochs (= steps)"], args.steps, None),
        ("batch order", "file order (shuffle discarded)", args.order, None),
        ("Test Accuracy, first 128 test digits", "not printed", f"{first_128:.2%}", None),
        (f"test accuracy, {len(data.test_labels)} test digits", "not scored", f"{every:.2%}",
         None),
        ("elapse time (s)", "not printed", f"{elapsed:.0f}", None),
    ]  # fmt: skip
    print(table("tf.scan RNN on MNIST rows, the notebook's settings", rows))
    losses = [metrics["loss"] for metrics in history]
    return {"rows": rows, "log": log, "losses": losses, "test_accuracy_128": first_128,
            "test_accuracy": every}  # fmt: skip


if __name__ == "__main__":
    main()
