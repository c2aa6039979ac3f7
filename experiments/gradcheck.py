"""Gradient checks for every cell, and the vanishing / exploding gradient diagnostic.

    python experiments/gradcheck.py                      # every cell x case x dtype: a table
    python experiments/gradcheck.py --out runs/gradcheck # + gradcheck.json, gradcheck.md
    python experiments/gradcheck.py --norms --out DIR    # + ||dL/dh_t|| table, PNG, JSON
    python experiments/gradcheck.py --quick              # tiny shapes (the CI smoke test)

Each row is one ``rnn_jax.check_gradients`` call: hand-written BPTT vs ``jax.grad`` (in the
row's dtype) and vs central finite differences (always float64). The exit status is 1 if any
row fails, so the script can gate CI.

``--norms`` runs ``rnn_jax.gradcheck.hidden_grad_norms`` on a long sequence (T=100) for each
cell at random init, with ``w_h`` scaled by each ``--scales`` factor: how ``||dL/dh_t||`` for a
loss on the last state decays (vanishing) or grows (exploding) going back in time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

import rnn_jax as rj
from rnn_jax.atomic import write_atomic
from rnn_jax.checks import spatial_rank
from rnn_jax.gradcheck import check_gradients, hidden_grad_norms, random_problem

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (a sibling file, see common.py)

CELLS = {
    # the scripts' one registry (common.CELL_PATHS), in its order: the cells keep their seeds
    **{name: common.library_cell(name) for name in common.CELL_PATHS},
    # this script's variants, appended (CELLS_ORDER)
    "lstm_proj2": rj.lstm.with_projection(2),  # PyTorch proj_size=2 (needs --hidden-size > 2)
    "conv_lstm_3": rj.conv_lstm((3,)),  # xs (B, T, SPATIAL_SIZE, I)
    "conv_lstm_3x3": rj.conv_lstm((3, 3)),  # xs (B, T, SPATIAL_SIZE, SPATIAL_SIZE, I)
}  # fmt: skip
SPATIAL_SIZE = 4  # each spatial axis of a ConvLSTM's random inputs
CASES = ("full", "truncated", "lengths", "reverse", "time-major")
DTYPES = ("float32", "float64")
TRUNCATE = 3
CELLS_ORDER = {name: i for i, name in enumerate(CELLS)}
COLUMNS = ("cell", "case", "dtype", "max_abs_err", "max_rel_err", "fd_err", "ok")


def case_options(case: str, batch_size: int, num_steps: int, rng) -> dict:
    """``check_gradients`` keyword arguments for one case."""
    if case == "full":
        return {}
    if case == "truncated":
        return {"truncate": TRUNCATE}
    if case == "time-major":
        return {"time_major": True}
    # Padded batch with the boundary lengths 0 and T, as a real padded batch has.
    lengths = rng.integers(0, num_steps + 1, batch_size)
    lengths[:2] = [0, num_steps][: min(batch_size, 2)]
    options = {"lengths": lengths}
    if case == "reverse":
        options["reverse"] = True
    return options


def spatial_shape(cell) -> tuple[int, ...]:
    """``(SPATIAL_SIZE,) * rank`` for a spatial cell (``rj.conv_lstm``), ``()`` otherwise."""
    return (SPATIAL_SIZE,) * spatial_rank(cell)


def run_case(
    name: str, case: str, dtype: str, shape, num_directions: int, seed: int, cell=None
) -> dict:
    """One ``check_gradients`` call on a random problem; a row of the table.

    ``cell`` defaults to the built-in ``CELLS[name]``; pass a user's cell (``--cell
    module:attr``) with its spec as ``name``. Random (not init-time) parameters and a random
    initial carry: zero biases and a zero carry would hide bias and carry-path mistakes.
    """
    batch_size, num_steps = shape[:2]
    cell = CELLS[name] if cell is None else cell
    rng = np.random.default_rng([seed, CELLS_ORDER.get(name, len(CELLS)), CASES.index(case)])
    options = case_options(case, batch_size, num_steps, rng)
    time_major = options.get("time_major", False)
    with jax.enable_x64(dtype == "float64"):
        params, xs, carry = random_problem(cell, shape, dtype, rng, time_major=time_major,
                                           spatial=spatial_shape(cell))  # fmt: skip
        row = {"cell": name, "case": case, "dtype": dtype}
        try:
            report = check_gradients(
                cell,
                params,
                xs,
                carry,
                num_directions=num_directions,
                key=seed,
                raise_on_failure=False,
                **options,
            )
        except Exception as err:  # a crash is a failed row, not a dead run
            row.update(max_abs_err=None, max_rel_err=None, fd_err=None, ok=False)
            row["error"] = f"{type(err).__name__}: {err}"
            return row
    row.update(
        max_abs_err=report.max_abs_err,
        max_rel_err=report.max_rel_err,
        fd_err=report.fd_err,
        ok=report.ok,
    )
    if not report.ok:
        row["failures"] = {r.path: r.message for r in report.failures()}
    return row


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.2e}"
    return str(value)


def text_table(rows: list[dict], columns=COLUMNS) -> str:
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# Gradient norms through time
# ----------------------------------------------------------------------------------------


def grad_norms(names, scales, shape, seed: int) -> dict:
    """``{cell: {scale: (T,) list}}``: ``||dL/dh_t||`` at init with ``w_h *= scale``."""
    batch_size, num_steps, input_size, hidden_size = shape
    key_x, key_p = jax.random.split(jax.random.PRNGKey(seed))
    out = {}
    for name in names:
        cell = CELLS[name]
        xs_shape = (batch_size, num_steps, *spatial_shape(cell), input_size)
        xs = jax.random.normal(key_x, xs_shape)
        params = cell.init(key_p, input_size, hidden_size)
        out[name] = {}
        for scale in scales:
            scaled = params | {"w_h": params["w_h"] * scale}
            out[name][scale] = np.asarray(hidden_grad_norms(cell, scaled, xs)).tolist()
    return out


def norms_table(norms: dict) -> str:
    """||dL/dh_t|| at a few distances back from the last step (``norms[T-1] == 1``)."""
    num_steps = len(next(iter(next(iter(norms.values())).values())))
    backs = sorted({b for b in (0, 1, 10, 50, num_steps - 1) if b < num_steps})
    columns = ("cell", "w_h scale", *(f"{b} back" for b in backs))
    rows = [
        {"cell": name, "w_h scale": f"{scale:g}"}
        | {f"{b} back": float(values[num_steps - 1 - b]) for b in backs}
        for name, by_scale in norms.items()
        for scale, values in by_scale.items()
    ]
    return text_table(rows, columns)


def plot_norms(norms: dict, path: Path) -> None:
    """One panel per cell, one line per ``w_h`` scale, log y; PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(norms), figsize=(4 * len(norms), 3.2), squeeze=False)
    for ax, (name, by_scale) in zip(axes[0], norms.items(), strict=True):
        for scale, values in by_scale.items():
            values = np.asarray(values)
            back = np.arange(len(values))[::-1]  # steps back from the last output
            ax.semilogy(back, np.maximum(values, 1e-300), label=f"w_h x {scale:g}")
        ax.set_title(name)
        ax.set_xlabel("steps back from the loss (T-1-t)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("||dL/dh_t||")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    common.save_figure(fig, path)


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked here (a bad value exits with code 2 before anything runs)."""
    pos_int = common.int_at_least(1)
    parser = common.ArgumentParser(description=__doc__.split("\n\n")[0])
    # fmt: off
    parser.add_argument("--cells", nargs="*", choices=list(CELLS), default=None,
                        help="built-in cells to check (default: all, unless --cell is given)")
    parser.add_argument("--cell", action="append", default=[], metavar="CELL",
                        help=f"a cell to check (repeatable): {common.CELL_HELP}")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="cases")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES), help="dtypes")
    parser.add_argument("--batch", type=pos_int, default=3, help="batch size")
    parser.add_argument("--steps", type=pos_int, default=8, help="time steps")
    parser.add_argument("--input-size", type=pos_int, default=4, help="input features")
    parser.add_argument("--hidden-size", type=pos_int, default=5, help="hidden units")
    parser.add_argument("--directions", type=pos_int, default=4, help="FD directions per leaf")
    parser.add_argument("--seed", type=common.int_at_least(0), default=0, help="random problems")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 1 FD direction")
    parser.add_argument("--out", type=Path, help="write gradcheck.json / .md (and norms) here")
    parser.add_argument("--norms", action="store_true",
                        help="gradient norms through time (built-in cells)")
    parser.add_argument("--norm-steps", type=pos_int, default=100, help="sequence length")
    parser.add_argument("--norm-hidden", type=pos_int, default=32, help="hidden units")
    parser.add_argument("--scales", type=common.float_range(0, low_open=True), nargs="+",
                        default=[0.5, 1.0, 2.0], help="factors on w_h")
    # fmt: on
    args = parser.parse_args(argv)
    # Resolved here, so a bad spec is a usage error before any check runs.
    args.user_cells = {}
    for spec in args.cell:
        try:
            args.user_cells[spec] = CELLS[spec] if spec in CELLS else common.resolve_cell(spec)
        except argparse.ArgumentTypeError as e:
            parser.error(f"argument --cell: {e}")
    if args.cells is None:
        args.cells = [] if args.cell else list(CELLS)
    if not args.cells and not args.user_cells:
        parser.error("nothing to check: --cells is empty and no --cell given")
    if args.quick:
        args.batch, args.steps, args.input_size, args.hidden_size = 2, 4, 2, 3
        args.directions, args.norm_steps, args.norm_hidden = 1, 20, 8
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    shape = (args.batch, args.steps, args.input_size, args.hidden_size)
    rows = []
    cells = {name: CELLS[name] for name in args.cells} | args.user_cells
    for name, cell in cells.items():
        for case in args.cases:
            for dtype in args.dtypes:
                rows.append(run_case(name, case, dtype, shape, args.directions, args.seed, cell))
                # Progress on stderr: stdout gets the table once, at the end.
                print(f"{name} {case} {dtype}: {_fmt(rows[-1]['ok'])}", file=sys.stderr)
    table = text_table(rows)
    ok = all(row["ok"] for row in rows)
    print(f"\n{table}\n\n{'all gradient checks passed' if ok else 'GRADIENT CHECK FAILED'}")
    for row in rows:
        for what in ("error", "failures"):
            if what in row:
                print(f"{row['cell']} {row['case']} {row['dtype']}: {row[what]}")
    config = {"shape (B, T, I, H)": shape, "truncate": TRUNCATE, "fd_directions": args.directions}
    if args.out:
        payload = {"ok": ok, "config": config, "rows": rows}
        write_atomic(args.out / "gradcheck.json", json.dumps(payload, indent=2) + "\n")
        write_atomic(args.out / "gradcheck.md", markdown_table(rows))
    if args.norms:
        norm_shape = (4, args.norm_steps, args.input_size, args.norm_hidden)
        norms = grad_norms(args.cells, args.scales, norm_shape, args.seed)
        print(f"\n||dL/dh_t|| for L = <u, h_(T-1)>, ||u|| = 1, T = {args.norm_steps}:")
        print(norms_table(norms))
        out = args.out or Path("runs/gradcheck")
        out.mkdir(parents=True, exist_ok=True)
        serial = {name: {str(s): v for s, v in by.items()} for name, by in norms.items()}
        write_atomic(out / "grad_norms.json", json.dumps(serial) + "\n")
        plot_norms(norms, out / "grad_norms.png")
        print(f"plot: {out / 'grad_norms.png'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
