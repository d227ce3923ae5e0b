"""Mix Transformer (MiT), SegFormer's encoder (Xie et al., NeurIPS 2021).

Four stages, each an overlapping patch embedding (a strided conv + LayerNorm:
strides 4, 2, 2, 2, so features at 1/4, 1/8, 1/16, 1/32), ``depths[i]``
Transformer blocks with spatial-reduction attention (reduction 8, 4, 2, 1)
and Mix-FFN, and a LayerNorm. No position embedding: the 3x3 depthwise
conv of Mix-FFN carries position, so any input size works (no interpolation).
Same interface as :class:`attnzoo.backbones.ResNet`: ``__call__(x, *,
train=False)`` returns ``{"c1": ..., "c4": ...}`` (NHWC), ``feature_info()``
gives channels and strides, so any decode head can read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attnzoo._checks import check_image, check_positive, check_stage_heads, check_stages
from attnzoo.blocks.common import DepthwiseConv, DropPath, Dtype, conv, remat, remat_policy
from attnzoo.blocks.efficient import LINEAR_INIT, SpatialReductionAttention

Array = jax.Array

CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
"""Convolutions: normal with std ``sqrt(2 / fan_out)`` (SegFormer's and mmseg's init)."""


class OverlapPatchEmbed(nn.Module):
    """A ``patch_size`` conv of stride ``stride`` with padding ``patch_size // 2`` (patches
    overlap), then LayerNorm: SegFormer's overlapping patch merging (Sec. 3.1).
    Submodules ``proj``, ``norm``."""

    features: int
    patch_size: int
    stride: int
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = conv(self.features, self.patch_size, stride=self.stride,
                 padding=self.patch_size // 2, kernel_init=CONV_INIT, name="proj", **kw)(x)
        return nn.LayerNorm(self.norm_eps, name="norm", **kw)(x)


class MixFFN(nn.Module):
    """Mix-FFN (SegFormer eq. (3)): ``x_out = fc2(GELU(DWConv3x3(fc1(x))))``.

    ``fc1`` widens to ``hidden`` channels, the depthwise 3x3 conv (with bias)
    mixes neighbours -- the encoder's only positional signal -- and GELU is
    the exact (erf) one, as PyTorch's ``nn.GELU``. Returns the branch (no
    residual). Submodules ``fc1``, ``dwconv``, ``fc2``.
    """

    features: int
    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Dense(self.hidden, kernel_init=LINEAR_INIT, name="fc1", **kw)(x)
        x = DepthwiseConv(3, kernel_init=CONV_INIT, name="dwconv", **kw)(x)
        x = jax.nn.gelu(x, approximate=False)
        return nn.Dense(self.features, kernel_init=LINEAR_INIT, name="fc2", **kw)(x)


class MiTBlock(nn.Module):
    """One Transformer block of MiT (pre-norm, stochastic depth on both branches):

        x = x + DropPath(SRA(LN(x))),   x = x + DropPath(MixFFN(LN(x))).

    Submodules ``norm1``, ``attn`` (:class:`SpatialReductionAttention`), ``norm2``, ``mlp``.
    """

    features: int
    num_heads: int
    sr_ratio: int
    mlp_ratio: int = 4
    drop_path: float = 0.0
    norm_eps: float = 1e-6
    memory_efficient: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, drop_path: Array | None = None
                 ) -> Array:
        """``drop_path`` (a traced rate, in a scan) overrides the field."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = DropPath(self.drop_path if drop_path is None else drop_path)
        y = nn.LayerNorm(self.norm_eps, name="norm1", **kw)(x)
        y = SpatialReductionAttention(self.features, self.num_heads, self.sr_ratio,
                                      norm_eps=self.norm_eps,
                                      memory_efficient=self.memory_efficient, name="attn",
                                      **kw)(y)
        x = x + drop(y, train=train)
        y = nn.LayerNorm(self.norm_eps, name="norm2", **kw)(x)
        y = MixFFN(self.features, self.features * self.mlp_ratio, name="mlp", **kw)(y)
        return x + drop(y, train=train)


class ScannedMiTBlock(MiTBlock):
    """:class:`MiTBlock` as the body of ``nn.scan`` over a stage's blocks: ``(x, drop_path
    rate) -> (x, None)``, with ``training`` a field (a scan's body takes no static call
    arguments). Its parameters are the block's (stacked along the scan's axis)."""

    training: bool = False

    def __call__(self, x: Array, drop_path: Array) -> tuple[Array, None]:
        return super().__call__(x, train=self.training, drop_path=drop_path), None


