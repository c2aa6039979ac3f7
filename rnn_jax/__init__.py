"""rnn_jax: recurrent neural networks for JAX as pure functions.

Cells are objects of pure functions over parameter pytrees (``rj.simple``, ``rj.lstm``,
``rj.gru``, ``rj.mgu``, ``rj.layernorm_lstm``, xLSTM's ``rj.slstm`` and their variants,
``rj.conv_lstm(kernel_size)`` over 1-D and 2-D inputs, or your own from ``rj.make_cell``);
``rj.unroll`` runs one over a sequence with ``lax.scan``; ``rj.bptt`` is the hand-written
backward through time; ``rj.check_cell`` and ``rj.check_gradients`` prove a backward against
``jax.grad``.

The submodules (``rj.models``, ``rj.train``, ``rj.nnx``, ``rj.interop``, ...) load on first use.
"""

import importlib

from rnn_jax.bptt import bptt
from rnn_jax.cell import Cell, LinearForm, RecurrentCell, make_cell
from rnn_jax.cellcheck import CellReport, check_cell
from rnn_jax.cells import (
    gru,
    layernorm_lstm,
    lru,
    lstm,
    mgu,
    mingru,
    minlstm,
    mlstm,
    rglru,
    simple,
    slstm,
)  # fmt: skip
from rnn_jax.cells.base import LSTMCarry
from rnn_jax.cells.conv_lstm import conv_lstm
from rnn_jax.gradcheck import check_gradients, hidden_grad_norms
from rnn_jax.layers import (
    bidirectional,
    init_bidirectional,
    init_stack,
    output_size,
    unroll_stack,
)
from rnn_jax.linear import linear_scan
from rnn_jax.options import UnrollOptions
from rnn_jax.regularize import regularized
from rnn_jax.scan import unroll
from rnn_jax.summary import count_params, summary

# Loaded on first attribute access: flax.nnx, torch interop and the training loop are not
# needed to run a cell, and importing them all would slow ``import rnn_jax``. (cellcheck,
# gradcheck and options are imported above.)
SUBMODULES = (
    "atomic",
    "checkpoint",
    "data",
    "distributed",
    "interop",
    "launch",
    "models",
    "nnx",
    "remat",
    "sampling",
    "tbptt",
    "train",
)


def __getattr__(name):
    if name in SUBMODULES:
        return importlib.import_module(f"rnn_jax.{name}")
    raise AttributeError(f"module 'rnn_jax' has no attribute {name!r}")


__all__ = [
    "Cell",
    "CellReport",
    "LSTMCarry",
    "LinearForm",
    "RecurrentCell",
    "UnrollOptions",
    "bidirectional",
    "bptt",
    "check_cell",
    "check_gradients",
    "conv_lstm",
    "count_params",
    "gru",
    "hidden_grad_norms",
    "init_bidirectional",
    "init_stack",
    "layernorm_lstm",
    "linear_scan",
    "lru",
    "lstm",
    "make_cell",
    "mgu",
    "mingru",
    "minlstm",
    "mlstm",
    "output_size",
    "regularized",
    "rglru",
    "simple",
    "slstm",
    "summary",
    "unroll",
    "unroll_stack",
]
