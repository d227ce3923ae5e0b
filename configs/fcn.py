"""FCN baseline (Long et al., CVPR 2015; mmsegmentation's ``fcn_r50-d8`` recipes).

    python train.py --config configs/fcn.py:r101,cityscapes --workdir runs/fcn_r101_cityscapes

Argument: ``depth`` (r50 | r18 | r101), ``stride`` (d8 | d16) and ``dataset``
(cityscapes | cityscapes769 | ade20k), comma-separated; the schedule is
mmsegmentation's (``configs/common.py``).
"""

from configs import common


def get_config(arg: str = ""):
    c = common.resnet_recipe("fcn", arg)
    # FCNHead: two 3x3 conv-BN-ReLU of 512, input concatenated and fused (mmseg's defaults)
    c.model.head_kwargs = {"num_convs": 2, "concat_input": True}
    return c
