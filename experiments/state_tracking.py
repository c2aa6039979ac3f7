"""State tracking: which recurrences can count? Parity of a bit string (or a sum modulo k).

The xLSTM paper (Beck et al. 2024, section 4.1 and its Table 1) reports that sLSTM and LSTM
solve parity and modular arithmetic and extrapolate past their training lengths, while
recurrences whose state update is linear in the state (mLSTM, and the diagonal ones: minGRU,
LRU, RG-LRU) cannot: a linear map with input-dependent decay cannot flip a sign per step.

Every cell gets the same budget: the same model shape (a learned embedding of the symbols to
``--hidden`` features, which RG-LRU needs as it maps width D to D, then one recurrent layer of
``--hidden`` units read at each row's last step), optimiser, batches (the same seed) and
``--steps``.
Training sequences have lengths uniform in ``[1, --train-max-len]`` (padded; ``lengths``
masks them); test sets of ``--test-size`` fresh sequences at each of ``--test-lengths``.

Writes to ``--out``: ``config.json``, ``metrics.jsonl`` (each cell's training loss and
accuracy every ``--log-every`` steps), ``summary.json`` (accuracy by test length, per cell),
``accuracy_by_length.png`` and ``curves.png``.

Usage::

    python experiments/state_tracking.py --task parity --cells lstm,mingru,lru --steps 3000
    python experiments/state_tracking.py --task mod --modulus 5 --cells lstm --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from rnn_jax import models, train  # noqa: E402
from rnn_jax.data import eval_batches  # noqa: E402


def make_problems(rng: np.random.Generator, count: int, lengths, modulus: int):
    """``count`` sequences of symbols in ``[0, modulus)`` with the given ``lengths`` (an int
    or ``(count,)``), padded to the longest: ``{"x": (count, T, modulus) one-hot float32,
    "lengths": (count,) int32, "y": (count,) sum of each row's valid symbols mod modulus}``."""
    lengths = np.broadcast_to(np.asarray(lengths, np.int32), (count,))
    max_len = int(lengths.max())
    symbols = rng.integers(0, modulus, size=(count, max_len))
    symbols = np.where(np.arange(max_len) < lengths[:, None], symbols, 0)
    return {
        "x": np.eye(modulus, dtype=np.float32)[symbols],
        "lengths": lengths.copy(),
        "y": (symbols.sum(axis=1) % modulus).astype(np.int32),
    }


def train_batches(seed: int, batch_size: int, max_len: int, modulus: int):
    """``batch_of(step)``: a pure function of the step, so every cell sees the same data."""

    def batch_of(step: int):
        rng = np.random.default_rng([seed, step])
        lengths = rng.integers(1, max_len + 1, size=batch_size)
        return make_problems(rng, batch_size, lengths, modulus)

    return batch_of


def run_cell(args, cell_name: str, log):
    """Train one cell; returns ``({test_length: accuracy}, seconds)``."""
    model = models.classifier(common.resolve_cell(cell_name), args.hidden, args.modulus)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.rmsprop(args.lr))
    key_embed, key_model = jax.random.split(jax.random.PRNGKey(args.seed))
    params = {"embed": jax.random.normal(key_embed, (args.modulus, args.hidden)),
              "model": model.init(key_model, input_size=args.hidden)}  # fmt: skip
    state = train.TrainState.create(params, optimizer, jax.random.PRNGKey(args.seed + 1))

    def logits_of(params, batch):
        xs = batch["x"] @ params["embed"]  # (B, T, k) one-hot -> (B, T, hidden)
        return model.apply(params["model"], xs, lengths=batch["lengths"])

    def loss_fn(params, batch, rng):
        logits = logits_of(params, batch)
        accuracy = train.accuracy(logits, batch["y"])
        return train.softmax_cross_entropy(logits, batch["y"]), {"accuracy": accuracy}

    def correct(params, batch):
        logits = logits_of(params, batch)
        hits = jnp.argmax(logits, -1) == batch["y"]
        return {"accuracy": jnp.sum(hits * batch["mask"]), "count": jnp.sum(batch["mask"])}

    step_fn = train.make_train_step(loss_fn, optimizer)
    batch_of = train_batches(args.seed, args.batch_size, args.train_max_len, args.modulus)
    bar = common.progress(args.steps, desc=cell_name, enabled=args.progress)
    start = time.perf_counter()
    for step in range(args.steps):
        state, metrics = step_fn(state, batch_of(step))
        bar.update()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            record = {k: float(v) for k, v in metrics.items()}
            log({"cell": cell_name, "step": step + 1, **record})
            bar.set_postfix(loss=f"{record['loss']:.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    results = {}
    for length in args.test_lengths:
        rng = np.random.default_rng([args.seed, 10_000 + length])  # the same test set per cell
        test = make_problems(rng, args.test_size, length, args.modulus)
        evaluated = train.evaluate(correct, state.params, eval_batches(test, args.eval_batch))
        results[length] = evaluated["accuracy"]
    return results, seconds


def plot_accuracy_by_length(summary: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for cell_name, entry in summary["cells"].items():
        lengths = sorted(int(k) for k in entry["accuracy_by_length"])
        ax.plot(lengths, [entry["accuracy_by_length"][str(n)] for n in lengths], marker="o",
                label=cell_name)  # fmt: skip
    ax.axvline(args.train_max_len, color="gray", linestyle=":", label="longest training length")
    ax.axhline(1 / args.modulus, color="gray", linestyle="--", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("test sequence length")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    trained = f"trained on lengths 1-{args.train_max_len}"
    ax.set_title(f"{args.task}: sum mod {args.modulus}, {trained}")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    common.save_figure(fig, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("parity", "mod"), default="parity",
                        help="parity: sum mod 2; mod: sum mod --modulus")  # fmt: skip
    parser.add_argument("--modulus", type=common.int_at_least(2), default=None,
                        help="the modulus of --task mod (default 5)")  # fmt: skip
    parser.add_argument("--cells", default="lstm,mingru,lru",
                        help=f"comma list; each {common.CELL_HELP}")  # fmt: skip
    parser.add_argument("--hidden", type=common.int_at_least(1), default=64)
    parser.add_argument("--steps", type=common.int_at_least(1), default=3000)
    parser.add_argument("--batch-size", type=common.int_at_least(1), default=64)
    parser.add_argument("--lr", type=common.float_range(0, low_open=True), default=1e-2)
    parser.add_argument("--train-max-len", type=common.int_at_least(1), default=40)
    parser.add_argument("--test-lengths", default="40,64,128,256",
                        help="comma list of test sequence lengths")  # fmt: skip
    parser.add_argument("--test-size", type=common.int_at_least(1), default=1000)
    parser.add_argument("--eval-batch", type=common.int_at_least(1), default=500)
    parser.add_argument("--log-every", type=common.int_at_least(1), default=100)
    parser.add_argument("--seed", type=common.int_at_least(0), default=0)
    parser.add_argument("--out", default="runs/state-tracking")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 20 steps, short tests, small sets")  # fmt: skip
    args = parser.parse_args(argv)
    if args.task == "parity" and args.modulus not in (None, 2):
        parser.error(f"--task parity is the sum mod 2; got --modulus {args.modulus}")
    args.modulus = 2 if args.task == "parity" else (args.modulus or 5)
    args.cells = [common.cell_spec(name) for name in args.cells.split(",") if name]
    try:
        args.test_lengths = sorted({int(n) for n in args.test_lengths.split(",")})
    except ValueError:
        parser.error(f"--test-lengths must be comma-separated ints, got {args.test_lengths!r}")
    if min(args.test_lengths) < 1:
        parser.error(f"--test-lengths must be positive, got {args.test_lengths}")
    if args.quick:
        args.steps, args.test_size, args.log_every = 20, 64, 10
        args.test_lengths = [n for n in args.test_lengths if n <= 64] or [args.train_max_len]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = {k: v for k, v in vars(args).items() if k != "progress"}
    run_dir = common.setup_run_dir(args.out, resume=False, config=config)
    records = []

    def log(record):
        records.append(record)
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    summary = {"task": args.task, "modulus": args.modulus, "cells": {},
               "environment": common.environment()}  # fmt: skip
    for cell_name in args.cells:
        accuracy, seconds = run_cell(args, cell_name, log)
        summary["cells"][cell_name] = {
            "accuracy_by_length": {str(n): a for n, a in accuracy.items()},
            "train_seconds": round(seconds, 1),
        }
        common.write_json_atomic(run_dir / "summary.json", summary)
    plot_accuracy_by_length(summary, args, run_dir / "accuracy_by_length.png")
    curves = [{"step": r["step"], f"{r['cell']} loss": r["loss"]} for r in records]
    common.plot_curves(curves, run_dir / "curves.png",
                       [[f"{name} loss" for name in args.cells]], smooth=0)  # fmt: skip
    common.print_summary({name: entry["accuracy_by_length"]
                          for name, entry in summary["cells"].items()})  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
