"""Helpers shared by the experiment scripts (mnist_rows.py, char_lm.py, ...).

Nothing here knows about a model or a dataset: run directories, atomic JSON writes, a
metrics JSONL log that survives resuming, loss/accuracy curve plots (matplotlib, Agg
backend, so no display is needed) and a tqdm progress bar.

The scripts are run as files (``python experiments/mnist_rows.py``), so ``experiments/``
is not a package; a script imports this module as a sibling::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common  # noqa: E402
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ArgumentParser",
    "ConfigMismatch",
    "HEADED_CELLS",
    "HelpFormatter",
    "Interrupted",
    "EXIT_INTERRUPTED",
    "add_process_args",
    "add_run_args",
    "check_process_args",
    "check_run_dir",
    "cell_label",
    "cell_spec",
    "existing_dir",
    "float_range",
    "int_at_least",
    "load_object",
    "MetricsLog",
    "PROCESS_ARGS",
    "Timer",
    "environment",
    "join_processes",
    "jsonable",
    "make_optimizer",
    "plot_curves",
    "plot_lines",
    "print_summary",
    "process_mesh",
    "progress",
    "resolve_cell",
    "with_heads",
    "read_jsonl",
    "save_figure",
    "setup_run_dir",
    "guard_run_dir",
    "stop_on_interrupt",
    "tail_mean",
    "usage_error",
    "write_bytes_atomic",
    "write_json_atomic",
]


# ------------------------------------------------------------------------------- CLI


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each default once: appended as ``(default: X)`` unless the help text already
    says it, the default is None, or the flag is a switch (store_true/store_false)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        switch = action.nargs == 0
        if switch or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)".lstrip()


class ArgumentParser(argparse.ArgumentParser):
    """The experiment scripts' parser: :class:`HelpFormatter`, and errors as one line
    (``prog: error: what``) with exit code 2, before anything is loaded or written."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str):  # argparse's own prints the whole usage first
        usage_error(message, self.prog)


def int_at_least(low: int):
    """An argparse ``type``: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


def float_range(low: float, high: float = math.inf, *, low_open=False, high_open=False):
    """An argparse ``type``: a finite float in ``[low, high]``; ``low_open``/``high_open``
    exclude the bound (a learning rate must be > 0, a dropout rate < 1)."""
    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected a number in {bounds}, got {text!r}")
        return value

    parse.__name__ = f"float in {bounds}"
    return parse


def existing_dir(text: str) -> str:
    """An argparse ``type``: the path of a folder that exists."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"expected an existing folder, got {text!r}")
    return text


# THE registry of built-in cells: every script's --cell/--cells offers these names, each the
# rnn_jax cell at that path under ``rnn_jax``. A script may add its own variants after them.
CELL_PATHS = {
    "simple": "simple",
    "relu": "simple.relu",
    "lstm": "lstm",
    "gru": "gru",
    "gru_reset_before": "gru.reset_before",
    "mgu": "mgu",
    "mgu_without_reset": "mgu.without_reset",
    "lstm_peephole": "lstm.peephole",
    "layernorm_lstm": "layernorm_lstm",
    "mingru": "mingru",
    "minlstm": "minlstm",
    "lru": "lru",
    "slstm": "slstm",
    "mlstm": "mlstm",
    "rglru": "rglru",
}
CELL_HELP = (f"a built-in cell ({', '.join(CELL_PATHS)}), or your own as MODULE:ATTR (a module "
             "importable from the current folder) or path/to/file.py:ATTR")  # fmt: skip


# The built-in cells with heads, and how to make one with ``num_heads`` of them.
HEADED_CELLS = {
    "slstm": lambda rj, num_heads: rj.slstm.configured(num_heads=num_heads),
    "mlstm": lambda rj, num_heads: rj.mlstm.variant(num_heads=num_heads),
    "rglru": lambda rj, num_heads: rj.rglru.with_heads(num_heads),
}


