"""CCNet (Huang et al., ICCV 2019): recurrent criss-cross attention, R=2.

    python train.py --config configs/ccnet.py:r101,cityscapes --workdir runs/ccnet_r101_cityscapes

The argument (depth, output stride, dataset) and the mmsegmentation recipe it
selects: ``attnzoo.engine.config.recipe``.
"""

from attnzoo.engine.config import recipe


def get_config(arg: str = ""):
    return recipe("ccnet", arg)
