"""DANet position attention (PAM) core.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019, eq. (1)-(2)
without the learned projections and the ``gamma`` residual (those belong to
:class:`attnzoo.blocks.PositionAttention`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from attnzoo._checks import check_floating, check_rank
from attnzoo.ops.dot_product import (
    attend,
    attention_scores,
)

Array = jax.Array


def _flatten(x: Array) -> Array:
    return x.reshape(x.shape[0], -1, x.shape[-1])


def check_spatial_qkv(query: Array, key: Array, value: Array) -> None:
    """query/key ``(B, H, W, d)`` of one shape and value ``(B, H, W, c)`` on the same grid."""
    for name, arr in (("query", query), ("key", key), ("value", value)):
        check_rank(arr, 4, name, "B, H, W, C")
        check_floating(arr, name)
    if query.shape != key.shape:
        raise ValueError(f"query and key must have one shape; got {query.shape} and {key.shape}")
    if value.shape[:3] != query.shape[:3]:
        raise ValueError(
            f"value must share (B, H, W) with query; got value {value.shape}, query {query.shape}"
        )


def position_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    memory_efficient: bool = False,
    query_chunk_size: int = 1024,
    key_chunk_size: int = 4096,
) -> Array:
    """Every position attends to every other: ``E_j = sum_i s_ji D_i``.

    With ``B = query``, ``C = key`` and ``D = value`` flattened over the
    ``N = H * W`` positions, the attention is

        s_ji = exp(B_j . C_i) / sum_i exp(B_j . C_i)

    (softmax over the keys ``i`` for each query ``j``, no ``1/sqrt(d)``
    scaling, as in the official code ``bmm(V, softmax(Q^T K)^T)``).

    Args:
      query, key: ``(B, H, W, d)``.
      value: ``(B, H, W, c)``.
      memory_efficient: compute the same result without the ``N x N`` map
        (:func:`chunked_dot_product_attention`); needed for whole-image
        inference at high resolution (N = 32768 at 1024x2048 / 8 is 4.3 GB
        per image in float32 for the dense map).
      query_chunk_size, key_chunk_size: chunk sizes of the memory-bounded path.

    Returns:
      ``(B, H, W, c)`` in ``value.dtype``.
    """
    check_spatial_qkv(query, key, value)
    q, k, v = _flatten(query), _flatten(key), _flatten(value)
    out = attend(q, k, v, scale=1.0, memory_efficient=memory_efficient,
                 query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
    return out.reshape(value.shape)


def position_attention_map(
    query: Array, key: Array, points: Sequence[tuple[int, int]] | None = None
) -> Array:
    """Attention weights of chosen query positions, as pictures.

    Returns ``(B, P, H, W)``: for each query point ``(y, x)`` in ``points``
    the softmax weights it gives to every key position (the maps of the DANet
    paper's Figure 4). With ``points=None`` every position is a query
    (``P = H * W``; that is the dense ``N x N`` map).
    """
    check_spatial_qkv(query, key, key)
    b, h, w, _ = query.shape
    q = _flatten(query)
    if points is not None:
        idx = []
        for y, x in points:
            if not (0 <= y < h and 0 <= x < w):
                raise ValueError(f"points holds {(y, x)}, outside the {h}x{w} feature map")
            idx.append(y * w + x)
        q = q[:, jnp.asarray(idx, dtype=jnp.int32)]
    weights = jax.nn.softmax(attention_scores(q, _flatten(key)), axis=-1)
    return weights.reshape(b, -1, h, w)
