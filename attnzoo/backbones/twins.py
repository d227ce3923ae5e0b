"""Twins (Chu et al., "Twins: Revisiting the Design of Spatial Attention in Vision
Transformers", NeurIPS 2021): Twins-PCPVT and Twins-SVT as segmentation backbones, as
mmsegmentation's ``PCPVT`` and ``SVT`` build them.

Four stages; each:

* a patch embedding: the map zero-padded at the bottom / right to a multiple of the patch size
  (4, then 2), a conv of that kernel and stride, LayerNorm (``patch_embeds_<i>``);
* Transformer layers (``layers_<i>_<j>``), pre-norm, GELU MLP. PCPVT's attend globally to a
  spatially reduced map (global sub-sampled attention, GSA: PVT's spatial-reduction
  attention, :class:`~attnzoo.blocks.SpatialReductionAttention` with a reduction of
  ``sr_ratios[i]``); SVT's alternate locally-grouped attention (LSA, even layers: inside
  non-overlapping ``window x window`` groups, :class:`LocallyGroupedAttention`) and GSA;
* after the first layer, the conditional position encoding (PEG, Sec. 3.1): a depthwise 3x3
  conv added to the tokens as a map (``position_encodings_<i>``);
* SVT: a LayerNorm after the stage (``norm_list_<i>``), whose output the next stage reads.

Stochastic depth follows mmseg, whose layers drop the attention branch of GSA layers and the
MLP branch of every layer twice (an inner and an outer ``DropPath`` with independent draws).
``__call__(x, *, train=False)`` returns ``{"c1": ..., "c4": ...}`` (strides 4, 8, 16, 32).
Submodules are named as mmseg's state dict (after the renames of
:mod:`attnzoo.convert.mmseg`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attnzoo import ops
from attnzoo._checks import (
    check_divisible, check_image, check_rate, check_stage_heads, check_stages,
)
from attnzoo.backbones.swin import pad_to_multiple
from attnzoo.blocks.common import DepthwiseConv, DropPath, Dtype, conv, remat
from attnzoo.blocks.efficient import SpatialReductionAttention
from attnzoo.blocks.transformer import Mlp

Array = jax.Array

LN_EPS = 1e-5  # PyTorch's nn.LayerNorm default, which every norm of mmseg's Twins keeps
MASK_LOGIT = -1000.0  # mmseg's masked_fill value for pairs of a real and a padded position


class LocallyGroupedAttention(nn.Module):
    """Locally-grouped self-attention (Twins, Sec. 3.2, eq. (4)): multi-head attention inside
    non-overlapping ``window x window`` groups of the ``(B, H, W, C)`` map,

        head_h = softmax(Q_h K_h^T / sqrt(d) + M) V_h  in each group,

    the map zero-padded at the bottom / right to multiples of the window and cropped back.
    ``M`` is mmseg's padding mask: -1000 for a pair of a real and a padded position when the
    map is padded both at the bottom and at the right; when it is padded on one side only,
    mmseg's mask covers the whole map and masks nothing (its ``mask[:, -0:]`` slices), so the
    real positions also attend the padded ones. Submodules ``qkv`` (one linear map to
    ``3C``, query / key / value by rows), ``proj``.

    Attributes:
      num_heads: attention heads (``C`` must divide by them).
      window_size: the group side.
    """

    num_heads: int
    window_size: int = 7
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        check_divisible(c, self.num_heads, "x's channels", "num_heads")
        m, heads = self.window_size, self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        pad_b, pad_r = -h % m, -w % m
        x = jnp.pad(x, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
        hp, wp = h + pad_b, w + pad_r
        bias = None
        if pad_b and pad_r:
            padded = np.zeros((1, hp, wp), np.float32)
            padded[:, h:] = padded[:, :, w:] = 1.0
            groups = ops.window_partition(padded, m)[0]  # (nH, nW, M*M)
            differs = groups[..., :, None] != groups[..., None, :]
            bias = jnp.asarray(np.where(differs, MASK_LOGIT, 0.0)[:, :, None], jnp.float32)
        qkv = nn.Dense(3 * c, name="qkv", **kw)(x).reshape(b, hp, wp, 3, heads, c // heads)
        out = ops.window_attention(qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2], m,
                                   bias=bias)
        out = out.reshape(b, hp, wp, c)[:, :h, :w]
        return nn.Dense(c, name="proj", **kw)(out)


class PatchEmbed(nn.Module):
    """The map zero-padded at the bottom / right to a multiple of ``patch``, a ``patch x patch``
    conv of that stride (``projection``), LayerNorm (``norm``): mmseg's ``PatchEmbed``."""

    features: int
    patch: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = conv(self.features, self.patch, stride=self.patch, padding=0, name="projection",
                 **kw)(pad_to_multiple(x, self.patch))
        return nn.LayerNorm(LN_EPS, name="norm", **kw)(x)


