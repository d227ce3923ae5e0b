"""What every decode head shares: the classifier, the fields, the input check and the registry.

A head maps backbone features ``(B, h, w, C)`` to class logits at the feature
resolution and returns a dict: ``{"out": logits}``, plus, in training, the
outputs its :attr:`DecodeHead.branches` declare (DANet's ``"pam"``, ``"cam"``),
each with its loss weight. Convolutions are 3x3 conv + BN + ReLU
(``ConvNormAct``); the classifier is channel dropout (0.1, as the references)
and a 1x1 conv with bias (mmsegmentation's ``BaseDecodeHead.cls_seg``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_positive, check_rank
from attnzoo._registry import Registry
from attnzoo.blocks.common import ConvNormAct, Dtype, conv

Array = jax.Array

HEADS: Registry[type[nn.Module]] = Registry("head")
register = HEADS.register


class Classifier(nn.Module):
    """Channel dropout then a 1x1 conv to ``num_classes`` (mmsegmentation's ``cls_seg``).

    The dropout zeroes whole feature maps (PyTorch's ``Dropout2d``, which
    mmsegmentation's decode heads and the official DANet / CCNet heads use),
    not single activations.

    Attributes:
      num_classes: output channels.
      dropout: probability of zeroing a channel in training.
    """

    num_classes: int
    dropout: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        x = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
        return conv(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=nn.initializers.normal(0.01), name="conv_seg")(x)


class DecodeHead(nn.Module):
    """Base of the decode heads (mmsegmentation's ``BaseDecodeHead``).

    Subclasses write ``__call__(x, *, train=False) -> dict`` with the helpers
    below and declare extra training outputs in :attr:`branches`.

    Attributes:
      num_classes: classes of the logits.
      channels: width of the head's convolutions.
      dropout: classifier channel dropout.
      align_corners: of the head's bilinear resizing (PSPNet's pyramid), mmseg's flag.
      branches: (class attribute) ``(output name, loss weight)`` of the extra
        logits the head returns in training and at init; the segmentor adds
        them to its loss terms.
    """

    num_classes: int
    channels: int = 512
    dropout: float = 0.1
    align_corners: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    branches: ClassVar[tuple[tuple[str, float], ...]] = ()

    def __post_init__(self) -> None:
        check_positive(self.num_classes, "num_classes")
        check_positive(self.channels, "channels")
        super().__post_init__()

    @property
    def kw(self) -> dict[str, Any]:
        """``dtype`` and ``param_dtype`` for submodules."""
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def check_input(self, x: Array) -> None:
        """``x`` must be NHWC features."""
        check_rank(x, 4, "features", "B, H, W, C")

    def conv_block(self, kernel_size: int, name: str, **kwargs: Any) -> ConvNormAct:
        """A conv-BN-ReLU of ``channels`` (call inside the compact ``__call__``)."""
        return ConvNormAct(self.channels, kernel_size, name=name, **kwargs, **self.kw)

    def classifier(self, name: str = "cls") -> Classifier:
        """A :class:`Classifier` (call inside the compact ``__call__``)."""
        return Classifier(self.num_classes, self.dropout, name=name, **self.kw)


def create(name: str, /, **kwargs: Any) -> nn.Module:
    """Build the head registered as ``name`` (``num_classes=`` required, e.g.
    ``create("danet", num_classes=19, channels=512)``)."""
    return HEADS.get(name)(**kwargs)


def list_heads() -> list[str]:
    """All registered head names, sorted."""
    return HEADS.names()
