"""Non-local operation cores.

Wang et al., "Non-local Neural Networks", CVPR 2018, eq. (1):
``y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j)``, with the pairwise functions of
section 3.2 as mmcv's ``NonLocal2d`` implements them; and the disentangled form of Yin et
al., "Disentangled Non-Local Neural Networks", ECCV 2020 (DNLNet), as mmseg's ``DNLHead``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnzoo._checks import check_choice, check_floating, check_rank
from attnzoo.ops.dot_product import (
    attend,
    attention_scores,
    map_query_chunks,
)

Array = jax.Array

MODES = ("embedded_gaussian", "gaussian", "dot_product")


def _flatten(x: Array) -> Array:
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _check(theta: Array, phi: Array, g: Array) -> None:
    for name, arr in (("theta", theta), ("phi", phi), ("g", g)):
        check_rank(arr, 4, name, "B, H, W, C")
        check_floating(arr, name)
    if theta.shape[-1] != phi.shape[-1] or theta.shape[0] != phi.shape[0]:
        raise ValueError(
            f"theta and phi must share batch and channels; got {theta.shape} and {phi.shape}"
        )
    if phi.shape[:3] != g.shape[:3]:
        raise ValueError(f"phi and g must share (B, H, W); got {phi.shape} and {g.shape}")


def non_local_attention(
    theta: Array,
    phi: Array,
    g: Array,
    *,
    mode: str = "embedded_gaussian",
    use_scale: bool = True,
    memory_efficient: bool = False,
    query_chunk_size: int = 1024,
    key_chunk_size: int = 4096,
) -> Array:
    """``y_i = sum_j w_ij g_j`` with the pairwise weights of ``mode``.

    Args:
      theta: queries ``(B, H, W, d)`` (``x`` itself for ``"gaussian"``).
      phi: keys ``(B, H', W', d)``; may be spatially subsampled.
      g: values ``(B, H', W', c)``.
      mode:
        ``"embedded_gaussian"``: ``w = softmax_j(theta_i . phi_j / s)`` with
        ``s = sqrt(d)`` when ``use_scale`` (mmcv's default) else 1;
        ``"gaussian"``: ``w = softmax_j(theta_i . phi_j)``;
        ``"dot_product"``: ``w = theta_i . phi_j / N'`` with ``N' = H' W'``.
      memory_efficient: never form the ``N x N'`` map. The softmax modes use
        the online-softmax path; ``"dot_product"`` is linear, so it is
        computed exactly as ``theta (phi^T g) / N'`` in ``O(N d c)``.

    Returns ``(B, H, W, c)`` in ``g.dtype``.
    """
    _check(theta, phi, g)
    check_choice(mode, MODES, "mode")
    q, k, v = _flatten(theta), _flatten(phi), _flatten(g)
    if mode == "dot_product":
        n_keys = k.shape[1]
        if memory_efficient:
            kv = jnp.einsum("bkd,bkc->bdc", k, v, preferred_element_type=jnp.float32)
            out = jnp.einsum("bqd,bdc->bqc", q.astype(jnp.float32), kv) / n_keys
        else:
            weights = attention_scores(q, k) / n_keys
            out = jnp.einsum("bqk,bkc->bqc", weights, v.astype(jnp.float32))
        out = out.astype(g.dtype)
    else:
        scale = theta.shape[-1] ** -0.5 if (mode == "embedded_gaussian" and use_scale) else 1.0
        out = attend(q, k, v, scale=scale, memory_efficient=memory_efficient,
                     query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
    return out.reshape(theta.shape[:3] + (g.shape[-1],))


def non_local_concatenation(
    theta_logit: Array,
    phi_logit: Array,
    g: Array,
    *,
    memory_efficient: bool = False,
    query_chunk_size: int = 1024,
) -> Array:
    """Concatenation form: ``f_ij = ReLU(w^T [theta_i, phi_j]) / N'``.

    A 1x1 projection ``w = [w_theta, w_phi]`` of the concatenation splits into
    ``a_i = w_theta . theta_i`` and ``b_j = w_phi . phi_j``, so the op takes
    those per-position logits: ``theta_logit (B, H, W)``, ``phi_logit
    (B, H', W')`` and values ``g (B, H', W', c)``, and returns
    ``y_i = sum_j ReLU(a_i + b_j) g_j / N'`` of shape ``(B, H, W, c)``.
    ``memory_efficient`` processes the queries in chunks (exact).
    """
    check_rank(theta_logit, 3, "theta_logit", "B, H, W")
    check_rank(phi_logit, 3, "phi_logit", "B, H', W'")
    check_rank(g, 4, "g", "B, H', W', C")
    for name, arr in (("theta_logit", theta_logit), ("phi_logit", phi_logit), ("g", g)):
        check_floating(arr, name)
    if phi_logit.shape != g.shape[:3]:
        raise ValueError(f"phi_logit and g must share (B, H', W'); got {phi_logit.shape}, {g.shape}")
    b = phi_logit.reshape(phi_logit.shape[0], 1, -1).astype(jnp.float32)
    v = _flatten(g).astype(jnp.float32)
    n_keys = v.shape[1]

    def attend(a: Array) -> Array:
        weights = jax.nn.relu(a + b) / n_keys
        return jnp.einsum("bqk,bkc->bqc", weights, v)

    a = theta_logit.reshape(theta_logit.shape[0], -1, 1).astype(jnp.float32)
    out = map_query_chunks(attend, (a,), query_chunk_size) if memory_efficient else attend(a)
    return out.astype(g.dtype).reshape(theta_logit.shape + (g.shape[-1],))


def disentangled_non_local_attention(
    theta: Array,
    phi: Array,
    g: Array,
    unary_logits: Array,
    *,
    temperature: float = 0.05,
    use_scale: bool = True,
    memory_efficient: bool = False,
    query_chunk_size: int = 1024,
    key_chunk_size: int = 4096,
) -> Array:
    """The disentangled non-local operator (Yin et al., ECCV 2020): a whitened
    pairwise term plus a unary term,

        y_i = sum_j softmax_j((theta_i - mu_theta) . (phi_j - mu_phi) / (s T)) g_j
              + sum_j softmax_j(m_j) g_j,

    with ``mu`` the mean over positions of each channel, ``s = sqrt(d)`` when ``use_scale``
    (mmseg's default) else 1, the temperature ``T`` (0.05 in mmseg's configs) and ``m`` the
    unary logits (mmseg's ``conv_mask`` of the block's input). The pairwise term says how a
    pixel relates to each other pixel beyond what all pixels share; the unary term, the same
    for every query, which pixels matter to all of them.

    Args:
      theta: queries ``(B, H, W, d)``.
      phi: keys ``(B, H, W, d)``.
      g: values ``(B, H, W, c)``.
      unary_logits: ``(B, H, W)``.
      temperature: divides the pairwise logits (must be positive).
      memory_efficient: never form the ``N x N`` map (online softmax in chunks; exact).

    Returns ``(B, H, W, c)`` in ``g.dtype``.
    """
    _check(theta, phi, g)
    check_rank(unary_logits, 3, "unary_logits", "B, H, W")
    check_floating(unary_logits, "unary_logits")
    if unary_logits.shape != g.shape[:3]:
        raise ValueError(f"unary_logits and g must share (B, H, W); got {unary_logits.shape} and "
                         f"{g.shape}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature!r}")
    q = _flatten(theta).astype(jnp.float32)
    k = _flatten(phi).astype(jnp.float32)
    q = q - q.mean(axis=1, keepdims=True)
    k = k - k.mean(axis=1, keepdims=True)
    v = _flatten(g)
    scale = (theta.shape[-1] ** -0.5 if use_scale else 1.0) / temperature
    pairwise = attend(q, k, v, scale=scale, memory_efficient=memory_efficient,
                      query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
    unary = jax.nn.softmax(unary_logits.reshape(unary_logits.shape[0], -1).astype(jnp.float32), -1)
    unary = jnp.einsum("bk,bkc->bc", unary, v.astype(jnp.float32))[:, None]
    return (pairwise.astype(jnp.float32) + unary).astype(g.dtype).reshape(
        theta.shape[:3] + (g.shape[-1],))
