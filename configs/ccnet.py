"""CCNet (Huang et al., ICCV 2019; mmsegmentation's ``ccnet_r50-d8`` recipes): recurrent
criss-cross attention.

    python train.py --config configs/ccnet.py:r101,cityscapes --workdir runs/ccnet_r101_cityscapes

Argument: ``depth`` (r50 | r18 | r101), ``stride`` (d8 | d16) and ``dataset``
(cityscapes | cityscapes769 | ade20k), comma-separated; the schedule is
mmsegmentation's (``configs/common.py``).
"""

from configs import common


def get_config(arg: str = ""):
    c = common.resnet_recipe("ccnet", arg)
    # R = 2 passes of the shared criss-cross block (the paper's setting; R = 1 sees one
    # row and column, R = 2 the whole image)
    c.model.head_kwargs = {"recurrence": 2}
    return c
