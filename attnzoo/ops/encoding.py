"""Context encoding (EncNet; Zhang et al., "Context Encoding for Semantic Segmentation", CVPR
2018, eqs. 1-2).

``K`` learned codewords ``c_k`` with smoothing factors ``s_k`` summarise the ``N`` features
``x_i`` of an image by their soft-assigned residuals:

    a_ik = softmax_k(s_k ||x_i - c_k||^2),        e_k = sum_i a_ik (x_i - c_k)

(``s_k`` are learned and start negative, so nearer codewords weigh more). The residual sum is
computed as ``sum_i a_ik x_i - c_k sum_i a_ik``, without the ``N x K x C`` differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnzoo._checks import check_floating, check_rank

Array = jax.Array


def context_encoding(x: Array, codewords: Array, scale: Array) -> Array:
    """The encoded residuals ``e`` (module docstring); the assignment in float32.

    Args:
      x: ``(B, N, C)`` features.
      codewords: ``(K, C)``.
      scale: ``(K,)`` smoothing factors.

    Returns:
      ``(B, K, C)`` in ``x``'s dtype.
    """
    check_rank(x, 3, "x", "B, N, C")
    check_rank(codewords, 2, "codewords", "K, C")
    check_floating(x, "x")
    check_floating(codewords, "codewords")
    k, c = codewords.shape
    if c != x.shape[-1] or scale.shape != (k,):
        raise ValueError(f"codewords must be (K, C) with C = {x.shape[-1]} and scale (K,); got "
                         f"codewords {tuple(codewords.shape)}, scale {tuple(scale.shape)}")
    xf, cf = x.astype(jnp.float32), codewords.astype(jnp.float32)
    distances = ((xf * xf).sum(-1, keepdims=True) - 2 * jnp.einsum("bnc,kc->bnk", xf, cf)
                 + (cf * cf).sum(-1))
    a = jax.nn.softmax(scale.astype(jnp.float32) * distances, axis=-1)
    e = jnp.einsum("bnk,bnc->bkc", a, xf) - a.sum(1)[..., None] * cf
    return e.astype(x.dtype)
