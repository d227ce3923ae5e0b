"""Weights from PyTorch references (timm, torchvision, mmsegmentation, Hugging Face
transformers, the official DANet code, mmcv) into attnzoo.

No PyTorch import is needed to convert: state dicts may hold torch tensors
or numpy arrays.
"""

from attnzoo.convert.backbones import (
    from_timm,
    from_torchvision,
    load_backbone,
    load_state_dict,
    save_backbone,
)
from attnzoo.convert.blocks import block_from_torch
from attnzoo.convert.mmseg import from_mmseg, mmseg_config
from attnzoo.convert.segformer import from_transformers, transformers_config
from attnzoo.convert.torch_weights import (
    ConversionError,
    convert_state_dict,
    target_shapes,
    to_numpy,
)

__all__ = [
    "ConversionError",
    "block_from_torch",
    "convert_state_dict",
    "from_mmseg",
    "from_timm",
    "from_torchvision",
    "from_transformers",
    "load_backbone",
    "load_state_dict",
    "mmseg_config",
    "save_backbone",
    "target_shapes",
    "to_numpy",
    "transformers_config",
]
