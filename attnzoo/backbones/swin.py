"""Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows", ICCV 2021) as a segmentation backbone, as mmsegmentation's
``SwinTransformer`` builds it.

* a patch embedding: a ``4 x 4`` stride-4 conv (the image zero-padded at the bottom / right to
  a multiple of 4) and LayerNorm;
* four stages of Swin blocks, pre-norm with stochastic depth on both branches,

  .. math:: z' = z + \\mathrm{DropPath}(\\text{(S)W-MSA}(\\mathrm{LN}(z))),\\qquad
     z'' = z' + \\mathrm{DropPath}(\\mathrm{MLP}(\\mathrm{LN}(z')))

  alternating window attention and shifted-window attention (shift ``M // 2``) in ``M x M``
  windows with a relative position bias (:class:`~attnzoo.blocks.WindowAttention`, eq. 4; the
  map zero-padded to multiples of ``M``; masked pairs of a shifted window get -100 added, as
  the reference code), GELU MLP of ratio 4;
* between stages, patch merging: each ``2 x 2`` neighbourhood (the map zero-padded to even
  sizes) concatenated as mmseg's ``nn.Unfold`` orders it (channel-major: ``c * 4 + 2 * dy +
  dx``), LayerNorm, a linear map to twice the width without bias;
* each stage's output (before merging) through its own LayerNorm (``norm<i>``).

``__call__(x, *, train=False)`` returns ``{"c1": ..., "c4": ...}`` (strides 4, 8, 16, 32;
widths ``embed_dim * (1, 2, 4, 8)``). Submodules are named as mmseg's state dict after
its renames in :mod:`attnzoo.convert.mmseg` (``stages_<i>/blocks_<j>/attn`` for
``stages.<i>.blocks.<j>.attn.w_msa``, ``mlp/fc1`` for ``ffn.layers.0.0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import (
    check_image, check_positive, check_rate, check_stage_heads, check_stages,
)
from attnzoo.blocks.common import DropPath, Dtype, conv, remat
from attnzoo.blocks.transformer import Mlp
from attnzoo.blocks.window import WindowAttention

Array = jax.Array

LN_EPS = 1e-5  # PyTorch's nn.LayerNorm, which mmseg's Swin uses
MASK_LOGIT = -100.0  # the reference code's masked_fill value


def pad_to_multiple(x: Array, multiple: int) -> Array:
    """``x`` zero-padded at the bottom / right to multiples of ``multiple`` (mmseg's
    ``AdaptivePadding(padding="corner")``)."""
    h, w = x.shape[1:3]
    return jnp.pad(x, ((0, 0), (0, -h % multiple), (0, -w % multiple), (0, 0)))


class SwinBlock(nn.Module):
    """One Swin block (module docstring), on ``(B, H, W, C)``.

    Attributes:
      num_heads: attention heads.
      window_size: ``M``.
      shift: shift the windows by ``M // 2`` (every second block).
      mlp_ratio: the MLP's width over ``C``.
      drop_path: stochastic depth rate of both branches.
    """

    num_heads: int
    window_size: int = 7
    shift: bool = False
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        y = nn.LayerNorm(LN_EPS, name="norm1", **kw)(x)
        y = WindowAttention(c, self.num_heads, self.window_size,
                            self.window_size // 2 if self.shift else 0, MASK_LOGIT,
                            name="attn", **kw)(y)
        x = x + DropPath(self.drop_path)(y, train=train)
        y = nn.LayerNorm(LN_EPS, name="norm2", **kw)(x)
        y = Mlp(int(c * self.mlp_ratio), name="mlp", **kw)(y)
        return x + DropPath(self.drop_path)(y, train=train)


class PatchMerging(nn.Module):
    """``2 x 2`` patch merging (module docstring): ``(B, H, W, C)`` to
    ``(B, ceil(H/2), ceil(W/2), 2C)``."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = pad_to_multiple(x, 2)
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
        x = x.reshape(b, h // 2, w // 2, 4 * c)  # channel-major, as nn.Unfold
        x = nn.LayerNorm(LN_EPS, name="norm", **kw)(x)
        return nn.Dense(2 * c, use_bias=False, name="reduction", **kw)(x)


class SwinStage(nn.Module):
    """``depth`` Swin blocks (``blocks_<j>``, every second one shifted) at one resolution."""

    depth: int
    num_heads: int
    window_size: int
    mlp_ratio: float
    drop_paths: tuple[float, ...]
    remat: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        block_cls = remat(SwinBlock, self.remat)
        for j in range(self.depth):
            x = block_cls(self.num_heads, self.window_size, j % 2 == 1, self.mlp_ratio,
                          self.drop_paths[j], name=f"blocks_{j}", dtype=self.dtype,
                          param_dtype=self.param_dtype)(x, train=train)
        return x


class SwinTransformer(nn.Module):
    """Swin Transformer (Liu et al., ICCV 2021): shifted-window attention in four stages
    (module docstring).

    Attributes:
      embed_dim: width of stage 1 (96 for Swin-T/S, 128 for B, 192 for L).
      depths: blocks per stage.
      num_heads: attention heads per stage.
      window_size: ``M`` (7; 12 for the models pretrained at 384).
      mlp_ratio: MLP width over the stage's.
      drop_path_rate: stochastic depth, rising linearly over the blocks from 0 to this (0.3 in
        mmseg's UPerNet recipes).
      patch_size: of the patch embedding (4).
      in_channels: channels of the input images.
      remat: rematerialise every Swin block with this policy
        (:data:`~attnzoo.blocks.common.REMAT_POLICIES`: ``"nothing"``, ``"dots"``), or None.
    """

    remat_kind: ClassVar[str] = "transformer"
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3
    patch_size: int = 4
    in_channels: int = 3
    remat: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_stages(self, ("depths", "num_heads"))
        check_stage_heads([self.embed_dim * 2**i for i in range(4)], self.num_heads)
        for name in ("embed_dim", "window_size", "patch_size"):
            check_positive(getattr(self, name), name)
        check_rate(self.drop_path_rate, "drop_path_rate")
        super().__post_init__()

    def feature_info(self) -> dict[str, tuple[int, int]]:
        """``{"c1": (channels, stride), ...}`` of the features ``__call__`` returns."""
        return {f"c{i + 1}": (self.embed_dim * 2**i, self.patch_size * 2**i) for i in range(4)}

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        check_image(x, self.in_channels, "x", "in_channels")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = conv(self.embed_dim, self.patch_size, stride=self.patch_size, padding=0,
                 name="patch_embed_projection", **kw)(pad_to_multiple(x, self.patch_size))
        x = nn.LayerNorm(LN_EPS, name="patch_embed_norm", **kw)(x)
        total = sum(self.depths)
        rates = [self.drop_path_rate * k / max(total - 1, 1) for k in range(total)]
        features: dict[str, Array] = {}
        start = 0
        for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
            x = SwinStage(depth, heads, self.window_size, self.mlp_ratio,
                          tuple(rates[start:start + depth]), self.remat, name=f"stages_{i}",
                          **kw)(
                x, train=train)
            start += depth
            features[f"c{i + 1}"] = nn.LayerNorm(LN_EPS, name=f"norm{i}", **kw)(x)
            if i < 3:
                x = PatchMerging(name=f"downsample_{i}", **kw)(x)
        return features
