"""OCR's object region representations (Yuan et al., "Object-Contextual Representations for
Semantic Segmentation", ECCV 2020, eq. 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnzoo._checks import check_floating, check_rank

Array = jax.Array


def spatial_gather(feats: Array, region_logits: Array, scale: float = 1.0) -> Array:
    """The object region representations: for each class ``k``, the features averaged with
    the spatial softmax of its region logits,

        f_k = sum_i softmax_i(s l_ik) x_i

    (``(B, K, C)``, in float32; mmseg's ``SpatialGatherModule``).

    Args:
      feats: ``(B, H, W, C)`` pixel features.
      region_logits: ``(B, H, W, K)`` soft object regions (the first stage's class logits).
      scale: ``s``.
    """
    check_rank(feats, 4, "feats", "B, H, W, C")
    check_rank(region_logits, 4, "region_logits", "B, H, W, K")
    check_floating(feats, "feats")
    check_floating(region_logits, "region_logits")
    b, h, w, c = feats.shape
    if region_logits.shape[:3] != (b, h, w):
        raise ValueError(f"region_logits {tuple(region_logits.shape)} must share (B, H, W) with "
                         f"feats {tuple(feats.shape)}")
    weights = jax.nn.softmax(scale * region_logits.reshape(b, h * w, -1).astype(jnp.float32),
                             axis=1)
    return jnp.einsum("bnk,bnc->bkc", weights, feats.reshape(b, h * w, c).astype(jnp.float32))
