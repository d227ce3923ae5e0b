"""Expectation-maximisation attention (EMANet; Li et al., "Expectation-Maximization Attention
Networks for Semantic Segmentation", ICCV 2019).

The ``N`` features ``x_n`` of an image are reconstructed from ``K`` bases ``mu_k`` (unit
vectors of ``C`` channels) found by ``T`` EM iterations started from the given bases:

    E-step:  z_nk = softmax_k(x_n . mu_k)
    M-step:  mu_k = sum_n z_nk x_n / sum_n z_nk,   then mu_k <- mu_k / ||mu_k||_2

and ``x~_n = sum_k z_nk mu_k`` (with the last iteration's ``z`` and ``mu``). As the paper and
mmseg's ``EMAModule``, the iterations are outside differentiation (no gradient flows through
``z`` or ``mu``); the normalisations divide by ``max(norm, 1e-12)`` (PyTorch's
``F.normalize``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnzoo._checks import check_floating, check_positive, check_rank

Array = jax.Array

EPS = 1e-12  # F.normalize's


def normalize(x: Array, axis: int, order: int = 2) -> Array:
    """``x / max(||x||_order, 1e-12)`` along ``axis`` (PyTorch's ``F.normalize``)."""
    norm = (jnp.abs(x).sum(axis, keepdims=True) if order == 1
            else jnp.sqrt((x * x).sum(axis, keepdims=True)))
    return x / jnp.maximum(norm, EPS)


def em_attention(x: Array, bases: Array, num_stages: int) -> tuple[Array, Array]:
    """The EM reconstruction of ``x`` (module docstring), computed in float32, without
    gradients.

    Args:
      x: ``(B, N, C)`` features.
      bases: ``(C, K)`` initial bases (shared by the batch) or ``(B, C, K)``.
      num_stages: ``T``, the EM iterations (at least 1).

    Returns:
      ``(x~, mu)``: the reconstruction ``(B, N, C)`` in ``x``'s dtype and the final bases
      ``(B, C, K)`` in float32.
    """
    check_rank(x, 3, "x", "B, N, C")
    check_floating(x, "x")
    check_positive(num_stages, "num_stages")
    if bases.ndim not in (2, 3) or bases.shape[-2] != x.shape[-1]:
        raise ValueError(f"bases must be (C, K) or (B, C, K) with C = {x.shape[-1]}; got "
                         f"{tuple(bases.shape)}")
    feats = jax.lax.stop_gradient(x.astype(jnp.float32))
    mu = jnp.broadcast_to(jax.lax.stop_gradient(bases.astype(jnp.float32)),
                          (x.shape[0], *bases.shape[-2:]))
    for _ in range(num_stages):
        z = jax.nn.softmax(jnp.einsum("bnc,bck->bnk", feats, mu), axis=-1)
        mu = normalize(jnp.einsum("bnc,bnk->bck", feats, normalize(z, axis=1, order=1)), axis=1)
    return jnp.einsum("bck,bnk->bnc", mu, z).astype(x.dtype), mu