class MixVisionTransformer(nn.Module):
    """The Mix Transformer encoder of SegFormer (Xie et al., NeurIPS 2021); ``mit_b0`` ..
    ``mit_b5`` are registered sizes (paper Table 6).

    Stage ``i`` embeds patches (``patch_embed_i``), runs ``depths[i]`` blocks
    (``block_i_j``) and normalises (``norm_i``); its output is ``c{i+1}``.
    Stochastic-depth rates grow linearly from 0 to ``drop_path_rate`` over all
    blocks.

    Attributes:
      embed_dims: channels of the four stages.
      depths: blocks per stage.
      num_heads: attention heads per stage.
      sr_ratios: spatial reduction of the keys/values per stage.
      patch_sizes, strides: of the patch embeddings (7/4, then 3/2).
      mlp_ratio: Mix-FFN hidden width over the stage width.
      drop_path_rate: stochastic depth of the last block.
      norm_eps: LayerNorm epsilon (1e-6 as mmseg and the paper's code; Hugging Face's
        port uses 1e-5, which :func:`attnzoo.convert.from_transformers` sets).
      memory_efficient: chunked exact attention in every block (large images).
      in_channels: channels of the input images.
      scan_layers: each stage's blocks as one ``nn.scan`` over a block (parameters
        ``block_<i>/...`` stacked along a leading ``depths[i]`` axis instead of
        ``block_<i>_<j>/...``): one block per stage compiled instead of each, the same results
        (:func:`~attnzoo.backbones.match_layer_form` converts parameters between the forms).
      remat: rematerialise every block with this policy
        (:data:`~attnzoo.blocks.common.REMAT_POLICIES`: ``"nothing"``, ``"dots"``), or None.
    """

    remat_kind: ClassVar[str] = "transformer"
    embed_dims: Sequence[int] = (32, 64, 160, 256)
    depths: Sequence[int] = (2, 2, 2, 2)
    num_heads: Sequence[int] = (1, 2, 5, 8)
    sr_ratios: Sequence[int] = (8, 4, 2, 1)
    patch_sizes: Sequence[int] = (7, 3, 3, 3)
    strides: Sequence[int] = (4, 2, 2, 2)
    mlp_ratio: int = 4
    drop_path_rate: float = 0.1
    norm_eps: float = 1e-6
    memory_efficient: bool = False
    in_channels: int = 3
    scan_layers: bool = False
    remat: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_stages(self, ("embed_dims", "depths", "num_heads", "sr_ratios", "patch_sizes",
                            "strides"))
        check_stage_heads(self.embed_dims, self.num_heads)
        check_positive(self.mlp_ratio, "mlp_ratio")
        super().__post_init__()

    def feature_info(self) -> dict[str, tuple[int, int]]:
        """``{"c1": (channels, stride), ...}`` of the features ``__call__`` returns."""
        strides = np.cumprod(self.strides)
        return {f"c{i + 1}": (int(c), int(s))
                for i, (c, s) in enumerate(zip(self.embed_dims, strides))}

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        check_image(x, self.in_channels, "x", "in_channels")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        total = sum(self.depths)
        rates = [self.drop_path_rate * k / max(total - 1, 1) for k in range(total)]
        features: dict[str, Array] = {}
        k = 0
        block_cls = remat(MiTBlock, self.remat)
        for i, (dim, depth) in enumerate(zip(self.embed_dims, self.depths)):
            x = OverlapPatchEmbed(dim, self.patch_sizes[i], self.strides[i], self.norm_eps,
                                  name=f"patch_embed_{i}", **kw)(x)
            fields = (dim, self.num_heads[i], self.sr_ratios[i], self.mlp_ratio)
            if self.scan_layers:
                x = self.scanned_stage(i, fields, x, rates[k:k + depth], train)
            else:
                for j in range(depth):
                    x = block_cls(*fields, rates[k + j], self.norm_eps, self.memory_efficient,
                                  name=f"block_{i}_{j}", **kw)(x, train=train)
            k += depth
            x = nn.LayerNorm(self.norm_eps, name=f"norm_{i}", **kw)(x)
            features[f"c{i + 1}"] = x
        return features

    def scanned_stage(self, i: int, fields: tuple[int, ...], x: Array, rates: Sequence[float],
                      train: bool) -> Array:
        """Stage ``i``'s blocks (``fields``: width, heads, reduction, MLP ratio) as one
        ``nn.scan`` named ``block_<i>`` with drop-path ``rates`` (``scan_layers``; called inside
        ``__call__``)."""
        body = ScannedMiTBlock
        if self.remat is not None:  # no static call arguments to move: the policy alone
            body = nn.remat(body, policy=remat_policy(self.remat), prevent_cse=False)
        scan = nn.scan(body, variable_axes={"params": 0},
                       split_rngs={"params": True, "dropout": True}, in_axes=0,
                       length=len(rates))
        x, _ = scan(*fields, 0.0, self.norm_eps, self.memory_efficient, training=train,
                    name=f"block_{i}", dtype=self.dtype, param_dtype=self.param_dtype)(
            x, jnp.asarray(rates, jnp.float32))
        return x
