"""Time rj.slstm, rj.mlstm and rj.rglru against their reference implementations, in one run.

A *train step*, on both sides of every row: the layer's forward over the whole sequence
``x (B, T, D)`` from the zero state, the loss ``mean(h ** 2)`` over all its outputs, the
backward to every parameter, and an RMSProp update (``experiments/bench.py``'s optimizer:
optax ``rmsprop(1e-3)`` and torch ``RMSprop(lr=1e-3, alpha=0.9, eps=1e-8)``). float32, CPU,
same shapes, and the reference runs on the rnn_jax parameters converted to its layout:

* **sLSTM** (4 heads): ``rj.slstm`` in ``lax.scan`` (gradient autodiff and ``"manual"``, the
  hand-written BPTT) against ``xlstm==2.0.6``'s ``sLSTMCell`` on its pure-PyTorch ``"vanilla"``
  backend (autograd) fed ``x @ w_x`` by a bias-free input projection: the same work as
  ``rj.slstm``, whose ``w_x`` is that projection (``interop.slstm_to_xlstm``). xlstm's
  ``sLSTMLayer`` adds a causal conv, head-wise gate projections and dropout around the cell,
  which ``rj.slstm`` does not have, so the cell is what is compared.
* **mLSTM** (4 heads, ``d_k = d_v = D / 4``, chunks of ``gcd(64, T)`` steps): one input
  projection ``x @ w_x + b`` to ``q, k, v, o, i, f``, the mLSTM over the sequence, ``h =
  sigmoid(o) * h~``. ``rj.mlstm.variant(num_heads=4)`` chunkwise (``mode="parallel"``, autodiff:
  it has no hand-written backward) and step by step (``mode="sequential"``, autodiff and
  manual) against ``mlstm-kernels==2.0.6``'s native PyTorch chunkwise kernel with autograd
  (``mlstm_chunkwise__native_autograd``), with its hand-written backward
  (``mlstm_chunkwise__native_custbw``) and its recurrent sequence loop with autograd
  (``mlstm_recurrent_sequence__native_fw``); the projection and output gate are torch ops.
* **RG-LRU** (4 heads): ``rj.rglru.with_heads(4)`` (parallel and sequential, gradient autodiff
  and manual) against ``recurrentgemma==1.0.1``'s JAX ``RGLRU`` layer (its own jitted step,
  in this process: both are JAX), given ``segment_pos = 0, 1, ..., T-1`` (no resets).

PyTorch runs in worker processes (``bench.start_torch_worker``: a process that also runs JAX
slows PyTorch 2x), every row of a cell is timed round robin (``bench.time_round_robin``), and
the ratio is each median over the cell's first rnn_jax row's, in the same run.

Usage::

    python experiments/bench_references.py                        # B,T,D = 16,256,256
    python experiments/bench_references.py --config 8,128,64 --cells slstm,rglru
    python experiments/bench_references.py --quick                # tiny smoke run

Writes ``<out>/<name>.json`` and ``.md`` (atomically; name: ``bench-references-<date>``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (a sibling file: the timing machinery)
import common  # noqa: E402

CELLS = ("slstm", "mlstm", "rglru")
DEFAULT_CONFIG = (16, 256, 256)  # B, T, D
QUICK_CONFIG = (2, 8, 8)
HEADS = 4
MLSTM_CHUNK = 64  # rj.mlstm's and mlstm-kernels' default chunk size
REFERENCES = ("xlstm", "mlstm_kernels", "recurrentgemma")
# rnn_jax rows: (row name, rj.unroll options); the first is the cell's baseline.
OURS = {
    "slstm": (("rj.slstm autodiff", {"gradient": "autodiff"}),
              ("rj.slstm manual", {"gradient": "manual"})),
    "mlstm": (("rj.mlstm parallel", {"mode": "parallel"}),
              ("rj.mlstm sequential autodiff", {"mode": "sequential", "gradient": "autodiff"}),
              ("rj.mlstm sequential manual", {"mode": "sequential", "gradient": "manual"})),
    "rglru": (("rj.rglru parallel autodiff", {"mode": "parallel", "gradient": "autodiff"}),
              ("rj.rglru parallel manual", {"mode": "parallel", "gradient": "manual"}),
              ("rj.rglru sequential autodiff", {"mode": "sequential", "gradient": "autodiff"}),
              ("rj.rglru sequential manual", {"mode": "sequential", "gradient": "manual"})),
}  # fmt: skip
# Reference rows: row name -> what the worker (or, for JAX, this process) runs.
THEIRS = {
    "slstm": {"xlstm sLSTMCell vanilla": "slstm"},
    "mlstm": {"mlstm-kernels chunkwise autograd": "chunkwise_autograd",
              "mlstm-kernels chunkwise custbw": "chunkwise_custbw",
              "mlstm-kernels recurrent sequence": "recurrent_sequence"},
    "rglru": {"recurrentgemma RGLRU": "rglru"},
}  # fmt: skip
WORK = {  # what one step computes, per cell (the markdown says it)
    "slstm": "the input projection x @ w_x (no bias; xlstm: a bias-free matmul feeding its "
    "sLSTMCell), then the sLSTM cell (4 heads, block-diagonal recurrent weights, bias) over T "
    "steps; xlstm's vanilla backend, autograd",
    "mlstm": "one projection x @ w_x + b to q, k, v, o, i, f, the mLSTM over T steps (4 heads, "
    f"chunks of gcd({MLSTM_CHUNK}, T) steps in the chunkwise forms), h = sigmoid(o) * h~; "
    "mlstm-kernels' native PyTorch kernels, the projection and gate in torch",
    "rglru": "the RG-LRU layer (block-diagonal gates, a^(c r), sqrt(1 - a^2) (i * x)) over T "
    "steps; recurrentgemma's RGLRU also reads segment_pos (0..T-1: no resets)",
}


def mlstm_chunk(steps: int) -> int:
    """The chunk size of both mLSTM chunkwise forms: the largest divisor of ``T`` up to 64
    (mlstm-kernels' chunkwise form needs chunks that divide the sequence)."""
    return math.gcd(MLSTM_CHUNK, steps)


def make_input(cfg) -> np.ndarray:
    """The one ``x (B, T, D)`` float32 every row reads (bench.make_inputs' generator)."""
    batch, steps, width = cfg
    return bench.make_inputs((batch, steps, width, width))[0]


def rnn_jax_cell(cell: str, cfg):
    """The rnn_jax cell of a row: 4 heads; the mLSTM chunked as its reference."""
    import rnn_jax as rj

    if cell == "slstm":
        return rj.slstm.configured(num_heads=HEADS)
    if cell == "mlstm":
        return rj.mlstm.variant(num_heads=HEADS, chunk_size=mlstm_chunk(cfg[1]))
    return rj.rglru.with_heads(HEADS)


def rnn_jax_maker(cell, params, x, options) -> Callable[[str], bench.Bench]:
    """``rj.unroll(cell, params, x, **options)``'s train step (loss: mean of squares)."""
    import jax.numpy as jnp

    import rnn_jax as rj

    def loss(p, xs):
        _, hs = rj.unroll(cell, p, xs, **options)
        return jnp.mean(hs**2)

    return lambda name: bench.jax_train_bench(name, loss, params, jnp.asarray(x))


def recurrentgemma_maker(params, x) -> Callable[[str], bench.Bench]:
    """recurrentgemma's ``RGLRU`` layer on ``params`` (converted), same loss, own jit."""
    import jax.numpy as jnp

    from rnn_jax import interop

    try:
        from recurrentgemma.jax import layers
    except ImportError as e:
        raise bench.Skip(f"recurrentgemma not importable: {e}") from e

    batch, steps, width = x.shape
    layer = layers.RGLRU(width=width, num_heads=HEADS, param_dtype=jnp.float32)
    theirs = interop.rglru_to_recurrentgemma(params)
    segment_pos = jnp.broadcast_to(jnp.arange(steps), (batch, steps))

    def loss(p, xs, pos):
        y, _ = layer.apply({"params": p}, xs, pos)
        return jnp.mean(y**2)

    return lambda name: bench.jax_train_bench(name, loss, theirs, jnp.asarray(x), segment_pos)


def reference_arrays(cell: str, params) -> dict[str, np.ndarray]:
    """The rnn_jax parameters as the PyTorch reference's arrays (saved for the worker)."""
    from rnn_jax import interop

    if cell == "slstm":
        state, input_weight = interop.slstm_to_xlstm(params, as_tensors=False)
        return {**state, "input_weight": input_weight}
    return {"w_x": np.asarray(params["w_x"]), "b": np.asarray(params["b"])}


def cell_benches(cell, cfg, warmup, log, cleanup, folder) -> list[bench.Bench]:
    """Build, compile and warm up every row of ``cell`` (workers' closes on ``cleanup``)."""
    import jax

    module = rnn_jax_cell(cell, cfg)
    width = cfg[2]
    params = module.init(jax.random.key(0), width, width)
    x = make_input(cfg)
    workers = {}  # PyTorch rows first: the workers build while JAX compiles
    if cell != "rglru":
        arrays = folder / f"{cell}.npz"
        np.savez(arrays, **reference_arrays(cell, params))
        for name, kind in THEIRS[cell].items():
            request = {"kind": kind, "cfg": list(cfg), "params": str(arrays),
                       "chunk_size": mlstm_chunk(cfg[1])}  # fmt: skip
            workers[name] = bench.start_torch_worker(__file__, request)
            cleanup.callback(workers[name].close)
    makers = [(name, rnn_jax_maker(module, params, x, options)) for name, options in OURS[cell]]
    if cell == "rglru":
        makers += [(name, lambda n: recurrentgemma_maker(params, x)(n)) for name in THEIRS[cell]]
    benches = []
    for name, make in [*makers, *workers.items()]:
        try:
            made = make(name)
        except bench.Skip as e:
            log(f"  skip {name}: {e}")
            continue
        for _ in range(warmup):
            made.run()
        benches.append(made)
    return benches


# ----------------------------------------------------------------------------- torch worker


def torch_reference_step(request: dict) -> tuple[Callable[[], None], int, dict]:
    """Worker side: the reference's train step and its activation memory (no JAX here)."""
    torch = bench.import_torch()
    batch, steps, width = request["cfg"]
    arrays = {k: torch.from_numpy(v) for k, v in np.load(request["params"]).items()}
    x = torch.from_numpy(make_input(request["cfg"]))
    if request["kind"] == "slstm":
        forward, params = _xlstm_slstm(torch, arrays, width)
    else:
        forward, params = _mlstm_kernels(torch, arrays, request, (batch, steps, width))
    optimizer = torch.optim.RMSprop(params, lr=bench.LEARNING_RATE, alpha=0.9, eps=1e-8)

    def loss():
        return (forward(x) ** 2).mean()

    def train():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    with torch.no_grad():
        initial_loss = float(loss())
    return train, bench.torch_saved_bytes(loss), {"initial_loss": initial_loss}


def _xlstm_slstm(torch, arrays, width):
    try:
        from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig
    except ImportError as e:
        raise bench.Skip(f"xlstm not importable: {e}") from e
    config = sLSTMCellConfig(hidden_size=width, num_heads=HEADS, backend="vanilla")
    module = sLSTMCell(config, skip_backend_init=True)
    module.load_state_dict({k: v for k, v in arrays.items() if k != "input_weight"})
    input_weight = torch.nn.Parameter(arrays["input_weight"])

    def forward(x):
        out, _ = module(x @ input_weight.T)  # (B, heads, T, D / heads): the loss's any layout
        return out

    return forward, [input_weight, *module.parameters()]


def _mlstm_kernels(torch, arrays, request, cfg):
    try:
        from mlstm_kernels.torch.chunkwise.native import (
            mlstm_chunkwise__native_autograd,
            mlstm_chunkwise__native_custbw,
        )
        from mlstm_kernels.torch.recurrent.native_sequence import (
            mlstm_recurrent_sequence__native_fw,
        )
    except ImportError as e:
        raise bench.Skip(f"mlstm-kernels not importable: {e}") from e
    kernels = {
        "chunkwise_autograd": mlstm_chunkwise__native_autograd,
        "chunkwise_custbw": mlstm_chunkwise__native_custbw,
        "recurrent_sequence": mlstm_recurrent_sequence__native_fw,
    }
    kernel = kernels[request["kind"]]
    batch, steps, width = cfg
    projection = torch.nn.Linear(width, arrays["w_x"].shape[1])
    with torch.no_grad():
        projection.weight.copy_(arrays["w_x"].T)
        projection.bias.copy_(arrays["b"])
    # rj.mlstm's column blocks: q | k | v | o (each HEADS * D / HEADS) | i | f (HEADS each)
    sizes = [width] * 4 + [HEADS] * 2
    per_head = lambda a: a.reshape(batch, steps, HEADS, -1).transpose(1, 2)  # (B, NH, T, d)

    def forward(x):
        q, k, v, o, i, f = projection(x).split(sizes, dim=-1)
        h = kernel(per_head(q), per_head(k), per_head(v), i.transpose(1, 2), f.transpose(1, 2),
                   chunk_size=request["chunk_size"])  # fmt: skip
        return h.transpose(1, 2).reshape(batch, steps, width) * torch.sigmoid(o)

    return forward, list(projection.parameters())


# ----------------------------------------------------------------------------- report


def to_markdown(report: dict) -> str:
    info = report["machine"]
    batch, steps, width = report["config"]
    lines = [
        f"# rnn_jax against the reference implementations, {info['date']}",
        "",
        bench.machine_line(info),
        f"B, T, D = {batch}, {steps}, {width}; {HEADS} heads; float32, CPU. Train step, both "
        "sides: forward over the sequence from the zero state, loss mean(h^2) over all "
        "outputs, backward to every parameter, RMSProp update (optax / torch). Median of "
        "interleaved steps (IQR); ratio = median / the cell's first rnn_jax row's, same "
        "run (> 1: slower). PyTorch rows ran in worker processes. Memory: JAX = XLA temp "
        "buffers; torch = tensors saved for backward.",
        "Loss at init: the loss before the first update (the same parameters on both "
        "sides: equal up to float32 rounding).",
        "",
        "The work of one step, the same on both sides of each cell's rows:",
        "",
    ]
    lines += [
        f"- {cell}: {WORK[cell]}" for cell in dict.fromkeys(r["cell"] for r in report["results"])
    ]
    lines += ["", "| cell | impl | median ms (IQR) | ratio | peak MiB | loss at init |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["results"]:
        mem = r["peak_memory_bytes"]
        mem = "–" if mem is None else f"{mem / 2**20:.1f}"
        lines.append(f"| {r['cell']} | {r['impl']} | {r['median_ms']:.2f} "
                     f"({r['iqr_ms']:.2f}) | {r['ratio_to_rnn_jax']:.2f} | {mem} | "
                     f"{r['initial_loss']:.6g} |")  # fmt: skip
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(report["skipped"])]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    pos_int = common.int_at_least(1)
    p = common.ArgumentParser(description=__doc__)
    # fmt: off
    p.add_argument("--config", default=",".join(map(str, DEFAULT_CONFIG)),
                   help="B,T,D: batch, sequence length, width (D divisible by 4, the heads)")
    p.add_argument("--cells", default=",".join(CELLS), help=f"comma list of {CELLS}")
    p.add_argument("--steps", type=pos_int, default=30, help="timed steps per row (>= 20 for "
                   "a report)")
    p.add_argument("--warmup", type=common.int_at_least(0), default=3, help="untimed steps")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder")
    p.add_argument("--name", default=None, help="file stem (default: bench-references-<date>)")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny config {QUICK_CONFIG}, 3 steps, 1 warmup: a smoke run")
    # fmt: on
    args = p.parse_args(argv)
    if args.quick:
        args.config, args.steps, args.warmup = ",".join(map(str, QUICK_CONFIG)), 3, 1
    try:
        args.cfg = tuple(int(v) for v in args.config.split(","))
    except ValueError:
        args.cfg = ()
    if len(args.cfg) != 3 or min(args.cfg) < 1 or args.cfg[2] % HEADS:
        p.error(f"argument --config: expected B,T,D (3 positive ints, D divisible by {HEADS}), "
                f"got {args.config!r}")  # fmt: skip
    args.cells = [c for c in args.cells.split(",") if c]
    unknown = sorted(set(args.cells) - set(CELLS))
    if unknown or not args.cells:
        p.error(f"argument --cells: unknown {unknown}; choose from {list(CELLS)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    results, skipped = [], []
    batch, steps, width = args.cfg

    def log(msg):
        print(msg, flush=True)
        if msg.strip().startswith("skip"):
            skipped.append(msg.strip()[5:])

    with tempfile.TemporaryDirectory() as tmp:
        for cell in args.cells:
            log(f"{cell} B,T,D = {args.cfg}")
            with contextlib.ExitStack() as cleanup:
                benches = cell_benches(cell, args.cfg, args.warmup, log, cleanup, Path(tmp))
                bench.time_round_robin(benches, args.steps)
            rows = bench.summarise(benches, cell, (batch, steps, width, width), "train",
                                   baseline=OURS[cell][0][0], count_flops=False)  # fmt: skip
            initial_losses = {b.name: b.info.get("initial_loss") for b in benches}
            for r in rows:
                r["work"] = WORK[cell]
                r["initial_loss"] = initial_losses[r["impl"]]  # same params: same loss
                ratio = r["ratio_to_rnn_jax"]
                log(f"  {r['impl']:34s} {r['median_ms']:9.2f} ms (IQR {r['iqr_ms']:.2f})"
                    f"  x{ratio if ratio is None else round(ratio, 2)}")  # fmt: skip
            results += rows
    machine = bench.machine_info()
    for package in REFERENCES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            machine["versions"][package] = importlib.metadata.version(package)
    report = {"machine": machine, "args": {k: v for k, v in vars(args).items() if k != "cfg"},
              "config": list(args.cfg), "heads": HEADS, "mlstm_chunk": mlstm_chunk(steps),
              "results": results, "skipped": sorted(set(skipped))}  # fmt: skip
    stem = args.name or f"bench-references-{dt.date.today().isoformat()}"
    return bench.write_report(report, args.out, stem, to_markdown(report))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if sys.argv[1:] == [bench.TORCH_WORKER_FLAG]:
        bench.torch_worker(torch_reference_step)
    else:
        main()
