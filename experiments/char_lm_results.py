"""Character-level LM results: a finished ``char_lm.py`` run as one results JSON, and the
validation curves of several such results in one plot.

Usage::

    python experiments/char_lm_results.py record runs/shakespeare_hawk256x3 \
        --command "python experiments/char_lm.py ..." \
        --out experiments/results/char_lm_shakespeare_hawk256x3.json
    python experiments/char_lm_results.py plot experiments/results/char_lm_shakespeare_*.json \
        --out experiments/results/char_lm_shakespeare_compare.png

``record`` keeps what the results page quotes: the command, the run's ``config.json`` and
``summary.json``, and its validation curve ``[{step, time_s, val_nats_per_char}]`` (from
``metrics.jsonl``). ``plot`` draws validation nats/char against training minutes, one line per
result, labelled by its cell(s), block and width.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (a sibling file, see common.py)


def record(run_dir: Path, command: str) -> dict:
    """The results JSON of the finished run in ``run_dir``."""
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "val_nats_per_char" in entry:
            curve.append({key: entry[key] for key in ("step", "time_s", "val_nats_per_char")})
    if not (run_dir / "summary.json").is_file():
        raise SystemExit(f"{run_dir} has no summary.json: the run has not finished")
    return {
        "command": command,
        "config": json.loads((run_dir / "config.json").read_text()),
        "summary": json.loads((run_dir / "summary.json").read_text()),
        "val_curve": curve,
    }


def label(result: dict) -> str:
    """``mlstm,slstm,mlstm 3x256 (residual)``: the cell(s), layers x width and the block."""
    config = result["config"]
    block = config.get("block", "plain")
    layers = f"{config['layers']}x" if config["layers"] > 1 else ""
    final = result["summary"]["val_nats_per_char"]
    return f"{config['cell']} {layers}{config['hidden_size']} ({block}): {final:.3f}"


def plot(results: list[dict], path: Path) -> None:
    lines = {
        label(result): ([p["time_s"] / 60 for p in result["val_curve"]],
                        [p["val_nats_per_char"] for p in result["val_curve"]])
        for result in results
    }  # fmt: skip
    common.plot_lines(lines, path, xlabel="training time (minutes, validation included)",
                      ylabel="validation nats per character")  # fmt: skip


def main(argv=None) -> int:
    p = common.ArgumentParser(description=__doc__)
    commands = p.add_subparsers(dest="what", required=True)
    one = commands.add_parser("record", help="a finished run -> its results JSON")
    one.add_argument("run", type=common.existing_dir, help="a char_lm.py run folder")
    one.add_argument("--command", required=True, help="the command that made the run")
    one.add_argument("--out", required=True, help="the results JSON to write")
    many = commands.add_parser("plot", help="results JSONs -> one plot of their curves")
    many.add_argument("results", nargs="+", help="results JSONs (from record)")
    many.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args(argv)
    if args.what == "record":
        common.write_json_atomic(args.out, record(Path(args.run), args.command))
    else:
        plot([json.loads(Path(r).read_text()) for r in args.results], Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