def with_heads(spec: str, num_heads: int | None):
    """The cell ``spec`` names (see :func:`resolve_cell`), with ``num_heads`` heads when given:
    for a cell of ``HEADED_CELLS``; any other cell with ``num_heads`` is a ValueError."""
    if num_heads is None:
        return resolve_cell(spec)
    if spec not in HEADED_CELLS:
        raise ValueError(f"--heads applies to {', '.join(HEADED_CELLS)}, not to {spec!r}")
    import rnn_jax as rj

    return HEADED_CELLS[spec](rj, num_heads)


def library_cell(name: str):
    """The rnn_jax cell a script's ``--cell`` names (a key of ``CELL_PATHS``)."""
    import rnn_jax as rj
    from rnn_jax.checks import as_cell

    found = rj
    for part in CELL_PATHS[name].split("."):
        found = getattr(found, part)
    return as_cell(found)


def resolve_cell(spec: str):
    """The cell a ``--cell`` value names: a built-in name (``CELL_PATHS``), ``MODULE:ATTR`` or
    ``path/to/file.py:ATTR`` (see :func:`load_object`). Errors are ArgumentTypeErrors."""
    if spec in CELL_PATHS:
        return library_cell(spec)
    if ":" not in spec:
        raise argparse.ArgumentTypeError(f"expected {CELL_HELP}, got {spec!r}")
    from rnn_jax.checks import as_cell

    try:
        return as_cell(load_object(spec))
    except TypeError as e:
        raise argparse.ArgumentTypeError(f"{spec!r} is not a cell: {e}") from None


def cell_spec(text: str) -> str:
    """An argparse ``type`` for ``--cell``: ``text`` itself (so it can be saved in a run's
    config and resolved again on resume), once :func:`resolve_cell` has found a cell there
    (a built-in name needs no look: nothing is imported to parse the flags)."""
    if text not in CELL_PATHS:
        resolve_cell(text)
    return text


def cell_label(spec: str) -> str:
    """A file-name-safe short name of a ``--cell`` value (``lstm``, ``my_cell-peephole``)."""
    if spec in CELL_PATHS:
        return spec
    module, _, attr = spec.rpartition(":")
    stem = Path(module).stem if module.endswith(".py") else module.rpartition(".")[2]
    return "-".join(filter(None, [stem, attr.replace(".", "_")]))


def load_object(spec: str) -> Any:
    """``"package.module:attr"`` -> that attribute (``"rnn_jax:lstm"``, ``"my_cells:cell"``);
    ``"package.module"`` alone -> the module; ``"path/to/file.py:attr"`` -> that attribute of
    the file. Modules are imported from the current folder too (as ``python -m`` would), not
    only from the script's. Errors are ArgumentTypeErrors naming the spec, so it serves as
    an argparse ``type`` (``--cell module:attr``)."""
    module_name, _, attr = spec.rpartition(":") if ":" in spec else (spec, "", "")
    try:
        if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
            obj = _module_from_file(Path(module_name), spec)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # the user's folder, as `python -m` has it
            obj = importlib.import_module(module_name)
    except ImportError as e:
        raise argparse.ArgumentTypeError(
            f"cannot import {module_name!r} (from {spec!r}, expected module:attr or "
            f"path/to/file.py:attr): {e}"
        ) from None
    except Exception as e:  # the user's module itself failed: say where, in one line
        raise argparse.ArgumentTypeError(
            f"importing {module_name!r} (from {spec!r}) raised {type(e).__name__}: {e}"
        ) from None
    for part in filter(None, attr.split(".")):
        if not hasattr(obj, part):
            raise argparse.ArgumentTypeError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _module_from_file(path: Path, spec: str):
    """The module of a ``.py`` file, run once per process (a second ``--cell`` naming the
    same file gets the same module, so its cell objects are equal and jit reuses its cache)."""
    import importlib.util

    path = path.expanduser().resolve()
    if not path.is_file():
        raise ImportError(f"no such file {str(path)!r}")
    name = f"_cell_file_{path.stem}_{abs(hash(str(path))):x}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before running it, as import does (dataclasses need it)
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # the file's own sibling imports
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def add_run_args(
    parser: argparse.ArgumentParser, *, checkpoint_every: int, out: str | None = None
) -> None:
    """The flags every training script shares, with the same names and meanings:
    ``--out``, ``--resume``, ``--checkpoint-every``, ``--no-progress``."""
    parser.add_argument("--out", default=out, help="run folder" + ("" if out else
                        " (default: runs/<script>-<cell>)"))  # fmt: skip
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its latest checkpoint")  # fmt: skip
    parser.add_argument("--checkpoint-every", type=int_at_least(0), default=checkpoint_every,
                        help="steps between checkpoints (0: only at the end)")  # fmt: skip
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")  # fmt: skip


