"""Character-level language model: train on text, report nats/bits per character, sample.

    # the quick demo (~1 min): 94% of 200 sampled names are new, validation 2.03 nats/char
    python experiments/char_lm.py --data names --lr 3e-3 --lr-decay-steps 600 --out runs/names
    # 30 minutes of Shakespeare: validation 1.530 nats/char (experiments/results/char_lm.md)
    python experiments/char_lm.py --data shakespeare --hidden-size 384 --embed-size 64 \\
        --seq-len 100 --batch-size 64 --lr-decay-steps 3000 --gradient manual \\
        --steps 100000 --eval-every 250 --max-minutes 30 --out runs/shakespeare
    # ... and 30 more minutes of the same run
    python experiments/char_lm.py <the same flags> --resume

Every time step emits a softmax over the next character (``yhat<t> = softmax(W_ya a<t> + b_y)``);
the loss is the mean cross-entropy per character. Training is chunked truncated BPTT
(:mod:`rnn_jax.tbptt`): the training text is cut into ``--batch-size`` contiguous streams, read
``--seq-len`` characters at a time with the state carried from chunk to chunk (reset at each
epoch, and for a random ``--reset-prob`` share of the streams at each chunk: see
:func:`rnn_jax.tbptt.reset_rows`), one update per chunk. Validation reads the whole held-out
tail the same way. ``--coordinator/--num-processes/--process-id`` (or ``python -m
rnn_jax.launch``) split the streams over processes; process 0 writes the files.

The run folder (``--out``) holds ``config.json``, ``metrics.jsonl`` (train loss every step,
validation loss and samples every ``--eval-every`` / ``--sample-every`` steps),
``curves.png``, ``checkpoint_*.msgpack`` (train state, the carried state and, as JSON
metadata, the vocabulary) and ``summary.json``. The last line on stdout is the summary as
one JSON object; progress and samples go to stderr.

Ctrl-C saves a checkpoint after the step in flight and exits (code 130); ``--resume``
continues. A run that fails or is stopped before its first checkpoint removes what it wrote.

``--data names`` is the quick demo: each census first name is one line, the newline ends a
name, and the summary reports how many of the sampled names are new (``novel_fraction``).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax import checkpoint as ckpt  # noqa: E402
from rnn_jax import distributed  # noqa: E402
from rnn_jax.data import text as textdata  # noqa: E402
from rnn_jax.models import Model, language_model  # noqa: E402
from rnn_jax.sampling import sample  # noqa: E402
from rnn_jax.tbptt import (  # noqa: E402
    Stream,
    evaluate_stream,
    make_chunk_step,
    place_chunks,
    zero_carry,
)
from rnn_jax.train import TrainState, check_state_finite, shard_batch, train_loop  # noqa: E402

LN2 = math.log(2.0)
DATASETS = ("names", "shakespeare")
# Settings that may change when a run is resumed (how long it runs, how often it reports).
RESUMABLE = [
    "steps", "max_minutes", "eval_every", "sample_every", "checkpoint_every", "resume",
    "progress", "num_samples", "sample_len", "temperature", "top_k", "prime",
    "debug_interrupt_at_step",
]  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked here (a bad value exits with code 2 before anything runs)."""
    pos_int, nonneg_int = common.int_at_least(1), common.int_at_least(0)
    nonneg, rate = common.float_range(0), common.float_range(0, low_open=True)
    unit, below_one = common.float_range(0, 1), common.float_range(0, 1, high_open=True)
    fraction = common.float_range(0, 1, low_open=True, high_open=True)
    p = common.ArgumentParser(description=__doc__)
    # fmt: off
    p.add_argument("--data", default="names", help="names | shakespeare | PATH.txt (UTF-8)")
    p.add_argument("--val-fraction", type=fraction, default=0.1, help="held out (names: share)")
    p.add_argument("--cell", type=cells_spec, default="lstm", metavar="CELL",
                   help=f"recurrent cell: {common.CELL_HELP}; with --block residual a comma-"
                   "separated list mixes cells, one per block (mlstm,slstm,mlstm)")
    p.add_argument("--hidden-size", type=pos_int, default=128, help="units per layer")
    p.add_argument("--layers", type=pos_int, default=1, help="stacked recurrent layers")
    p.add_argument("--block", choices=["plain", "residual", "hawk"], default="plain",
                   help="plain layers, residual blocks of width --hidden-size (norm -> "
                   "recurrence -> gated MLP; for the linear recurrences mingru, minlstm, lru), "
                   "or Griffin's Hawk blocks (--cell rglru)")
    p.add_argument("--expansion", type=pos_int, default=None,
                   help="blocks' MLP width / D (--block residual or hawk; default 2)")
    p.add_argument("--heads", type=pos_int, default=None,
                   help="heads of the slstm, mlstm and rglru cells (default: each cell's own)")
    p.add_argument("--embed-size", type=nonneg_int, default=32, help="0: one-hot inputs")
    p.add_argument("--dropout", type=below_one, default=0.0, help="between layers")
    p.add_argument("--seq-len", type=pos_int, default=32, help="characters per chunk (BPTT length)")
    p.add_argument("--batch-size", type=pos_int, default=32, help="parallel streams")
    p.add_argument("--steps", type=pos_int, default=600, help="total updates (one per chunk)")
    p.add_argument("--optimizer", choices=["rmsprop", "adam"], default="adam", help="optimizer")
    p.add_argument("--lr", type=rate, default=2e-3, help="learning rate")
    p.add_argument("--lr-decay-steps", type=nonneg_int, default=0,
                   help="cosine decay to lr/10 over N (0: constant)")
    p.add_argument("--clip-norm", type=nonneg, default=5.0, help="0: no clipping")
    p.add_argument("--reset-prob", type=unit, default=0.01,
                   help="chance per chunk that a stream's state restarts from zero")
    p.add_argument("--gradient", choices=["auto", "autodiff", "manual"], default="auto",
                   help="BPTT by (auto: rj.unroll's default for the cell's mode)")
    p.add_argument("--matmul-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype of the matrix products (accumulating in float32)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="initialisation, resets, samples")
    common.add_run_args(p, checkpoint_every=500, out="runs/char_lm")
    common.add_process_args(p)
    p.add_argument("--eval-every", type=nonneg_int, default=200,
                   help="validation loss every N steps (0: only at the end)")
    p.add_argument("--eval-batch-size", type=pos_int, default=64, help="validation streams")
    p.add_argument("--eval-seq-len", type=pos_int, default=200, help="validation chunk length")
    p.add_argument("--sample-every", type=nonneg_int, default=500,
                   help="print a sample every N steps (0: never)")
    p.add_argument("--max-minutes", type=nonneg, default=0.0, help="stop cleanly after (0: never)")
    p.add_argument("--sample-len", type=pos_int, default=400, help="characters per text sample")
    p.add_argument("--num-samples", type=pos_int, default=200, help="names mode: names to sample")
    p.add_argument("--temperature", type=nonneg, default=0.8, help="of sampling (0: greedy)")
    p.add_argument("--top-k", type=nonneg_int, default=0, help="0: sample from all characters")
    p.add_argument("--prime", default=None,
                   help="text the samples start from (text data only; default: a newline)")
    # Testing hook: send this process a SIGINT (Ctrl-C) during this step.
    p.add_argument("--debug-interrupt-at-step", type=pos_int, default=None, help=argparse.SUPPRESS)
    # fmt: on
    args = p.parse_args(argv)
    common.check_process_args(p, args)
    if "," in args.cell and args.block != "residual":
        p.error(f"argument --cell: a list of cells ({args.cell}) needs --block residual")
    if args.expansion is not None and args.block == "plain":
        p.error("argument --expansion: plain layers have no MLP; use --block residual or hawk")
    headless = [spec for spec in args.cell.split(",") if spec not in common.HEADED_CELLS]
    if args.heads is not None and headless:
        p.error(f"argument --heads: applies to {', '.join(common.HEADED_CELLS)}, not {headless}")
    if "," in args.cell and len(args.cell.split(",")) != args.layers:
        p.error(f"argument --cell: {args.cell} names {len(args.cell.split(','))} cells for "
                f"--layers {args.layers}: give one per block")
    if args.data not in DATASETS and not Path(args.data).is_file():
        p.error(f"argument --data: expected {' or '.join(DATASETS)} or a file, got {args.data!r}")
    if args.prime is not None and args.data == "names":
        p.error("--prime is not used with --data names (each name is sampled from a newline)")
    if args.prime == "":
        p.error("--prime must hold at least one character")
    return args


def cells_spec(text: str) -> str:
    """``--cell``: one cell spec, or a comma-separated list of them (one per residual block)."""
    for spec in text.split(","):
        common.cell_spec(spec)
    return text


def build(args, vocab_size: int):
    specs = args.cell.split(",")
    cells = [common.with_heads(spec, getattr(args, "heads", None)) for spec in specs]
    model = language_model(
        cells if len(specs) > 1 else cells[0], vocab_size, args.hidden_size,
        num_layers=args.layers, embed_size=args.embed_size or None, dropout=args.dropout,
        gradient=None if args.gradient == "auto" else args.gradient,
        block=getattr(args, "block", "plain"),  # runs saved before --block have none
        expansion=getattr(args, "expansion", None) or 2,
    )  # fmt: skip
    if args.matmul_dtype != "float32":
        # Mixed precision: matrix products in bfloat16, carries/gates/loss in float32. One
        # partial per run, so jitted callers that take ``apply`` as static compile once.
        model = Model(model.init, functools.partial(model.apply, matmul_dtype=args.matmul_dtype))
    lr = args.lr
    if args.lr_decay_steps:
        lr = optax.cosine_decay_schedule(args.lr, args.lr_decay_steps, alpha=0.1)
    optimizer = common.make_optimizer(args.optimizer, lr, clip_norm=args.clip_norm or None)
    return model, optimizer


def make_loss_fns(model, use_dropout: bool):
    """The chunk loss for training and the chunk sums for validation (nats, summed)."""

    def loss_fn(params, carry, chunk, rng):
        inputs, targets = chunk
        logits, new_carry = model.apply(params, inputs, carry, key=rng if use_dropout else None)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        return loss, (new_carry, {})

    def metric_fn(params, carry, chunk):
        inputs, targets = chunk
        logits, new_carry = model.apply(params, inputs, carry)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return {"nll": nll.sum(), "count": jnp.asarray(nll.size, jnp.float32)}, new_carry

    return loss_fn, metric_fn


def carry_like(model, params, batch_size: int, seq_len: int):
    """The zero state of ``batch_size`` streams (a concrete pytree, so jit compiles once)."""
    tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
    return zero_carry(lambda p, t: model.apply(p, t)[1], params, tokens)


def sample_text(model, params, vocab, key, *, length, prime, temperature, top_k, rows=1):
    """``rows`` strings of ``length`` characters continuing ``prime``."""
    prime_ids = jnp.asarray(np.tile(vocab.encode(prime)[None], (rows, 1)))
    tokens, _ = sample(
        model.apply, params, key, num_steps=length, prime_tokens=prime_ids,
        temperature=temperature, top_k=top_k or None,
    )  # fmt: skip
    return [vocab.decode(row) for row in np.asarray(tokens)]


def sample_names(model, params, vocab, key, *, num, temperature, top_k, max_len=32):
    """``num`` names: rows primed with the newline, each cut at its first newline.
    Returns ``(names, complete)``; a row with no newline within ``max_len`` is incomplete."""
    rows = sample_text(
        model, params, vocab, key, length=max_len, prime="\n", temperature=temperature,
        top_k=top_k, rows=num,
    )  # fmt: skip
    names = [row.split("\n", 1)[0] for row in rows]
    complete = ["\n" in row for row in rows]
    return names, complete


def names_report(names, complete, train_names, all_names) -> dict:
    """Novelty of sampled names: share of the complete, non-empty ones not seen in training."""
    done = [n for n, c in zip(names, complete, strict=True) if c and n]
    novel = [n for n in done if n not in train_names]
    return {
        "num_sampled": len(names),
        "complete_fraction": len(done) / max(len(names), 1),
        "novel_fraction": len(novel) / max(len(done), 1),
        "novel_fraction_vs_all_names": sum(n not in all_names for n in done) / max(len(done), 1),
        "unique_fraction": len(set(done)) / max(len(done), 1),
        "sample_names": done[:30],
        "sample_novel_names": novel[:30],
    }


def config_of(args) -> dict:
    """The run's settings (config.json): the flags, less where it runs (processes)."""
    config = {k: v for k, v in vars(args).items() if k not in common.PROCESS_ARGS}
    return {**config, "resumable_keys": RESUMABLE}


def load_data(args):
    """``(vocab, train_ids, val_ids, train_names, train_chunks, val_chunks)``, after the run
    folder is checked; problems exit with a usage error (code 2), nothing written."""
    config = config_of(args)
    has_checkpoint = ckpt.latest_checkpoint(args.out) is not None
    common.check_run_dir(args.out, resume=args.resume, has_checkpoint=has_checkpoint,
                         config=config)  # fmt: skip
    try:
        vocab, train_ids, val_ids, train_names = textdata.load_corpus(args.data, args.val_fraction)
    except (OSError, ValueError) as e:
        common.usage_error(f"--data {args.data}: {str(e).splitlines()[0]}")
    missing = "".join(sorted(set(args.prime or "") - set(vocab.to_list())))
    if missing:
        common.usage_error(f"--prime has characters not in the {args.data} text: {missing!r}")
    try:
        train_chunks = textdata.contiguous_batches(train_ids, args.batch_size, args.seq_len)
        val_chunks = textdata.contiguous_batches(
            val_ids, *textdata.fit_layout(val_ids.size, args.eval_batch_size, args.eval_seq_len)
        )
    except ValueError as e:
        common.usage_error(f"--batch-size {args.batch_size} x --seq-len {args.seq_len} with "
                           f"--val-fraction {args.val_fraction}: {e}")  # fmt: skip
    return vocab, train_ids, val_ids, train_names, train_chunks, val_chunks


def run(args, data) -> dict:
    """Trains (or resumes) with ``rnn_jax.train.train_loop``; returns the summary."""
    t_start = time.perf_counter()
    # Several processes: streams split over one global mesh; process 0 alone writes.
    mesh, main = common.process_mesh(), distributed.is_main_process()
    run_dir = Path(args.out)
    vocab, train_ids, val_ids, train_names, train_chunks, val_chunks = data
    all_names = set(textdata.load_names()) if train_names is not None else None

    model, optimizer = build(args, vocab.size)
    key = jax.random.key(args.seed)
    k_init, k_state, k_sample, k_final = jax.random.split(key, 4)
    params = model.init(k_init)
    zero = carry_like(model, params, args.batch_size, args.seq_len)
    run_state = {"train": TrainState.create(params, optimizer, k_state), "carry": zero}
    meta = {"elapsed_s": 0.0, "best_val": None}

    latest = ckpt.latest_checkpoint(run_dir) if args.resume else None
    if latest:
        run_state, meta = ckpt.restore_checkpoint(latest, run_state)
        if meta.get("vocab") != vocab.to_list():
            raise ValueError(f"{latest} was trained with another vocabulary than --data gives")
    if mesh is not None:
        run_state, zero = distributed.replicate((run_state, zero), mesh)
    start = int(run_state["train"].step)
    # Only now, the model built (and its checkpoint read), is the folder written; main's
    # guard_run_dir removes it if the run stops before its first checkpoint.
    distributed.sync("run folder checked")  # before process 0 writes config.json
    run_dir = common.setup_run_dir(args.out, resume=args.resume, config=config_of(args),
                                   write=main)  # fmt: skip
    log = common.MetricsLog(run_dir / "metrics.jsonl", resume_step=start, write=main)

    loss_fn, metric_fn = make_loss_fns(model, use_dropout=args.dropout > 0)
    step_fn = make_chunk_step(loss_fn, optimizer, mesh=mesh)
    stream = Stream(step_fn, train_chunks, zero, run_state["carry"], seed=args.seed,
                    reset_prob=args.reset_prob, mesh=mesh)  # fmt: skip
    eval_chunk = jax.jit(metric_fn)
    val_zero = carry_like(model, params, val_chunks.batch_size, val_chunks.seq_len)
    val_zero = val_zero if mesh is None else shard_batch(val_zero, mesh)

    def validate(params) -> dict:
        chunks = place_chunks(val_chunks, mesh)
        means, _ = evaluate_stream(eval_chunk, params, chunks, val_zero)
        return {"val_nats_per_char": means["nll"], "val_bpc": means["nll"] / LN2}

    def show_sample(params, step):
        k = jax.random.fold_in(k_sample, step)
        if train_names is not None:
            names, complete = sample_names(
                model, params, vocab, k, num=20, temperature=args.temperature, top_k=args.top_k
            )
            text = ", ".join(n for n, c in zip(names, complete, strict=True) if c)
        else:
            (text,) = sample_text(
                model, params, vocab, k, length=args.sample_len, prime=args.prime or "\n",
                temperature=args.temperature, top_k=args.top_k,
            )  # fmt: skip
        if main:
            bar.write(f"--- sample at step {step} ---\n{text}\n---", file=sys.stderr)
        return text

    def save(state, step):
        check_state_finite(state, step)  # never save a state that already holds NaN/inf
        metadata = {
            "vocab": vocab.to_list(), "config": common.jsonable(vars(args)),
            "elapsed_s": timer.wall_s(), "cpu_s": timer.cpu_s(), "best_val": meta.get("best_val"),
        }  # fmt: skip
        run_state = {"train": state, "carry": stream.carry}
        if main:
            ckpt.save_checkpoint(run_dir, run_state, step=step, metadata=metadata, keep=2)

    timer = common.Timer(float(meta.get("elapsed_s", 0.0)), float(meta.get("cpu_s", 0.0)))
    bar = common.progress(args.steps, initial=start, desc="train", enabled=args.progress and main)
    status = {"stopped": "steps", "val": None, "val_step": None}
    recent = []

    batches = common.batches_within(stream.batch, start, timer.t0, args.max_minutes, status)

    def on_step(step: int, host: dict, state) -> None:
        timer.add_step(timer.lap())
        recent[:] = (recent + [host["loss"]])[-100:]
        record = {"step": step, "loss": host["loss"], "bpc": host["loss"] / LN2,
                  "grad_norm": host["grad_norm"], "time_s": round(timer.wall_s(), 2)}  # fmt: skip
        if (args.eval_every and step % args.eval_every == 0) or step == args.steps:
            status["val"], status["val_step"] = validate(state.params), step
            record.update(status["val"])
            nats = status["val"]["val_nats_per_char"]
            meta["best_val"] = min(meta["best_val"] or math.inf, nats)
            main and bar.write(
                f"step {step}: train {np.mean(recent):.4f} val {nats:.4f} nats/char "
                f"({nats / LN2:.4f} bpc), {timer.wall_s() / 60:.1f} min", file=sys.stderr,
            )  # fmt: skip
        if args.sample_every and step % args.sample_every == 0:
            record["sample"] = show_sample(state.params, step)
        log.write(record)
        bar.update(1)
        bar.set_postfix(loss=f"{host['loss']:.3f}")
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            save(state, step)
            main and common.plot_curves(log.records(), run_dir / "curves.png", **PANELS)
        if args.debug_interrupt_at_step == step:  # testing hook: a Ctrl-C, as a terminal sends
            os.kill(os.getpid(), signal.SIGINT)
        if stop.requested:  # Ctrl-C: save this step, then stop (--resume continues)
            save(state, step)
            log.close()
            raise common.Interrupted(step, run_dir)
        timer.lap()

    try:
        with common.stop_on_interrupt(enabled=mesh is None) as stop:
            state, _ = train_loop(stream.step, run_state["train"], batches,
                                  num_steps=args.steps, callback=on_step)  # fmt: skip
    finally:
        bar.close()
    step, last_val = int(state.step), status["val"]

    # Final evaluation (unless the last step just did one) and the checkpoint to resume from.
    if status["val_step"] != step:
        last_val = validate(state.params)
        log.write({"step": step, **last_val, "time_s": round(timer.wall_s(), 2)})
        meta["best_val"] = min(meta["best_val"] or math.inf, last_val["val_nats_per_char"])
    save(state, step)
    main and common.plot_curves(log.records(), run_dir / "curves.png", **PANELS)

    summary = {
        "data": args.data, "cell": args.cell, "hidden_size": args.hidden_size,
        "layers": args.layers, "block": args.block, "vocab_size": vocab.size,
        "params": rj.count_params(state.params),
        "train_chars": int(train_ids.size), "val_chars": int(val_ids.size),
        "uniform_nats_per_char": math.log(vocab.size),
        **last_val, "val_chars_read": int(val_chunks.num_chunks * val_chunks.batch_size
                                          * val_chunks.seq_len),
        "best_val_nats_per_char": meta.get("best_val"),
        # From the log, not this invocation's memory, so a resumed run reports the same.
        "train_nats_per_char": common.tail_mean(log.records(), "loss", 100),
        "steps": step, "stopped": status["stopped"],
        "epochs": step * args.batch_size * args.seq_len / max(train_ids.size, 1),
        "ms_per_step_median": timer.ms_per_step(median=True),
        "train_wall_s": round(timer.wall_s(), 1),
        "train_cpu_s": round(timer.cpu_s(), 1),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }  # fmt: skip
    if train_names is not None:
        names, complete = sample_names(
            model, state.params, vocab, k_final, num=args.num_samples,
            temperature=args.temperature, top_k=args.top_k,
        )  # fmt: skip
        report = names_report(names, complete, train_names, all_names)
        summary.update(report)
        summary["sample"] = ", ".join(report["sample_names"][:20])
    else:
        (summary["sample"],) = sample_text(
            model, state.params, vocab, k_final, length=args.sample_len, prime=args.prime or "\n",
            temperature=args.temperature, top_k=args.top_k,
        )  # fmt: skip
    summary["environment"] = common.environment()
    main and common.write_json_atomic(run_dir / "summary.json", summary)
    log.close()
    return summary


PANELS = {"panels": [["loss", "val_nats_per_char"], ["grad_norm"]], "smooth": 50,
          "titles": ["cross-entropy (nats/char)", "gradient norm"]}  # fmt: skip


def main(argv=None) -> dict:
    """CLI entry point: the summary (also printed as the last stdout line); a bad invocation
    exits with code 2 before anything is trained or written."""
    args = parse_args(argv)
    main_process = common.join_processes(args)
    data = load_data(args)
    has_checkpoint = lambda: ckpt.latest_checkpoint(args.out) is not None
    with common.guard_run_dir(args.out, resume=args.resume, has_checkpoint=has_checkpoint,
                              write=main_process):  # fmt: skip
        summary = run(args, data)
    main_process and common.print_summary(summary)
    return summary


if __name__ == "__main__":
    try:
        main()
    except common.Interrupted as e:  # Ctrl-C: the checkpoint is saved
        print(e, file=sys.stderr, flush=True)
        sys.exit(common.EXIT_INTERRUPTED)
