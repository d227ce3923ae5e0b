"""Necks: modules between a backbone and its decode head that remake the backbone's features
(mmsegmentation's ``necks/``). A neck maps the backbone's feature dict to the one the head
reads (the same names). ``create_neck("multilevel", out_channels=768)``, ``list_necks()``.

A neck is registered with ``@NECKS.register(name)`` on a ``flax.linen.Module`` class with the
fields ``dtype`` and ``param_dtype`` whose ``__call__(feats, *, train=False)`` takes the keyword
``train`` (checked when it is registered)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._registry import Registry, check_module_contract
from attnzoo.blocks.common import Dtype, conv

Array = jax.Array

NECKS: Registry[type[nn.Module]] = Registry("neck", check=lambda name, cls: check_module_contract(
    f"neck {name!r} ({getattr(cls, '__name__', cls)})", cls, ("dtype", "param_dtype"),
    "attnzoo.heads.necks"))


@NECKS.register("multilevel")
class MultiLevelNeck(nn.Module):
    """mmseg's ``MultiLevelNeck`` (its ViT-UPerNet models): one-stride features (a ViT's) made a
    pyramid. Feature ``i`` through a 1x1 conv (``lateral_convs_<i>``), rescaled bilinearly by
    ``scales[i]`` (``F.interpolate(scale_factor=...)``, :func:`attnzoo.ops.rescale_bilinear`),
    then a 3x3 conv (``convs_<i>``); the convs have biases and no norm or activation, as mmseg's
    defaults. With one input feature, every output reads it.

    Attributes:
      out_channels: width of every output.
      scales: the rescaling factor of each output ((4, 2, 1, 0.5): strides 4 to 32 from a
        stride-16 ViT).
    """

    out_channels: int
    scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: Mapping[str, Array], *, train: bool = False) -> dict[str, Array]:
        names = list(feats)
        if len(names) not in (1, len(self.scales)):
            raise ValueError(f"MultiLevelNeck reads one feature or one per scale "
                             f"({len(self.scales)}); got {names}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        laterals = [conv(self.out_channels, name=f"lateral_convs_{i}", **kw)(feats[k])
                    for i, k in enumerate(names)]
        if len(laterals) == 1:
            laterals = laterals * len(self.scales)
        out = {}
        for i, (x, scale) in enumerate(zip(laterals, self.scales)):
            if scale != 1:
                x = ops.rescale_bilinear(x, scale)
            out[f"c{i + 1}"] = conv(self.out_channels, 3, name=f"convs_{i}", **kw)(x)
        return out


def create_neck(name: str, /, **kwargs: Any) -> nn.Module:
    """Build the neck registered as ``name`` with fields ``kwargs``; ValueError naming a keyword
    that is no field of the neck (and the nearest field)."""
    return NECKS.build(name, kwargs)


def list_necks(pattern: str = "*", *, describe: bool = False) -> list[str] | dict[str, str]:
    """The registered neck names matching ``pattern`` (shell-style), sorted; with ``describe``,
    a dict name -> the first line of the neck's docstring."""
    return NECKS.listing(pattern, describe)
