"""Benchmark rnn_jax against Flax, Equinox, Keras (JAX backend) and PyTorch on the CPU.

A *train step* is: forward over the sequence, softmax cross-entropy on a dense readout of the
last hidden state (row-MNIST style classification, 10 classes), backward, RMSProp update.
An *inference step* is the forward plus the readout. Every JAX step is one jitted function
whose inputs are jit *arguments* (closed-over constants could be folded away by XLA).

All implementations are compiled / warmed up first, then timed round-robin, one step of each
in turn, so machine noise hits them alike. PyTorch runs in its own worker process with the
default OpenMP wait policy (its threads spin briefly between ops; making them sleep instead,
``OMP_WAIT_POLICY=PASSIVE``, slowed it 2-3x): the main process asks the worker for one step at
a time, and the worker times that step itself, so the pipe round trip is not counted. An
untimed 10 ms pause before each step lets the previous implementation's threads go idle.
Reported: median and inter-quartile range (ms), ratio of each median to rnn_jax's (autodiff)
in the same run, useful GFLOP/s (the matrix products only: forward ``2*B*T*(I+H)*G*H``, train
3x that), and peak memory:

* JAX: ``compiled.memory_analysis().temp_size_in_bytes`` -- XLA's scratch buffers for the
  step (activations kept for the backward, workspaces), excluding arguments and outputs.
* PyTorch: bytes of the distinct tensors autograd saves for the backward (via
  ``torch.autograd.graph.saved_tensors_hooks``), i.e. the activation memory; inference: 0.

Usage::

    python experiments/bench.py                              # mnist config, all cells
    python experiments/bench.py --configs mnist,long,wide --cells lstm
    python experiments/bench.py --config 16,8,4,8 --steps 3 --warmup 1 --out /tmp/res
    python experiments/bench.py --quick                       # tiny smoke run

Writes ``<out>/bench-<date>.json`` and ``.md`` (atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (a sibling file, see common.py)

CONFIGS = {
    "mnist": (128, 28, 28, 128),
    "long": (32, 512, 64, 256),
    "wide": (64, 64, 256, 1024),
}
QUICK_CONFIG = (4, 3, 5, 6)
CELLS = tuple(common.CELL_PATHS)  # the scripts' one registry of built-in cells, then:
CELLS += ("lstm_proj",)  # the LSTM with an output projection to H // 2 (torch's proj_size)
MODES = ("train", "inference")
NUM_GATES = {"simple": 1, "lstm": 4, "gru": 3, "gru_reset_before": 3, "mgu": 2, "lstm_peephole": 4,
             "layernorm_lstm": 4, "lstm_proj": 4}  # fmt: skip
# The cells each peer library has (the others are skipped for it).
PEER_CELLS = {
    "flax": ("simple", "lstm", "gru", "mgu"),
    "equinox": ("lstm", "gru"),
    "torch": ("simple", "lstm", "gru", "lstm_proj"),
    "keras": ("simple", "lstm", "gru", "gru_reset_before"),
}


def projection_size(cell: str, hidden_size: int) -> int | None:
    """The output projection's width P of a bench cell (``lstm_proj``: H // 2), else None."""
    return max(1, hidden_size // 2) if cell == "lstm_proj" else None


def output_width(cell: str, hidden_size: int) -> int:
    """Width of the state the readout reads: P for a projected LSTM, else H."""
    return projection_size(cell, hidden_size) or hidden_size


def _needs_peer_cell(peer: str, cell: str) -> None:
    if cell not in PEER_CELLS[peer]:
        raise Skip(f"{peer} has no {cell} cell")


NUM_CLASSES = 10
# A user's own cells (``--cell module:attr``), by their spec; rnn_jax implementations only.
USER_CELLS: dict[str, object] = {}
LEARNING_RATE = 1e-3
BASELINE = "rnn_jax"
IMPLS = ("rnn_jax", "rnn_jax-manual", "rnn_jax-bf16", "rnn_jax-remat", "rnn_jax-manual-remat")
IMPLS += (
    "rnn_jax-fused_cpu",
    "rnn_jax-fused_cpu-1thread",
    "flax",
    "equinox",
    "torch",
    "keras",
)
DEFAULT_IMPLS = ("rnn_jax", "rnn_jax-manual", "flax", "equinox", "torch")
THREADS = 2
# Untimed pause before each step: the previous implementation's idle threads (torch's OpenMP,
# XLA's pool) spin a few ms before they sleep, which slowed the next one by 5-20%.
PAUSE_S = 0.01
TORCH_WORKER_FLAG = "--torch-worker"  # bench.py run with only this flag is make_torch's worker


@dataclass
class Bench:
    """One implementation ready to time: ``run()`` does one step and blocks until done.

    ``run()`` returns None (the caller times it) or the seconds it measured itself (a worker
    process). ``close`` releases what the bench holds (the worker process). ``info``: what a
    bench reports besides times (e.g. a worker's loss before the first step).
    """

    name: str
    run: Callable[[], float | None]
    memory_bytes: int | None = None
    times: list[float] = field(default_factory=list)
    close: Callable[[], None] | None = None
    info: dict = field(default_factory=dict)


class Skip(Exception):
    """An implementation cannot run here (missing package, unsupported cell)."""


# ----------------------------------------------------------------------------- JAX helpers


def _classifier_loss_and_infer(forward, params, x, y):
    """The loss (for ``jax_train_bench``) and the jitted inference function shared by the
    classification benches.

    ``forward(params, x (B, T, I)) -> h_last (B, H)``; params hold the RNN and a readout.
    """
    import jax
    import jax.numpy as jnp
    import optax

    def logits_fn(params, x):
        h = forward(params["rnn"], x)
        return h @ params["out"]["w"] + params["out"]["b"]

    def loss_fn(params, x, y):
        logits = logits_fn(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    infer = jax.jit(lambda params, x: logits_fn(params, x))
    return loss_fn, infer, jnp


def jax_train_step(loss_fn):
    """``(optimizer, train_step)``: the jitted ``train_step(params, opt_state, *inputs) ->
    (params, opt_state, loss)`` = ``jax.value_and_grad(loss_fn)`` + the RMSProp update every
    JAX implementation here takes (``loss_fn(params, *inputs) -> scalar``)."""
    import jax
    import optax

    optimizer = optax.rmsprop(LEARNING_RATE)

    @jax.jit
    def train_step(params, opt_state, *inputs):
        loss, grads = jax.value_and_grad(loss_fn)(params, *inputs)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return optimizer, train_step


def jax_train_bench(name, loss_fn, params, *inputs) -> Bench:
    """``jax_train_step(loss_fn)`` compiled on these arguments as a timed ``Bench`` (each run
    updates the params and optimizer state); memory: XLA's temp bytes; ``info["initial_loss"]``:
    the loss at the given params (read by the first run)."""
    optimizer, train_step = jax_train_step(loss_fn)
    state = {"params": params, "opt": optimizer.init(params)}
    compiled = train_step.lower(state["params"], state["opt"], *inputs).compile()
    info = {}

    def run():
        p, o, loss = compiled(state["params"], state["opt"], *inputs)
        loss.block_until_ready()
        state["params"], state["opt"] = p, o
        info.setdefault("initial_loss", float(loss))

    return Bench(name, run, _xla_temp_bytes(compiled), info=info)


def _readout(key, hidden_size):
    import jax

    return {
        "w": jax.random.normal(key, (hidden_size, NUM_CLASSES)) / np.sqrt(hidden_size),
        "b": np.zeros((NUM_CLASSES,), np.float32),
    }


def _jax_bench(name, forward, rnn_params, hidden_size, mode, x_np, y_np) -> Bench:
    """Wrap ``forward`` as a timed jitted step; measures XLA's temp memory."""
    import jax

    params = {"rnn": rnn_params, "out": _readout(jax.random.key(1), hidden_size)}
    loss_fn, infer, jnp = _classifier_loss_and_infer(forward, params, x_np, y_np)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    if mode == "train":
        return jax_train_bench(name, loss_fn, params, x, y)
    compiled = infer.lower(params, x).compile()

    def run():
        compiled(params, x).block_until_ready()

    return Bench(name, run, _xla_temp_bytes(compiled))


def _xla_temp_bytes(compiled) -> int | None:
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # memory_analysis is best-effort on some backends
        return None


# ----------------------------------------------------------------------------- implementations


def make_rnn_jax(cell, cfg, mode, x, y, *, gradient=None, **unroll_options) -> Callable:
    """``mode`` is the bench's ("train"/"inference"); ``unroll_mode`` is ``rj.unroll``'s."""
    import jax

    import rnn_jax as rj
    from rnn_jax.checks import as_cell

    _, _, input_size, hidden_size = cfg
    module = as_cell(_cell_of(cell))
    proj = projection_size(cell, hidden_size)
    if proj is not None:  # the cell whose h has P features; its init adds w_hr (H, P)
        module = module.with_projection(proj)
    rnn_params = module.init(jax.random.key(0), input_size, hidden_size)

    if "unroll_mode" in unroll_options:
        unroll_options["mode"] = unroll_options.pop("unroll_mode")

    def forward(p, xs):
        carry, _ = rj.unroll(module, p, xs, gradient=gradient, **unroll_options)
        return module.hidden_of(carry)

    width = output_width(cell, hidden_size)
    return lambda name: _jax_bench(name, forward, rnn_params, width, mode, x, y)


def _cell_of(cell: str):
    """A user's cell (``--cell module:attr``) or the library cell of that name."""
    if cell in USER_CELLS:
        return USER_CELLS[cell]
    if cell == "lstm_proj":  # rj.lstm; make_rnn_jax projects it (with_projection(H // 2))
        import rnn_jax as rj

        return rj.lstm
    return common.library_cell(cell)


def _needs_unroll_option(name):
    import inspect

    import rnn_jax as rj

    names = getattr(getattr(rj, "options", None), "NAMES", ())  # the options' rule book
    if name not in inspect.signature(rj.unroll).parameters and name not in names:
        raise Skip(f"rj.unroll has no {name} option")


def make_rnn_jax_bf16(cell, cfg, mode, x, y):
    import jax.numpy as jnp

    _needs_unroll_option("matmul_dtype")
    return make_rnn_jax(cell, cfg, mode, x, y, matmul_dtype=jnp.bfloat16)


def make_rnn_jax_backend(backend, cell, cfg, mode, x, y):
    """``rj.unroll(..., backend=backend)``: a fused kernel; skipped where it cannot run."""
    _needs_unroll_option("backend")
    from rnn_jax import backends

    module = _cell_of(cell)
    if projection_size(cell, cfg[3]) is not None:
        raise Skip(f"backend={backend!r} has no projected LSTM")
    if backends.fused_kind(module) is None:
        raise Skip(f"backend={backend!r} runs only the built-in cells")
    if not backends.fused_cpu_available():
        raise Skip(f"backend={backend!r} unavailable: pip install 'rnn_jax[onednn]' (and g++)")
    return make_rnn_jax(cell, cfg, mode, x, y, backend=backend)


def make_rnn_jax_fused_1thread(cell, cfg, mode, x, y) -> Callable:
    """``backend="fused_cpu"`` on one thread (its default: one per core), set around each step."""
    from rnn_jax import backends
    from rnn_jax.backends import build as kernel_build

    make = make_rnn_jax_backend("fused_cpu", cell, cfg, mode, x, y)

    def named(name):
        bench = make(name)
        run = bench.run

        def run_1thread():
            backends.set_fused_cpu_threads(1)
            try:
                return run()
            finally:
                backends.set_fused_cpu_threads(
                    kernel_build.threads_from_env(kernel_build.FUSED_THREADS_ENV)
                )

        bench.run = run_1thread
        return bench

    return named


def make_rnn_jax_remat(cell, cfg, mode, x, y, gradient="autodiff"):
    _needs_unroll_option("remat")
    return make_rnn_jax(cell, cfg, mode, x, y, gradient=gradient, remat="sqrt")


def make_flax(cell, cfg, mode, x, y):
    _needs_peer_cell("flax", cell)
    try:
        import flax.linen as nn
    except ImportError as e:
        raise Skip(f"flax not importable: {e}") from e
    import jax

    _, _, input_size, hidden_size = cfg
    flax_cell = {
        "simple": nn.SimpleCell,
        "lstm": nn.OptimizedLSTMCell,
        "gru": nn.GRUCell,
        "mgu": nn.MGUCell,
    }[cell](features=hidden_size)
    layer = nn.RNN(flax_cell, return_carry=True)
    rnn_params = layer.init(jax.random.key(0), x[:, :, :])["params"]

    def forward(p, xs):
        carry, _ = layer.apply({"params": p}, xs)
        return carry[1] if cell == "lstm" else carry  # LSTM carry is (c, h)

    return lambda name: _jax_bench(name, forward, rnn_params, hidden_size, mode, x, y)


def make_equinox(cell, cfg, mode, x, y):
    try:
        import equinox as eqx
    except ImportError as e:
        raise Skip(f"equinox not importable: {e}") from e
    _needs_peer_cell("equinox", cell)
    import jax
    import jax.numpy as jnp

    batch, _, input_size, hidden_size = cfg
    eqx_cell = {"lstm": eqx.nn.LSTMCell, "gru": eqx.nn.GRUCell}[cell](
        input_size, hidden_size, key=jax.random.key(0)
    )
    params, static = eqx.partition(eqx_cell, eqx.is_array)

    def forward(p, xs):
        module = eqx.combine(p, static)
        step = jax.vmap(module)  # Equinox cells are unbatched
        h0 = jnp.zeros((xs.shape[0], hidden_size), xs.dtype)
        carry0 = (h0, h0) if cell == "lstm" else h0

        def body(carry, x_t):
            return step(x_t, carry), None

        carry, _ = jax.lax.scan(body, carry0, jnp.swapaxes(xs, 0, 1))
        return carry[0] if cell == "lstm" else carry

    return lambda name: _jax_bench(name, forward, params, hidden_size, mode, x, y)


def make_keras(cell, cfg, mode, x, y):
    """A Keras 3 layer on its JAX backend: ``stateless_call`` inside the same jitted step.

    Keras's recurrent layers run ``lax.scan`` on this backend, so this times Keras's own
    cell code (its gate layout, its bias handling) under the same XLA as the others.
    """
    _needs_peer_cell("keras", cell)
    os.environ.setdefault("KERAS_BACKEND", "jax")  # read only when keras is first imported
    try:
        import keras
    except ImportError as e:
        raise Skip(f"keras not importable: {e}") from e
    if keras.backend.backend() != "jax":
        raise Skip(f"keras runs on {keras.backend.backend()!r}; set KERAS_BACKEND=jax")

    _, _, input_size, hidden_size = cfg
    layers = keras.layers
    layer = {
        "simple": lambda: layers.SimpleRNN(hidden_size),
        "lstm": lambda: layers.LSTM(hidden_size),
        "gru": lambda: layers.GRU(hidden_size),
        "gru_reset_before": lambda: layers.GRU(hidden_size, reset_after=False),
    }[cell]()
    layer.build((None, None, input_size))
    rnn_params = [v.value for v in layer.trainable_variables]
    seed_state = [v.value for v in layer.non_trainable_variables]  # its dropout seed

    def forward(p, xs):
        h_last, _ = layer.stateless_call(p, seed_state, xs)
        return h_last

    return lambda name: _jax_bench(name, forward, rnn_params, hidden_size, mode, x, y)


def make_torch(cell, cfg, mode, x, y):
    """PyTorch in a worker process (module docstring); it regenerates ``x``, ``y`` itself."""
    _needs_peer_cell("torch", cell)
    return start_torch_worker(Path(__file__), {"cell": cell, "cfg": list(cfg), "mode": mode})


def start_torch_worker(script: Path, request: dict) -> Callable[[str], Bench]:
    """Start ``script TORCH_WORKER_FLAG`` (a script whose main calls ``torch_worker``) and send
    it ``request`` (JSON) to build its step; return the maker of a ``Bench`` that asks it for
    one timed step per run. The worker builds while the caller goes on (start several, then
    make them); the maker waits for its reply: ``{"skip": why}`` raises ``Skip``, other keys
    than ``memory`` go to ``Bench.info``. ``maker.close`` ends the worker (idempotent)."""
    worker = subprocess.Popen(
        [sys.executable, str(Path(script).resolve()), TORCH_WORKER_FLAG],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def send(message):
        with contextlib.suppress(BrokenPipeError):  # a worker that died: no reply, below
            worker.stdin.write(json.dumps(message) + "\n")
            worker.stdin.flush()

    def receive():
        reply = worker.stdout.readline()
        if not reply:
            raise RuntimeError(f"torch worker exited with code {worker.wait()}")
        return json.loads(reply)

    def ask(message):
        send(message)
        return receive()

    def close():
        with contextlib.suppress(BrokenPipeError):  # flushing to a worker that died
            worker.stdin.close()  # the worker exits at the end of its input
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        worker.stdout.close()

    send(request)

    def make(name):
        try:
            reply = receive()
            if "skip" in reply:
                raise Skip(reply["skip"])
        except BaseException:
            close()
            raise
        info = {k: v for k, v in reply.items() if k != "memory"}
        return Bench(name, lambda: ask("step"), reply["memory"], close=close, info=info)

    make.close = close
    return make


def torch_worker(make_step: Callable[[dict], tuple[Callable[[], None], int]] | None = None):
    """Worker side of ``start_torch_worker``: build the step from the first line's request,
    then run and time one step per line. ``make_step(request) -> (step, memory_bytes)`` or
    ``(step, memory_bytes, info)`` (a JSON-able dict for ``Bench.info``), raising ``Skip``;
    default: ``make_torch``'s PyTorch classifier step."""
    make_step = make_step or _torch_classifier_step
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints (Python or C) go to stderr, not into the replies

    def send(reply):
        replies.write(json.dumps(reply) + "\n")
        replies.flush()

    spec = json.loads(sys.stdin.readline())
    try:
        step, memory, *info = make_step(spec)
    except Skip as e:
        send({"skip": str(e)})
        return
    send({"memory": memory, **(info[0] if info else {})})
    for _ in sys.stdin:
        start = time.perf_counter()
        step()
        send(time.perf_counter() - start)


def _torch_classifier_step(spec: dict) -> tuple[Callable[[], None], int]:
    cfg = tuple(spec["cfg"])
    return _torch_step(spec["cell"], cfg, spec["mode"], *make_inputs(cfg))


def import_torch():
    """``torch`` set up as every PyTorch bench here runs it (in a worker process): ``THREADS``
    threads, denormals flushed; ``Skip`` where it is not installed."""
    try:
        import torch
    except ImportError as e:
        raise Skip(f"torch not importable: {e}") from e
    torch.set_num_threads(THREADS)
    # XLA flushes denormals; without this PyTorch crawls once gradients vanish (T=512: 5x).
    torch.set_flush_denormal(True)
    return torch


def _torch_step(cell, cfg, mode, x, y) -> tuple[Callable[[], None], int]:
    """The PyTorch step function and its activation memory (call in the worker process)."""
    torch = import_torch()
    _, _, input_size, hidden_size = cfg
    torch.manual_seed(0)
    proj = projection_size(cell, hidden_size)
    kind = {"simple": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU,
            "lstm_proj": torch.nn.LSTM}[cell]  # fmt: skip
    options = {} if proj is None else {"proj_size": proj}
    rnn = kind(input_size, hidden_size, batch_first=True, **options)
    readout = torch.nn.Linear(output_width(cell, hidden_size), NUM_CLASSES)
    model_params = list(rnn.parameters()) + list(readout.parameters())
    # optax.rmsprop defaults: decay 0.9, eps 1e-8 (torch's alpha, eps).
    optimizer = torch.optim.RMSprop(model_params, lr=LEARNING_RATE, alpha=0.9, eps=1e-8)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    loss_fn = torch.nn.CrossEntropyLoss()

    def logits():
        _, h_n = rnn(xt)
        h_n = h_n[0] if kind is torch.nn.LSTM else h_n
        return readout(h_n[-1])

    def train():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(logits(), yt)
        loss.backward()
        optimizer.step()

    def infer():
        with torch.no_grad():
            logits()

    if mode == "train":
        return train, torch_saved_bytes(lambda: loss_fn(logits(), yt))
    return infer, 0


def torch_saved_bytes(forward) -> int:
    """Bytes of distinct tensors autograd saves during ``forward`` (its activation memory)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    del loss
    return sum(seen.values())


MAKERS = {
    "rnn_jax": make_rnn_jax,
    "rnn_jax-manual": lambda *a: make_rnn_jax(*a, gradient="manual"),
    "rnn_jax-bf16": make_rnn_jax_bf16,
    "rnn_jax-remat": make_rnn_jax_remat,
    "rnn_jax-manual-remat": lambda *a: make_rnn_jax_remat(*a, gradient="manual"),
    "rnn_jax-fused_cpu": lambda *a: make_rnn_jax_backend("fused_cpu", *a),
    "rnn_jax-fused_cpu-1thread": make_rnn_jax_fused_1thread,
    "flax": make_flax,
    "equinox": make_equinox,
    "torch": make_torch,
    "keras": make_keras,
}


# ----------------------------------------------------------------------------- timing


def useful_flops(cell: str, cfg, mode: str) -> float:
    """Matrix-product FLOPs of one step: forward ``2BT(I+H)GH``; train 3x (two backward GEMMs)."""
    batch, steps, input_size, hidden_size = cfg
    user = USER_CELLS.get(cell)
    user = getattr(user, "cell", user)  # a module such as rnn_jax.lstm holds its Cell
    if user is None and cell in common.CELL_PATHS:
        user = common.library_cell(cell)
    form = getattr(user, "fused", None)  # a fused-gate cell says how many gates it has
    gates = NUM_GATES.get(cell) or getattr(form, "num_gates", None)
    if gates is None:  # a user's cell that does not say
        return None
    proj = projection_size(cell, hidden_size)
    recurrent = hidden_size if proj is None else proj  # the recurrent product reads h (B, P)
    forward = 2.0 * batch * steps * (input_size + recurrent) * gates * hidden_size
    if proj is not None:
        forward += 2.0 * batch * steps * hidden_size * proj  # h' = m @ w_hr
    return forward * (3 if mode == "train" else 1)


def make_inputs(cfg) -> tuple[np.ndarray, np.ndarray]:
    """The fixed batch ``x (B, T, I)``, labels ``y (B,)`` every implementation trains on."""
    batch, steps, input_size, _ = cfg
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, steps, input_size)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
    return x, y


def build(impls, cell, cfg, mode, warmup, log, cleanup: contextlib.ExitStack) -> list[Bench]:
    """Make, compile and warm up every implementation; skipped ones are logged.

    Each bench's ``close`` is pushed on ``cleanup``, so it runs even if a later one fails.
    """
    x, y = make_inputs(cfg)
    benches = []
    for name in impls:
        try:
            if cell in USER_CELLS and not name.startswith("rnn_jax"):
                raise Skip(f"no {name} counterpart of the user's cell {cell}")
            bench = MAKERS[name](cell, cfg, mode, x, y)(name)
        except Skip as e:
            log(f"  skip {name}: {e}")
            continue
        if bench.close is not None:
            cleanup.callback(bench.close)
        for _ in range(warmup):
            bench.run()
        benches.append(bench)
    return benches


def time_round_robin(benches: list[Bench], steps: int) -> None:
    """One step of each implementation in turn, ``steps`` times (noise hits all alike)."""
    for _ in range(steps):
        for bench in benches:
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            measured = bench.run()
            elapsed = time.perf_counter() - start
            bench.times.append(elapsed if measured is None else measured)


def summarise(benches, cell, cfg, mode, *, baseline=BASELINE, count_flops=True) -> list[dict]:
    """One row per bench: median, quartiles, IQR (ms), the ratio of its median to the
    ``baseline`` bench's (None without one) and ``useful_flops``' GFLOP/s (``count_flops=False``
    or a cell it cannot count: None)."""
    flops = useful_flops(cell, cfg, mode) if count_flops else None
    medians = {b.name: float(np.median(b.times)) for b in benches}
    base = medians.get(baseline)
    rows = []
    for b in benches:
        q25, q50, q75 = np.percentile(b.times, [25, 50, 75])
        rows.append(
            {
                "impl": b.name,
                "cell": cell,
                "mode": mode,
                "config": dict(zip("BTIH", cfg, strict=True)),
                "steps": len(b.times),
                "median_ms": 1e3 * q50,
                "q25_ms": 1e3 * q25,
                "q75_ms": 1e3 * q75,
                "iqr_ms": 1e3 * (q75 - q25),
                "ratio_to_rnn_jax": None if base is None else medians[b.name] / base,
                "gflops": None if flops is None else flops / q50 / 1e9,
                "peak_memory_bytes": b.memory_bytes,
            }
        )
    return rows


def process_scaling(steps: int, cell="lstm", hidden_size=128, batch=128) -> list[dict]:
    """Row-MNIST train steps of ``experiments/mnist_rows.py`` as one process using every
    core vs one process per core (``python -m rnn_jax.launch``, gloo all-reduce between
    them), same global batch: ms per step (the compiling first step excluded) and examples/s.
    """
    script = str(Path(__file__).resolve().parent / "mnist_rows.py")
    flags = ["--cell", cell, "--hidden-size", str(hidden_size), "--batch-size", str(batch)]
    flags += ["--steps", str(steps), "--eval-every", "0", "--checkpoint-every", "0"]
    cores = os.cpu_count() or 1
    launch = [sys.executable, "-m", "rnn_jax.launch", "--num-processes", str(cores)]
    setups = {
        f"1 process x {cores} threads": [sys.executable, script],
        f"{cores} processes x 1 thread": [*launch, "--cpus-per-process", "1", "--", script],
    }
    rows = []
    for setup, command in setups.items():
        with tempfile.TemporaryDirectory() as tmp:
            argv = [*command, *flags, "--no-progress", "--out", f"{tmp}/run"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        if done.returncode:
            raise RuntimeError(f"{setup} failed ({done.returncode}): {done.stderr[-2000:]}")
        ms = json.loads(done.stdout.strip().splitlines()[-1])["ms_per_step"]
        row = {"setup": setup, "cell": cell, "hidden_size": hidden_size, "batch": batch}
        rows.append({**row, "steps": steps, "ms_per_step": ms, "examples_per_s": 1e3 * batch / ms})
    for r in rows:
        r["ratio_to_one_process"] = r["ms_per_step"] / rows[0]["ms_per_step"]
    return rows


def remat_memory(cell="lstm", batch=32, input_size=64, hidden_size=256, steps=(512, 4096)):
    """XLA temp bytes of the rnn_jax train step with and without ``remat`` (no timing)."""
    import jax

    rows = []
    for num_steps in steps:
        cfg = (batch, num_steps, input_size, hidden_size)
        x, y = make_inputs(cfg)
        for gradient in ("autodiff", "manual"):
            base = None
            for remat in (None, "sqrt", 64):
                options = {"gradient": gradient} | ({} if remat is None else {"remat": remat})
                # The factory compiles and measures without running a step.
                mem = make_rnn_jax(cell, cfg, "train", x, y, **options)("rnn_jax").memory_bytes
                base = base or mem
                rows.append(
                    {
                        "cell": cell,
                        "config": dict(zip("BTIH", cfg, strict=True)),
                        "gradient": gradient,
                        "remat": remat,
                        "temp_bytes": mem,
                        "fraction_of_no_remat": mem / base,
                    }
                )
        jax.clear_caches()
    return rows


# The linear recurrences against the sequential cells (issue "parallel-in-time"): train steps
# at B=16, I=128, H=256 for each sequence length, every row in one round robin per length.
LINEAR_LENGTHS = (784, 4096, 16384)
LINEAR_SHAPE = (16, 128, 256)  # B, I, H
LINEAR_BASELINE = "lstm manual"
LINEAR_ROWS = {  # row -> (cell, rj.unroll options)
    "mingru parallel": ("mingru", {"unroll_mode": "parallel"}),
    "mingru fused_cpu": ("mingru", {"backend": "fused_cpu"}),  # the linear kernel, gates fused
    "mingru sequential": ("mingru", {"unroll_mode": "sequential", "gradient": "manual"}),
    "minlstm parallel": ("minlstm", {"unroll_mode": "parallel"}),
    "minlstm fused_cpu": ("minlstm", {"backend": "fused_cpu"}),  # the linear kernel on a, b
    "minlstm sequential": ("minlstm", {"unroll_mode": "sequential", "gradient": "manual"}),
    "lru parallel": ("lru", {"unroll_mode": "parallel"}),
    "lru fused_cpu": ("lru", {"backend": "fused_cpu"}),  # the linear kernel, complex a, b
    "lru sequential": ("lru", {"unroll_mode": "sequential", "gradient": "manual"}),
    LINEAR_BASELINE: ("lstm", {"gradient": "manual"}),
    "gru manual": ("gru", {"gradient": "manual"}),
}


def linear_recurrences(steps: int, warmup: int, log, lengths=LINEAR_LENGTHS) -> list[dict]:
    """Train-step ms and XLA temp memory of ``LINEAR_ROWS`` and PyTorch's LSTM, per length;
    ``speedup`` = the LSTM's (manual gradient) median / the row's."""
    import jax

    rows = []
    for num_steps in lengths:
        batch, input_size, hidden_size = LINEAR_SHAPE
        cfg = (batch, num_steps, input_size, hidden_size)
        x, y = make_inputs(cfg)
        log(f"linear recurrences {cfg}")
        with contextlib.ExitStack() as cleanup:
            benches = [make_rnn_jax(cell, cfg, "train", x, y, **options)(row)
                       for row, (cell, options) in LINEAR_ROWS.items()]  # fmt: skip
            try:
                benches.append(make_torch("lstm", cfg, "train", x, y)("torch lstm"))
                cleanup.callback(benches[-1].close)
            except Skip as e:
                log(f"  skip torch lstm: {e}")
            for bench in benches:
                for _ in range(warmup):
                    bench.run()
            time_round_robin(benches, steps)
        medians = {b.name: float(np.median(b.times)) for b in benches}
        for b in benches:
            speedup = medians[LINEAR_BASELINE] / medians[b.name]
            iqr = float(np.subtract(*np.percentile(b.times, [75, 25])))
            rows.append({"impl": b.name, "config": dict(zip("BTIH", cfg, strict=True)),
                         "steps": len(b.times), "median_ms": 1e3 * medians[b.name],
                         "iqr_ms": 1e3 * iqr, "speedup_vs_lstm": speedup,
                         "peak_memory_bytes": b.memory_bytes})  # fmt: skip
            log(f"  {b.name:20s} {1e3 * medians[b.name]:10.1f} ms  {speedup:5.2f}x the LSTM")
        jax.clear_caches()
    return rows


def linear_markdown(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "Linear recurrences (parallel = one projection for all steps, then the scan; sequential",
        "= the cell's step in lax.scan with the hand-written BPTT) against the LSTM and GRU",
        "(manual gradient) and PyTorch's LSTM: train step, one round robin per length.",
        "",
        "| B,T,I,H | impl | median ms (IQR) | speedup vs rj.lstm manual | peak MiB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        c, mem = r["config"], r["peak_memory_bytes"]
        mem = "–" if mem is None else f"{mem / 2**20:.0f}"
        lines.append(f"| {c['B']},{c['T']},{c['I']},{c['H']} | {r['impl']} | "
                     f"{r['median_ms']:.1f} ({r['iqr_ms']:.1f}) | {r['speedup_vs_lstm']:.2f} | "
                     f"{mem} |")  # fmt: skip
    return lines


CONV_SHAPE = (8, 10, 16, 16, 4, 16, (3, 3))  # B, T, height, width, C, F, kernel


def conv_lstm_benches(shape) -> list[Callable[[str], Bench]]:
    """Makers of the ConvLSTM train steps: rj.conv_lstm (both gradients), Flax's
    ``ConvLSTMCell`` in ``nn.RNN`` and Keras' ``ConvLSTM2D`` (JAX backend), each reading the
    last ``h (B, H, W, F)``, flattened, into the same readout."""
    import jax

    import rnn_jax as rj

    batch, steps, height, width, channels, features, kernel = shape
    x = np.random.default_rng(0).normal(size=(batch, steps, height, width, channels))
    x = x.astype(np.float32)
    y = np.random.default_rng(1).integers(0, NUM_CLASSES, size=(batch,)).astype(np.int32)
    flat = height * width * features
    cell = rj.conv_lstm(kernel)
    ours = cell.init(jax.random.key(0), channels, features)
    makers = []
    for gradient in ("autodiff", "manual"):

        def forward(p, xs, gradient=gradient):
            carry, _ = rj.unroll(cell, p, xs, gradient=gradient)
            return carry.h.reshape(xs.shape[0], -1)

        makers.append(lambda name, f=forward: _jax_bench(name, f, ours, flat, "train", x, y))
    import flax.linen as nn

    layer = nn.RNN(nn.ConvLSTMCell(features, kernel), return_carry=True)
    flax_params = layer.init(jax.random.key(0), x)["params"]

    def flax_forward(p, xs):
        (_, h), _ = layer.apply({"params": p}, xs)  # Flax's carry is (c, h)
        return h.reshape(xs.shape[0], -1)

    makers.append(lambda name: _jax_bench(name, flax_forward, flax_params, flat, "train", x, y))
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() == "jax":
        conv = keras.layers.ConvLSTM2D(features, kernel, padding="same")
        conv.build((None, steps, height, width, channels))
        keras_params = [v.value for v in conv.trainable_variables]
        seed_state = [v.value for v in conv.non_trainable_variables]

        def keras_forward(p, xs):
            h, _ = conv.stateless_call(p, seed_state, xs)
            return h.reshape(xs.shape[0], -1)

        makers.append(lambda name: _jax_bench(name, keras_forward, keras_params, flat, "train",
                                              x, y))  # fmt: skip
    return makers


CONV_NAMES = ("rj.conv_lstm", "rj.conv_lstm manual", "flax ConvLSTMCell", "keras ConvLSTM2D")


def conv_lstm_rows(steps: int, warmup: int, log, shape=None) -> list[dict]:
    """Train-step median ms of each ``conv_lstm_benches`` row, one round robin."""
    shape = shape or CONV_SHAPE
    log(f"conv_lstm B,T,H,W,C,F,kernel = {shape}")
    makers = conv_lstm_benches(shape)  # no Keras row where keras runs on another backend
    benches = [make(name) for make, name in zip(makers, CONV_NAMES[: len(makers)], strict=True)]
    for bench in benches:
        for _ in range(warmup):
            bench.run()
    time_round_robin(benches, steps)
    first = float(np.median(benches[0].times))
    rows = []
    for b in benches:
        median = float(np.median(b.times))
        rows.append({"impl": b.name, "shape": list(shape[:6]), "kernel": list(shape[6]),
                     "steps": len(b.times), "median_ms": 1e3 * median,
                     "ratio_to_rnn_jax": median / first,
                     "peak_memory_bytes": b.memory_bytes})  # fmt: skip
        log(f"  {b.name:20s} {1e3 * median:10.1f} ms  x{median / first:.2f}")
    return rows


def conv_markdown(rows: list[dict]) -> list[str]:
    lines = ["", 'ConvLSTM (2-D, "same" padding) train step, one round robin:', ""]
    lines += ["| B,T,H,W,C,F | kernel | impl | median ms | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        shape, kernel = ",".join(map(str, r["shape"])), "x".join(map(str, r["kernel"]))
        lines.append(f"| {shape} | {kernel} | {r['impl']} | {r['median_ms']:.1f} | "
                     f"{r['ratio_to_rnn_jax']:.2f} |")  # fmt: skip
    return lines


# ----------------------------------------------------------------------------- reporting


def machine_info() -> dict:
    import jax

    def version(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln),
            platform.processor(),
        )
    except OSError:
        model = platform.processor()
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": model,
        "cores": os.cpu_count(),
        "threads": THREADS,
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        # Other jobs on the machine inflate absolute times; the interleaved ratios hold better.
        "load_average_1_5_15min": list(os.getloadavg()),
        "versions": {
            p: version(p) for p in ("jax", "jaxlib", "flax", "equinox", "optax", "torch", "numpy")
        },
        "memory_measure": {
            "jax": "compiled.memory_analysis().temp_size_in_bytes (XLA scratch, no args/outputs)",
            "torch": "bytes of distinct tensors saved for backward (saved_tensors_hooks)",
        },
    }


def machine_line(info: dict) -> str:
    """``machine_info()`` as the sentence under a report's title."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    return (f"{info['cpu']}, {info['cores']} cores, {info['threads']} threads, "
            f"{info['jax_backend']}; {versions}; load average at the end "
            f"{info.get('load_average_1_5_15min', ['?'])[0]:.1f}.")  # fmt: skip


def to_markdown(report: dict) -> str:
    info = report["machine"]
    lines = [
        f"# rnn_jax benchmark, {info['date']}",
        "",
        machine_line(info),
        "Train step = forward + cross-entropy on a readout of the last state + backward + "
        "RMSProp. Median of interleaved steps (IQR); ratio = median / rnn_jax's (autodiff) "
        "median, so > 1 means slower than rnn_jax. GFLOP/s counts the matrix products only. "
        "Memory: JAX = XLA temp buffers; torch = tensors saved for backward.",
    ]
    if report["results"]:  # a --linear run alone has none
        lines += [
            "",
            "| config B,T,I,H | cell | mode | impl | median ms (IQR) | ratio | GFLOP/s | "
            "peak MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for r in report["results"]:
        c = r["config"]
        ratio = "–" if r["ratio_to_rnn_jax"] is None else f"{r['ratio_to_rnn_jax']:.2f}"
        mem = r["peak_memory_bytes"]
        mem = "–" if mem is None else f"{mem / 2**20:.1f}"
        gflops = "–" if r["gflops"] is None else f"{r['gflops']:.0f}"
        lines.append(
            f"| {c['B']},{c['T']},{c['I']},{c['H']} | {r['cell']} | {r['mode']} | {r['impl']} | "
            f"{r['median_ms']:.2f} ({r['iqr_ms']:.2f}) | {ratio} | {gflops} | {mem} |"
        )
    if report.get("remat_memory"):
        lines += [
            "",
            "Memory-bounded BPTT: XLA temp bytes of the rnn_jax train step; the fraction is of",
            "the same gradient without remat.",
            "",
            "| cell | B,T,I,H | gradient | remat | temp MiB | fraction of no remat |",
            "|---|---|---|---|---|---|",
        ]
        for r in report["remat_memory"]:
            c = r["config"]
            lines.append(
                f"| {r['cell']} | {c['B']},{c['T']},{c['I']},{c['H']} | {r['gradient']} | "
                f"{r['remat']} | {r['temp_bytes'] / 2**20:.1f} | {r['fraction_of_no_remat']:.3f} |"
            )
    if report.get("process_scaling"):
        lines += [
            "",
            "Data parallel over processes (experiments/mnist_rows.py, same global batch; the",
            "processes all-reduce the gradients through gloo): ms per train step.",
            "",
            "| setup | cell, H, batch | ms/step | examples/s | ratio |",
            "|---|---|---|---|---|",
        ]
        for r in report["process_scaling"]:
            lines.append(
                f"| {r['setup']} | {r['cell']}, {r['hidden_size']}, {r['batch']} | "
                f"{r['ms_per_step']:.1f} | {r['examples_per_s']:.0f} | "
                f"{r['ratio_to_one_process']:.2f} |"
            )
    if report.get("linear_recurrences"):
        lines += linear_markdown(report["linear_recurrences"])
    if report.get("conv_lstm"):
        lines += conv_markdown(report["conv_lstm"])
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(report["skipped"])]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    """The flags, each checked here (a bad value exits with code 2 before anything runs)."""
    pos_int = common.int_at_least(1)
    p = common.ArgumentParser(description=__doc__)
    # fmt: off
    p.add_argument("--configs", default=None,
                   help=f"comma list of {sorted(CONFIGS)} (default: mnist)")
    p.add_argument("--config", action="append", default=[], help="custom B,T,I,H (repeatable)")
    p.add_argument("--cells", default=None,
                   help=f"comma list of built-in cells, of {', '.join(CELLS)} (default: "
                   "simple,lstm,gru, unless --cell is given)")
    p.add_argument("--cell", action="append", default=[], metavar="CELL",
                   help=f"a cell to time (repeatable; your own: rnn_jax impls only): "
                   f"{common.CELL_HELP}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {MODES}")
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help=f"comma list of {IMPLS}")
    p.add_argument("--backend", action="append", default=[], choices=("fused_cpu",),
                   help="also time rj.unroll(backend=...) as rnn_jax-<backend> (repeatable)")
    p.add_argument("--steps", type=pos_int, default=30, help="timed steps per implementation")
    p.add_argument("--warmup", type=common.int_at_least(0), default=3, help="untimed steps")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder")
    p.add_argument("--name", default=None, help="file stem (default: bench-<date>)")
    p.add_argument("--remat-memory", action="store_true",
                   help="also report remat memory (LSTM B=32 I=64 H=256, T=512 and 4096)")
    p.add_argument("--conv-lstm", action="store_true",
                   help=f"also time rj.conv_lstm against Flax's ConvLSTMCell and Keras' "
                   f"ConvLSTM2D (B,T,H,W,C,F,kernel = {CONV_SHAPE})")  # fmt: skip
    p.add_argument("--linear", default=None, metavar="T1,T2,...",
                   help="also time minGRU/minLSTM/LRU (parallel, fused_cpu, sequential) against "
                   f"LSTM, GRU and PyTorch at B,I,H={LINEAR_SHAPE} for these sequence lengths "
                   f"(the issue's: {','.join(map(str, LINEAR_LENGTHS))})")
    p.add_argument("--quick", action="store_true", help="tiny config, 3 steps: a smoke run")
    p.add_argument("--processes", type=common.int_at_least(0), default=0, metavar="STEPS",
                   help="also time STEPS row-MNIST LSTM train steps: 1 process on every core vs "
                   "1 process per core (0: skip)")
    # fmt: on
    args = p.parse_args(argv)
    if args.cells is None:
        args.cells = "" if args.cell else "simple,lstm,gru"
    for flag, given, allowed in (("--cells", args.cells, CELLS), ("--modes", args.modes, MODES),
                                 ("--impls", args.impls, IMPLS)):  # fmt: skip
        unknown = sorted(set(filter(None, given.split(","))) - set(allowed))
        if unknown:
            p.error(f"argument {flag}: unknown {unknown}; choose from {list(allowed)}")
    for spec in args.cell:
        if spec in CELLS:  # a built-in name: as if in --cells
            continue
        try:
            USER_CELLS[spec] = common.resolve_cell(spec)
        except argparse.ArgumentTypeError as e:
            p.error(f"argument --cell: {e}")
    args.cells = ",".join(filter(None, [args.cells, *args.cell]))
    if args.configs is None:  # a custom --config alone replaces the default
        args.configs = "" if args.config else "mnist"
    if args.quick:
        args.configs, args.config = "", [",".join(map(str, QUICK_CONFIG))]
        args.steps, args.warmup = 3, 1
    if args.linear is not None:
        try:
            args.linear = tuple(int(v) for v in args.linear.split(","))
        except ValueError:
            args.linear = ()
        if not args.linear or min(args.linear) < 1:
            p.error("argument --linear: expected sequence lengths T1,T2,... (positive ints)")
    try:
        args.selected = selected_configs(args)
    except ValueError as e:
        p.error(str(e))
    return args


def selected_configs(args) -> list[tuple[str, tuple[int, int, int, int]]]:
    configs = [(n, CONFIGS[n]) for n in args.configs.split(",") if n in CONFIGS]
    unknown = [n for n in args.configs.split(",") if n and n not in CONFIGS]
    if unknown:
        raise ValueError(f"argument --configs: unknown {unknown}; choose from {sorted(CONFIGS)}")
    for text in args.config:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 4 or min(values) < 1:
            raise ValueError(f"argument --config: expected B,T,I,H (4 positive ints), got {text!r}")
        configs.append((text, values))
    return configs


def main(argv=None) -> dict:
    args = parse_args(argv)
    impls = [i for i in args.impls.split(",") if i]
    impls += [f"rnn_jax-{b}" for b in args.backend if f"rnn_jax-{b}" not in impls]
    results, skipped = [], []

    def log(msg):
        print(msg, flush=True)
        if msg.strip().startswith("skip"):
            skipped.append(msg.strip()[5:])

    for config_name, cfg in args.selected:
        for cell in args.cells.split(","):
            for mode in args.modes.split(","):
                log(f"{config_name} {cfg} {cell} {mode}")
                with contextlib.ExitStack() as cleanup:
                    benches = build(impls, cell, cfg, mode, args.warmup, log, cleanup)
                    time_round_robin(benches, args.steps)
                rows = summarise(benches, cell, cfg, mode)
                for r in rows:
                    ratio = r["ratio_to_rnn_jax"]
                    log(
                        f"  {r['impl']:20s} {r['median_ms']:9.2f} ms (IQR {r['iqr_ms']:.2f})"
                        f"  x{ratio if ratio is None else round(ratio, 2)}"
                    )
                results += rows
    report = {"machine": machine_info(), "args": vars(args), "results": results}
    report["skipped"] = sorted(set(skipped))
    if args.processes:
        report["process_scaling"] = process_scaling(args.processes)
        for r in report["process_scaling"]:
            ratio = r["ratio_to_one_process"]
            log(f"  {r['setup']:24s} {r['ms_per_step']:8.1f} ms/step  x{ratio:.2f}")
    if args.linear:
        report["linear_recurrences"] = linear_recurrences(args.steps, args.warmup, log,
                                                          args.linear)  # fmt: skip
    if args.conv_lstm:
        report["conv_lstm"] = conv_lstm_rows(args.steps, args.warmup, log)
    if args.remat_memory:
        report["remat_memory"] = remat_memory()
        for r in report["remat_memory"]:
            mib = r["temp_bytes"] / 2**20
            log(f"  {r['gradient']:8s} remat {r['remat']!s:5s} T={r['config']['T']}: {mib:.1f} MiB")
    return write_report(report, args.out, args.name or f"bench-{dt.date.today().isoformat()}",
                        to_markdown(report))  # fmt: skip


def write_report(report: dict, out: str, stem: str, markdown: str) -> dict:
    """``<out>/<stem>.json`` and ``.md``, each written atomically; returns ``report``."""
    from rnn_jax.atomic import write_atomic

    write_atomic(Path(out) / f"{stem}.json", json.dumps(report, indent=1))
    write_atomic(Path(out) / f"{stem}.md", markdown)
    print(f"wrote {Path(out) / stem}.json and .md")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if sys.argv[1:] == [TORCH_WORKER_FLAG]:
        torch_worker()
    else:
        main()
