"""DANet (Fu et al., CVPR 2019): position + channel attention head, three classifiers in training.

    python train.py --config configs/danet.py:r101,cityscapes --workdir runs/danet_r101_cityscapes

The argument (depth, output stride, dataset) and the mmsegmentation recipe it
selects: ``attnzoo.engine.config.recipe``.
"""

from attnzoo.engine.config import recipe


def get_config(arg: str = ""):
    return recipe("danet", arg)
