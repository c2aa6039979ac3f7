"""Flax NNX adapters: rnn_jax layers as ``nnx.Module`` s.

The modules only *hold* the parameters (as ``nnx.Param``); the computation is the pure
``rj.unroll_stack``, so an adapter gives exactly what the functional API gives on the same
parameters, and anything built on it (``nnx.Optimizer``, ``nnx.jit``, ``nnx.grad``) sees
plain NNX state. ``module.params`` returns the pure pytree, ``RNN.from_params`` wraps one.

    model = rj.nnx.LSTM(input_size=8, hidden_size=32, num_layers=2, rngs=nnx.Rngs(0))
    finals, hs = model(xs, lengths=lengths)        # xs (B, T, 8) -> hs (B, T, 32)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rnn_jax.cells import gru, lstm, simple
from rnn_jax.checks import as_cell, check_params
from rnn_jax.layers import MERGES, directions, init_stack, is_bidirectional, unroll_stack
from rnn_jax.options import NAMES as OPTION_NAMES
from rnn_jax.options import UnrollOptions, check_choice, parse

__all__ = ["GRU", "LSTM", "RNN", "SimpleRNN"]


class _CellParams(nnx.Module):
    """One direction of one layer: each leaf of the cell's params as an ``nnx.Param``,
    named by its path (``w_x``; ``gains_x`` for ``{"gains": {"x": ...}}``)."""

    def __init__(self, params):
        paths, treedef = jax.tree_util.tree_flatten_with_path(params)
        self.treedef = nnx.static(treedef)
        self.names = tuple(_attribute_name(path) for path, _ in paths)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"parameter paths collide as attribute names: {self.names}")
        for name, (_, leaf) in zip(self.names, paths, strict=True):
            setattr(self, name, nnx.Param(leaf))

    def pure(self):
        leaves = [getattr(self, name)[...] for name in self.names]
        return jax.tree.unflatten(self.treedef, leaves)


def _attribute_name(path) -> str:
    name = jax.tree_util.keystr(path, simple=True, separator="_")
    return name if name.isidentifier() else f"p_{name}"


class _BiParams(nnx.Module):
    def __init__(self, params: dict):
        self.fwd = _CellParams(params["fwd"])
        self.bwd = _CellParams(params["bwd"])

    def pure(self) -> dict:
        return {"fwd": self.fwd.pure(), "bwd": self.bwd.pure()}


class RNN(nnx.Module):
    """A stack of recurrent layers over any rnn_jax cell.

    Args:
      cell: ``rj.simple``, ``rj.simple.relu``, ``rj.lstm``, ``rj.gru``.
      input_size, hidden_size: feature sizes I and H.
      num_layers: layers in the stack; layer l > 0 reads layer l-1's outputs.
      bidirectional: each layer runs both ways; outputs merged by ``merge``
        (``"concat"`` -> 2H features, or ``"sum"``, ``"mean"``, ``"mul"``).
      dropout: inverted-dropout rate between layers, applied while ``deterministic`` is
        False (``model.train()``; ``model.eval()`` turns it off), with keys from the
        ``"dropout"`` stream of ``rngs`` (or of the ``rngs`` given to ``__call__``).
      options: an ``rj.UnrollOptions`` for every layer's ``rj.unroll``; any of its fields
        may also be given as a keyword (``time_major``, ``unroll``, ``gradient="manual"``
        for the hand-written BPTT, ``mode``, ``remat``, ...), parsed once here. The
        regularisers (``input_dropout``, ``recurrent_dropout``, ``zoneout``) act while
        ``deterministic`` is False (keys from the ``dropout`` stream); ``model.eval()`` turns
        dropout off and zoneout to its evaluation mix.
      rngs: ``nnx.Rngs``; ``params`` stream for the initial weights, ``dropout`` for masks.
      dtype, initializer, **kwargs: the keywords that are not unroll options go to the
        cell's ``init``.
    """

    def __init__(
        self,
        cell,
        input_size: int | None = None,
        hidden_size: int | None = None,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        merge: str = "concat",
        dropout: float = 0.0,
        deterministic: bool = False,
        rngs: nnx.Rngs | None = None,
        params=None,
        dtype=jnp.float32,
        options: UnrollOptions | None = None,
        **kwargs,
    ):
        cell = as_cell(cell)
        unroll_kwargs = {name: kwargs.pop(name) for name in list(kwargs) if name in OPTION_NAMES}
        options = parse(options, **unroll_kwargs)  # a bad option or pair raises here
        if params is None:
            if input_size is None or hidden_size is None or rngs is None:
                raise TypeError("RNN needs input_size, hidden_size and rngs (or params=...)")
            params = init_stack(
                cell, rngs.params(), input_size, hidden_size, num_layers,
                bidirectional=bidirectional, merge=merge, dtype=dtype, **kwargs,
            )  # fmt: skip
        layers = list(params) if isinstance(params, (list, tuple)) else [params]
        check_choice("merge", merge, sorted(MERGES))
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not layers:
            raise ValueError("an RNN needs at least one layer")
        for layer in layers:
            for part in directions(layer):
                check_params(cell, part)
        self.cell = nnx.static(cell)
        self.layers = nnx.List(
            [_BiParams(p) if is_bidirectional(p) else _CellParams(p) for p in layers]
        )
        self.merge = merge
        self.dropout = dropout
        self.options = nnx.static(options)
        self.deterministic = deterministic
        # Like nnx.Dropout: a forked stream, so the module owns its dropout key state.
        self.rngs = rngs["dropout"].fork() if rngs is not None else nnx.data(None)

    @classmethod
    def from_params(cls, cell, params, **kwargs) -> RNN:
        """Wrap existing pure params (a stack from ``rj.init_stack``, ``interop.from_torch``,
        ...; a single layer is taken as a stack of one) without re-initialising. ``kwargs``:
        the constructor's options (merge, dropout, rngs, ...)."""
        return RNN(cell, params=params, **kwargs)

    @property
    def params(self) -> list:
        """The parameters as the pure stack pytree that ``rj.unroll_stack`` takes."""
        return [layer.pure() for layer in self.layers]

    def __call__(
        self,
        xs: jax.Array,
        *,
        lengths: jax.Array | None = None,
        carry=None,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | jax.Array | None = None,
    ):
        """``xs (B, T, I)`` (``(T, B, I)`` time-major; one sequence ``(T, I)``) -> ``(finals, hs)``.

        ``finals``: one final carry per layer (a ``(fwd, bwd)`` pair for bidirectional
        layers); ``hs``: the last layer's outputs ``(B, T, H or 2H)``. ``lengths``,
        ``carry``: as in ``rj.unroll_stack``. ``deterministic``/``rngs`` override the
        module's for this call (as ``nnx.Dropout``).
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        key = None
        between = self.dropout > 0.0 and len(self.layers) > 1
        if (between or self.options.regularizing) and not deterministic:
            key = self._dropout_key(rngs)
        return unroll_stack(
            self.cell, self.params, xs, carry, lengths=lengths, merge=self.merge,
            dropout=self.dropout, key=key, options=self.options,
            training=not deterministic,
        )  # fmt: skip

    def _dropout_key(self, rngs) -> jax.Array:
        rngs = self.rngs if rngs is None else rngs
        if rngs is None:
            raise ValueError(
                "dropout > 0 and deterministic is False, but no rngs: pass rngs=nnx.Rngs(...) "
                "to the constructor or the call, or call model.eval() for inference"
            )
        if isinstance(rngs, nnx.Rngs):
            return rngs.dropout()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        return rngs

    def set_view(self, deterministic: bool | None = None):
        """Used by ``nnx.view`` (as ``nnx.Dropout``)."""
        if deterministic is not None:
            self.deterministic = deterministic


class SimpleRNN(RNN):
    """``RNN`` over the Elman cell; ``activation="relu"`` for ``rj.simple.relu``."""

    def __init__(self, input_size: int, hidden_size: int, *, activation: str = "tanh", **kw):
        if activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}")
        cell = simple.relu if activation == "relu" else simple.cell
        super().__init__(cell, input_size, hidden_size, **kw)


class LSTM(RNN):
    """``RNN`` over ``rj.lstm`` (forget-gate bias 1.0 unless ``forget_bias`` says otherwise)."""

    def __init__(self, input_size: int, hidden_size: int, **kw):
        super().__init__(lstm.cell, input_size, hidden_size, **kw)


class GRU(RNN):
    """``RNN`` over ``rj.gru`` (reset gate after the matmul, as PyTorch)."""

    def __init__(self, input_size: int, hidden_size: int, **kw):
        super().__init__(gru.cell, input_size, hidden_size, **kw)
