"""Temporal attention: each pixel attends over the frames of a clip.

The divided space-time attention of Bertasius et al., "Is Space-Time
Attention All You Need for Video Understanding?" (TimeSformer), ICML 2021,
time part: for position ``p`` of frame ``t``,

    y_{t,p} = sum_{t'} softmax_{t'}(q_{t,p} . k_{t',p} / sqrt(d)) v_{t',p},

optionally causal (``t' <= t``) for online video segmentation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnzoo._checks import check_floating
from attnzoo.ops.dot_product import dot_product_attention

Array = jax.Array


def temporal_attention(
    query: Array, key: Array, value: Array, *, scale: float | None = None, causal: bool = False
) -> Array:
    """Attention along axis 1 (frames) of ``(B, T, ...spatial, d)`` arrays.

    ``query``/``key`` are ``(B, T, H, W, d)`` (any number of axes may stand
    between ``T`` and ``d``, e.g. a heads axis), ``value`` ``(B, T, ..., dv)``.
    Returns the shape of ``value``.
    """
    for name, arr in (("query", query), ("key", key), ("value", value)):
        if arr.ndim < 3:
            raise ValueError(f"{name} must have rank >= 3 (B, T, ..., d); got shape {arr.shape}")
        check_floating(arr, name)
    if query.shape != key.shape or value.shape[:-1] != query.shape[:-1]:
        raise ValueError(
            f"query and key must have one shape and value match them but the last axis; got "
            f"query {query.shape}, key {key.shape}, value {value.shape}"
        )
    t = query.shape[1]
    q, k, v = (jnp.moveaxis(a, 1, -2) for a in (query, key, value))
    mask = jnp.tril(jnp.ones((t, t), bool)) if causal else None
    out = dot_product_attention(q, k, v, mask=mask, scale=scale)
    return jnp.moveaxis(out, -2, 1)
