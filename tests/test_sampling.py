"""Sampling (rnn_jax.sampling): determinism, greedy/top-k/temperature, continuation of state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax.models import language_model
from rnn_jax.sampling import filter_logits, next_token, sample

V, H = 13, 24


@pytest.fixture(scope="module")
def lm():
    model = language_model(rj.lstm, V, H, embed_size=8)
    params = model.init(jax.random.key(0))
    # Sharpen the readout so greedy paths and samples are not all the same token.
    params["readout"]["w"] = params["readout"]["w"] * 6.0
    return model, params


PRIME = jnp.asarray([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], jnp.int32)


def constant_model(logits):
    """A 'language model' whose logits ignore the input: for checking the sampler's law."""

    def apply(params, tokens, carry=None):
        b, t = tokens.shape
        carry = jnp.zeros((b, 1)) if carry is None else carry
        return jnp.broadcast_to(params, (b, t, params.shape[-1])), carry + t

    return apply, jnp.asarray(logits, jnp.float32)


def test_deterministic_for_a_key(lm):
    model, params = lm
    kwargs = dict(num_steps=20, prime_tokens=PRIME, temperature=1.0)
    a, carry_a = sample(model.apply, params, jax.random.key(7), **kwargs)
    b, carry_b = sample(model.apply, params, jax.random.key(7), **kwargs)
    c, _ = sample(model.apply, params, jax.random.key(8), **kwargs)
    assert a.shape == (3, 20) and a.dtype == jnp.int32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(carry_a[0].h, carry_b[0].h)
    assert not np.array_equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < V


def test_greedy_top1_and_zero_temperature_agree(lm):
    model, params = lm
    kwargs = dict(num_steps=15, prime_tokens=PRIME)
    greedy, _ = sample(model.apply, params, jax.random.key(1), greedy=True, **kwargs)
    cold, _ = sample(model.apply, params, jax.random.key(2), temperature=0, **kwargs)
    top1, _ = sample(model.apply, params, jax.random.key(3), top_k=1, **kwargs)
    np.testing.assert_array_equal(greedy, cold)
    np.testing.assert_array_equal(greedy, top1)
    assert len(np.unique(np.asarray(greedy))) > 1


def test_samples_continue_from_the_primed_state(lm):
    """Teacher-forcing prime + samples through apply gives, at each sampled position, logits
    from which the sampler's own key draws exactly the token it returned."""
    model, params = lm
    key, n, temperature, top_k = jax.random.key(11), 12, 0.8, 5
    tokens, carry = sample(
        model.apply, params, key, num_steps=n, prime_tokens=PRIME,
        temperature=temperature, top_k=top_k,
    )  # fmt: skip
    seq = jnp.concatenate([PRIME, tokens[:, :-1]], axis=1)
    logits, final = model.apply(params, seq)
    p = PRIME.shape[1]
    for i, step_key in enumerate(jax.random.split(key, n)):
        redrawn = next_token(step_key, logits[:, p - 1 + i], temperature=temperature, top_k=top_k)
        np.testing.assert_array_equal(redrawn, tokens[:, i])
    # The returned carry has read the prime and all samples but the last.
    np.testing.assert_allclose(carry[0].h, final[0].h, atol=1e-5)
    np.testing.assert_allclose(carry[0].c, final[0].c, atol=1e-5)


def test_greedy_matches_teacher_forced_argmax_and_chains(lm):
    model, params = lm
    n = 10
    tokens, carry = sample(model.apply, params, None, num_steps=n, prime_tokens=PRIME, greedy=True)
    logits, _ = model.apply(params, jnp.concatenate([PRIME, tokens[:, :-1]], axis=1))
    np.testing.assert_array_equal(jnp.argmax(logits[:, PRIME.shape[1] - 1 :], -1), tokens)
    # Two chained calls (the last token primes the next call) equal one longer call.
    longer, _ = sample(model.apply, params, None, num_steps=2 * n, prime_tokens=PRIME, greedy=True)
    more, _ = sample(
        model.apply, params, None, num_steps=n, prime_tokens=tokens[:, -1:], carry=carry,
        greedy=True,
    )  # fmt: skip
    np.testing.assert_array_equal(jnp.concatenate([tokens, more], axis=1), longer)


def test_no_prime_starts_from_start_token(lm):
    model, params = lm
    key = jax.random.key(4)
    a, _ = sample(model.apply, params, key, num_steps=6, batch_size=2, start_token=3)
    b, _ = sample(model.apply, params, key, num_steps=6, prime_tokens=jnp.full((2, 1), 3))
    np.testing.assert_array_equal(a, b)
    c, _ = sample(model.apply, params, key, num_steps=6, prime_tokens=[3])  # 1-D prime: one row
    assert c.shape == (1, 6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_scales_the_distribution(temperature):
    """Empirical frequencies from a fixed-logits model follow softmax(logits / temperature)."""
    logits = np.array([2.0, 1.0, 0.0, -1.0])
    apply, params = constant_model(logits)
    rows, steps = 500, 8
    tokens, carry = sample(
        apply, params, jax.random.key(0), num_steps=steps, batch_size=rows,
        temperature=temperature,
    )  # fmt: skip
    freq = np.bincount(np.asarray(tokens).ravel(), minlength=4) / tokens.size
    expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
    # 4000 draws: each frequency's standard error is below 0.008.
    np.testing.assert_allclose(freq, expected, atol=0.03)
    assert float(carry[0, 0]) == steps  # the carry was threaded through every step


def test_top_k_keeps_only_the_k_most_likely():
    logits = np.array([0.5, 3.0, 2.0, -1.0, 2.9])
    apply, params = constant_model(logits)
    tokens, _ = sample(apply, params, jax.random.key(1), num_steps=8, batch_size=500, top_k=2)
    freq = np.bincount(np.asarray(tokens).ravel(), minlength=5) / tokens.size
    top = np.exp(logits[[1, 4]]) / np.exp(logits[[1, 4]]).sum()
    np.testing.assert_allclose(freq[[1, 4]], top, atol=0.03)
    assert freq[[0, 2, 3]].sum() == 0


def test_filter_logits_exact_k_with_ties():
    logits = jnp.asarray([[1.0, 3.0, 3.0, 3.0, 0.0]])
    kept = filter_logits(logits, top_k=2)
    assert int(jnp.isfinite(kept).sum()) == 2  # ties at the k-th value do not widen the set
    np.testing.assert_array_equal(filter_logits(logits, temperature=2.0), logits / 2)


def test_argument_errors(lm):
    model, params = lm
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_steps"):
        sample(model.apply, params, key, num_steps=0)
    with pytest.raises(ValueError, match="top_k"):
        sample(model.apply, params, key, num_steps=3, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        sample(model.apply, params, key, num_steps=3, temperature=-1.0)
    with pytest.raises(ValueError, match="prime_tokens"):
        sample(model.apply, params, key, num_steps=3, prime_tokens=jnp.zeros((2, 0), jnp.int32))
    with pytest.raises(ValueError, match="integers"):
        sample(model.apply, params, key, num_steps=3, prime_tokens=jnp.zeros((2, 1)))