# The flags that say where a run runs (how many processes), not what it computes.
PROCESS_ARGS = ("coordinator", "num_processes", "process_id", "distributed")


def add_process_args(parser: argparse.ArgumentParser) -> None:
    """``--coordinator HOST:PORT --num-processes N --process-id I`` (as ``python -m
    rnn_jax.launch`` passes them) or ``--distributed`` (JAX detects the cluster: SLURM,
    Open MPI, Kubernetes, Cloud TPU): data-parallel training over several processes."""
    group = parser.add_argument_group("several processes (see rnn_jax.distributed)")
    add = group.add_argument
    add("--coordinator", metavar="HOST:PORT", help="process 0's address, for a fixed group")
    add("--num-processes", type=int_at_least(1), help="processes taking part")
    add("--process-id", type=int_at_least(0), help="this process's index (0 writes the files)")
    add("--distributed", action="store_true", help="join a detected cluster (srun, TPU pod)")


def check_process_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The :func:`add_process_args` flags make sense together (else a usage error)."""
    explicit = [args.coordinator, args.num_processes, args.process_id]
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
        parser.error("--coordinator, --num-processes and --process-id go together")
    if args.distributed and args.coordinator is not None:
        parser.error("--distributed detects the cluster; do not also pass --coordinator")
    if args.coordinator is not None:
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"argument --coordinator: expected HOST:PORT, got {args.coordinator!r}")
        if args.process_id >= args.num_processes:
            parser.error(f"argument --process-id: expected an integer < --num-processes "
                         f"{args.num_processes}, got {args.process_id}")  # fmt: skip
    several = (args.num_processes or 1) > 1 or args.distributed
    if getattr(args, "max_minutes", 0) and several:  # each clock would stop at its own step
        parser.error("--max-minutes runs in one process only: each process's clock would end "
                     "training at a different step; give --steps instead")  # fmt: skip


def join_processes(args: argparse.Namespace) -> bool:
    """Joins the other processes if the flags ask for it (``rnn_jax.distributed.initialize``,
    before anything touches a device); checks the global batch splits over all devices.
    Returns whether this is process 0 (the one that writes files and prints)."""
    if args.coordinator is None and not args.distributed:
        return True
    from rnn_jax import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import jax

    for flag in ("batch_size", "eval_batch_size"):
        value = getattr(args, flag, None)
        if value is not None and value % jax.device_count():
            where = f"{jax.device_count()} devices of {jax.process_count()} processes"
            usage_error(f"--{flag.replace('_', '-')} {value} does not split over the {where}")
    return distributed.is_main_process()


def process_mesh():
    """The global mesh of a multi-process run (``rnn_jax.distributed.global_mesh``), or None
    in a single process (whose runs stay exactly as they were, on one device)."""
    import jax

    if jax.process_count() == 1:
        return None
    from rnn_jax.distributed import global_mesh

    return global_mesh()


def usage_error(message: str, prog: str | None = None):
    """Exits with code 2 and one line ``prog: error: message`` on stderr, as argparse does
    for a bad flag: for what can only be checked after parsing (a folder, the data)."""
    prog = prog or Path(sys.argv[0]).name
    print(f"{prog}: error: {message} (see --help)", file=sys.stderr, flush=True)
    raise SystemExit(2)


def check_run_dir(
    out: str | os.PathLike, *, resume: bool, has_checkpoint: bool, config: Mapping | None = None
) -> None:
    """Exits with a usage error (code 2, nothing written) if the run cannot start in ``out``.

    Checked before any data is loaded: a fresh run must not reuse a folder that holds a run
    (its ``config.json``), ``--resume`` needs a checkpoint, and a resumed run must keep the
    saved settings (see :func:`setup_run_dir`).
    """
    saved = Path(out) / "config.json"
    if resume and not has_checkpoint:
        usage_error(f"--resume: {out} holds no checkpoint to resume from"
                    + (f"; it holds a run that stopped before its first checkpoint: remove it "
                       f"(rm -r {out}) and start again without --resume" if saved.exists()
                       else "; start the run without --resume"))  # fmt: skip
    if saved.exists() and not resume:
        if not has_checkpoint:  # left by a run that stopped before its first checkpoint
            usage_error(f"--out {out} already holds a run, one that stopped before its first "
                        f"checkpoint, so --resume cannot continue it: remove it (rm -r {out}) "
                        "or choose another --out")  # fmt: skip
        usage_error(f"--out {out} already holds a run; pass --resume to continue it, "
                    "or choose another --out")  # fmt: skip
    if resume and saved.exists() and config is not None:
        try:
            _check_same_config(json.loads(saved.read_text()), jsonable(config), saved)
        except ConfigMismatch as e:
            usage_error(str(e))


def make_optimizer(name: str, learning_rate, *, clip_norm=None, clip_value=None):
    """``"rmsprop"`` (``rnn_jax.train.default_optimizer``) or ``"adam"``, with the same
    clipping either way: element-wise (``clip_value``) first, then the global norm."""
    import optax

    from rnn_jax.train import default_optimizer

    if name == "rmsprop":
        return default_optimizer(learning_rate, clip_norm=clip_norm, clip_value=clip_value)
    parts = [] if clip_value is None else [optax.clip(clip_value)]
    parts += [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
    return optax.chain(*parts, optax.adam(learning_rate))


class Timer:
    """Time accounting of a run over all its invocations (``prior_*``: the earlier ones',
    from the checkpoint): wall and CPU seconds, train steps (the first, which compiles,
    apart) and evaluations. ``lap()`` is the time since the previous lap."""

    def __init__(self, prior_wall_s: float = 0.0, prior_cpu_s: float = 0.0):
        self.prior_wall_s, self.prior_cpu_s = prior_wall_s, prior_cpu_s
        self.t0 = self.last = time.perf_counter()
        self.cpu0 = time.process_time()
        self.eval_s = 0.0
        self.step_s: list[float] = []

    def add_step(self, seconds: float) -> None:
        self.step_s.append(seconds)

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds

    def wall_s(self) -> float:
        return self.prior_wall_s + time.perf_counter() - self.t0

    def cpu_s(self) -> float:
        """CPU seconds of this process (all threads): on a shared machine the wall time
        overstates the cost; cpu_s / wall_s / cores is the share of the machine we got."""
        return self.prior_cpu_s + time.process_time() - self.cpu0

    @property
    def train_s(self) -> float:
        return sum(self.step_s)

    @property
    def first_step_s(self) -> float | None:
        return self.step_s[0] if self.step_s else None

    def ms_per_step(self, median: bool = False) -> float:
        """Mean (or median) train step after the first (compiling) one."""
        rest = self.step_s[1:]
        if not rest:
            return math.nan
        return 1e3 * (statistics.median(rest) if median else sum(rest) / len(rest))


# ----------------------------------------------------------------------- atomic files


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (see ``rnn_jax.atomic``)."""
    from rnn_jax.atomic import write_atomic  # lazily: importing rnn_jax imports jax

    return write_atomic(path, data)


