"""Scaled dot-product attention, dense and memory-bounded (exact).

Everything else in :mod:`attnzoo.ops` that needs a softmax over an N x N map
is written on top of these two functions, so the memory-bounded path is
implemented (and tested) once.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from attnzoo._checks import check_floating, check_positive

Array = jax.Array


def _check_qkv(query: Array, key: Array, value: Array) -> None:
    for name, arr in (("query", query), ("key", key), ("value", value)):
        if arr.ndim < 2:
            raise ValueError(f"{name} must have rank >= 2 (..., N, d); got shape {arr.shape}")
        check_floating(arr, name)
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query and key must share their last axis; got query {query.shape}, key {key.shape}"
        )
    if key.shape[:-1] != value.shape[:-1]:
        raise ValueError(
            f"key and value must agree on all axes but the last; got key {key.shape}, "
            f"value {value.shape}"
        )
    if query.shape[:-2] != key.shape[:-2]:
        raise ValueError(
            f"query and key must share their batch axes; got query {query.shape}, key {key.shape}"
        )


def _default_scale(query: Array, scale: float | None) -> float:
    return query.shape[-1] ** -0.5 if scale is None else scale


def attention_scores(query: Array, key: Array, scale: float = 1.0) -> Array:
    """Float32 scores ``scale * Q K^T`` of shape ``(..., Nq, Nk)``."""
    check_floating(query, "query")
    check_floating(key, "key")
    scores = jnp.einsum("...qd,...kd->...qk", query, key, preferred_element_type=jnp.float32)
    return scores * scale if scale != 1.0 else scores


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    bias: Array | None = None,
    mask: Array | None = None,
    scale: float | None = None,
    weights_fn: Callable[[Array], Array] | None = None,
) -> Array:
    """Dense attention ``softmax(scale * Q K^T + bias) V``.

    Shapes: query ``(..., Nq, d)``, key ``(..., Nk, d)``, value ``(..., Nk, dv)``;
    ``bias`` (additive) and ``mask`` (boolean, True = attend) broadcast to
    ``(..., Nq, Nk)``. ``scale`` defaults to ``1/sqrt(d)``; pass ``1.0`` for
    DANet-style unscaled energies. The softmax is computed in float32 whatever
    the input dtype; the result has ``value.dtype``. Every query row must keep
    at least one key under ``mask``. ``weights_fn`` maps the attention weights before they
    weigh the values (a caller's dropout in training: PyTorch's ``attn_drop``).
    """
    _check_qkv(query, key, value)
    scores = attention_scores(query, key, _default_scale(query, scale))
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1)
    if weights_fn is not None:
        weights = weights_fn(weights)
    return jnp.einsum("...qk,...kd->...qd", weights.astype(value.dtype), value)


def masked_attention(query: Array, key: Array, value: Array, mask: Array, *,
                     scale: float | None = None) -> Array:
    """Masked attention (Cheng et al., "Masked-attention Mask Transformer for Universal Image
    Segmentation", CVPR 2022, eq. (2)): each query attends only to the keys its mask keeps,

    .. math:: X = \\mathrm{softmax}(\\mathcal{M} + Q K^\\top / \\sqrt{d}) V, \\quad
              \\mathcal{M}_{qk} = 0 \\text{ if mask}_{qk} \\text{ else } -\\infty,

    except that a query whose mask keeps no key attends to every key (the reference
    implementation's rule, which keeps the softmax defined). Shapes as
    :func:`dot_product_attention`; ``mask`` boolean (True = attend), broadcasting to
    ``(..., Nq, Nk)``.
    """
    mask = jnp.asarray(mask, bool)
    keep = mask | ~jnp.any(mask, axis=-1, keepdims=True)
    return dot_product_attention(query, key, value, mask=keep, scale=scale)


def _pad_axis(x: Array, axis: int, multiple: int) -> Array:
    pad = (-x.shape[axis]) % multiple
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


def map_query_chunks(
    fn: Callable[..., Array], queries: tuple[Array, ...], chunk_size: int
) -> Array:
    """Apply ``fn`` to query rows in chunks of ``chunk_size`` and concatenate.

    Each array in ``queries`` has its rows on axis -2 (``(B, N, ...)`` with
    the batch folded to one axis). ``fn`` maps chunks ``(B, chunk, ...)`` to
    ``(B, chunk, ...)`` and must treat rows independently, so the result is
    exactly ``fn`` applied to all rows at once. The chunk function is
    rematerialised in the backward pass, keeping gradients memory-bounded too.
    """
    check_positive(chunk_size, "chunk_size")
    n = queries[0].shape[-2]
    chunk = min(chunk_size, n)
    chunked = []
    for q in queries:
        q = _pad_axis(q, -2, chunk)
        q = q.reshape(q.shape[:-2] + (q.shape[-2] // chunk, chunk) + q.shape[-1:])
        chunked.append(jnp.moveaxis(q, -3, 0))
    out = jax.lax.map(lambda args: jax.checkpoint(fn)(*args), tuple(chunked))
    out = jnp.moveaxis(out, 0, -3)
    out = out.reshape(out.shape[:-3] + (-1,) + out.shape[-1:])
    return out[..., :n, :]


def chunked_dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    scale: float | None = None,
    query_chunk_size: int = 1024,
    key_chunk_size: int = 4096,
) -> Array:
    """Exact attention in O(query_chunk * key_chunk) memory (online softmax).

    Computes the same ``softmax(scale * Q K^T) V`` as
    :func:`dot_product_attention` without ever forming the ``Nq x Nk`` map:
    queries are processed ``query_chunk_size`` at a time, and for each query
    chunk the keys are scanned ``key_chunk_size`` at a time with the running
    maximum ``m``, normaliser ``l`` and accumulator ``o`` of the online softmax
    (Milakov & Gimelshein 2018; Rabe & Staats 2021; FlashAttention):

        m' = max(m, max_j s_j),   l' = l e^{m - m'} + sum_j e^{s_j - m'},
        o' = o e^{m - m'} + sum_j e^{s_j - m'} v_j,      out = o / l.

    All of it runs in float32, so the result equals the dense path to float32
    rounding (tested to 1e-5). Both loops are rematerialised in the backward
    pass, so gradients are memory-bounded as well.
    """
    _check_qkv(query, key, value)
    check_positive(query_chunk_size, "query_chunk_size")
    check_positive(key_chunk_size, "key_chunk_size")
    scale = _default_scale(query, scale)
    batch_shape = query.shape[:-2]
    nk, dv = key.shape[-2], value.shape[-1]
    q = query.reshape((-1,) + query.shape[-2:])
    k = key.reshape((-1,) + key.shape[-2:])
    v = value.reshape((-1,) + value.shape[-2:])

    kc = min(key_chunk_size, nk)
    k_chunks = _pad_axis(k, 1, kc).reshape(k.shape[0], -1, kc, k.shape[-1]).swapaxes(0, 1)
    v_chunks = _pad_axis(v, 1, kc).reshape(v.shape[0], -1, kc, dv).swapaxes(0, 1)
    valid = (jnp.arange(k_chunks.shape[0] * kc) < nk).reshape(-1, kc)

    def attend(q_chunk: Array) -> Array:
        rows = q_chunk.shape[:2]

        @jax.checkpoint
        def step(carry, inputs):
            m, l, o = carry
            k_j, v_j, valid_j = inputs
            s = attention_scores(q_chunk, k_j, scale)
            s = jnp.where(valid_j, s, -jnp.inf)
            m_new = jnp.maximum(m, s.max(axis=-1))
            p = jnp.exp(s - m_new[..., None])
            correction = jnp.exp(m - m_new)
            l = l * correction + p.sum(axis=-1)
            o = o * correction[..., None] + jnp.einsum(
                "bqk,bkd->bqd", p, v_j.astype(jnp.float32)
            )
            return (m_new, l, o), None

        init = (
            jnp.full(rows, -jnp.inf, jnp.float32),
            jnp.zeros(rows, jnp.float32),
            jnp.zeros(rows + (dv,), jnp.float32),
        )
        (_, l, o), _ = jax.lax.scan(step, init, (k_chunks, v_chunks, valid))
        return (o / l[..., None]).astype(value.dtype)

    out = map_query_chunks(attend, (q,), query_chunk_size)
    return out.reshape(batch_shape + out.shape[-2:])


def attend(
    query: Array,
    key: Array,
    value: Array,
    *,
    scale: float | None = None,
    memory_efficient: bool = False,
    query_chunk_size: int = 1024,
    key_chunk_size: int = 4096,
) -> Array:
    """``softmax(scale * Q K^T) V`` by :func:`dot_product_attention`, or with
    ``memory_efficient=True`` by :func:`chunked_dot_product_attention` (the same result without
    the ``Nq x Nk`` map, in chunks of the given sizes): the one switch the blocks and ops that
    offer a memory-bounded path use."""
    if memory_efficient:
        return chunked_dot_product_attention(query, key, value, scale=scale,
                                             query_chunk_size=query_chunk_size,
                                             key_chunk_size=key_chunk_size)
    return dot_product_attention(query, key, value, scale=scale)
