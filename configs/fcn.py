"""FCN baseline (Long et al., CVPR 2015; mmsegmentation's FCNHead, 2 convs, concat input).

    python train.py --config configs/fcn.py:r101,cityscapes --workdir runs/fcn_r101_cityscapes

The argument (depth, output stride, dataset) and the mmsegmentation recipe it
selects: ``attnzoo.engine.config.recipe``.
"""

from attnzoo.engine.config import recipe


def get_config(arg: str = ""):
    return recipe("fcn", arg)
