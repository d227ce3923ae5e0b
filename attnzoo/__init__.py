"""attnzoo: attention mechanisms for semantic segmentation in JAX/Flax.

Layers (imports point downward only): ``ops`` (pure jax.numpy) ->
``blocks`` (Flax Linen) -> ``backbones`` -> ``convert``. ``import attnzoo``
needs no TensorFlow and no PyTorch.
"""

from attnzoo import backbones, blocks, convert, ops

__version__ = "0.1.0"

__all__ = ["backbones", "blocks", "convert", "ops", "__version__"]
