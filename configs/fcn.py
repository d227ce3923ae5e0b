"""FCN baseline (Long et al., CVPR 2015; mmsegmentation's FCNHead, 2 convs, concat input).

    python train.py --config configs/fcn.py:r101,cityscapes --workdir runs/fcn_r101_cityscapes

Argument: comma-separated depth (r18, r50, r101), output stride (d8, d16) and
dataset (cityscapes: 512x1024 crops, 80k steps; cityscapes769: 769x769 crops
with sliding-window evaluation; ade20k: 512x512, 160k); default r50,d8,cityscapes.
SGD lr 0.01, momentum 0.9, weight decay 5e-4, poly decay (power 0.9), auxiliary
FCN loss 0.4, as mmsegmentation's recipe. See attnzoo.engine.config.recipe.
"""

from attnzoo.engine.config import recipe


def get_config(arg: str = ""):
    return recipe("fcn", arg)
