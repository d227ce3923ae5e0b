"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for
Image Recognition at Scale", ICLR 2021; DeiT, Touvron et al., ICML 2021, is the same network
trained otherwise) as a segmentation backbone, as mmsegmentation's ``VisionTransformer``
builds it.

* patch embedding: the image zero-padded at the bottom / right to a multiple of the patch size
  ``P`` (mmseg's ``AdaptivePadding(padding="corner")``), a ``P x P`` stride-``P`` conv;
* a class token prepended and a learned absolute position embedding added,

  .. math:: z_0 = [x_{cls}; x_p^1 E; \\dots; x_p^N E] + E_{pos},

  ``E_pos`` learned on the ``img_size / P`` grid and resized to the input's grid (bicubic
  unless ``interpolate_mode`` says bilinear, PyTorch's ``align_corners=False``; the class
  token's entry as it is) whenever the two differ, as mmseg does at every forward;
* ``depth`` pre-norm Transformer encoder layers
  (:class:`~attnzoo.blocks.TransformerEncoderLayer`,
  :math:`z' = z + MSA(LN(z)),\\ z'' = z' + MLP(LN(z'))`), the last optionally followed by a
  LayerNorm (``final_norm``, mmseg's ``norm1``);
* the outputs of the layers ``out_indices`` without the class token, as ``(B, H/P, W/P, C)``
  maps: ``{"c1": ..., "c<k>": ...}``, all of stride ``P``.

Submodules are named as mmseg's state dict after the renames of :mod:`attnzoo.convert.mmseg`
(``patch_embed_projection``; ``layers_<i>`` with ``ln1``, ``attn/{query,key,value,proj}``,
``ln2``, ``mlp/{fc1,fc2}``; ``ln1`` for the final norm; parameters ``cls_token``,
``pos_embed``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attnzoo import ops
from attnzoo._checks import check_choice, check_image, check_positive, check_rate
from attnzoo.blocks.common import Dtype, conv, remat, remat_policy
from attnzoo.blocks.transformer import ScannedEncoderLayer, TransformerEncoderLayer
from attnzoo.backbones.resnetv2 import ResNetV2
from attnzoo.backbones.swin import pad_to_multiple

Array = jax.Array

INTERPOLATE_MODES = ("bicubic", "bilinear")


def resize_pos_embed(pos_embed: Array, grid: tuple[int, int], size: tuple[int, int],
                     mode: str = "bicubic") -> Array:
    """mmseg's ``VisionTransformer.resize_pos_embed``: ``(1, 1 + gh gw, C)`` position embedding
    (class token first, then the ``grid`` in row-major order) with its grid part resized to
    ``size`` (``mode`` as ``F.interpolate``'s, ``align_corners=False``); the class token's
    entry kept."""
    gh, gw = grid
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:].reshape(1, gh, gw, -1)
    if (gh, gw) != tuple(size):
        patches = (ops.resize_bicubic(patches, size) if mode == "bicubic"
                   else ops.resize_bilinear(patches, size))
    return jnp.concatenate([cls, patches.reshape(1, size[0] * size[1], -1)], axis=1)


class VisionTransformer(nn.Module):
    """Vision Transformer (Dosovitskiy et al., ICLR 2021) / DeiT: one-stride tokens, chosen
    layers as features (module docstring).

    Attributes:
      embed_dim: token width ``C`` (192 ViT-Ti, 384 ViT-S / DeiT-S, 768 ViT-B, 1024 ViT-L).
      depth: encoder layers.
      num_heads: attention heads.
      mlp_ratio: MLP width over ``C``.
      patch_size: ``P``.
      img_size: ``(H, W)`` the position embedding is learned for (its grid is
        ``img_size // P``; mmseg's recipes set the training crop).
      out_indices: the layers (0-based) whose outputs are returned, as ``c1``, ``c2``, ...
      qkv_bias: biases on the attention's query, key and value maps.
      patch_bias: a bias on the patch embedding conv (ViT's, timm's, and mmseg 0.x's, which
        trained the published checkpoints; mmseg 1.x's configs build it without).
      with_cls_token: keep the class token in the sequence the layers see (SETR-MLA drops it
        after adding the position embedding).
      final_norm: a LayerNorm after the last layer.
      interpolate_mode: how the position embedding is resized (``"bicubic"``, ``"bilinear"``).
      ln_eps: the LayerNorms' epsilon (1e-6 in mmseg's ViT configs and timm).
      dropout: dropout after the position embedding, the attention projections and in the
        MLPs (mmseg's ``drop_rate``).
      drop_path_rate: stochastic depth of the MLP branches, rising linearly over the layers
        from 0 to this (0.1 in mmseg's DeiT recipes).
      in_channels: channels of the input images.
      memory_efficient: chunked exact attention in every layer.
      scan_layers: the encoder layers as one ``nn.scan`` over a layer (its parameters
        ``layers/...`` stacked along a leading ``depth`` axis instead of ``layers_<i>/...``):
        one layer compiled instead of ``depth``, the same results (:func:`stack_layers` /
        :func:`unstack_layers` convert parameters between the two forms).
      remat: rematerialise every encoder layer with this policy
        (:data:`~attnzoo.blocks.common.REMAT_POLICIES`: ``"nothing"``, ``"dots"``), or None.
    """

    remat_kind: ClassVar[str] = "transformer"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: tuple[int, int] = (224, 224)
    out_indices: Sequence[int] = (2, 5, 8, 11)
    qkv_bias: bool = True
    patch_bias: bool = True
    with_cls_token: bool = True
    final_norm: bool = False
    interpolate_mode: str = "bicubic"
    ln_eps: float = 1e-6
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    in_channels: int = 3
    memory_efficient: bool = False
    scan_layers: bool = False
    remat: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "in_channels"):
            check_positive(getattr(self, name), name)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must divide by num_heads "
                             f"{self.num_heads}")
        size = tuple(self.img_size)
        if len(size) != 2 or min(size) < self.patch_size:
            raise ValueError(f"img_size must be (H, W), each at least patch_size "
                             f"{self.patch_size}; got {self.img_size}")
        indices = tuple(self.out_indices)
        if not indices or any(not 0 <= i < self.depth for i in indices) or \
                list(indices) != sorted(set(indices)):
            raise ValueError(f"out_indices must be increasing layer indices in [0, "
                             f"{self.depth}); got {self.out_indices}")
        check_choice(self.interpolate_mode, INTERPOLATE_MODES, "interpolate_mode")
        check_rate(self.drop_path_rate, "drop_path_rate")
        super().__post_init__()

    @property
    def stride(self) -> int:
        """The tokens' stride on the image: the patch size."""
        return self.patch_size

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid the position embedding is learned for."""
        return self.img_size[0] // self.stride, self.img_size[1] // self.stride

    def feature_info(self) -> dict[str, tuple[int, int]]:
        """``{"c1": (channels, stride), ...}`` of the features ``__call__`` returns."""
        return {f"c{k + 1}": (self.embed_dim, self.stride) for k in range(len(self.out_indices))}

    def embed(self, x: Array) -> tuple[Array, dict[str, Array]]:
        """The patch embedding (module docstring) of images ``x``: the ``(B, h, w, C)`` map of
        tokens, and no other features (call inside ``__call__``)."""
        x = conv(self.embed_dim, self.patch_size, stride=self.patch_size, padding=0,
                 use_bias=self.patch_bias, name="patch_embed_projection",
                 dtype=self.dtype, param_dtype=self.param_dtype)(
            pad_to_multiple(x, self.patch_size))
        return x, {}

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        check_image(x, self.in_channels, "x", "in_channels")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x, features = self.embed(x)
        features = dict(features)
        b, h, w, c = x.shape
        init = nn.initializers.truncated_normal(0.02)
        cls_token = self.param("cls_token", init, (1, 1, c), self.param_dtype)
        pos_embed = self.param("pos_embed", init, (1, 1 + self.grid[0] * self.grid[1], c),
                               self.param_dtype)
        tokens = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, c)).astype(x.dtype),
                                  x.reshape(b, h * w, c)], axis=1)
        tokens = tokens + resize_pos_embed(pos_embed, self.grid, (h, w),
                                           self.interpolate_mode).astype(x.dtype)
        tokens = nn.Dropout(self.dropout)(tokens, deterministic=not train)
        if not self.with_cls_token:
            tokens = tokens[:, 1:]
        rates = [self.drop_path_rate * i / max(self.depth - 1, 1) for i in range(self.depth)]
        if self.scan_layers:
            for out in self.scanned_layers(tokens, rates, train):
                patches = out[:, 1:] if self.with_cls_token else out
                features[f"c{len(features) + 1}"] = patches.reshape(b, h, w, c)
            return features
        layer_cls = remat(TransformerEncoderLayer, self.remat)
        for i in range(self.depth):
            tokens = layer_cls(
                self.num_heads, self.mlp_ratio, self.qkv_bias, self.dropout, rates[i],
                self.ln_eps, self.memory_efficient, name=f"layers_{i}", **kw)(tokens, train=train)
            if i == self.depth - 1 and self.final_norm:
                tokens = nn.LayerNorm(self.ln_eps, name="ln1", **kw)(tokens)
            if i in self.out_indices:
                patches = tokens[:, 1:] if self.with_cls_token else tokens
                features[f"c{len(features) + 1}"] = patches.reshape(b, h, w, c)
        return features

    def scanned_layers(self, tokens: Array, rates: list[float], train: bool) -> list[Array]:
        """The encoder layers as one ``nn.scan`` (``scan_layers``; called inside
        ``__call__``) with drop-path ``rates``: the ``out_indices`` layers' output tokens (the
        last one normalised with ``final_norm``)."""
        body = ScannedEncoderLayer
        if self.remat is not None:  # no static call arguments to move: the policy alone
            body = nn.remat(body, policy=remat_policy(self.remat), prevent_cse=False)
        scan = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True,
                                                                      "dropout": True},
                       in_axes=0, out_axes=0, length=self.depth)
        last, outputs = scan(self.num_heads, self.mlp_ratio, self.qkv_bias, self.dropout, 0.0,
                             self.ln_eps, self.memory_efficient, training=train, name="layers",
                             dtype=self.dtype, param_dtype=self.param_dtype)(
            tokens, jnp.asarray(rates, jnp.float32))
        if self.final_norm:
            outputs = outputs.at[-1].set(nn.LayerNorm(self.ln_eps, name="ln1", dtype=self.dtype,
                                                      param_dtype=self.param_dtype)(last))
        return [outputs[i] for i in self.out_indices]


def stack_layers(tree: Any, prefix: str = "layers") -> Any:
    """Parameters of unrolled layers (``<prefix>_0`` .. ``<prefix>_<n-1>``, in any sub-dict of
    ``tree``) as one scanned stack (``<prefix>``, each leaf with a leading axis of ``n``):
    :class:`VisionTransformer`'s ``scan_layers`` form. Other entries are kept."""
    if not isinstance(tree, Mapping):
        return tree
    return {k: v if k == prefix else stack_layers(v, prefix)
            for k, v in _stacked(tree, prefix).items()}


