"""rnn_jax: recurrent neural networks for JAX as pure functions.

Cells are modules of pure functions over parameter dicts (``rj.simple``, ``rj.lstm``,
``rj.gru``); ``rj.unroll`` runs one over a sequence with ``lax.scan``; ``rj.bptt`` is the
hand-written backward through time.
"""

from rnn_jax.bptt import bptt
from rnn_jax.cells import gru, lstm, simple
from rnn_jax.cells.base import Cell, LSTMCarry
from rnn_jax.gradcheck import check_gradients, hidden_grad_norms
from rnn_jax.layers import (
    bidirectional,
    init_bidirectional,
    init_stack,
    output_size,
    unroll_stack,
)
from rnn_jax.scan import unroll
from rnn_jax.summary import count_params, summary

__all__ = [
    "Cell",
    "LSTMCarry",
    "bidirectional",
    "bptt",
    "check_gradients",
    "count_params",
    "gru",
    "hidden_grad_norms",
    "init_bidirectional",
    "init_stack",
    "lstm",
    "output_size",
    "simple",
    "summary",
    "unroll",
    "unroll_stack",
]
