"""Decode heads, one module per family on a shared base (mmsegmentation's ``decode_heads/``).

``create("danet", num_classes=19)``, ``list_heads()``; the families (a head with the models,
settings and mmseg key renames particular to it, :class:`Family`): ``get_family("danet")``,
``list_families()``. A new family is one module here: a :class:`DecodeHead` subclass
decorated with ``@register`` and a ``register_family(Family(...))`` beside it, imported below.
"""

from attnzoo.heads.base import (
    FAMILIES,
    HEADS,
    Classifier,
    DecodeHead,
    Family,
    create,
    get_family,
    list_families,
    list_heads,
    register,
    register_family,
)
from attnzoo.heads.ann import ANNHead
from attnzoo.heads.apcnet import APCHead
from attnzoo.heads.ccnet import CCHead
from attnzoo.heads.danet import DANetHead
from attnzoo.heads.deeplabv3 import ASPPHead
from attnzoo.heads.deeplabv3plus import DeepLabV3PlusHead
from attnzoo.heads.dmnet import DMHead
from attnzoo.heads.dnl import DNLHead
from attnzoo.heads.emanet import EMAHead
from attnzoo.heads.encnet import EncHead
from attnzoo.heads.fcn import FCNHead
from attnzoo.heads.gcnet import GCHead
from attnzoo.heads.isanet import ISAHead
from attnzoo.heads.mask2former import Mask2FormerHead
from attnzoo.heads.maskformer import MaskFormerHead
from attnzoo.heads.necks import NECKS, MultiLevelNeck, create_neck, list_necks
from attnzoo.heads.non_local import NLHead
from attnzoo.heads.polarized import PolarizedHead
from attnzoo.heads.psanet import PSANetHead
from attnzoo.heads.ocrnet import OCRHead
from attnzoo.heads.pspnet import PSPHead
from attnzoo.heads.segformer import SegFormerHead
from attnzoo.heads.segmenter import SegmenterMaskHead
from attnzoo.heads.setr import MLANeck, SETRMLAHead, SETRUpHead
from attnzoo.heads.transunet import CascadedUpsampler
from attnzoo.heads.sem_fpn import FPNHead
from attnzoo.heads.upernet import UPerHead

__all__ = ["ANNHead", "APCHead", "ASPPHead", "CCHead", "CascadedUpsampler", "Classifier",
           "DANetHead", "DMHead", "DNLHead", "DecodeHead", "DeepLabV3PlusHead", "EMAHead",
           "EncHead", "FAMILIES", "FCNHead", "FPNHead", "Family", "GCHead", "HEADS", "ISAHead",
           "Mask2FormerHead", "MaskFormerHead",
           "MLANeck", "MultiLevelNeck", "NECKS", "NLHead", "OCRHead", "PSANetHead", "PSPHead",
           "PolarizedHead", "SETRMLAHead", "SETRUpHead", "SegFormerHead", "SegmenterMaskHead",
           "UPerHead", "create", "create_neck", "get_family", "list_families", "list_heads",
           "list_necks", "register", "register_family"]


def __dir__() -> list[str]:
    """The public names (``__all__``), not the submodules: what tab completion offers."""
    return sorted(__all__)
