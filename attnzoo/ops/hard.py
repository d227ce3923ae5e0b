"""Hard (top-k) attention with a straight-through gradient.

Each query keeps only its ``k`` highest-scoring keys (in the spirit of
Gupta et al., "Memory-efficient Transformers via Top-k Attention", 2021, and
Zhao et al., "Explicit Sparse Transformer", 2019):

    A_hard = softmax over the top-k scores of each row (0 elsewhere),
    A      = A_soft + stop_gradient(A_hard - A_soft),

so the forward pass uses the sparse weights while gradients flow through the
dense softmax ``A_soft`` to every key (the straight-through estimator of
Bengio et al., 2013).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnzoo._checks import check_positive
from attnzoo.ops.dot_product import _check_qkv, _default_scale, attention_scores, map_query_chunks

Array = jax.Array


def hard_attention_weights(query: Array, key: Array, top_k: int, scale: float | None = None) -> Array:
    """Straight-through top-k weights ``(..., Nq, Nk)`` in float32.

    Exactly ``top_k`` keys per query have non-zero forward weight (ties are
    broken towards the lower key index by ``lax.top_k``).
    """
    check_positive(top_k, "top_k")
    if top_k > key.shape[-2]:
        raise ValueError(f"top_k={top_k} exceeds the number of keys {key.shape[-2]}")
    scores = attention_scores(query, key, _default_scale(query, scale))
    soft = jax.nn.softmax(scores, axis=-1)
    _, idx = jax.lax.top_k(jax.lax.stop_gradient(scores), top_k)
    keep = jax.nn.one_hot(idx, scores.shape[-1], dtype=jnp.bool_).any(axis=-2)
    hard = jax.nn.softmax(jnp.where(keep, scores, -jnp.inf), axis=-1)
    return soft + jax.lax.stop_gradient(hard - soft)


def hard_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    top_k: int,
    scale: float | None = None,
    memory_efficient: bool = False,
    query_chunk_size: int = 1024,
) -> Array:
    """``out = A V`` with the straight-through top-k weights ``A``.

    Shapes as :func:`attnzoo.ops.dot_product_attention`. With
    ``memory_efficient`` the queries are processed in chunks (exact: top-k
    is a per-query operation), so peak memory is ``query_chunk_size x Nk``.
    """
    _check_qkv(query, key, value)
    batch_shape = query.shape[:-2]
    q = query.reshape((-1,) + query.shape[-2:])
    k = key.reshape((-1,) + key.shape[-2:])
    v = value.reshape((-1,) + value.shape[-2:])

    def attend(q_chunk: Array) -> Array:
        weights = hard_attention_weights(q_chunk, k, top_k, scale)
        return jnp.einsum("bqk,bkd->bqd", weights.astype(value.dtype), v)

    out = map_query_chunks(attend, (q,), query_chunk_size) if memory_efficient else attend(q)
    return out.reshape(batch_shape + out.shape[-2:])
