"""Decode heads, one file per family on a shared base (mmsegmentation's ``decode_heads/``).

``create("danet", num_classes=19)``, ``list_heads()``. Registered: ``fcn``,
``danet``, ``ccnet``, ``nonlocal``, ``gcnet``, ``psa`` / ``psas`` (polarized
self-attention, parallel / sequential), ``aspp`` (DeepLabV3), ``psp`` (PSPNet)
``psanet`` (point-wise spatial attention) and ``segformer`` (SegFormer's all-MLP
decoder over four stages). A new head is
a :class:`DecodeHead` subclass in its own file, decorated with ``@register``.
"""

from attnzoo.heads.aspp import ASPPHead
from attnzoo.heads.base import HEADS, Classifier, DecodeHead, create, list_heads, register
from attnzoo.heads.danet import DANetHead
from attnzoo.heads.fcn import CCHead, FCNHead, GCHead, NLHead, PolarizedHead
from attnzoo.heads.psanet import PSANetHead
from attnzoo.heads.psp import PSPHead
from attnzoo.heads.segformer import SegFormerHead

__all__ = ["ASPPHead", "CCHead", "Classifier", "DANetHead", "DecodeHead", "FCNHead", "GCHead",
           "HEADS", "NLHead", "PSANetHead", "PSPHead", "PolarizedHead", "SegFormerHead",
           "create", "list_heads",
           "register"]
