"""The options of ``rj.unroll``, parsed once into one validated record: every rule about
which options combine lives here.

``rj.unroll`` (and ``rj.unroll_stack``, ``rj.bidirectional``, ``rnn_jax.blocks``, the models,
``rnn_jax.nnx``, ``rnn_jax.tbptt``) take the options as keywords; ``parse`` checks each one and
every combination that does not depend on the cell, and returns an ``UnrollOptions``. Layers
forward that record unchanged (``dataclasses.replace`` for what a layer itself decides, such as
the backward direction's ``reverse``). ``plan`` then applies the rules that depend on the cell
and on the data (``lengths``, ``mask``, ``resets``, ``key``) and resolves the choices left open
(``mode=None``, ``gradient=None``, ``backend="auto"``, one zoneout rate).

An unsupported combination raises ``ValueError`` naming both options; nothing is accepted and
then ignored. The options, by concern:

=====================  ================================================================
the sequence           ``reverse``, ``time_major``
what to return         ``return_carries``
how to compute         ``mode``, ``gradient``, ``unroll``, ``truncate``, ``remat``,
                       ``matmul_dtype``, ``backend``
regularisation         ``input_dropout``, ``recurrent_dropout``, ``zoneout``, ``training``
=====================  ================================================================

The per-call arrays (``carry``, ``lengths``, ``mask``, ``resets``, ``key``) are data, not
options: they are arguments of ``rj.unroll`` itself.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from rnn_jax.checks import carry_fields

__all__ = [  # fmt: skip
    "BACKENDS", "GRADIENTS", "MODES", "NAMES", "Plan", "UnrollOptions", "parse", "plan",
]

GRADIENTS = (None, "autodiff", "manual")
MODES = (None, "sequential", "parallel")
BACKENDS = ("scan", "fused_cpu", "cudnn", "auto")
FUSED_BACKENDS = ("fused_cpu", "cudnn")
# The data a fused backend takes as well (the rest of scan_only it refuses by name).
FUSED_DATA = {"fused_cpu": ("lengths",), "cudnn": ()}
# backend="fused_cpu" runs a linear cell (one with a LinearForm) through its linear-recurrence
# kernel in the parallel path, which takes every per-row input that path takes.
FUSED_LINEAR_DATA = ("lengths", "mask", "resets")
# What only the scan path computes (an explicit fused backend refuses each).
SCAN_ONLY = ("truncate", "remat", "matmul_dtype", "return_carries", "unroll", "gradient", "mode",
             "input_dropout", "recurrent_dropout", "zoneout")  # fmt: skip
# What only the sequential step-by-step scan computes (mode="parallel" refuses each).
STEP_BY_STEP = ("truncate", "remat", "return_carries", "unroll", "recurrent_dropout", "zoneout")


@dataclasses.dataclass(frozen=True)
class UnrollOptions:
    """The checked options of one ``rj.unroll`` call (see ``rj.unroll`` for each); hashable.

    Build it with ``parse(**options)``; change it with ``.replace(**changes)``, which checks
    again.
    """

    reverse: bool = False
    time_major: bool = False
    return_carries: bool = False
    mode: str | None = None
    gradient: str | None = None
    unroll: int = 1
    truncate: int | None = None
    remat: int | str | None = None
    matmul_dtype: str | None = None
    backend: str = "scan"
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    zoneout: float | tuple[float | None, float | None] | None = None
    training: bool | None = None

    def replace(self, **changes) -> UnrollOptions:
        """A copy with ``changes``, checked as ``parse`` checks."""
        return parse(self, **changes)

    @property
    def regularizing(self) -> bool:
        """Whether any regulariser is asked for (in training or evaluation)."""
        return bool(self.input_dropout or self.recurrent_dropout or self.zoneout is not None)


NAMES = tuple(field.name for field in dataclasses.fields(UnrollOptions))


def parse(options: UnrollOptions | None = None, /, **changes) -> UnrollOptions:
    """``UnrollOptions`` from keywords (over ``options``, if given), every cell-independent
    rule checked. An unknown name raises ``TypeError`` listing the known ones."""
    unknown = sorted(set(changes) - set(NAMES))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; rj.unroll's options are {list(NAMES)}")
    if options is not None and not isinstance(options, UnrollOptions):
        raise TypeError(f"options must be an rj.UnrollOptions, got {type(options).__name__}")
    record = dataclasses.replace(options or UnrollOptions(), **changes)
    record = dataclasses.replace(record, **_checked_fields(record))
    _check_pairs(record)
    return record


def _checked_fields(opts: UnrollOptions) -> dict:
    """Each option on its own: type and range; normalised values."""
    if opts.return_carries is not True and opts.return_carries is not False:
        raise TypeError(f"return_carries must be True or False, got {opts.return_carries!r}")
    check_choice("mode", opts.mode, MODES)
    check_choice("gradient", opts.gradient, GRADIENTS)
    if opts.backend == "onednn":  # removed 2026-12-07
        raise ValueError("backend='onednn' (oneDNN 3.2's RNN primitives) was removed: "
                         "backend='fused_cpu' runs the same cells, faster in every benchmark "
                         "(README, 'Fused backends'); or backend='auto'")  # fmt: skip
    check_choice("backend", opts.backend, BACKENDS)
    if isinstance(opts.unroll, bool) or not isinstance(opts.unroll, int) or opts.unroll < 1:
        raise ValueError(f"unroll must be an int >= 1, got {opts.unroll!r}")
    remat = None if opts.remat is False else opts.remat
    if remat not in (None, "sqrt") and (
        isinstance(remat, bool) or not isinstance(remat, int) or remat < 1
    ):
        raise ValueError(f"remat must be None, 'sqrt' or an int >= 1, got {remat!r}")
    matmul_dtype = opts.matmul_dtype
    if matmul_dtype is not None:
        try:
            matmul_dtype = jnp.dtype(matmul_dtype).name
        except TypeError:
            raise TypeError(f"matmul_dtype must be a dtype or None, got {matmul_dtype!r}") from None
    training = opts.training
    if training is not None and training is not True and training is not False:
        raise TypeError(f"training must be True, False or None, got {training!r}")
    return dict(
        reverse=_as_bool("reverse", opts.reverse),
        time_major=_as_bool("time_major", opts.time_major),
        truncate=check_truncate(opts.truncate),
        remat=remat,
        matmul_dtype=matmul_dtype,
        input_dropout=check_rate("input_dropout", opts.input_dropout),
        recurrent_dropout=check_rate("recurrent_dropout", opts.recurrent_dropout),
        zoneout=check_zoneout(opts.zoneout),
    )


def _check_pairs(opts: UnrollOptions) -> None:
    """The rules between two options that hold for every cell."""
    if opts.truncate is not None and opts.gradient != "manual":
        _refuse("truncate", "gradient", "truncate=k needs gradient='manual' (autodiff gives "
                "full BPTT)")  # fmt: skip
    if opts.remat is not None and opts.truncate is not None:
        _refuse("remat", "truncate", "truncation windows would cross the checkpointed segments")
    if opts.remat is not None and opts.return_carries:
        _refuse("remat", "return_carries", "remat keeps only each segment's first carry "
                "(that is its memory saving); use remat=None")  # fmt: skip
    for name in _set(opts, STEP_BY_STEP) if opts.mode == "parallel" else ():
        _refuse("mode", name, f"{name}= runs step by step: pass mode='sequential' (or "
                "mode=None, which picks it)")  # fmt: skip
    for name in _set(opts, SCAN_ONLY) if opts.backend in FUSED_BACKENDS else ():
        _refuse("backend", name, f"backend={opts.backend!r} runs its own fused kernel and "
                "backward; use backend='scan' (or 'auto', which falls back to scan)")  # fmt: skip


def _set(opts: UnrollOptions, names) -> list[str]:
    """Those of the options ``names`` that ``opts`` sets away from their defaults."""
    return [name for name in names if getattr(opts, name) != getattr(UnrollOptions(), name)]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What ``rj.unroll`` runs, from the options, the cell and the data (``plan``)."""

    options: UnrollOptions
    mode: str  # "sequential" or "parallel"
    gradient: str  # "autodiff" or "manual"
    zoneout_h: float | None
    zoneout_c: float | None
    training: bool  # regularisers in training (masks from the key) or evaluation
    input_dropout: float  # the rates in force (0 out of training)
    recurrent_dropout: float

    @property
    def wraps_cell(self) -> bool:
        """Whether the regularised cell (recurrent dropout or zoneout) runs the steps."""
        return bool(self.recurrent_dropout) or (self.zoneout_h, self.zoneout_c) != (None, None)

    def scan_only(self, *, lengths=None, mask=None, resets=None) -> dict:
        """The options and data a fused backend cannot run, those in use by name."""
        opts = self.options
        used = {"lengths": lengths, "mask": mask, "resets": resets,
                "truncate": opts.truncate, "remat": opts.remat, "matmul_dtype": opts.matmul_dtype,
                "return_carries": opts.return_carries or None,
                "input_dropout": self.input_dropout or None,
                "recurrent_dropout": self.recurrent_dropout or None,
                "zoneout": None if (self.zoneout_h, self.zoneout_c) == (None, None) else 1,
                }  # fmt: skip
        return {name: value for name, value in used.items() if value is not None}


