"""Non-local networks (Wang et al., CVPR 2018; mmsegmentation's ``nonlocal_r50-d8`` recipes):
an embedded-Gaussian non-local block in the FCN head.

    python train.py --config configs/nonlocal.py:r101,cityscapes --workdir runs/nonlocal_r101_cityscapes

Argument: ``depth`` (r50 | r18 | r101), ``stride`` (d8 | d16) and ``dataset``
(cityscapes | cityscapes769 | ade20k), comma-separated; the schedule is
mmsegmentation's (``configs/common.py``).
"""

from configs import common


def get_config(arg: str = ""):
    c = common.resnet_recipe("nonlocal", arg)
    # True: the exact memory-bounded non-local block (no N x N map) for large images
    c.model.memory_efficient = False
    return c
