"""DeepLabV3 (Chen et al., 2017): ASPP head, the strong non-attention baseline.

    python train.py --config configs/deeplabv3.py:r101,cityscapes --workdir runs/deeplabv3_r101_cityscapes

The argument (depth, output stride, dataset) and the mmsegmentation recipe it
selects: ``attnzoo.engine.config.recipe``.
"""

from attnzoo.engine.config import recipe


def get_config(arg: str = ""):
    return recipe("deeplabv3", arg)
