"""The registered models: mmsegmentation's recipe names, each a description (see ``specs``).

``<family>_r<depth>_d<stride>``: an :class:`EncoderDecoderSpec` on ResNet-v1c
(deep stem, as mmsegmentation's ``ResNetV1c``) at output stride 8 or 16, the
family's decode head of 512 channels reading stage 4 and an auxiliary FCN head
(one conv of 256 channels, loss weight 0.4) reading stage 3, as
mmsegmentation's ``<family>_r50-d8.py`` model files. r18 models use the
narrower heads of mmsegmentation's r18 recipes (128 channels, auxiliary 64).

``segformer_mit-b<k>`` (k = 0..5): SegFormer, a :class:`MixVisionTransformer`
``mit_b<k>`` and the all-MLP head reading all four stages (256 channels for B0/B1,
768 for B2-B5, as the paper and the Hugging Face hub; no auxiliary head).
"""

from __future__ import annotations

from attnzoo.models.registry import register
from attnzoo.models.specs import EncoderDecoderSpec, UNetSpec

# model family -> decode head (``heads.list_heads()``)
FAMILIES = {"fcn": "fcn", "danet": "danet", "ccnet": "ccnet", "nonlocal": "nonlocal",
            "psa": "psa", "psas": "psas", "gcnet": "gcnet", "deeplabv3": "aspp", "pspnet": "psp",
            "psanet": "psanet"}
DEPTHS = (18, 50, 101)
STRIDES = (8, 16)

for _family, _head in FAMILIES.items():
    for _depth in DEPTHS:
        _channels, _aux = (128, 64) if _depth == 18 else (512, 256)
        for _stride in STRIDES:
            register(f"{_family}_r{_depth}_d{_stride}", EncoderDecoderSpec(
                backbone=f"resnet{_depth}_v1c", head=_head, output_stride=_stride,
                head_kwargs={"channels": _channels},
                aux_kwargs={"channels": _aux, "num_convs": 1, "concat_input": False}))

for _k in range(6):
    register(f"segformer_mit-b{_k}", EncoderDecoderSpec(
        backbone=f"mit_b{_k}", head="segformer", output_stride=None,
        head_kwargs={"channels": 256 if _k < 2 else 768}, aux_head=None,
        in_feature=("c1", "c2", "c3", "c4")))

register("attention_unet", UNetSpec((64, 128, 256, 512, 1024)))
register("attention_unet_small", UNetSpec((16, 32, 64, 128)))