def plan(opts: UnrollOptions, cell, *, lengths=None, mask=None, resets=None, key=None) -> Plan:
    """The rules that depend on the cell (a ``Cell``: its capabilities) and the data (which
    ``sequence.prepare`` has checked); the open choices resolved."""
    name = getattr(cell, "name", repr(cell))
    if opts.backend in FUSED_BACKENDS:
        linear = opts.backend == "fused_cpu" and getattr(cell, "linear", None) is not None
        honoured = FUSED_LINEAR_DATA if linear else FUSED_DATA[opts.backend]
        for data, value in (("lengths", lengths), ("mask", mask), ("resets", resets)):
            if value is not None and data not in honoured:
                _refuse("backend", data, f"backend={opts.backend!r} runs whole rows with no "
                        "lengths or per-step flags; use backend='scan'")  # fmt: skip
    if opts.matmul_dtype is not None and cell.fused is None:
        _refuse("matmul_dtype", "cell", f"matmul_dtype is an option of the fused-gate cells "
                f"(rj.simple, rj.lstm, rj.gru, rj.mgu); {name} is not one: cast inside its own "
                "step instead")  # fmt: skip
    training = key is not None if opts.training is None else opts.training
    z_h, z_c = zoneout_for(opts.zoneout, cell, name)
    if training and key is None and (opts.input_dropout or opts.recurrent_dropout or z_h or z_c):
        _refuse("training", "key", "dropout and zoneout in training draw masks: pass key= (a "
                "PRNG key), or training=False for evaluation")  # fmt: skip
    recurrent = opts.recurrent_dropout if training else 0.0
    if recurrent:
        check_recurrent_dropout(cell, name)
    mode = _resolve_mode(opts, cell, name, wraps=bool(recurrent) or z_h is not None or
                         z_c is not None)  # fmt: skip
    gradient = opts.gradient or "autodiff"
    if mode == "parallel" and cell.parallel_backward and opts.gradient is None:
        gradient = "manual"  # the linear recurrence's hand-written reverse scan: the fast one
    if mode == "parallel" and not cell.parallel_backward and gradient == "manual":
        _refuse("gradient", "mode", f"{name}'s parallel form has no hand-written backward "
                "(only a linear recurrence's LinearForm has one); JAX differentiates it: pass "
                "gradient='autodiff', or mode='sequential' for the hand-written step backward",
                )  # fmt: skip
    return Plan(opts, mode, gradient, z_h, z_c, training,
                opts.input_dropout if training else 0.0, recurrent)  # fmt: skip


