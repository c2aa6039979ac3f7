"""Generation from a language model, one token at a time, jitted with ``lax.scan``.

    tokens, carry = sample(model.apply, params, key, num_steps=200,
                           prime_tokens=vocab.encode("ROMEO:\\n")[None], temperature=0.8)
    text = vocab.decode(tokens[0])

The model reads the prime, then each sampled token is fed back as the next input, the state
carried throughout. The carry contract (what makes generation resumable): the returned
``final_carry`` is the state after reading the prime and every sampled token *except the
last*, so

    more, carry = sample(apply, params, key2, num_steps=n, prime_tokens=tokens[:, -1:],
                         carry=carry)

continues the same stream exactly, as if one longer call had run (the last token is the
prime of the next call; nothing is read twice).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from rnn_jax.tbptt import zero_carry
from rnn_jax.train import PyTree

__all__ = ["filter_logits", "next_token", "sample"]


def filter_logits(logits: jax.Array, *, temperature=1.0, top_k: int | None = None) -> jax.Array:
    """The logits a sampler draws from: ``logits / temperature``, with everything outside the
    ``top_k`` largest set to ``-inf``. ``(..., V) -> (..., V)``; ``temperature > 0``.

    Ties at the k-th value are broken towards lower ids (as ``lax.top_k``), so exactly k
    entries survive and ``top_k=1`` is the argmax.

    Examples:
      >>> import jax.numpy as jnp
      >>> from rnn_jax.sampling import filter_logits
      >>> filter_logits(jnp.array([1.0, 3.0, 2.0, 0.0]), temperature=0.5, top_k=2)
      Array([-inf,   6.,   4., -inf], dtype=float32)
    """
    logits = logits / jnp.asarray(temperature, logits.dtype)
    if top_k is None or top_k >= logits.shape[-1]:
        return logits
    _, keep = jax.lax.top_k(logits, top_k)  # (..., k) indices, exact k even with ties
    mask = jnp.zeros(logits.shape, bool)
    mask = jnp.put_along_axis(mask, keep, True, axis=-1, inplace=False)
    return jnp.where(mask, logits, -jnp.inf)


def next_token(
    key, logits: jax.Array, *, temperature=1.0, top_k: int | None = None, greedy: bool = False
) -> jax.Array:
    """One draw per row: ``(B, V) -> (B,)`` int32. ``greedy`` takes the argmax.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from rnn_jax.sampling import next_token
      >>> logits = jnp.array([[0.0, 5.0, 1.0], [2.0, 0.0, 9.0]])
      >>> next_token(None, logits, greedy=True)
      Array([1, 2], dtype=int32)
      >>> next_token(jax.random.PRNGKey(0), logits, top_k=1)  # top_k=1 is the argmax too
      Array([1, 2], dtype=int32)
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


def sample(
    model_apply: Callable,
    params: PyTree,
    key,
    *,
    num_steps: int,
    prime_tokens=None,
    carry: PyTree = None,
    temperature=1.0,
    top_k: int | None = None,
    greedy: bool = False,
    batch_size: int = 1,
    start_token: int = 0,
) -> tuple[jax.Array, PyTree]:
    """Sample ``num_steps`` tokens after reading ``prime_tokens``; returns ``(tokens, carry)``.

    Args:
      model_apply: ``apply(params, tokens (B, T), carry=None) -> (logits (B, T, V), carry)``.
      params: the model's parameters.
      key: a ``jax.random`` key; the same key gives the same tokens (None only if greedy).
      num_steps: how many tokens to generate.
      prime_tokens: ``(B, P)`` ints (or ``(P,)`` for one row), ``P >= 1``: the model reads
        them (teacher-forced) and the first sample is its prediction after the last one.
        None means ``batch_size`` rows of the single token ``start_token`` (for a char vocab
        built with `Vocab.from_text` on text with newlines, id 0 is ``"\\n"``, the
        natural "start of a line / name").
      carry: the state before the prime (e.g. a previous call's ``final_carry``, see the
        module docstring); None means the zero state.
      temperature: divides the logits; < 1 sharpens, > 1 flattens. ``0`` means greedy.
      top_k: sample only among the k most likely tokens (None: all).
      greedy: argmax at every step (deterministic; ``key`` is unused).

    Returns:
      ``tokens``: ``(B, num_steps)`` int32, the sampled tokens (the prime not included);
      ``final_carry``: the state after the prime and ``tokens[:, :-1]``.

    Examples:
      >>> import jax, rnn_jax as rj
      >>> from rnn_jax import models, sampling
      >>> model = models.language_model(rj.gru, vocab_size=5, hidden_size=8)
      >>> params = model.init(jax.random.PRNGKey(0))
      >>> tokens, carry = sampling.sample(model.apply, params, jax.random.PRNGKey(1), num_steps=6,
      ...                                 prime_tokens=[1, 2, 3], temperature=0.8)
      >>> tokens.shape, tokens.dtype, bool(((tokens >= 0) & (tokens < 5)).all())
      ((1, 6), dtype('int32'), True)
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if isinstance(temperature, (int, float)):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        greedy = greedy or temperature == 0
    if key is None:
        if not greedy:
            raise ValueError("sampling needs a key (only greedy decoding may pass key=None)")
        key = jax.random.key(0)  # unused by greedy steps; keeps the scan's inputs uniform
    if prime_tokens is None:
        prime_tokens = jnp.full((batch_size, 1), start_token, jnp.int32)
    prime_tokens = jnp.asarray(prime_tokens)
    if prime_tokens.ndim == 1:
        prime_tokens = prime_tokens[None]
    if prime_tokens.ndim != 2 or prime_tokens.shape[1] < 1:
        raise ValueError(f"prime_tokens must be (B, P) with P >= 1, got {prime_tokens.shape}")
    if not jnp.issubdtype(prime_tokens.dtype, jnp.integer):
        raise ValueError(f"prime_tokens must be integers, got {prime_tokens.dtype}")
    return _sample(
        model_apply, params, key, prime_tokens.astype(jnp.int32), carry,
        jnp.asarray(1.0 if greedy else temperature, jnp.float32),
        num_steps=num_steps, top_k=top_k, greedy=greedy,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("num_steps", "top_k", "greedy"))
def _sample(model_apply, params, key, prime, carry, temperature, *, num_steps, top_k, greedy):
    if carry is None:
        carry = zero_carry(lambda p, t: model_apply(p, t)[1], params, prime[:, :1])
    if prime.shape[1] > 1:
        # Read all but the last prime token; the last is the first input of the loop below.
        _, carry = model_apply(params, prime[:, :-1], carry)

    def body(state, step_key):
        carry, token = state
        logits, carry = model_apply(params, token[:, None], carry)
        new = next_token(
            step_key, logits[:, 0], temperature=temperature, top_k=top_k, greedy=greedy
        )
        return (carry, new), new

    (carry, _), tokens = jax.lax.scan(body, (carry, prime[:, -1]), jax.random.split(key, num_steps))
    return tokens.T, carry  # scan stacks time first: (num_steps, B) -> (B, num_steps)