def jsonable(value: Any) -> Any:
    """``value`` with numpy/JAX scalars and arrays turned into plain Python, recursively.

    Non-finite floats become None: strict JSON has no NaN, and a NaN in a metrics file
    should read as "missing", not break every JSON parser downstream.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / jax arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Writes ``obj`` (made :func:`jsonable`) as JSON, atomically; returns the path."""
    text = json.dumps(jsonable(obj), indent=indent, sort_keys=False, allow_nan=False)
    return write_bytes_atomic(path, (text + "\n").encode())


# ------------------------------------------------------------------------ run folders


class ConfigMismatch(ValueError):
    """``--resume`` was asked with settings other than the saved run's."""


def setup_run_dir(
    out: str | os.PathLike, *, resume: bool, config: Mapping | None = None, write: bool = True
) -> Path:
    """Creates the run folder and writes ``config.json`` into it.

    A folder that already holds a ``config.json`` belongs to an earlier run: starting a
    fresh run there would interleave two runs' metrics and checkpoints, so that is refused
    unless ``resume`` is set. On resume the saved config must match ``config`` (a resumed
    run with other hyperparameters is a different run); keys listed in
    ``config["resumable_keys"]`` (e.g. the total step count) may differ. ``write=False``
    (processes other than 0 of a multi-process run) only returns the path.
    """
    run_dir = Path(out)
    if not write:
        return run_dir
    saved_path = run_dir / "config.json"
    if saved_path.exists():
        if not resume:
            raise FileExistsError(
                f"{run_dir} already holds a run; pass --resume to continue it, "
                "or choose another --out"
            )
        if config is not None:
            _check_same_config(json.loads(saved_path.read_text()), jsonable(config), saved_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        write_json_atomic(saved_path, config)
    return run_dir


def batches_within(batch_of, start: int, t0: float, max_minutes: float, status: dict):
    """``batch_of(step)`` for the steps from ``start`` on, until ``max_minutes`` have passed
    since ``t0`` (``time.perf_counter()``; 0: no limit). At least one step runs, so every
    invocation progresses. ``status["stopped"]`` becomes ``"max_minutes"`` when the budget
    ends the run (``train_loop`` stops when its batches run out)."""
    step = start
    while True:
        if max_minutes and step > start and time.perf_counter() - t0 > 60 * max_minutes:
            status["stopped"] = "max_minutes"
            return
        yield batch_of(step)
        step += 1


EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)


