"""attnzoo: attention mechanisms for semantic segmentation in JAX/Flax.

Layers (imports point downward only): ``ops`` (pure jax.numpy) ->
``blocks`` (Flax Linen) -> ``backbones`` -> ``heads`` -> ``models`` ->
``inference``; ``losses`` and ``metrics`` beside them; ``convert`` for
PyTorch weights. ``import attnzoo`` needs no TensorFlow and no PyTorch.
"""

from attnzoo import backbones, blocks, convert, heads, inference, losses, metrics, models, ops

__version__ = "0.1.0"

__all__ = ["backbones", "blocks", "convert", "heads", "inference", "losses", "metrics", "models",
           "ops", "__version__"]
