"""mmsegmentation's recipe for any registered model on Cityscapes, ADE20K, VOC, Pascal Context
or COCO-Stuff.

    python train.py --config configs/mmseg.py:danet_r101_d8,cityscapes --workdir runs/danet
    python train.py --config configs/mmseg.py:segformer_mit_b2,ade20k --workdir runs/segformer

Argument: ``model`` (a registered name, ``attnzoo.models.list_models()``; default
``danet_r50_d8``) and ``dataset`` (``cityscapes`` | ``cityscapes769`` | ``ade20k`` |
``cityscapes1024`` | ``voc12aug`` | ``pascal_context`` | ``pascal_context_59`` |
``coco_stuff164k`` | ``coco_stuff10k``; default ``cityscapes``), comma-separated. The schedule and data settings
are mmsegmentation's (``configs/common.py``: SGD, poly, 80k / 160k steps), the head family's
own settings on top (``heads.get_family(name).recipe``: SegFormer's AdamW at 6e-5 with the
head at 10x, warm-up and poly to 0), then the model's (``models.get_spec(name).recipe``: the
Swin and ViT models' AdamW at 6e-5). Start the backbone from ImageNet weights with
``--config.init_from`` (a converted checkpoint, ``python -m attnzoo.convert``).
"""

from attnzoo import models
from configs import common

DEFAULT = "danet_r50_d8"


def get_config(arg: str = ""):
    names = models.list_models()
    names.remove(DEFAULT)
    a = common.parse_arg(arg, model=(DEFAULT, *names), dataset=tuple(common.DATASETS))
    return common.mmseg_schedule(a.dataset, a.model)