class Interrupted(Exception):
    """Ctrl-C stopped a run after step ``step``, whose checkpoint is saved: ``--resume``
    continues it."""

    def __init__(self, step: int, run_dir: str | os.PathLike):
        self.step, self.run_dir = step, Path(run_dir)
        super().__init__(
            f"interrupted: stopped after step {step} and saved its checkpoint in {run_dir}; "
            "continue the run with the same command and --resume"
        )


class StopRequest:
    """Set by the first Ctrl-C inside :func:`stop_on_interrupt`; a run checks it after
    each step, saves a checkpoint and raises :class:`Interrupted`."""

    requested = False


@contextlib.contextmanager
def stop_on_interrupt(enabled: bool = True):
    """The first Ctrl-C (SIGINT) asks the run to stop after the step in flight (a train step
    donates its input state, so stopping mid-step would lose it); a second stops at once.

    Yields a :class:`StopRequest`. Off (``enabled=False``, several processes, or not the
    main thread) it is never set and Ctrl-C acts as usual.
    """
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.getsignal(signal.SIGINT)
    previous = previous if callable(previous) else signal.default_int_handler

    def handler(signum, frame):
        request.requested = True
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C stops at once
        print("\ninterrupt: saving a checkpoint after this step, then stopping (Ctrl-C again: "
              "stop now, without saving)", file=sys.stderr, flush=True)  # fmt: skip

    signal.signal(signal.SIGINT, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def guard_run_dir(
    out: str | os.PathLike,
    *,
    resume: bool,
    has_checkpoint: Callable[[], bool],
    write: bool = True,
    own_message: tuple[type[BaseException], ...] = (),
):
    """Around everything a run does from creating its folder on: if it fails or is stopped
    (an exception, Ctrl-C) before its first checkpoint, a fresh run removes what it wrote
    (the whole folder if it created it), so the same command can simply be run again; with
    a checkpoint the message says ``--resume`` continues it. :class:`Interrupted` (a
    checkpoint was just saved) passes through untouched; ``own_message`` exceptions (they
    say themselves what to do) get no ``--resume`` hint."""
    run_dir = Path(out)
    existed = run_dir.exists()
    before = {p.name for p in run_dir.iterdir()} if existed and run_dir.is_dir() else set()
    try:
        yield run_dir
    except Interrupted:
        raise
    except BaseException as e:
        if not write:  # processes other than 0 write nothing
            raise
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        prog = Path(sys.argv[0]).name
        if resume or has_checkpoint():
            if isinstance(e, own_message):
                raise
            print(f"{prog}: the run {what}; {out} holds its checkpoints: continue it with the "
                  "same command and --resume", file=sys.stderr, flush=True)  # fmt: skip
        elif run_dir.exists():
            if not existed:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:
                for path in run_dir.iterdir():
                    if path.name not in before:
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
            print(f"{prog}: the run {what} before its first checkpoint; removed what it had "
                  f"written to {out}, so the same command starts it afresh",
                  file=sys.stderr, flush=True)  # fmt: skip
        raise


def _check_same_config(saved: dict, new: dict, where: Path) -> None:
    free = set(new.get("resumable_keys", [])) | {"resumable_keys"}
    keys = (set(saved) | set(new)) - free
    diff = {k: (saved.get(k), new.get(k)) for k in sorted(keys) if saved.get(k) != new.get(k)}
    if diff:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ConfigMismatch(f"--resume with settings that differ from {where}: {shown}")


def environment() -> dict[str, Any]:
    """Where a run ran: versions, devices, CPU count and git commit (for the summary)."""
    import jax

    info = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    if hasattr(os, "getloadavg"):
        # Timings on a shared machine mean little without knowing how busy it was.
        info["load_avg_1_5_15min"] = [round(x, 2) for x in os.getloadavg()]
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
    except OSError:
        pass
    return info


# ------------------------------------------------------------------------- metrics log


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSONL file; a torn last line (a crash mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def tail_mean(records: Iterable[Mapping], key: str, n: int) -> float | None:
    """Mean of the last ``n`` numeric values of ``key`` in ``records`` (None if there are none)."""
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))][-n:]
    return sum(values) / len(values) if values else None


