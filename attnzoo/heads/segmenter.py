"""Segmenter's mask transformer (Strudel et al., "Segmenter: Transformer for Semantic
Segmentation", ICCV 2021; mmsegmentation's ``SegmenterMaskTransformerHead``): learned class
embeddings attended jointly with the patch tokens, masks by scalar products."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_positive
from attnzoo.blocks.transformer import TransformerEncoderLayer, layer_renames
from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array

LINEAR_INIT = nn.initializers.truncated_normal(0.02)
"""The head's linear maps and class embeddings: truncated normal, std 0.02 (mmseg's
``init_std``)."""


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """``x / max(||x||_2, eps)`` along the last axis (PyTorch's ``F.normalize``)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@register("segmenter_mask")
class SegmenterMaskHead(DecodeHead):
    """The mask transformer (Segmenter, Sec. 3.2): the ``(B, h, w, C)`` patch features as
    ``N = h w`` tokens projected to ``D = channels`` (``dec_proj``), ``K`` learned class
    embeddings (``cls_emb``) appended, ``num_layers`` Transformer encoder layers
    (:class:`~attnzoo.blocks.TransformerEncoderLayer`, ``layers_<i>``) over the ``N + K``
    tokens, LayerNorm (``decoder_norm``), then the masks

    .. math:: m = \\mathrm{LN}\\Big(\\frac{P z_{patch}}{\\lVert P z_{patch} \\rVert}
              \\Big(\\frac{Q z_{cls}}{\\lVert Q z_{cls} \\rVert}\\Big)^\\top\\Big)
              \\in \\mathbb{R}^{N \\times K}

    (``patch_proj`` ``P`` and ``classes_proj`` ``Q`` without bias, the scalar products of
    unit vectors normalised over the classes by ``mask_norm``), reshaped to
    ``(B, h, w, K)`` logits. No classifier: the masks are the logits.

    Attributes:
      num_layers: Transformer layers (2 in the paper and mmseg).
      num_heads: their attention heads (``channels`` must divide by it).
      mlp_ratio: their MLPs' width over ``channels``.
      drop_path_rate: stochastic depth of the layers' MLP branches, rising linearly over them
        from 0 to this (0.1).
      ln_eps: the LayerNorms' epsilon (1e-5: PyTorch's default, which mmseg's head keeps).
    """

    channels: int = 768
    dropout: float = 0.0
    num_layers: int = 2
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_positive(self.num_layers, "num_layers")
        check_positive(self.num_heads, "num_heads")
        if self.channels % self.num_heads:
            raise ValueError(f"channels {self.channels} must divide by num_heads "
                             f"{self.num_heads}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        self.check_input(x)
        b, h, w, _ = x.shape
        k, d = self.num_classes, self.channels

        def dense(name: str, bias: bool = True) -> nn.Dense:
            return nn.Dense(d, use_bias=bias, kernel_init=LINEAR_INIT, name=name, **self.kw)

        tokens = dense("dec_proj")(x.reshape(b, h * w, -1))
        cls_emb = self.param("cls_emb", LINEAR_INIT, (1, k, d), self.param_dtype)
        tokens = jnp.concatenate(
            [tokens, jnp.broadcast_to(cls_emb, (b, k, d)).astype(tokens.dtype)], axis=1)
        for i in range(self.num_layers):
            rate = self.drop_path_rate * i / max(self.num_layers - 1, 1)
            tokens = TransformerEncoderLayer(self.num_heads, self.mlp_ratio, drop_path=rate,
                                             ln_eps=self.ln_eps, name=f"layers_{i}",
                                             **self.kw)(tokens, train=train)
        tokens = nn.LayerNorm(self.ln_eps, name="decoder_norm", **self.kw)(tokens)
        patches = l2_normalize(dense("patch_proj", bias=False)(tokens[:, :-k]))
        classes = l2_normalize(dense("classes_proj", bias=False)(tokens[:, -k:]))
        masks = jnp.einsum("bnd,bkd->bnk", patches, classes)
        masks = nn.LayerNorm(self.ln_eps, name="mask_norm", **self.kw)(masks)
        return {"out": masks.reshape(b, h, w, k)}


def _mmseg_fields(model: str, protocol: Mapping[str, Any]) -> dict[str, Any]:
    """mmseg's Segmenter configs test in windows of the crop, 32 pixels of overlap."""
    crop = protocol["crop"]
    return {"eval.mode": "slide", "eval.stride": (crop[0] - 32, crop[1] - 32)}


# mmseg's segmenter configs: the ViT normalised to [-1, 1] (mean and std 127.5, as the ImageNet
# ViTs it starts from), SGD at 0.001 without weight decay (the 160k schedule's momentum and poly
# decay), 8 images per step
register_family(Family(
    name="segmenter", head="segmenter_mask",
    summary="mask transformer: class embeddings attended with the patches, masks by scalar "
            "products (Strudel et al., ICCV 2021)",
    model_sets=("segmenter",), in_feature="c1", auxiliary=False,
    recipe={"optimizer.learning_rate": 0.001, "optimizer.weight_decay": 0.0,
            "model.pixel_mean": (127.5, 127.5, 127.5), "model.pixel_std": (127.5, 127.5, 127.5)},
    mmseg_renames=layer_renames(r"layers\.\d+\."),
    mmseg_fields=_mmseg_fields))
