"""Reference PyTorch attention blocks (timm, the official DANet code, mmcv) -> attnzoo blocks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attnzoo import blocks
from attnzoo.convert.torch_weights import convert_state_dict, target_shapes


def block_from_torch(name: str, state_dict: Mapping[str, Any], **block_kwargs: Any) -> dict:
    """Flax variables of block ``name`` from its reference module's ``state_dict``.

    Args:
      name: a registry name (``"se"``, ``"cbam"``, ``"pam"``, ...).
      state_dict: the reference's own keys: timm's for timm blocks,
        ``query_conv/key_conv/value_conv/gamma`` for DANet's PAM, ``gamma`` for
        CAM, mmcv's for criss-cross and non-local.
      **block_kwargs: build the attnzoo block exactly as the reference was
        built (``channels=...`` and any non-default widths).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` ready for
      ``blocks.create(name, **block_kwargs).apply``.

    Raises:
      ConversionError (a ValueError) listing missing, unexpected and
      mis-shaped keys; nothing is loaded partially.
    """
    spec = blocks.get_spec(name)
    module = spec.factory(**block_kwargs)
    target = target_shapes(module, *spec.example(module))
    return convert_state_dict(state_dict, target, renames=spec.torch_renames)