class PositionEncoding(nn.Module):
    """The conditional position encoding generator (PEG, Twins Sec. 3.1):
    ``x + DWConv3x3(x)`` (``proj``, with bias)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return x + DepthwiseConv(3, name="proj", dtype=self.dtype,
                                 param_dtype=self.param_dtype)(x)


class TwinsLayer(nn.Module):
    """One Twins layer on ``(B, H, W, C)``: ``x + DropPath(attn(LN(x)))``, then
    ``x + DropPath(MLP(LN(x)))`` (module docstring), the attention GSA, or LSA with a
    ``window``. Submodules ``norm1``, ``attn``, ``norm2``, ``mlp``."""

    num_heads: int
    mlp_ratio: float
    sr_ratio: int
    window: int | None = None
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = nn.LayerNorm(LN_EPS, name="norm1", **kw)(x)
        if self.window is None:
            y = SpatialReductionAttention(x.shape[-1], self.num_heads, self.sr_ratio,
                                          norm_eps=LN_EPS, name="attn", **kw)(y)
            y = DropPath(self.drop_path)(y, train=train)  # mmseg's inner DropPath
        else:
            y = LocallyGroupedAttention(self.num_heads, self.window, name="attn", **kw)(y)
        x = x + DropPath(self.drop_path)(y, train=train)
        y = nn.LayerNorm(LN_EPS, name="norm2", **kw)(x)
        y = Mlp(int(x.shape[-1] * self.mlp_ratio), name="mlp", **kw)(y, train=train)
        y = DropPath(self.drop_path)(DropPath(self.drop_path)(y, train=train), train=train)
        return x + y


class Twins(nn.Module):
    """Twins (Chu et al., NeurIPS 2021): PCPVT without ``window_sizes``, SVT with them
    (module docstring).

    Attributes:
      embed_dims: widths of the four stages.
      depths: layers per stage.
      num_heads: attention heads per stage.
      mlp_ratios: MLP width over the stage's, per stage.
      sr_ratios: GSA's spatial reduction per stage (8, 4, 2, 1).
      window_sizes: LSA's group side per stage (SVT: 7); None: every layer is GSA (PCPVT).
      norm_after_stage: a LayerNorm after each stage (SVT's).
      patch_sizes: kernel and stride of each stage's patch embedding (4, 2, 2, 2).
      drop_path_rate: stochastic depth, rising linearly over the layers from 0 to this.
      in_channels: channels of the input images.
      remat: rematerialise every layer with this policy
        (:data:`~attnzoo.blocks.common.REMAT_POLICIES`: ``"nothing"``, ``"dots"``), or None.
    """

    remat_kind: ClassVar[str] = "transformer"
    embed_dims: Sequence[int] = (64, 128, 320, 512)
    depths: Sequence[int] = (3, 4, 6, 3)
    num_heads: Sequence[int] = (1, 2, 5, 8)
    mlp_ratios: Sequence[float] = (8, 8, 4, 4)
    sr_ratios: Sequence[int] = (8, 4, 2, 1)
    window_sizes: Sequence[int] | None = None
    norm_after_stage: bool = False
    patch_sizes: Sequence[int] = (4, 2, 2, 2)
    drop_path_rate: float = 0.2
    in_channels: int = 3
    remat: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        fields = ["embed_dims", "depths", "num_heads", "mlp_ratios", "sr_ratios", "patch_sizes"]
        if self.window_sizes is not None:
            fields.append("window_sizes")
        check_stages(self, fields)
        check_stage_heads(self.embed_dims, self.num_heads)
        check_rate(self.drop_path_rate, "drop_path_rate")
        super().__post_init__()

    def feature_info(self) -> dict[str, tuple[int, int]]:
        """``{"c1": (channels, stride), ...}`` of the features ``__call__`` returns."""
        strides = np.cumprod(self.patch_sizes)
        return {f"c{i + 1}": (int(self.embed_dims[i]), int(strides[i])) for i in range(4)}

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        check_image(x, self.in_channels, "x", "in_channels")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        total = sum(self.depths)
        rates = [self.drop_path_rate * k / max(total - 1, 1) for k in range(total)]
        features: dict[str, Array] = {}
        start = 0
        layer_cls = remat(TwinsLayer, self.remat)
        for i, (width, depth, patch) in enumerate(zip(self.embed_dims, self.depths,
                                                      self.patch_sizes)):
            x = PatchEmbed(width, patch, name=f"patch_embeds_{i}", **kw)(x)
            for j in range(depth):
                window = (None if self.window_sizes is None or j % 2
                          else int(self.window_sizes[i]))
                x = layer_cls(int(self.num_heads[i]), float(self.mlp_ratios[i]),
                              int(self.sr_ratios[i]), window, rates[start + j],
                              name=f"layers_{i}_{j}", **kw)(x, train=train)
                if j == 0:
                    x = PositionEncoding(name=f"position_encodings_{i}", **kw)(x)
            start += depth
            if self.norm_after_stage:
                x = nn.LayerNorm(LN_EPS, name=f"norm_list_{i}", **kw)(x)
            features[f"c{i + 1}"] = x
        return features