def unstack_layers(tree: Any, prefix: str = "layers") -> Any:
    """The inverse of :func:`stack_layers`: every ``<prefix>`` stack of ``n`` layers as
    ``<prefix>_0`` .. ``<prefix>_<n-1>``."""
    if not isinstance(tree, Mapping):
        return tree
    return {k: unstack_layers(v, prefix) for k, v in _unstacked(tree, prefix).items()}


def match_layer_form(tree: Any, target: Any) -> Any:
    """``tree``'s layers in ``target``'s form wherever the two differ: stacked where ``target``
    holds ``<prefix>`` and ``tree`` ``<prefix>_0``, ``<prefix>_1``, ... instead (a plain
    model's checkpoint into a scanned model: a ViT's ``layers``, a MiT's ``block_<i>``),
    unrolled where it is the other way round; where both hold the same keys nothing moves.
    ``target`` may hold arrays or their shapes (``jax.eval_shape``)."""
    if not (isinstance(tree, Mapping) and isinstance(target, Mapping)):
        return tree
    for key in [k for k in target if k not in tree and f"{k}_0" in tree]:
        tree = _stacked(tree, key)
    for key in [k for k in tree if k not in target and f"{k}_0" in target]:
        tree = _unstacked(tree, key)
    return {k: match_layer_form(v, target.get(k)) for k, v in tree.items()}


