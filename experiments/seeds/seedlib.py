"""What the seed scripts share: a side-by-side table of the notebook's numbers and rnn_jax's.

Each script in this folder redoes one notebook of ``/shared/seeds`` with rnn_jax and prints,
for every quantity, the notebook's value next to rnn_jax's and how far apart they are.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from rnn_jax.data import eval_batches, load_mnist


def max_abs_diff(a, b) -> float:
    """``max |a - b|`` over every entry (shapes must match exactly)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def row(quantity: str, reference, ours) -> tuple:
    """A table row whose last column is ``max |reference - ours|`` over every entry. Arrays of
    more than 4 entries show the 4 of largest ``|reference|`` (the same positions in both)."""
    diff = max_abs_diff(reference, ours)
    reference, ours = np.asarray(reference).ravel(), np.asarray(ours).ravel()
    if reference.size <= 4:
        return quantity, reference, ours, diff
    where = np.sort(np.argsort(-np.abs(reference), kind="stable")[:4])
    return quantity, fmt(reference[where]) + " ...", fmt(ours[where]) + " ...", diff


def fmt(value, digits: int = 8) -> str:
    """A number, an array (flattened, at most 4 entries shown) or anything else, as text."""
    if isinstance(value, str):
        return value
    array = np.asarray(value)
    if array.dtype.kind in "fc" and array.ndim == 0:
        return f"{float(array):.{digits}f}"
    if array.dtype.kind in "fc":
        flat = array.ravel()
        shown = " ".join(f"{x:.{digits}f}" for x in flat[:4])
        return f"[{shown}{' ...' if flat.size > 4 else ''}]"
    return str(value)


def cells(quantity, notebook, ours) -> str:
    """The first three cells of a table row as printed (``|`` in a value escaped)."""
    shown = [fmt(value).replace("|", "\\|") for value in (quantity, notebook, ours)]
    return "| " + " | ".join(shown) + " |"


def table(title: str, rows: list[tuple]) -> str:
    """A Markdown table: ``(quantity, notebook, rnn_jax[, max |diff|])`` per row."""
    header = "| quantity | notebook (or reference) | rnn_jax | max abs diff |"
    lines = [f"## {title}", "", header, "|---|---|---|---|"]
    for quantity, notebook, ours, *diff in rows:
        shown_diff = f"{diff[0]:.1e}" if diff and isinstance(diff[0], float) else ""
        lines.append(f"{cells(quantity, notebook, ours)} {shown_diff} |")
    return "\n".join(lines) + "\n"


def accuracy(predict, params, images, labels, batch_size: int = 2000) -> float:
    """Fraction of ``images`` whose ``argmax(predict(params, x))`` is the label, over the
    whole split (padded batches: one compiled shape)."""
    predict = jax.jit(predict)
    correct = 0
    for batch in eval_batches({"x": images, "y": labels}, batch_size):
        predicted = np.asarray(predict(params, batch["x"])).argmax(-1)
        correct += int(np.sum((predicted == batch["y"]) * batch["mask"]))
    return correct / len(labels)


def add_budget_flags(parser, steps: int, test_size: int | None = None) -> None:
    """``--steps`` (the budget) and ``--test-size`` (how many test digits to score)."""
    parser.add_argument("--steps", type=positive_int, default=steps, help="training steps")
    parser.add_argument(
        "--test-size", type=positive_int, default=test_size,
        help="score the first N test digits (default: all 10,000)",
    )  # fmt: skip


def load_digits(test_size: int | None = None):
    """MNIST (``rnn_jax.data.load_mnist``), its test split cut to the first ``test_size``."""
    data = load_mnist()
    if test_size is None:
        return data
    return data._replace(test_images=data.test_images[:test_size],
                         test_labels=data.test_labels[:test_size])  # fmt: skip


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value
