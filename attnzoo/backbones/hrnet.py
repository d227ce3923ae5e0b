"""HRNet: high-resolution representations kept through the whole network.

Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition", TPAMI 2020
(HRNetV2, the segmentation variant: all four resolutions are output), as mmsegmentation's
``HRNet`` and timm's ``hrnet_*`` build it:

* a stem of two stride-2 3x3 conv-BN-ReLU (64 channels), then stage 1: bottleneck blocks on one
  branch at stride 4;
* stages 2-4 each add a branch of half the resolution and twice the width (``widths``; a
  *transition* makes the new branch from the lowest-resolution one with stride-2 3x3 convs)
  and repeat *HR modules*: basic residual blocks on every branch, then a multi-resolution
  fusion in which every output branch ``i`` sums all branches ``j``,

  .. math:: y_i = \\mathrm{ReLU}\\Big(\\sum_j f_{ij}(x_j)\\Big),\\quad
     f_{ij} = \\begin{cases} \\mathrm{up}_{2^{j-i}}(\\mathrm{BN}(\\mathrm{conv}_{1\\times1}(x_j)))
     & j > i \\\\ x_j & j = i \\\\ (\\text{stride-2 } 3\\times3 \\text{ conv-BN})^{i-j}(x_j)
     & j < i \\end{cases}

  (bilinear upsampling, then a resize to branch ``i``'s size where odd sizes make them differ,
  as mmseg; ReLU between the stride-2 convs of a path, not after the last).

Submodules are named as the PyTorch state dicts (``stage3_1/branches_2_0/conv1`` for
``stage3.1.branches.2.0.conv1``), so mmseg's, timm's and the official HRNet's weights load by
name. ``__call__(x, *, train=False)`` returns ``{"c1": ..., "c4": ...}``, the four branches
(strides 4, 8, 16, 32; widths ``widths``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_image, check_positive, check_stages
from attnzoo.backbones.resnet import BasicBlock, Bottleneck
from attnzoo.blocks.common import Dtype, batch_norm, conv, remat

Array = jax.Array

STEM_WIDTH = 64


def _conv_bn(x: Array, features: int, kernel_size: int, stride: int, name: str, train: bool,
             relu: bool, **kw: Any) -> Array:
    """A conv (no bias, PyTorch padding) named ``<name>_0`` and its BN ``<name>_1``: one
    ``nn.Sequential(conv, bn[, relu])`` of the references."""
    x = conv(features, kernel_size, stride=stride, padding=kernel_size // 2, use_bias=False,
             name=f"{name}_0", **kw)(x)
    x = batch_norm(train, name=f"{name}_1", **kw)(x)
    return jax.nn.relu(x) if relu else x


class HRModule(nn.Module):
    """One HR module: ``num_blocks`` basic residual blocks on each branch (``branches_<i>_<k>``),
    then the multi-resolution fusion (``fuse_layers_<i>_<j>``) of the module docstring.

    Attributes:
      widths: the branches' widths, highest resolution first.
      num_blocks: residual blocks per branch.
      remat: rematerialise each residual block with this policy, or None (:class:`HRNet`).
    """

    widths: tuple[int, ...]
    num_blocks: int
    remat: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[Array], *, train: bool = False) -> list[Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        xs = list(xs)
        block_cls = remat(BasicBlock, self.remat)
        for i, width in enumerate(self.widths):
            for k in range(self.num_blocks):
                xs[i] = block_cls(width, downsample=xs[i].shape[-1] != width,
                                   name=f"branches_{i}_{k}", **kw)(xs[i], train=train)
        if len(xs) == 1:
            return xs
        fused = []
        for i, width in enumerate(self.widths):
            size = xs[i].shape[1:3]
            y = 0
            for j, x in enumerate(xs):
                if j > i:
                    z = _conv_bn(x, width, 1, 1, f"fuse_layers_{i}_{j}", train, False, **kw)
                    up = 2 ** (j - i)
                    z = ops.interpolate(z, (z.shape[1] * up, z.shape[2] * up))
                    if z.shape[1:3] != size:
                        z = ops.interpolate(z, size)
                elif j < i:
                    z = x
                    for k in range(i - j):
                        last = k == i - j - 1
                        z = _conv_bn(z, width if last else x.shape[-1], 3, 2,
                                     f"fuse_layers_{i}_{j}_{k}", train, not last, **kw)
                else:
                    z = x
                y = y + z
            fused.append(jax.nn.relu(y))
        return fused


class HRNet(nn.Module):
    """HRNet (Wang et al., TPAMI 2020): four parallel branches, ``{"c1": ..., "c4": ...}``
    (module docstring).

    Attributes:
      widths: the branches' widths (HRNet-W18: ``(18, 36, 72, 144)``).
      num_modules: HR modules of stages 1-4 (stage 1 is one module: ``num_modules[0]`` must be
        1).
      num_blocks: residual blocks per branch in the modules of stages 1-4.
      stage1_planes: the stage-1 bottlenecks' planes (their output is 4x as wide).
      in_channels: channels of the input images.
      remat: rematerialise every residual block (stage 1's bottlenecks, the modules' basic
        blocks) with this policy (:data:`~attnzoo.blocks.common.REMAT_POLICIES`), or None.
    """

    remat_kind: ClassVar[str] = "bottleneck"
    widths: Sequence[int] = (18, 36, 72, 144)
    num_modules: Sequence[int] = (1, 1, 4, 3)
    num_blocks: Sequence[int] = (4, 4, 4, 4)
    stage1_planes: int = 64
    in_channels: int = 3
    remat: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_stages(self, ("widths", "num_modules", "num_blocks"))
        if tuple(self.num_modules)[0] != 1:
            raise ValueError(f"stage 1 is one module: num_modules[0] must be 1; got "
                             f"{tuple(self.num_modules)}")
        check_positive(self.stage1_planes, "stage1_planes")
        super().__post_init__()

    def feature_info(self) -> dict[str, tuple[int, int]]:
        """``{"c1": (channels, stride), ...}`` of the features ``__call__`` returns."""
        return {f"c{i + 1}": (int(w), 4 * 2**i) for i, w in enumerate(self.widths)}

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        check_image(x, self.in_channels, "x", "in_channels")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i in (1, 2):
            x = conv(STEM_WIDTH, 3, stride=2, padding=1, use_bias=False, name=f"conv{i}", **kw)(x)
            x = jax.nn.relu(batch_norm(train, name=f"bn{i}", **kw)(x))
        for k in range(self.num_blocks[0]):
            x = remat(Bottleneck, self.remat)(
                self.stage1_planes, downsample=k == 0 and x.shape[-1] != 4 * self.stage1_planes,
                name=f"layer1_{k}", **kw)(x, train=train)
        xs = [x]
        for stage in (2, 3, 4):
            widths = tuple(int(w) for w in self.widths[:stage])
            xs = self._transition(xs, widths, f"transition{stage - 1}", train)
            for m in range(self.num_modules[stage - 1]):
                xs = HRModule(widths, self.num_blocks[stage - 1], self.remat,
                              name=f"stage{stage}_{m}", **kw)(xs, train=train)
        return {f"c{i + 1}": y for i, y in enumerate(xs)}

    def _transition(self, xs: list[Array], widths: tuple[int, ...], name: str, train: bool
                    ) -> list[Array]:
        """The branches of the next stage: the existing ones (a 3x3 conv-BN-ReLU where the width
        changes), and a new one from the lowest-resolution branch by stride-2 3x3 conv-BN-ReLU
        (called inside the compact ``__call__``)."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        out = []
        for i, width in enumerate(widths):
            if i < len(xs):
                same = xs[i].shape[-1] == width
                out.append(xs[i] if same else
                           _conv_bn(xs[i], width, 3, 1, f"{name}_{i}", train, True, **kw))
                continue
            y = xs[-1]
            for k in range(i + 1 - len(xs)):
                last = k == i - len(xs)
                y = _conv_bn(y, width if last else y.shape[-1], 3, 2, f"{name}_{i}_{k}", train,
                             True, **kw)
            out.append(y)
        return out
