"""Polarized self-attention (Liu et al., 2021), parallel layout (psas: sequential).

    python train.py --config configs/psa.py:r101,cityscapes --workdir runs/psa_r101_cityscapes

The argument (depth, output stride, dataset) and the mmsegmentation recipe it
selects: ``attnzoo.engine.config.recipe``.
"""

from attnzoo.engine.config import recipe


def get_config(arg: str = ""):
    return recipe("psa", arg)
