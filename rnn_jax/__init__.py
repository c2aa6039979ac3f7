"""rnn_jax: recurrent neural networks for JAX as pure functions.

Cells are modules of pure functions over parameter dicts (``rj.simple``, ``rj.lstm``,
``rj.gru``); ``rj.unroll`` runs one over a sequence with ``lax.scan``; ``rj.bptt`` is the
hand-written backward through time.
"""

from rnn_jax.bptt import bptt
from rnn_jax.cells import gru, lstm, simple
from rnn_jax.cells.base import Cell, LSTMCarry
from rnn_jax.scan import unroll

__all__ = ["Cell", "LSTMCarry", "bptt", "gru", "lstm", "simple", "unroll"]
