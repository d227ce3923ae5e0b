"""Attention U-Net (Oktay et al., MIDL 2018): U-Net with additive attention gates on the skips.

    python train.py --config configs/attention_unet.py:cityscapes --workdir runs/attention_unet

Argument: the dataset (cityscapes, cityscapes769, ade20k); default cityscapes.
Same schedule as the other recipes (SGD 0.01, poly); no auxiliary head.
"""

from attnzoo.engine.config import recipe


def get_config(arg: str = ""):
    return recipe("attention_unet", arg)