class MetricsLog:
    """Append-only JSONL metrics, one record per line, flushed as written.

    ``MetricsLog(path, resume_step=s)`` keeps only the records with ``step <= s``: the
    steps after the checkpoint a run resumes from will be run (and logged) again, and
    without this the file would hold them twice.
    """

    def __init__(
        self, path: str | os.PathLike, *, resume_step: int | None = None, write: bool = True
    ):
        self.path, self.writes = Path(path), write
        if not write:  # a stand-in that writes and holds nothing (processes other than 0)
            self._file = open(os.devnull, "w", encoding="utf-8")  # closed in close()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = read_jsonl(self.path) if resume_step is not None else []
        kept = [r for r in kept if r.get("step", 0) <= (resume_step or 0)]
        body = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
        write_bytes_atomic(self.path, body.encode())
        self._file = open(self.path, "a", encoding="utf-8")  # closed in close()

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(jsonable(record), allow_nan=False) + "\n")
        self._file.flush()

    def records(self) -> list[dict]:
        """Everything logged so far (also after ``close``); [] for a stand-in."""
        if not self._file.closed:
            self._file.flush()
        return read_jsonl(self.path) if self.writes else []

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------ plots


def plot_curves(
    records: Iterable[Mapping[str, Any]],
    path: str | os.PathLike,
    panels: Sequence[Sequence[str]],
    *,
    x: str = "step",
    titles: Sequence[str] | None = None,
    log_y: Sequence[bool] | None = None,
    zoom: Sequence[bool] | None = None,
    smooth: int = 0,
    suptitle: str | None = None,
) -> Path:
    """Plots metric curves from ``records`` into a PNG, one panel per group of keys.

    Args:
      records: dicts with an ``x`` entry; each key is plotted where present (so train
        metrics logged every step and eval metrics logged every N steps share a plot).
      path: the PNG to write (atomically).
      panels: e.g. ``[["loss"], ["accuracy", "test_accuracy"]]``.
      titles: optional title per panel (default: the keys joined).
      log_y: optional per-panel log scale flags.
      zoom: optional per-panel flags: fit the y-range to the last 90% of the x-range, so an
        accuracy climbing from 0.1 to 0.99 shows its final per-mille differences.
      smooth: if > 1, noisy per-step series (more than ``4 * smooth`` points) also get a
        moving average of this width drawn over them, so a trend is visible.
      suptitle: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server or in CI
    import matplotlib.pyplot as plt

    records = list(records)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for i, (ax, keys) in enumerate(zip(axes[0], panels, strict=True)):
        shown = []
        for key in keys:
            xs, ys = _series(records, x, key)
            if not xs:
                continue
            shown.append((xs, ys))
            many = smooth > 1 and len(xs) > 4 * smooth
            ax.plot(xs, ys, label=key, alpha=0.35 if many else 1.0, marker="" if many else ".")
            if many:
                ax.plot(xs[smooth - 1 :], _moving_average(ys, smooth), label=f"{key} (avg)")
        ax.set_xlabel(x)
        ax.set_title(titles[i] if titles else ", ".join(keys))
        if log_y and log_y[i]:
            ax.set_yscale("log")
        if zoom and zoom[i] and shown:
            _zoom(ax, shown)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write a matplotlib figure to ``path`` atomically (format from its suffix) and close it,
    also when saving fails, so long runs that plot every epoch don't leak figures."""
    import matplotlib.pyplot as plt

    from rnn_jax.atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)  # the temporary keeps the suffix: same format
    finally:
        plt.close(fig)
    return Path(path)


