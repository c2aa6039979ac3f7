"""Multi-process data parallelism (rnn_jax.distributed, python -m rnn_jax.launch) with real
CPU processes on this machine, talking through JAX's gloo collectives.

Kept small (hidden size 16, 50 steps, 2 processes): each launch costs two interpreter and
JAX start-ups and a compile. Every launch has a hard timeout, and so does the launcher.

Tolerance of the 1-process vs 2-process comparison: the two runs see the same global
batches (same rows, same order) and differ only in how the gradient mean over 64 examples
is summed: one sum on one device, or two partial sums of 32 added by the all-reduce. That
changes gradients by about one float32 ulp (6e-8 relative), and the parameters drift apart
by such round-off over the steps: measured 2.5e-7 of the largest entry after 50 steps.
Asserted: 1e-5 of the largest entry of each leaf (40x margin), far below any real
difference (one step of lr 1e-3 moves entries by ~1e-3).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from rnn_jax import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_mnist_rows import final_state, leaves_bytes, mnist_rows, needs_mnist  # noqa: E402

sys.path.insert(0, str(REPO / "experiments"))
import char_lm  # noqa: E402

LAUNCH_TIMEOUT_S = 300
LAUNCH = [sys.executable, "-m", "rnn_jax.launch", "--num-processes", "2"]
LAUNCH += ["--timeout-s", str(LAUNCH_TIMEOUT_S - 30), "--"]
FLAGS = ["--cell", "lstm", "--hidden-size", "16", "--batch-size", "64", "--steps", "50"]
FLAGS += ["--eval-every", "0", "--eval-batch-size", "1000", "--no-progress"]
PARAM_RTOL = 1e-5  # of each leaf's largest entry; see the module docstring

pytestmark = [needs_mnist, pytest.mark.slow]


def launch(argv: list[str], script: str = "experiments/mnist_rows.py", **kwargs):
    command = [*LAUNCH, script, *argv]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, **kwargs
    )


def params_of(out: Path, argv: list[str]):
    state, meta = final_state(out, argv)
    assert meta["step"] == 50
    return state


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    argv = FLAGS + ["--checkpoint-every", "0", "--out", str(out)]
    assert mnist_rows.main(argv) == 0
    return out, argv


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    argv = FLAGS + ["--checkpoint-every", "0", "--out", str(out)]
    done = launch(argv)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, argv, done.stdout


def test_two_processes_train_like_one(one_process, two_processes):
    (out1, argv1), (out2, argv2, stdout) = one_process, two_processes
    for a, b in zip(jax.tree.leaves(params_of(out1, argv1).params),
                    jax.tree.leaves(params_of(out2, argv2).params), strict=True):  # fmt: skip
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= PARAM_RTOL * np.abs(a).max(), a.shape

    # The launcher's stdout is process 0's: its last line is the summary, as alone.
    printed = json.loads(stdout.strip().splitlines()[-1])
    alone = json.loads((out1 / "summary.json").read_text())
    assert printed["test_count"] == alone["test_count"] == 10_000
    for key in ("test_accuracy", "test_loss"):
        assert printed[key] == pytest.approx(alone[key], rel=1e-3), key
    # One writer: every step logged once, one checkpoint, and the same files as alone.
    records = [json.loads(x) for x in (out2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 51))
    assert sorted(p.name for p in out2.iterdir()) == sorted(p.name for p in out1.iterdir())
    assert [s for s, _ in ckpt.list_checkpoints(out2 / "checkpoints")] == [50]


def _pid_of(process_id: int, out: Path) -> int | None:
    """The pid of the launched process with ``--process-id process_id`` writing to ``out``."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        args = [a.decode(errors="replace") for a in argv]
        if str(out) in args and "--process-id" in args:
            if args[args.index("--process-id") + 1] == str(process_id):
                return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the process through /proc")
def test_killed_process_stops_the_launcher_and_the_run_resumes_exactly(two_processes, tmp_path):
    out = tmp_path / "run"
    argv = FLAGS + ["--checkpoint-every", "20", "--out", str(out)]
    command = [*LAUNCH, "experiments/mnist_rows.py", *argv]
    launcher = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not ckpt.list_checkpoints(out / "checkpoints"):
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint at step 20"
            time.sleep(0.05)
        pid = _pid_of(1, out)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = launcher.communicate(timeout=60)
        took = time.monotonic() - killed_at
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0 and took < 60
    assert "process 1 was killed by SIGKILL" in stderr, stderr[-2000:]
    assert _pid_of(0, out) is None, "the launcher left process 0 running"
    steps = [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")]
    assert steps and steps[-1] < 50

    done = launch(argv + ["--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = params_of(out, argv)
    uninterrupted = params_of(two_processes[0], two_processes[1])
    assert leaves_bytes(resumed) == leaves_bytes(uninterrupted)  # params, opt state, RNG
    assert json.loads(done.stdout.strip().splitlines()[-1])["resumed_from"] == steps[-1]


def test_evaluation_counts_every_example_once_across_processes():
    """10,001 examples, batches of 1000 over 2 processes: the last batch is 1 real example
    and 999 padding rows, split 500/500 between the processes."""
    done = launch([], script="tests/distributed_eval_worker.py")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ids = np.arange(10_001)
    assert result["count"] == 10_001 and result["num_batches"] == 11
    assert result["id"] == ids.mean()  # exact: no example dropped or counted twice
    assert result["hash"] == pytest.approx((ids * 7919 % 1009).mean(), rel=1e-12)


def test_launcher_refuses_bad_invocations(capsys):
    from rnn_jax import launch as launcher

    for argv in (["--num-processes", "0", "--", "x.py"], ["--num-processes", "2"]):
        with pytest.raises(SystemExit) as exit_:
            launcher.main(argv)
        assert exit_.value.code == 2 and "error" in capsys.readouterr().err


def test_char_lm_streams_split_over_two_processes_train_like_one(tmp_path):
    """char_lm.py: the 16 streams (and their carried states) split 8/8 over the processes;
    validation, samples and the files match a single process's run."""
    argv = ["--data", "names", "--hidden-size", "32", "--embed-size", "8", "--seq-len", "16"]
    argv += ["--batch-size", "16", "--steps", "10", "--eval-every", "5", "--sample-every", "0"]
    argv += ["--checkpoint-every", "5", "--no-progress", "--num-samples", "20"]
    argv += ["--eval-batch-size", "16"]
    alone = char_lm.main(argv + ["--out", str(tmp_path / "one")])
    done = launch(argv + ["--out", str(tmp_path / "two")], script="experiments/char_lm.py")
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("val_nats_per_char", "train_nats_per_char"):
        assert two[key] == pytest.approx(alone[key], rel=1e-5), key
    assert two["steps"] == 10 and two["val_chars_read"] == alone["val_chars_read"]
    records = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in records if '"loss"' in r] == list(range(1, 11))
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "two")] == [5, 10]
