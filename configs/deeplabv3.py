"""DeepLabV3 (Chen et al., 2017; mmsegmentation's ``deeplabv3_r50-d8`` recipes): the ASPP
head, the strong non-attention baseline.

    python train.py --config configs/deeplabv3.py:r101,cityscapes --workdir runs/deeplabv3_r101_cityscapes

Argument: ``depth`` (r50 | r18 | r101), ``stride`` (d8 | d16) and ``dataset``
(cityscapes | cityscapes769 | ade20k), comma-separated; the schedule is
mmsegmentation's (``configs/common.py``).
"""

from configs import common


def get_config(arg: str = ""):
    c = common.resnet_recipe("deeplabv3", arg)
    # ASPP rates for output stride 8 and an image-pooling branch
    c.model.head_kwargs = {"dilations": (1, 12, 24, 36)}
    return c
