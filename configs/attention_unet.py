"""Attention U-Net (Oktay et al., MIDL 2018): U-Net with additive attention gates on the skips.

    python train.py --config configs/attention_unet.py:cityscapes --workdir runs/attention_unet

Argument: ``dataset`` (cityscapes | cityscapes769 | ade20k) and ``size``
(full | small: level widths 64..1024 or 16..128). mmsegmentation's schedule
(``configs/common.py``); no auxiliary head.
"""

from configs import common


def get_config(arg: str = ""):
    a = common.parse_arg(arg, dataset=tuple(common.DATASETS), size=("full", "small"))
    return common.mmseg_schedule(a.dataset, "attention_unet" if a.size == "full"
                                 else "attention_unet_small")