def _layer_key(key: str, prefix: str) -> bool:
    return key.startswith(prefix + "_") and key[len(prefix) + 1:].isdigit()


def _stacked(node: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``node``'s own ``<prefix>_<i>`` entries stacked as ``<prefix>`` (not its sub-dicts')."""
    indices = sorted(int(k[len(prefix) + 1:]) for k in node if _layer_key(k, prefix))
    if not indices:
        return dict(node)
    if indices != list(range(len(indices))):
        raise ValueError(f"layers {prefix}_<i> must be numbered 0..n-1 to stack; got {indices}")
    stack = jax.tree.map(_stack, *(node[f"{prefix}_{i}"] for i in indices))
    return {**{k: v for k, v in node.items() if not _layer_key(k, prefix)}, prefix: stack}


def _stack(*leaves: Any) -> Any:
    """NumPy leaves (a converter's) stay NumPy arrays of their dtype; others become jax's."""
    return (np if all(isinstance(x, np.ndarray) for x in leaves) else jnp).stack(leaves)


def _unstacked(node: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``node``'s own ``<prefix>`` stack as ``<prefix>_<i>`` entries."""
    if prefix not in node:
        return dict(node)
    depths = {leaf.shape[0] for leaf in jax.tree.leaves(node[prefix])}
    if len(depths) != 1:
        raise ValueError(f"{prefix!r} is not a stack of layers: its leaves lead with {depths}")
    layers = {f"{prefix}_{i}": jax.tree.map(lambda leaf, i=i: leaf[i], node[prefix])
              for i in range(depths.pop())}
    return {**{k: v for k, v in node.items() if k != prefix}, **layers}


class HybridVisionTransformer(VisionTransformer):
    """The R50+ViT hybrid (ViT paper, Sec. 3.1; TransUNet's encoder): the patch embedding reads
    the stride-16 map of a :class:`~attnzoo.backbones.resnetv2.ResNetV2` (``resnet``: stem and
    three stages) through a ``patch_size`` conv (1: a linear map of each position;
    ``patch_embed_projection``), then the ViT as in :class:`VisionTransformer`. Returns the
    ResNet's stem and first stages as ``c1`` .. ``c3`` (strides 2, 4, 8: TransUNet's skip
    connections) and the ViT's outputs after them (``c4``, stride 16).

    Attributes:
      resnet_layers: bottlenecks per ResNet stage ((3, 4, 9)).
      resnet_width: the ResNet's stem width (64).
    """

    patch_size: int = 1
    out_indices: Sequence[int] = (11,)
    final_norm: bool = True
    resnet_layers: Sequence[int] = (3, 4, 9)
    resnet_width: int = 64

    @property
    def stride(self) -> int:
        """The tokens' stride: the ResNet's times the patch size."""
        return 4 * 2 ** (len(self.resnet_layers) - 1) * self.patch_size

    def feature_info(self) -> dict[str, tuple[int, int]]:
        """``{"c1": (channels, stride), ...}`` of the features ``__call__`` returns."""
        resnet = ResNetV2(self.resnet_layers, self.resnet_width, parent=None).feature_info()
        skips = {k: resnet[k] for k in list(resnet)[:-1]}
        return {**skips, **{f"c{len(skips) + k + 1}": (self.embed_dim, self.stride)
                            for k in range(len(self.out_indices))}}

    def embed(self, x: Array) -> tuple[Array, dict[str, Array]]:
        """The ResNet's map through the patch embedding, and the ResNet's earlier features."""
        feats = ResNetV2(self.resnet_layers, self.resnet_width, self.in_channels, name="resnet",
                         dtype=self.dtype, param_dtype=self.param_dtype)(x)
        *skips, last = feats
        x, _ = super().embed(feats[last])
        return x, {k: feats[k] for k in skips}
