"""attnzoo: attention mechanisms for semantic segmentation in JAX/Flax.

Layers (imports point downward only): ``ops`` (pure jax.numpy) ->
``blocks`` (Flax Linen) -> backbones, heads, models -> engine. ``import
attnzoo`` needs no TensorFlow and no PyTorch.
"""

from attnzoo import blocks, ops

__version__ = "0.1.0"

__all__ = ["blocks", "ops", "__version__"]
