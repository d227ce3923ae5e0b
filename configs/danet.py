"""DANet (Fu et al., CVPR 2019; mmsegmentation's ``danet_r50-d8`` recipes): position and
channel attention; in training each branch has its own classifier, and the head declares
their losses (``pam``, ``cam``, weight 1) beside the main and auxiliary (0.4) ones.

    python train.py --config configs/danet.py:r101,cityscapes --workdir runs/danet_r101_cityscapes

Argument: ``depth`` (r50 | r18 | r101), ``stride`` (d8 | d16) and ``dataset``
(cityscapes | cityscapes769 | ade20k), comma-separated; the schedule is
mmsegmentation's (``configs/common.py``).
"""

from configs import common


def get_config(arg: str = ""):
    c = common.resnet_recipe("danet", arg)
    # PAM's query/key width is C/8 (64 of 512), as the paper and mmseg's DAHead (the head's
    # default). True: the exact memory-bounded PAM, for whole 1024x2048 images at evaluation
    # (``python -m attnzoo.evaluate --memory-efficient`` sets it too)
    c.model.memory_efficient = False
    return c
