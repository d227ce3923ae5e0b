"""Non-local networks (Wang et al., CVPR 2018): embedded-Gaussian non-local head.

    python train.py --config configs/nonlocal.py:r101,cityscapes --workdir runs/nonlocal_r101_cityscapes

The argument (depth, output stride, dataset) and the mmsegmentation recipe it
selects: ``attnzoo.engine.config.recipe``.
"""

from attnzoo.engine.config import recipe


def get_config(arg: str = ""):
    return recipe("nonlocal", arg)
