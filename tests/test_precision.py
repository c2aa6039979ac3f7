"""``rj.unroll(..., matmul_dtype=jnp.bfloat16)``: bf16 matrix products, float32 everything else.

bfloat16 keeps 8 significand bits (relative rounding 2^-8 ~ 0.4%); with float32 accumulation
and float32 gate math the outputs stay within a few 1e-2 of float32 on unit-scale data, which
is the tolerance used here. Gradients (autodiff and the manual backward, which also runs its
products in bf16) must agree with float32 to a relative 5e-2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELLS, random_params

import rnn_jax as rj

BF16_ATOL = 3e-2
BF16_GRAD_RTOL = 5e-2


def setup(name):
    cell, rng = CELLS[name], np.random.default_rng(1)
    params = random_params(rng, cell, 6, 16, dtype=np.float32, scale=0.3)
    xs = jnp.asarray(rng.normal(size=(4, 7, 6)), jnp.float32)
    return cell, params, xs


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
def test_bf16_outputs_close_and_float32(name):
    cell, params, xs = setup(name)
    final32, hs32 = rj.unroll(cell, params, xs)
    final16, hs16 = rj.unroll(cell, params, xs, matmul_dtype=jnp.bfloat16)
    assert hs16.dtype == jnp.float32
    assert all(c.dtype == jnp.float32 for c in jax.tree.leaves(final16))
    np.testing.assert_allclose(hs16, hs32, atol=BF16_ATOL)
    assert float(jnp.max(jnp.abs(hs16 - hs32))) > 0  # really ran in lower precision


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("gradient", ["autodiff", "manual"])
def test_bf16_gradients_close(name, gradient):
    cell, params, xs = setup(name)

    def loss(params, **options):
        return jnp.sum(rj.unroll(cell, params, xs, **options)[1] ** 2)

    g32 = jax.grad(loss)(params)
    g16 = jax.grad(lambda p: loss(p, gradient=gradient, matmul_dtype=jnp.bfloat16))(params)
    for key in g32:
        assert g16[key].dtype == jnp.float32
        scale = float(jnp.max(jnp.abs(g32[key])))
        np.testing.assert_allclose(g16[key], g32[key], atol=BF16_GRAD_RTOL * scale)


def test_classifier_passes_matmul_dtype_to_its_layers():
    """``models.classifier(matmul_dtype=)`` (what ``mnist_rows.py --matmul-dtype`` uses): the
    logits move by bf16 rounding only, and stay float32."""
    from rnn_jax import models

    _, _, xs = setup("lstm")
    logits = {}
    for dtype in (None, jnp.bfloat16):
        init, apply = models.classifier(rj.lstm, 16, 5, num_layers=2, matmul_dtype=dtype)
        logits[dtype] = apply(init(jax.random.key(0), xs.shape[-1]), xs)
    assert logits[jnp.bfloat16].dtype == jnp.float32
    np.testing.assert_allclose(logits[jnp.bfloat16], logits[None], atol=BF16_ATOL)
    assert float(jnp.max(jnp.abs(logits[jnp.bfloat16] - logits[None]))) > 0
