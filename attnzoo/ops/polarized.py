"""Polarized self-attention cores.

Liu et al., "Polarized Self-Attention: Towards High-quality Pixel-wise
Regression", 2021 (arXiv:2107.00782), eq. (1)-(4). The channel-only branch
collapses the spatial axes with a softmax-weighted sum; the spatial-only
branch collapses the channels with a globally pooled query. The 1x1
projections, the ``W_z`` up-projection and the sigmoid gates are the block's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnzoo._checks import check_floating, check_rank

Array = jax.Array


def polarized_channel_context(query: Array, value: Array) -> Array:
    """Channel-only core: ``z = sum_j softmax_j(W_q x)_j (W_v x)_j``.

    Args:
      query: ``(B, H, W, 1)``, the one-channel ``W_q x``.
      value: ``(B, H, W, c)``, the ``W_v x`` (``c = C/2`` in the paper).

    Returns the ``(B, c)`` context (before ``W_z``, the norm and the sigmoid).
    The softmax runs over the ``H*W`` positions in float32.
    """
    check_rank(query, 4, "query", "B, H, W, 1")
    check_rank(value, 4, "value", "B, H, W, C")
    check_floating(query, "query")
    check_floating(value, "value")
    if query.shape[-1] != 1 or query.shape[:3] != value.shape[:3]:
        raise ValueError(
            f"query must be (B, H, W, 1) matching value's (B, H, W); got query {query.shape}, "
            f"value {value.shape}"
        )
    b = query.shape[0]
    weights = jax.nn.softmax(query.reshape(b, -1).astype(jnp.float32), axis=-1)
    ctx = jnp.einsum("bn,bnc->bc", weights, value.reshape(b, -1, value.shape[-1]).astype(jnp.float32))
    return ctx.astype(value.dtype)


def polarized_spatial_weights(query: Array, value: Array) -> Array:
    """Spatial-only core: ``softmax_j(GAP(W_q x) . (W_v x)_j)``.

    Args:
      query: ``(B, H, W, c)``, pooled to one ``c``-vector by global average.
      value: ``(B, H, W, c)``.

    Returns ``(B, H, W, 1)`` float32 weights, a softmax over the ``H*W``
    positions (the official code applies the sigmoid gate on top of this).
    """
    check_rank(query, 4, "query", "B, H, W, C")
    check_rank(value, 4, "value", "B, H, W, C")
    check_floating(query, "query")
    check_floating(value, "value")
    if query.shape != value.shape:
        raise ValueError(f"query and value must have one shape; got {query.shape}, {value.shape}")
    b, h, w, _ = query.shape
    pooled = query.astype(jnp.float32).mean(axis=(1, 2))
    logits = jnp.einsum("bc,bhwc->bhw", pooled, value.astype(jnp.float32))
    weights = jax.nn.softmax(logits.reshape(b, -1), axis=-1)
    return weights.reshape(b, h, w, 1)
