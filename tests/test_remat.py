"""``rj.unroll(..., remat=k)``: same values and float64 gradients as without, less memory."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELLS, assert_close, random_carry, random_params
from test_bench import load_bench

import rnn_jax as rj
from rnn_jax.remat import segment_length

ROOT = Path(__file__).resolve().parents[1]


def outputs_and_grads(cell, params, xs, carry, lengths, **options):
    """Outputs, and the gradients (w.r.t. params, xs, carry) of a loss reading them all."""

    def loss(params, xs, carry):
        final, hs = rj.unroll(cell, params, xs, carry, lengths=lengths, **options)
        value = jnp.sum(jnp.sin(hs)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))
        return value, (final, hs)

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    return jax.jit(grad)(params, xs, carry)


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("remat", [2, 7])  # T=5: a padded last segment; one padded segment
@pytest.mark.parametrize("masked", [False, True])  # masked also reads backwards
@pytest.mark.parametrize("gradient", ["autodiff", "manual"])
def test_remat_same_values_and_gradients_float64(x64, name, remat, masked, gradient):
    """Against plain autodiff, for remat with either gradient (manual: hand-written BPTT
    inside each segment, autodiff chaining the segments)."""
    cell, rng = CELLS[name], np.random.default_rng(0)
    batch, steps, inputs, hidden = 3, 5, 2, 4
    params = random_params(rng, cell, inputs, hidden)
    xs = jnp.asarray(rng.normal(size=(batch, steps, inputs)))
    carry = random_carry(rng, cell, batch, hidden)
    lengths = jnp.array([5, 2, 0]) if masked else None
    expected = outputs_and_grads(cell, params, xs, carry, lengths, reverse=masked)
    options = dict(reverse=masked, remat=remat, gradient=gradient)
    actual = outputs_and_grads(cell, params, xs, carry, lengths, **options)
    assert_close(actual, expected)


def readme_remat_figures() -> dict:
    """The README's remat claim, ``{T: (MiB without remat, with, with the manual gradient)}``,
    read from its text (so the test follows the README, not a copy of its numbers)."""
    text = " ".join((ROOT / "README.md").read_text().split())
    config = re.search(r"remat=\"sqrt\"`, LSTM B=32 I=64 H=256, XLA temp memory", text)
    autodiff = re.search(r"T=512 (\d+) -> (\d+) MiB \(\d+%\), T=4096 (\d+) -> (\d+) MiB", text)
    manual = re.search(r"\(`gradient=\"manual\", remat=\"sqrt\"`\) (\d+) and (\d+) MiB", text)
    assert config and autodiff and manual, "the README's remat sentence changed: update this test"
    base_512, remat_512, base_4096, remat_4096 = map(int, autodiff.groups())
    manual_512, manual_4096 = map(int, manual.groups())
    return {512: (base_512, remat_512, manual_512), 4096: (base_4096, remat_4096, manual_4096)}


@pytest.mark.parametrize("steps", [512, 4096])
def test_readme_remat_memory_figures(steps):
    """The README's figures, measured as experiments/bench.py measures them (its train step,
    its inputs, XLA's memory analysis, which is deterministic: compiled, never run), at the
    README's own configuration (LSTM B=32 I=64 H=256), in MiB rounded as there; the
    percentages (8% and 3.9%; 7% and 3.9% for the manual gradient) are of the same base."""
    bench = load_bench()
    cfg = (32, steps, 64, 256)
    x, y = bench.make_inputs(cfg)

    def mib(**options):
        make = bench.make_rnn_jax("lstm", cfg, "train", x, y, **options)
        return make("rnn_jax").memory_bytes / 2**20

    base, remat, manual = mib(), mib(remat="sqrt"), mib(remat="sqrt", gradient="manual")
    assert (round(base), round(remat), round(manual)) == readme_remat_figures()[steps]
    assert max(remat, manual) / base < {512: 0.085, 4096: 0.0395}[steps]


def test_segment_length_and_errors():
    assert segment_length(None, 100) is None
    assert segment_length("sqrt", 100) == 10
    assert segment_length(4, 100) == 4
    for bad in (0, -1, 2.5, "half", True):  # refused once, where the options are parsed
        with pytest.raises(ValueError, match="remat must be None, 'sqrt' or an int >= 1"):
            rj.UnrollOptions().replace(remat=bad)
    params = rj.lstm.init(jax.random.PRNGKey(0), 2, 3)
    with pytest.raises(ValueError, match="remat= with truncate="):
        rj.unroll(rj.lstm, params, jnp.ones((1, 4, 2)), remat=2, gradient="manual", truncate=2)
