"""attnzoo: attention mechanisms for semantic segmentation in JAX/Flax.

Layers (imports point downward only): ``ops`` (pure jax.numpy) ->
``blocks`` (Flax Linen) -> ``backbones`` -> ``heads`` -> ``models`` ->
``inference``; ``losses`` and ``metrics`` beside them; ``convert`` for
PyTorch weights; :class:`Segmenter` segments images with a restored run's protocol. ``import attnzoo`` needs no TensorFlow and no PyTorch.
"""

from attnzoo import backbones, blocks, convert, heads, inference, losses, metrics, models, ops
from attnzoo.segmenter import Segmentation, Segmenter

__version__ = "0.1.0"

__all__ = ["Segmentation", "Segmenter", "backbones", "blocks", "convert", "heads", "inference",
           "losses", "metrics", "models", "ops", "__version__"]
