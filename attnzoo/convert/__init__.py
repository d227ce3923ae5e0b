"""Weights from PyTorch references (timm, torchvision, mmsegmentation, Hugging Face
transformers, the official DANet code, mmcv) into attnzoo.

No PyTorch import is needed to convert: state dicts may hold torch tensors
or numpy arrays. The library never imports the engine: a converted run on disk is written by
the ``python -m attnzoo.convert`` command (``__main__``), which builds the run's config from
the fields the converters give (``mmseg_recipe(stem).config_fields()``,
``transformers_config_fields(config)``).
"""

from attnzoo.convert.backbones import (
    from_timm,
    from_torchvision,
    load_backbone,
    load_state_dict,
    save_backbone,
)
from attnzoo.convert.blocks import block_from_torch
from attnzoo.convert.mmseg import from_mmseg, mmseg_recipe, published_checkpoints
from attnzoo.convert.segformer import from_transformers, transformers_config_fields
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
    "mmseg_recipe",
    "published_checkpoints",
    "save_backbone",
    "target_shapes",
    "to_numpy",
    "transformers_config_fields",
]
