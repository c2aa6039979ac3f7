"""Residual blocks (rnn_jax.blocks): parallel and sequential recurrences give the same deep
model, values and gradients in float64; padding does not leak into valid steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close

import rnn_jax as rj
from rnn_jax.blocks import apply_residual, init_residual, rms_norm


@pytest.mark.parametrize("cell", [rj.mingru, rj.lru], ids=["mingru", "lru"])
def test_residual_stack_parallel_equals_sequential(cell, x64):
    params = init_residual(cell, jax.random.PRNGKey(0), 2, width=4, num_layers=2,
                           dtype=jnp.float64)  # fmt: skip
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(3, 7, 2)))
    lengths = jnp.array([7, 4, 1])

    def loss(mode):
        def value(params):
            finals, hs = apply_residual(cell, params, xs, lengths=lengths, mode=mode)
            return jnp.sum(jnp.sin(hs)) + jnp.sum(jnp.abs(finals[-1][0]) ** 2)

        return jax.jit(jax.value_and_grad(value))

    assert_close(loss("parallel")(params), loss("sequential")(params))


def test_padding_does_not_reach_valid_steps():
    params = init_residual(rj.minlstm, jax.random.PRNGKey(0), 3, width=8, num_layers=2)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 3))
    noisy = xs.at[1, 3:].set(100.0)  # row 1's padding, changed
    lengths = jnp.array([6, 3])
    finals, hs = apply_residual(rj.minlstm, params, xs, lengths=lengths)
    finals_noisy, hs_noisy = apply_residual(rj.minlstm, params, noisy, lengths=lengths)
    np.testing.assert_array_equal(hs, hs_noisy)
    assert bool(jnp.all(hs[1, 3:] == 0))
    np.testing.assert_array_equal(finals[1], finals_noisy[1])


def test_rms_norm_and_errors():
    x = jnp.array([[1.0, -2.0, 2.0]])
    assert_close(rms_norm(jnp.ones(3), x), x / np.sqrt(3.0), 1e-6)
    params = init_residual(rj.mingru, jax.random.PRNGKey(0), 3, width=4, num_layers=2)
    with pytest.raises(ValueError, match=r"one carry per block \(2\), got 1"):
        apply_residual(rj.mingru, params, jnp.ones((1, 2, 3)), [None])
    with pytest.raises(ValueError, match="num_layers, width and expansion must be >= 1"):
        init_residual(rj.mingru, jax.random.PRNGKey(0), 3, width=4, num_layers=0)


def test_residual_classifier_pools_valid_steps():
    from rnn_jax import models
    from rnn_jax.blocks import apply_residual

    model = models.classifier(rj.mingru, hidden_size=8, num_classes=3, num_layers=2,
                              block="residual", pool="mean")  # fmt: skip
    params = model.init(jax.random.PRNGKey(0), input_size=2)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 2))
    lengths = jnp.array([5, 2])
    _, hs = apply_residual(rj.mingru, params["rnn"], xs, lengths=lengths)
    pooled = jnp.stack([hs[0].mean(0), hs[1, :2].mean(0)])
    expected = pooled @ params["readout"]["w"] + params["readout"]["b"]
    assert_close(model.apply(params, xs, lengths=lengths), expected, 1e-6)
    last = models.classifier(rj.mingru, 8, 3, num_layers=2, block="residual")
    logits = last.apply(params, xs, lengths=lengths)
    assert_close(logits[1], hs[1, 1] @ params["readout"]["w"] + params["readout"]["b"], 1e-6)


def test_residual_language_model_streams_in_chunks():
    """Two chunks with the carries passed on = the whole sequence at once."""
    from rnn_jax import models

    model = models.language_model(rj.lru, vocab_size=7, hidden_size=8, num_layers=2,
                                  embed_size=4, block="residual")  # fmt: skip
    params = model.init(jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 9), 0, 7)
    whole, _ = model.apply(params, tokens)
    first, carries = model.apply(params, tokens[:, :4])
    second, _ = model.apply(params, tokens[:, 4:], carries)
    assert_close(jnp.concatenate([first, second], axis=1), whole, 1e-5)


def test_residual_models_refuse_plain_layer_options():
    from rnn_jax import models

    with pytest.raises(ValueError, match=r"block='residual' does not take \['bidirectional'\]"):
        models.classifier(rj.mingru, 8, 3, block="residual", bidirectional=True)
    with pytest.raises(ValueError, match="block must be one of"):
        models.language_model(rj.mingru, 7, 8, block="deep")
    with pytest.raises(ValueError, match="pool must be one of"):
        models.classifier(rj.mingru, 8, 3, pool="max")


def test_mixed_residual_stack_runs_each_block_with_its_own_cell():
    """A list of cells (xLSTM's mLSTM/sLSTM mix): block i is ``cell[i]``'s residual block, so
    the stack equals the blocks applied one by one; a list of the wrong length is refused."""
    cells = [rj.mlstm, rj.slstm.configured(num_heads=2), rj.mingru]
    params = init_residual(cells, jax.random.PRNGKey(0), 3, width=4, num_layers=3)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    finals, hs = apply_residual(cells, params, xs)
    assert [type(f).__name__ for f in finals[:2]] == ["MLSTMCarry", "SLSTMCarry"]
    assert finals[2].shape == (2, 4)  # the minGRU's carry is its h
    x = xs @ params["encoder"]["w"] + params["encoder"]["b"]
    for cell, block in zip(cells, params["blocks"], strict=True):
        x = _residual_block(cell, block, x)
    assert_close(hs, rms_norm(params["norm"], x), 1e-5)
    with pytest.raises(ValueError, match=r"one cell per block \(2\), got 3"):
        apply_residual(cells, {**params, "blocks": params["blocks"][:2]}, xs)


def _residual_block(cell, block, x):
    """One residual block by its definition (the module docstring's three lines)."""
    _, mixed = rj.unroll(cell, block["rnn"], rms_norm(block["norm"], x))
    hidden = jax.nn.gelu(mixed @ block["w_gate"]) * (mixed @ block["w_up"])
    return x + hidden @ block["w_out"]


def test_hawk_and_mixed_models_are_the_block_stacks_with_a_readout():
    """``block="hawk"`` is ``apply_hawk`` (the RG-LRU's heads from the cell) and a list of cells
    is ``apply_residual`` of that list, each under the model's embedding and readout; a cell a
    stack cannot run is refused by name."""
    from rnn_jax import models
    from rnn_jax.blocks import apply_hawk

    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, 11)
    hawk = models.language_model(rj.rglru.with_heads(2), vocab_size=11, hidden_size=4,
                                 num_layers=2, embed_size=3, block="hawk")  # fmt: skip
    params = hawk.init(jax.random.PRNGKey(0))
    assert params["rnn"]["blocks"][0]["rglru"]["w_r"].shape[0] == 2  # two gate blocks
    logits, _ = hawk.apply(params, tokens)
    _, hs = apply_hawk(params["rnn"], params["embed"][tokens])
    expected = models.dense(params["readout"], hs)
    assert_close(logits, expected, 1e-6)
    first, carries = hawk.apply(params, tokens[:, :4])
    assert_close(jnp.concatenate([first, hawk.apply(params, tokens[:, 4:], carries)[0]], 1),
                 logits, 1e-5)  # fmt: skip
    cells = [rj.mlstm, rj.slstm.configured(num_heads=2)]
    mixed = models.language_model(cells, 11, 4, num_layers=2, embed_size=3, block="residual")
    params = mixed.init(jax.random.PRNGKey(0))
    expected = apply_residual(cells, params["rnn"], params["embed"][tokens])[1]
    assert_close(mixed.apply(params, tokens)[0], models.dense(params["readout"], expected), 1e-6)
    classifier = models.classifier(rj.rglru, 4, 3, block="hawk")
    logits = classifier.apply(classifier.init(jax.random.PRNGKey(0), 5), jnp.ones((2, 7, 5)))
    assert logits.shape == (2, 3)
    with pytest.raises(ValueError, match="Hawk stack runs the RG-LRU .* got the cell 'lstm'"):
        models.language_model(rj.lstm, 11, 4, block="hawk")
    with pytest.raises(ValueError, match="list of cells .* needs block='residual'"):
        models.language_model(cells, 11, 4, block="hawk")
    with pytest.raises(ValueError, match=r"block='hawk' does not take \['dropout'\]"):
        models.language_model(rj.rglru, 11, 4, block="hawk", dropout=0.5)
