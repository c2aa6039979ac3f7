"""Test accuracy against wall time for several ``mnist_rows.py`` runs, in one plot.

Usage::

    python experiments/compare_runs.py runs/pixels-mingru runs/pixels-lstm \
        --minutes 15 30 60 --out experiments/results/mnist_pixels

Reads each run's ``metrics.jsonl`` (its evaluation records carry ``wall_s``, the run's time so
far, resumes included) and ``config.json``; writes ``OUT.png`` (accuracy against minutes) and
``OUT.md`` (a table: the last test accuracy measured by each mark, and the best overall).

``--step-seconds S1 S2 ...`` (one per run) puts the runs on a *training time* axis instead,
``step * S`` with ``S`` each model's seconds per training step measured on a quiet machine:
accuracy against steps does not depend on what else the machine ran, wall time does, so
runs made on a shared machine are compared this way (evaluation time is then left out).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (a sibling file, see common.py)


def evaluations(run_dir: Path, step_seconds: float | None = None) -> list[tuple[float, int, float]]:
    """``(minutes, step, test_accuracy)`` of every evaluation that recorded its wall time;
    minutes are ``step * step_seconds / 60`` where that is given."""
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "test_accuracy" in record and "wall_s" in record:
            seconds = record["wall_s"] if step_seconds is None else record["step"] * step_seconds
            rows.append((seconds / 60, record["step"], record["test_accuracy"]))
    return rows


def label(run_dir: Path) -> str:
    config = json.loads((run_dir / "config.json").read_text())
    block = config.get("block", "plain")
    if block == "residual" and config.get("expansion", 2) != 2:  # 2: the script's default
        block += f" x{config['expansion']} MLP"
    layers = f"{config['layers']}x" if config["layers"] > 1 else ""
    schedule = f", {config['steps']} steps" if "steps" in config else ""  # tells reruns apart
    return (f"{config['cell']} {layers}{config['hidden_size']} ({block}, "
            f"{config.get('input', 'rows')}, batch {config['batch_size']}{schedule})")  # fmt: skip


# Settings that do not change what a run computes: never what tells two runs apart.
NOT_DISTINCTIVE = {"resumable_keys", "progress", "data_dir", "eval_every", "checkpoint_every",
                   "keep", "eval_batch_size", "debug_nan_at_step",
                   "debug_interrupt_at_step"}  # fmt: skip


def unique_labels(run_dirs: list[Path]) -> list[str]:
    """One label per run, all different: runs whose :func:`label` is the same get the
    settings that differ between them (``lr 0.003``, ``seed 1``), and, if they are the
    same run twice over (a rerun), their folder names. Never a run silently dropped."""
    configs = [json.loads((d / "config.json").read_text()) for d in run_dirs]
    base = [label(d) for d in run_dirs]
    labels = list(base)
    for text in dict.fromkeys(base):
        group = [i for i, b in enumerate(base) if b == text]
        if len(group) < 2:
            continue
        keys = sorted({k for i in group for k in configs[i]} - NOT_DISTINCTIVE)
        values = {k: {json.dumps(configs[i].get(k), sort_keys=True) for i in group} for k in keys}
        differ = [k for k in keys if len(values[k]) > 1]
        for i in group:
            extra = ", ".join(f"{k.replace('_', ' ')} {configs[i].get(k)}" for k in differ)
            labels[i] = f"{text} [{extra}]" if extra else text
    for names in (lambda d: d.name, str):  # the folder, then its whole path
        repeated = [i for i, t in enumerate(labels) if labels.count(t) > 1]
        for i in repeated:
            labels[i] += f" ({names(run_dirs[i])})"
    return labels


def at_minutes(rows, minutes: float) -> str:
    """The last accuracy measured by ``minutes``, with its time and step."""
    seen = [r for r in rows if r[0] <= minutes]
    if not seen:
        return "-"
    time, step, accuracy = seen[-1]
    return f"{100 * accuracy:.2f}% ({time:.1f} min, step {step})"


def markdown(runs: dict[str, list], marks: list[float]) -> str:
    head = "| run | " + " | ".join(f"by {m:g} min" for m in marks) + " | best (at) |"
    lines = [head, "|---" * (len(marks) + 2) + "|"]
    for name, rows in runs.items():
        best = max(rows, key=lambda r: r[2]) if rows else None
        best_text = "-" if best is None else f"{100 * best[2]:.2f}% ({best[0]:.1f} min)"
        cells = " | ".join(at_minutes(rows, m) for m in marks)
        lines.append(f"| {name} | {cells} | {best_text} |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, list], path: Path, xlabel: str = "wall time (minutes)") -> None:
    lines = {name: ([r[0] for r in rows], [100 * r[2] for r in rows])
             for name, rows in runs.items()}  # fmt: skip
    common.plot_lines(lines, path, xlabel=xlabel, ylabel="test accuracy (%, all 10,000 digits)")


def main(argv=None) -> int:
    p = common.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+", type=common.existing_dir, help="mnist_rows.py run folders")
    p.add_argument("--minutes", type=float, nargs="+", default=[15, 30, 60], help="time marks")
    p.add_argument("--out", required=True, help="output stem: writes OUT.png and OUT.md")
    p.add_argument(
        "--step-seconds",
        type=float,
        nargs="+",
        default=None,
        help="seconds per training step of each run (quiet machine): time = steps x it",
    )
    args = p.parse_args(argv)
    step_seconds = args.step_seconds or [None] * len(args.runs)
    if len(step_seconds) != len(args.runs):
        p.error(f"--step-seconds needs one value per run ({len(args.runs)}), got "
                f"{len(step_seconds)}")  # fmt: skip
    folders = [Path(r) for r in args.runs]
    same = sorted({str(r) for r in folders if folders.count(r) > 1})
    if same:
        p.error(f"a run folder given more than once: {', '.join(same)}")
    runs = {
        name: evaluations(folder, s)
        for name, folder, s in zip(unique_labels(folders), folders, step_seconds, strict=True)
    }
    out = Path(args.out)
    xlabel = (
        "wall time (minutes)"
        if args.step_seconds is None
        else ("training time (minutes): steps x quiet-machine seconds per step")
    )
    plot(runs, out.with_suffix(".png"), xlabel)
    common.write_bytes_atomic(out.with_suffix(".md"), markdown(runs, args.minutes).encode())
    print(markdown(runs, args.minutes), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
