"""Parameter counting and a Keras-like summary table for any params pytree."""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["count_params", "summary"]  # fmt: skip


def count_params(params) -> int:
    """Total number of scalars in a params pytree (``simple.init(key, 10, 3)`` -> 42).

    Examples:
      >>> import jax, rnn_jax as rj
      >>> rj.count_params(rj.simple.init(jax.random.PRNGKey(0), 10, 3))  # Keras' SimpleRNN(3)
      42
    """
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def summary(params) -> str:
    """A table of every leaf: path, shape, dtype, count; then the total.

    Examples:
      >>> import jax, rnn_jax as rj
      >>> print(rj.summary(rj.simple.init(jax.random.PRNGKey(0), 10, 3)))
      ----------------------------------
      parameter  shape    dtype    count
      ----------------------------------
      ['b']      (3,)     float32      3
      ['w_h']    (3, 3)   float32      9
      ['w_x']    (10, 3)  float32     30
      ----------------------------------
      Total params: 42
    """
    rows = [
        (jax.tree_util.keystr(path), str(tuple(leaf.shape)), str(leaf.dtype), str(np.size(leaf)))
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    ]
    headers = ("parameter", "shape", "dtype", "count")
    widths = [max(map(len, column)) for column in zip(headers, *rows, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    rule = "-" * len(line)
    align = (str.ljust, str.ljust, str.ljust, str.rjust)  # the counts right-aligned
    body = ["  ".join(a(c, w) for a, c, w in zip(align, r, widths, strict=True)) for r in rows]
    total = f"Total params: {count_params(params):,}"
    return "\n".join([rule, line, rule, *body, rule, total])