def _resolve_mode(opts: UnrollOptions, cell, name: str, *, wraps: bool) -> str:
    """``mode=None``: parallel for a cell with a parallel form, unless an option needs steps
    (or ``gradient="manual"`` asks for a backward only its steps have)."""
    linear = cell.parallel is not None
    if opts.mode == "parallel":
        if not linear:
            _refuse("mode", "cell", f"mode='parallel' needs a linear cell (a linear "
                    f"recurrence such as rj.mingru, rj.minlstm, rj.lru); {name} runs step by "
                    "step: use mode='sequential'")  # fmt: skip
        if wraps:
            _refuse("mode", "zoneout", "zoneout and recurrent dropout run step by step: pass "
                    "mode='sequential'")  # fmt: skip
        return "parallel"
    steps_backward = opts.gradient == "manual" and not cell.parallel_backward  # the step's
    if opts.mode == "sequential" or not linear or wraps or steps_backward:
        return "sequential"
    return "sequential" if _set(opts, STEP_BY_STEP) else "parallel"


def zoneout_for(zoneout, cell, name: str) -> tuple[float | None, float | None]:
    """``(z_h, z_c)`` for ``cell``: one rate acts on ``h`` and, where the carry has one that
    zoneout may keep on its own (``checks.carry_fields``), ``c``; a pair is taken as asked
    (its ``z_c`` needs such a ``c``)."""
    if zoneout is None:
        return None, None
    fields = carry_fields(cell)
    one_rate = (zoneout, zoneout if "c" in fields else None)
    z_h, z_c = zoneout if isinstance(zoneout, tuple) else one_rate
    if z_h is not None and "h" not in fields:
        _refuse("zoneout", "cell", f"zoneout of h needs {name}'s hidden state as its carry or "
                "the carry's h field (a NamedTuple)")  # fmt: skip
    if z_c is not None and "c" not in fields:
        _refuse("zoneout", "cell", f"zoneout of c needs a carry with a c field that zoneout "
                f"may keep on its own; {name}'s has none: pass zoneout=(z_h, None) or one "
                "rate")  # fmt: skip
    return z_h, z_c


