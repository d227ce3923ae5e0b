"""Encoder-decoder segmentor and Attention U-Net."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import blocks, ops
from attnzoo._checks import check_image
from attnzoo.blocks.common import ConvNormAct, Dtype, conv
from attnzoo.pixels import IMAGENET_MEAN, IMAGENET_STD

Array = jax.Array


def resize_logits(logits: Array, size: tuple[int, int], align_corners: bool = False) -> Array:
    """Bilinear resize of ``(B, h, w, C)`` logits to ``size`` as PyTorch's ``F.interpolate``
    (``align_corners`` as its flag; no antialiasing): :func:`attnzoo.ops.interpolate`."""
    return ops.interpolate(logits, size, align_corners=align_corners)


class EncoderDecoder(nn.Module):
    """Backbone + decode head (+ auxiliary head), logits at input size (mmsegmentation's
    ``EncoderDecoder``).

    ``__call__(images, *, train=False)`` returns a dict of logits
    ``(B, H, W, num_classes)`` upsampled bilinearly to the input: ``"out"``
    always; in training (and at init) also ``"aux"`` (``"aux_<feature>"`` for each of several
    auxiliary heads) and the outputs the head
    declares in its ``branches`` (DANet's ``"pam"``, ``"cam"``; EncNet's image-level
    ``"se"`` logits ``(B, num_classes)``, returned as they are; Mask2Former's ``"sets"`` of
    class and mask logits, a dict, as they are: a head with ``takes_size`` gets the input's size
    and gives ``"out"`` at it). :meth:`loss_terms` says how a trainer weighs them.

    Attributes:
      backbone: a module returning a dict of features (``c1`` .. ``c4``) with
        an ``in_channels`` field.
      neck: a module remaking that dict before the heads read it (mmseg's necks,
        :mod:`attnzoo.heads.necks`: a ViT's one-stride features made a pyramid), or None.
      head: the decode head, reading ``in_feature`` (a feature name, or a tuple of names:
        the head then gets the list of those features, or with ``resize_concat`` one array).
      resize_concat: the features of a tuple ``in_feature`` are resized bilinearly (with
        ``align_corners``) to the first's size and concatenated along channels, as mmseg's
        ``input_transform="resize_concat"`` (HRNet's heads read its four branches so).
      aux_head: the auxiliary head, reading ``aux_feature`` (training only); or a tuple of
        them, one per feature of a tuple ``aux_feature`` (SETR's, on several ViT layers).
      aux_weight: the loss weight of each auxiliary output (0.4, as mmsegmentation).
      align_corners: of the bilinear upsampling to the input size (mmseg's flag).
      crf: a CRF-as-RNN layer (``blocks.create("crf", ...)``) refining ``"out"`` at input
        size on the image (the normalised input mapped back to RGB 0-255 with ``pixel_mean`` /
        ``pixel_std``), trained end to end with the rest; None for none.
      pixel_mean: the per-channel RGB mean the input was normalised with (ImageNet's, as
        mmsegmentation's ``data_preprocessor``; the data pipelines read the run's config).
      pixel_std: the per-channel RGB standard deviation, likewise.
    """

    backbone: nn.Module
    head: nn.Module
    aux_head: nn.Module | tuple[nn.Module, ...] | None = None
    neck: nn.Module | None = None
    in_feature: str | tuple[str, ...] = "c4"
    resize_concat: bool = False
    aux_feature: str | tuple[str, ...] = "c3"
    aux_weight: float = 0.4
    align_corners: bool = False
    crf: nn.Module | None = None
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def loss_terms(self) -> list[dict[str, Any]]:
        """Terms for :func:`attnzoo.losses.combined_loss`: cross-entropy on the main output
        (weight 1), the head's declared branches (cross-entropy, or the loss the head names
        in ``branch_losses``), cross-entropy on the auxiliary output; for a set-prediction head
        (Mask2Former's, MaskFormer's ``set_prediction``), its set loss (the head's ``set_loss``
        with its ``loss_kwargs``) on ``"sets"`` alone."""
        if getattr(self.head, "set_prediction", False):  # trained by its set loss alone
            return [{"output": "sets", "loss": self.head.set_loss, "weight": 1.0,
                     **self.head.loss_kwargs}]
        terms = [{"output": "out", "loss": "cross_entropy", "weight": 1.0}]
        named = getattr(self.head, "branch_losses", {})
        terms += [{"output": k, "loss": named.get(k, "cross_entropy"), "weight": w}
                  for k, w in getattr(self.head, "branches", ())]
        terms += [{"output": name, "loss": "cross_entropy", "weight": self.aux_weight}
                  for name in self._aux_outputs()]
        return terms

    def _aux_outputs(self) -> list[str]:
        """The auxiliary outputs' names: ``"aux"``, or ``"aux_<feature>"`` for each of several."""
        if self.aux_head is None:
            return []
        if isinstance(self.aux_head, tuple):
            return [f"aux_{feature}" for feature in self.aux_feature]
        return ["aux"]

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> dict[str, Array]:
        check_image(images, self.backbone.in_channels, "images", "in_channels")
        size = images.shape[1:3]
        feats = self.backbone(images, train=train)
        if self.neck is not None:
            feats = self.neck(feats, train=train)
        head_input = (feats[self.in_feature] if isinstance(self.in_feature, str)
                      else [feats[k] for k in self.in_feature])
        if self.resize_concat and isinstance(head_input, list):
            first = head_input[0].shape[1:3]
            head_input = jnp.concatenate(
                [head_input[0]] + [resize_logits(f, first, self.align_corners)
                                   for f in head_input[1:]], axis=-1)
        # a query-based head combines its masks at the input's size (Mask2Former)
        at_size = {"size": size} if getattr(self.head, "takes_size", False) else {}
        outputs = self.head(head_input, train=train, **at_size)
        if self.aux_head is not None and (train or self.is_initializing()):
            aux = self.aux_head if isinstance(self.aux_head, tuple) else (self.aux_head,)
            features = ((self.aux_feature,) if isinstance(self.aux_feature, str)
                        else self.aux_feature)
            for name, head, feature in zip(self._aux_outputs(), aux, features, strict=True):
                outputs[name] = head(feats[feature], train=train)["out"]
        outputs = {k: resize_logits(v, size, self.align_corners)
                   if isinstance(v, jax.Array) and v.ndim == 4 else v
                   for k, v in outputs.items()}
        if self.crf is not None:
            rgb = (images.astype(jnp.float32) * jnp.asarray(self.pixel_std)
                   + jnp.asarray(self.pixel_mean))
            outputs["out"] = self.crf(outputs["out"], rgb)
        return outputs


class ConvBlock(nn.Module):
    """Two 3x3 conv-BN-ReLU (the U-Net unit)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = ConvNormAct(self.features, 3, name="conv1", **kw)(x, train=train)
        return ConvNormAct(self.features, 3, name="conv2", **kw)(x, train=train)


class AttentionUNet(nn.Module):
    """Attention U-Net (Oktay et al., MIDL 2018) for 2-D images.

    A U-Net encoder (``len(widths)`` levels of two 3x3 conv-BN-ReLU, 2x2 max
    pooling between them) and decoder (2x upsampling, 3x3 conv, then an
    additive attention gate on the skip features with the coarser decoder
    features as gating signal, concatenation, two 3x3 convs). Input sizes
    that are not multiples of ``2^(levels-1)`` are padded and the logits
    cropped back. Returns ``{"out": logits}`` at input size; the gates'
    ``alpha`` maps are sown as intermediates.
    """

    num_classes: int
    widths: Sequence[int] = (64, 128, 256, 512, 1024)
    in_channels: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def loss_terms(self) -> list[dict[str, Any]]:
        """One cross-entropy term on ``"out"``."""
        return [{"output": "out", "loss": "cross_entropy", "weight": 1.0}]

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> dict[str, Array]:
        check_image(images, self.in_channels, "images", "in_channels")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h, w = images.shape[1:3]
        m = 2 ** (len(self.widths) - 1)
        x = jnp.pad(images, ((0, 0), (0, -h % m), (0, -w % m), (0, 0)))
        skips = []
        for i, width in enumerate(self.widths):
            if i:
                x = nn.max_pool(x, (2, 2), (2, 2))
            x = ConvBlock(width, name=f"enc{i}", **kw)(x, train=train)
            skips.append(x)
        for i in range(len(self.widths) - 2, -1, -1):
            width = self.widths[i]
            b, hh, ww, c = x.shape
            up = jax.image.resize(x, (b, 2 * hh, 2 * ww, c), "bilinear")
            up = ConvNormAct(width, 3, name=f"up{i}", **kw)(up, train=train)
            gated = blocks.AttentionGate(width, name=f"gate{i}", **kw)(skips[i], x, train=train)
            x = ConvBlock(width, name=f"dec{i}", **kw)(jnp.concatenate([gated, up], -1), train=train)
        logits = conv(self.num_classes, name="cls", **kw)(x)
        return {"out": logits[:, :h, :w]}

