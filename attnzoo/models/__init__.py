"""Segmentation models: descriptions (backbone + head + auxiliary head) in a registry.

``create("danet_r50_d8", num_classes=19)``, ``list_models()``, ``get_spec(name)``,
``parameter_counts(model)``. Registered (:mod:`attnzoo.models.zoo`): every head family
(``heads.list_families()``) on its model sets (``<family>_r{18,50,101}_d{8,16}``,
``segformer_mit_b{0..5}``) and ``attention_unet`` / ``attention_unet_small``.
``register(name, spec)`` adds a model: an :class:`EncoderDecoderSpec` names a registered
backbone and heads, so a new segmentor is one line of data.
"""

from attnzoo.models import zoo  # noqa: F401  (fills the registry)
from attnzoo.models.registry import (
    MODELS,
    create,
    get_spec,
    list_models,
    parameter_counts,
    register,
)
from attnzoo.models.segmentor import AttentionUNet, EncoderDecoder, resize_logits
from attnzoo.models.specs import EncoderDecoderSpec, ModelSpec, UNetSpec

__all__ = ["AttentionUNet", "EncoderDecoder", "EncoderDecoderSpec", "MODELS", "ModelSpec",
           "UNetSpec", "create", "get_spec", "list_models", "parameter_counts", "register",
           "resize_logits"]


def __dir__() -> list[str]:
    """The public names (``__all__``), not the submodules: what tab completion offers."""
    return sorted(__all__)
