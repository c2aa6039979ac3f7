"""Runs a training script as N cooperating processes on this machine (``jax.distributed``).

    python -m rnn_jax.launch --num-processes 2 -- experiments/mnist_rows.py --cell lstm ...

Each process runs ``python SCRIPT [flags] --coordinator 127.0.0.1:PORT --num-processes N
--process-id I`` (a free port is picked). Process 0's output passes through (its last stdout
line is the script's summary, as in a single-process run); the others' goes to a log file
and is shown only if that process fails. If any process exits non-zero or is killed, the
launcher stops the others (SIGTERM, then SIGKILL after ``--grace-s``) and exits with that
process's code (128 + signal for a killed one), naming it: a dead peer never leaves the rest
waiting in a collective. ``--timeout-s`` bounds the whole run the same way (exit 124).

``--cpus-per-process K`` pins process I to cores ``I*K .. I*K+K-1`` (Linux), so N processes
do not fight over the same cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "start", "stop", "supervise"]  # fmt: skip

POLL_S = 0.1
EXIT_TIMEOUT = 124


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m rnn_jax.launch",
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s --num-processes N [options] -- SCRIPT.py [script flags]",
    )
    p.add_argument("--num-processes", type=int, required=True, help="processes to start")
    p.add_argument("--cpus-per-process", type=int, default=0, help="pin to K cores each")
    p.add_argument("--timeout-s", type=float, default=0, help="stop everything after (0: none)")
    p.add_argument("--grace-s", type=float, default=5.0, help="SIGTERM to SIGKILL delay")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT.py [flags]")
    args = p.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        p.error("no script given: ... -- SCRIPT.py [flags]")
    if args.num_processes < 1:
        p.error(f"argument --num-processes: expected an integer >= 1, got {args.num_processes}")
    if args.cpus_per_process < 0 or args.timeout_s < 0 or args.grace_s < 0:
        p.error("--cpus-per-process, --timeout-s and --grace-s must be >= 0")
    return args


def _pin(process_id: int, cpus: int):
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return None
    count = os.cpu_count() or 1
    cores = {(process_id * cpus + k) % count for k in range(cpus)}
    return lambda: os.sched_setaffinity(0, cores)


def start(args: argparse.Namespace, logs: Path) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{free_port()}"
    procs = []
    for i in range(args.num_processes):
        flags = ["--coordinator", address, "--num-processes", str(args.num_processes)]
        command = [sys.executable, *args.command, *flags, "--process-id", str(i)]
        # Process 0 speaks for the group; the others write to a file shown if they fail.
        log = contextlib.nullcontext() if i == 0 else open(logs / f"process-{i}.log", "wb")
        with log as out:  # closed here once started: the child holds its own descriptor
            stderr = subprocess.STDOUT if out else None
            pin = _pin(i, args.cpus_per_process)
            procs.append(subprocess.Popen(command, stdout=out, stderr=stderr, preexec_fn=pin))
    return procs


def stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM to every live process, SIGKILL to those still alive ``grace_s`` later."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def supervise(procs: list[subprocess.Popen], args: argparse.Namespace, logs: Path) -> int:
    """Waits for all to finish; on the first failure (or the timeout) stops the rest."""
    t0 = time.monotonic()
    while True:
        codes = [p.poll() for p in procs]
        failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            i = failed[0]
            stop(procs, args.grace_s)
            log = logs / f"process-{i}.log"
            tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
            shown = "".join(f"\n  [process {i}] {line}" for line in tail)
            print(f"rnn_jax.launch: process {i} {describe(codes[i])}; stopped the others{shown}",
                  file=sys.stderr, flush=True)  # fmt: skip
            return 128 - codes[i] if codes[i] < 0 else codes[i]
        if all(c == 0 for c in codes):
            return 0
        if args.timeout_s and time.monotonic() - t0 > args.timeout_s:
            stop(procs, args.grace_s)
            print(f"rnn_jax.launch: timed out after {args.timeout_s:g} s; stopped all "
                  "processes", file=sys.stderr, flush=True)  # fmt: skip
            return EXIT_TIMEOUT
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rnn_jax_launch_") as logs:
        procs = start(args, Path(logs))
        try:
            return supervise(procs, args, Path(logs))
        finally:  # also on Ctrl-C or SIGTERM to the launcher: no orphans
            stop(procs, args.grace_s)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