def plot_lines(lines: dict[str, tuple[list, list]], path, *, xlabel: str, ylabel: str) -> Path:
    """One figure of labelled ``(xs, ys)`` lines, markers at the points, saved atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (xs, ys) in lines.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)  # atomic, and closes the figure


def _series(records: list[Mapping], x: str, key: str) -> tuple[list, list]:
    pairs = [
        (r[x], r[key])
        for r in records
        if x in r and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _zoom(ax, series: list[tuple[list, list]]) -> None:
    """y-limits from the values in the last 90% of the x-range (the first steps' are off)."""
    lo_x = min(xs[0] for xs, _ in series)
    hi_x = max(xs[-1] for xs, _ in series)
    cut = lo_x + 0.1 * (hi_x - lo_x)
    tail = sorted(y for xs, ys in series for x, y in zip(xs, ys, strict=True) if x >= cut)
    if not tail:
        return
    lo, hi = tail[len(tail) // 100], tail[-1]  # 1st percentile: ignore rare dips
    pad = 0.05 * (hi - lo) or 0.01
    ax.set_ylim(lo - pad, hi + pad)


def _moving_average(values: Sequence[float], width: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= width:
            total -= values[i - width]
        if i >= width - 1:
            out.append(total / width)
    return out


# ----------------------------------------------------------------------- console output


def progress(total: int, *, initial: int = 0, desc: str | None = None, enabled: bool = True):
    """A tqdm bar over steps ``initial..total`` on stderr (stdout stays machine-readable).

    ``enabled=False`` (``--no-progress``, tests) returns a bar that prints nothing but
    still accepts ``update``/``set_postfix``/``close``.
    """
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def print_summary(summary: Mapping[str, Any], file=None) -> str:
    """Prints ``summary`` as one JSON line on stdout (for scripts to parse); returns it."""
    line = json.dumps(jsonable(summary), allow_nan=False)
    print(line, file=file or sys.stdout, flush=True)
    return line
