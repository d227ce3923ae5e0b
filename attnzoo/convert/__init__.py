"""Weights from PyTorch references (timm, the official DANet code, mmcv) into attnzoo.

No PyTorch import is needed to convert: state dicts may hold torch tensors
or numpy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attnzoo import blocks
from attnzoo.convert.torch_weights import (
    ConversionError,
    convert_state_dict,
    target_shapes,
    to_numpy,
)


def block_from_torch(name: str, state_dict: Mapping[str, Any], **block_kwargs: Any) -> dict:
    """Flax variables of block ``name`` from its reference module's ``state_dict``.

    ``name`` is a registry name (``"se"``, ``"cbam"``, ``"pam"``, ...) and
    ``block_kwargs`` build the attnzoo block exactly as the reference was
    built (``channels=...`` and any non-default widths). Keys are the
    reference's own: timm's for timm blocks, ``query_conv/key_conv/
    value_conv/gamma`` for DANet's PAM, ``gamma`` for CAM, mmcv's for
    criss-cross and non-local. Returns ``{"params": ..., "batch_stats": ...}``
    ready for ``blocks.create(name, **block_kwargs).apply``.

    Raises:
      ConversionError (a ValueError) listing missing, unexpected and
      mis-shaped keys; nothing is loaded partially.
    """
    spec = blocks.get_spec(name)
    module = spec.factory(**block_kwargs)
    target = target_shapes(module, *spec.example(module))
    return convert_state_dict(state_dict, target, renames=spec.torch_renames)


from attnzoo.convert.backbones import (  # noqa: E402
    from_timm,
    from_torchvision,
    load_backbone,
    load_state_dict,
    save_backbone,
)

__all__ = [
    "ConversionError",
    "block_from_torch",
    "from_timm",
    "from_torchvision",
    "load_backbone",
    "load_state_dict",
    "save_backbone",
    "convert_state_dict",
    "target_shapes",
    "to_numpy",
]
