"""Criss-cross attention core.

Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation",
ICCV 2019 / TPAMI 2020, eq. (1)-(2): every position ``u`` attends to the
``H + W - 1`` positions of its row and column.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnzoo.ops.position import check_spatial_qkv

Array = jax.Array


def criss_cross_weights(query: Array, key: Array) -> tuple[Array, Array]:
    """Softmax weights over the criss-cross of each position.

    Energies ``d_{u,i} = Q_u . K_{i,u}`` (no scaling) for the ``H`` keys in
    the column of ``u`` and the ``W`` keys in its row; the centre ``u`` is in
    both, so its column copy is set to ``-inf`` (as the reference code's
    ``INF`` diagonal does) and it is counted once. One softmax runs over the
    concatenation, in float32.

    Returns ``(column_weights (B, H, W, H), row_weights (B, H, W, W))``.
    """
    check_spatial_qkv(query, key, key)
    h = query.shape[1]
    e_col = jnp.einsum("bhwc,biwc->bhwi", query, key, preferred_element_type=jnp.float32)
    diagonal = jnp.eye(h, dtype=bool)[None, :, None, :]
    e_col = jnp.where(diagonal, -jnp.inf, e_col)
    e_row = jnp.einsum("bhwc,bhjc->bhwj", query, key, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(jnp.concatenate([e_col, e_row], axis=-1), axis=-1)
    return weights[..., :h], weights[..., h:]


def criss_cross_attention(query: Array, key: Array, value: Array) -> Array:
    """``H'_u = sum_{i in Phi_u} A_{i,u} V_{i,u}`` over row and column of ``u``.

    Args:
      query, key: ``(B, H, W, d)``; value: ``(B, H, W, c)``.

    Memory is ``O(N (H + W))``, not ``O(N^2)``: the op is memory-bounded by
    construction. Returns ``(B, H, W, c)`` in ``value.dtype``. Recurrence
    (CCNet's R = 2 to reach every position) is the block's job.
    """
    check_spatial_qkv(query, key, value)
    a_col, a_row = criss_cross_weights(query, key)
    out = jnp.einsum("bhwi,biwc->bhwc", a_col.astype(value.dtype), value)
    return out + jnp.einsum("bhwj,bhjc->bhwc", a_row.astype(value.dtype), value)