def check_recurrent_dropout(cell, name: str) -> None:
    """Recurrent dropout needs the cell to declare where it acts (``Cell.recurrent_dropout``)."""
    if cell.recurrent_dropout is None:
        _refuse("recurrent_dropout", "cell", f"{name} does not declare where recurrent dropout "
                "acts (it has no recurrent product for the mask to drop h in, or did not say "
                "which); the linear recurrences (minGRU, minLSTM, LRU) take input_dropout "
                "only. A custom cell declares it: rj.make_cell(..., recurrent_dropout=...)",
                )  # fmt: skip


def check_truncate(truncate) -> int | None:
    """None, or k >= 1 as a Python int (numpy ints accepted; bools refused, True is no k)."""
    if truncate is None:
        return None
    if (isinstance(truncate, (bool, np.bool_)) or not isinstance(truncate, (int, np.integer))
            or truncate < 1):  # fmt: skip
        raise ValueError(f"truncate must be None (full BPTT) or an int >= 1, got {truncate!r}")
    return int(truncate)


def check_step_flags(*, reverse: bool, mask, resets) -> None:
    """``mask`` and ``resets`` together read backwards: not built (``rj.unroll``, ``rj.bptt``)."""
    if reverse and mask is not None and resets is not None:
        # Read backwards, an episode restarts at the valid step before its first one, which a
        # mask with gaps moves by a data-dependent distance.
        raise ValueError("resets= with mask= and reverse=True is not supported; use lengths= "
                         "for right padding")  # fmt: skip


def check_rate(name: str, rate) -> float:
    """A rate in ``[0, 1)`` as a float; anything else raises ``ValueError``."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} rate must be a number in [0, 1), got {rate!r}")
    return float(rate)


def check_zoneout(zoneout):
    """None, one rate, or a pair ``(z_h, z_c)`` (None or 0 counts as off); None if all off."""
    if zoneout is None:
        return None
    if isinstance(zoneout, (tuple, list)):
        if len(zoneout) != 2:
            raise ValueError(f"zoneout must be a rate or a pair (z_h, z_c), got {zoneout!r}")
        pair = tuple(
            None if z is None else check_rate(f"zoneout {leaf}", z) or None
            for leaf, z in zip("hc", zoneout, strict=True)
        )
        return None if pair == (None, None) else pair
    return check_rate("zoneout", zoneout) or None


def _as_bool(name: str, value) -> bool:
    """A flag: a bool, or 0/1 (numpy's too)."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer))
                                               and value in (0, 1)):  # fmt: skip
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _refuse(first: str, second: str, why: str):
    """The one error for two options that do not combine: it names both."""
    raise ValueError(f"{first}= with {second}=: {why}")
