"""DANet channel attention (CAM) core.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019, eq. (3)-(4)
without the ``beta`` residual (that belongs to :class:`attnzoo.blocks.ChannelAttention`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnzoo._checks import check_floating, check_rank

Array = jax.Array


def channel_attention_map(x: Array) -> Array:
    """Channel affinity ``A = softmax(max_k(E) - E)`` with ``E = X X^T``.

    ``x`` is ``(B, H, W, C)``; ``X`` is ``x`` as ``(B, C, N)``. The official
    code feeds ``max(E, axis=-1) - E`` to the softmax instead of ``E`` itself;
    by shift invariance that equals ``softmax(-E)`` (channels attend most to
    the channels they are *least* similar to), and it is what the released
    models were trained with, so it is what this function computes.

    Returns ``(B, C, C)`` float32 weights, rows summing to 1.
    """
    check_rank(x, 4, "x", "B, H, W, C")
    check_floating(x, "x")
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    energy = jnp.einsum("bnc,bnd->bcd", flat, flat, preferred_element_type=jnp.float32)
    energy_new = energy.max(axis=-1, keepdims=True) - energy
    return jax.nn.softmax(energy_new, axis=-1)


def channel_attention(x: Array) -> Array:
    """``E_j = sum_i x_ji A_i``: every channel is a mixture of all channels.

    ``out[b, n, c] = sum_d A[b, c, d] x[b, n, d]`` with ``A`` from
    :func:`channel_attention_map`. The ``C x C`` map is small, so there is no
    separate memory-bounded variant. Returns ``(B, H, W, C)`` in ``x.dtype``.
    """
    attn = channel_attention_map(x)
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    out = jnp.einsum("bcd,bnd->bnc", attn.astype(x.dtype), flat)
    return out.reshape(x.shape)
