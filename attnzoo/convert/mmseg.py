"""mmsegmentation's trained segmentors -> attnzoo models and variables.

``from_mmseg("danet_r50-d8_4xb2-80k_cityscapes-512x1024", state_dict)`` gives
``(model, variables)`` whose full-resolution logits equal mmseg's
``encode_decode`` (tested against mmseg's own model code). The config stem is
mmseg's config file name; it fixes the architecture (family, depth, the heads'
``align_corners``, PSANet's mask size), the classes and the evaluation
protocol (:func:`mmseg_config`). Keys map by name after the renames below;
every key must be used.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from attnzoo import models
from attnzoo.convert.segformer import MMSEG_RENAMES, reverse_fusion_inputs, split_in_proj
from attnzoo.convert.torch_weights import convert_state_dict, target_shapes
from attnzoo.heads import SegFormerHead

# mmseg config stem -> (checkpoint file as mmseg publishes it, mIoU, mIoU with multi-scale + flip),
# from mmseg 1.2.2's configs/<family>/metafile.yaml (its README tables; V100 runs by OpenMMLab).
PUBLISHED: dict[str, tuple[str, float, float | None]] = {
    "fcn_r50-d8_4xb2-40k_cityscapes-512x1024": ("fcn_r50-d8_512x1024_40k_cityscapes_20200604_192608-efe53f0d.pth", 72.25, 73.36),
    "fcn_r101-d8_4xb2-40k_cityscapes-512x1024": ("fcn_r101-d8_512x1024_40k_cityscapes_20200604_181852-a883d3a1.pth", 75.45, 76.58),
    "fcn_r50-d8_4xb2-40k_cityscapes-769x769": ("fcn_r50-d8_769x769_40k_cityscapes_20200606_113104-977b5d02.pth", 71.47, 72.54),
    "fcn_r101-d8_4xb2-40k_cityscapes-769x769": ("fcn_r101-d8_769x769_40k_cityscapes_20200606_113208-7d4ab69c.pth", 73.93, 75.14),
    "fcn_r50-d8_4xb2-80k_cityscapes-512x1024": ("fcn_r50-d8_512x1024_80k_cityscapes_20200606_113019-03aa804d.pth", 73.61, 74.24),
    "fcn_r101-d8_4xb2-80k_cityscapes-512x1024": ("fcn_r101-d8_512x1024_80k_cityscapes_20200606_113038-3fb937eb.pth", 75.13, 75.94),
    "fcn_r50-d8_4xb2-80k_cityscapes-769x769": ("fcn_r50-d8_769x769_80k_cityscapes_20200606_195749-f5caeabc.pth", 72.64, 73.32),
    "fcn_r101-d8_4xb2-80k_cityscapes-769x769": ("fcn_r101-d8_769x769_80k_cityscapes_20200606_214354-45cbac68.pth", 75.52, 76.61),
    "fcn_r50-d8_4xb4-80k_ade20k-512x512": ("fcn_r50-d8_512x512_80k_ade20k_20200614_144016-f8ac5082.pth", 35.94, 37.94),
    "fcn_r101-d8_4xb4-80k_ade20k-512x512": ("fcn_r101-d8_512x512_80k_ade20k_20200615_014143-bc1809f7.pth", 39.61, 40.83),
    "fcn_r50-d8_4xb4-160k_ade20k-512x512": ("fcn_r50-d8_512x512_160k_ade20k_20200615_100713-4edbc3b4.pth", 36.1, 38.08),
    "fcn_r101-d8_4xb4-160k_ade20k-512x512": ("fcn_r101-d8_512x512_160k_ade20k_20200615_105816-fd192bd5.pth", 39.91, 41.4),
    "danet_r50-d8_4xb2-40k_cityscapes-512x1024": ("danet_r50-d8_512x1024_40k_cityscapes_20200605_191324-c0dbfa5f.pth", 78.74, None),
    "danet_r101-d8_4xb2-40k_cityscapes-512x1024": ("danet_r101-d8_512x1024_40k_cityscapes_20200605_200831-c57a7157.pth", 80.52, None),
    "danet_r50-d8_4xb2-40k_cityscapes-769x769": ("danet_r50-d8_769x769_40k_cityscapes_20200530_025703-76681c60.pth", 78.88, 80.62),
    "danet_r101-d8_4xb2-40k_cityscapes-769x769": ("danet_r101-d8_769x769_40k_cityscapes_20200530_025717-dcb7fd4e.pth", 79.88, 81.47),
    "danet_r50-d8_4xb2-80k_cityscapes-512x1024": ("danet_r50-d8_512x1024_80k_cityscapes_20200607_133029-2bfa2293.pth", 79.34, None),
    "danet_r101-d8_4xb2-80k_cityscapes-512x1024": ("danet_r101-d8_512x1024_80k_cityscapes_20200607_132918-955e6350.pth", 80.41, None),
    "danet_r50-d8_4xb2-80k_cityscapes-769x769": ("danet_r50-d8_769x769_80k_cityscapes_20200607_132954-495689b4.pth", 79.27, 80.96),
    "danet_r101-d8_4xb2-80k_cityscapes-769x769": ("danet_r101-d8_769x769_80k_cityscapes_20200607_132918-f3a929e7.pth", 80.47, 82.02),
    "danet_r50-d8_4xb4-80k_ade20k-512x512": ("danet_r50-d8_512x512_80k_ade20k_20200615_015125-edb18e08.pth", 41.66, 42.9),
    "danet_r101-d8_4xb4-80k_ade20k-512x512": ("danet_r101-d8_512x512_80k_ade20k_20200615_015126-d0357c73.pth", 43.64, 45.19),
    "danet_r50-d8_4xb4-160k_ade20k-512x512": ("danet_r50-d8_512x512_160k_ade20k_20200616_082340-9cb35dcd.pth", 42.45, 43.25),
    "danet_r101-d8_4xb4-160k_ade20k-512x512": ("danet_r101-d8_512x512_160k_ade20k_20200616_082348-23bf12f9.pth", 44.17, 45.02),
    "ccnet_r50-d8_4xb2-40k_cityscapes-512x1024": ("ccnet_r50-d8_512x1024_40k_cityscapes_20200616_142517-4123f401.pth", 77.76, 78.87),
    "ccnet_r101-d8_4xb2-40k_cityscapes-512x1024": ("ccnet_r101-d8_512x1024_40k_cityscapes_20200616_142540-a3b84ba6.pth", 76.35, 78.19),
    "ccnet_r50-d8_4xb2-40k_cityscapes-769x769": ("ccnet_r50-d8_769x769_40k_cityscapes_20200616_145125-76d11884.pth", 78.46, 79.93),
    "ccnet_r101-d8_4xb2-40k_cityscapes-769x769": ("ccnet_r101-d8_769x769_40k_cityscapes_20200617_101428-4f57c8d0.pth", 76.94, 78.62),
    "ccnet_r50-d8_4xb2-80k_cityscapes-512x1024": ("ccnet_r50-d8_512x1024_80k_cityscapes_20200617_010421-869a3423.pth", 79.03, 80.16),
    "ccnet_r101-d8_4xb2-80k_cityscapes-512x1024": ("ccnet_r101-d8_512x1024_80k_cityscapes_20200617_203935-ffae8917.pth", 78.87, 79.9),
    "ccnet_r50-d8_4xb2-80k_cityscapes-769x769": ("ccnet_r50-d8_769x769_80k_cityscapes_20200617_010421-73eed8ca.pth", 79.29, 81.08),
    "ccnet_r101-d8_4xb2-80k_cityscapes-769x769": ("ccnet_r101-d8_769x769_80k_cityscapes_20200618_011502-ad3cd481.pth", 79.45, 80.66),
    "ccnet_r50-d8_4xb4-80k_ade20k-512x512": ("ccnet_r50-d8_512x512_80k_ade20k_20200615_014848-aa37f61e.pth", 41.78, 42.98),
    "ccnet_r101-d8_4xb4-80k_ade20k-512x512": ("ccnet_r101-d8_512x512_80k_ade20k_20200615_014848-1f4929a3.pth", 43.97, 45.13),
    "ccnet_r50-d8_4xb4-160k_ade20k-512x512": ("ccnet_r50-d8_512x512_160k_ade20k_20200616_084435-7c97193b.pth", 42.08, 43.13),
    "ccnet_r101-d8_4xb4-160k_ade20k-512x512": ("ccnet_r101-d8_512x512_160k_ade20k_20200616_000644-e849e007.pth", 43.71, 45.04),
    "nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024": ("nonlocal_r50-d8_512x1024_40k_cityscapes_20200605_210748-c75e81e3.pth", 78.24, None),
    "nonlocal_r101-d8_4xb2-40k_cityscapes-512x1024": ("nonlocal_r101-d8_512x1024_40k_cityscapes_20200605_210748-d63729fa.pth", 78.66, None),
    "nonlocal_r50-d8_4xb2-40k_cityscapes-769x769": ("nonlocal_r50-d8_769x769_40k_cityscapes_20200530_045243-82ef6749.pth", 78.33, 79.92),
    "nonlocal_r101-d8_4xb2-40k_cityscapes-769x769": ("nonlocal_r101-d8_769x769_40k_cityscapes_20200530_045348-8fe9a9dc.pth", 78.57, 80.29),
    "nonlocal_r50-d8_4xb2-80k_cityscapes-512x1024": ("nonlocal_r50-d8_512x1024_80k_cityscapes_20200607_193518-d6839fae.pth", 78.01, None),
    "nonlocal_r101-d8_4xb2-80k_cityscapes-512x1024": ("nonlocal_r101-d8_512x1024_80k_cityscapes_20200607_183411-32700183.pth", 78.93, None),
    "nonlocal_r50-d8_4xb2-80k_cityscapes-769x769": ("nonlocal_r50-d8_769x769_80k_cityscapes_20200607_193506-1f9792f6.pth", 79.05, 80.68),
    "nonlocal_r101-d8_4xb2-80k_cityscapes-769x769": ("nonlocal_r101-d8_769x769_80k_cityscapes_20200607_183428-0e1fa4f9.pth", 79.4, 80.85),
    "nonlocal_r50-d8_4xb4-80k_ade20k-512x512": ("nonlocal_r50-d8_512x512_80k_ade20k_20200615_015801-5ae0aa33.pth", 40.75, 42.05),
    "nonlocal_r101-d8_4xb4-80k_ade20k-512x512": ("nonlocal_r101-d8_512x512_80k_ade20k_20200615_015758-24105919.pth", 42.9, 44.27),
    "nonlocal_r50-d8_4xb4-160k_ade20k-512x512": ("nonlocal_r50-d8_512x512_160k_ade20k_20200616_005410-baef45e3.pth", 42.03, 43.04),
    "nonlocal_r101-d8_4xb4-160k_ade20k-512x512": ("nonlocal_r101-d8_512x512_160k_ade20k_20210827_221502-7881aa1a.pth", 44.63, 45.79),
    "psanet_r50-d8_4xb2-40k_cityscapes-512x1024": ("psanet_r50-d8_512x1024_40k_cityscapes_20200606_103117-99fac37c.pth", 77.63, 79.04),
    "psanet_r101-d8_4xb2-40k_cityscapes-512x1024": ("psanet_r101-d8_512x1024_40k_cityscapes_20200606_001418-27b9cfa7.pth", 79.14, 80.19),
    "psanet_r50-d8_4xb2-40k_cityscapes-769x769": ("psanet_r50-d8_769x769_40k_cityscapes_20200530_033717-d5365506.pth", 77.99, 79.64),
    "psanet_r101-d8_4xb2-40k_cityscapes-769x769": ("psanet_r101-d8_769x769_40k_cityscapes_20200530_035107-997da1e6.pth", 78.43, 80.26),
    "psanet_r50-d8_4xb2-80k_cityscapes-512x1024": ("psanet_r50-d8_512x1024_80k_cityscapes_20200606_161842-ab60a24f.pth", 77.24, 78.69),
    "psanet_r101-d8_4xb2-80k_cityscapes-512x1024": ("psanet_r101-d8_512x1024_80k_cityscapes_20200606_161823-0f73a169.pth", 79.31, 80.53),
    "psanet_r50-d8_4xb2-80k_cityscapes-769x769": ("psanet_r50-d8_769x769_80k_cityscapes_20200606_225134-fe42f49e.pth", 79.31, 80.91),
    "psanet_r101-d8_4xb2-80k_cityscapes-769x769": ("psanet_r101-d8_769x769_80k_cityscapes_20200606_214550-7665827b.pth", 79.69, 80.89),
    "psanet_r50-d8_4xb4-80k_ade20k-512x512": ("psanet_r50-d8_512x512_80k_ade20k_20200614_144141-835e4b97.pth", 41.14, 41.91),
    "psanet_r101-d8_4xb4-80k_ade20k-512x512": ("psanet_r101-d8_512x512_80k_ade20k_20200614_185117-1fab60d4.pth", 43.8, 44.75),
    "psanet_r50-d8_4xb4-160k_ade20k-512x512": ("psanet_r50-d8_512x512_160k_ade20k_20200615_161258-148077dd.pth", 41.67, 42.95),
    "psanet_r101-d8_4xb4-160k_ade20k-512x512": ("psanet_r101-d8_512x512_160k_ade20k_20200615_161537-dbfa564c.pth", 43.74, 45.38),
    "gcnet_r50-d8_4xb2-40k_cityscapes-512x1024": ("gcnet_r50-d8_512x1024_40k_cityscapes_20200618_074436-4b0fd17b.pth", 77.69, 78.56),
    "gcnet_r101-d8_4xb2-40k_cityscapes-512x1024": ("gcnet_r101-d8_512x1024_40k_cityscapes_20200618_074436-5e62567f.pth", 78.28, 79.34),
    "gcnet_r50-d8_4xb2-40k_cityscapes-769x769": ("gcnet_r50-d8_769x769_40k_cityscapes_20200618_182814-a26f4471.pth", 78.12, 80.09),
    "gcnet_r101-d8_4xb2-40k_cityscapes-769x769": ("gcnet_r101-d8_769x769_40k_cityscapes_20200619_092550-ca4f0a84.pth", 78.95, 80.71),
    "gcnet_r50-d8_4xb2-80k_cityscapes-512x1024": ("gcnet_r50-d8_512x1024_80k_cityscapes_20200618_074450-ef8f069b.pth", 78.48, 80.01),
    "gcnet_r101-d8_4xb2-80k_cityscapes-512x1024": ("gcnet_r101-d8_512x1024_80k_cityscapes_20200618_074450-778ebf69.pth", 79.03, 79.84),
    "gcnet_r50-d8_4xb2-80k_cityscapes-769x769": ("gcnet_r50-d8_769x769_80k_cityscapes_20200619_092516-4839565b.pth", 78.68, 80.66),
    "gcnet_r101-d8_4xb2-80k_cityscapes-769x769": ("gcnet_r101-d8_769x769_80k_cityscapes_20200619_092628-8e043423.pth", 79.18, 80.71),
    "gcnet_r50-d8_4xb4-80k_ade20k-512x512": ("gcnet_r50-d8_512x512_80k_ade20k_20200614_185146-91a6da41.pth", 41.47, 42.85),
    "gcnet_r101-d8_4xb4-80k_ade20k-512x512": ("gcnet_r101-d8_512x512_80k_ade20k_20200615_020811-c3fcb6dd.pth", 42.82, 44.54),
    "gcnet_r50-d8_4xb4-160k_ade20k-512x512": ("gcnet_r50-d8_512x512_160k_ade20k_20200615_224122-d95f3e1f.pth", 42.37, 43.52),
    "gcnet_r101-d8_4xb4-160k_ade20k-512x512": ("gcnet_r101-d8_512x512_160k_ade20k_20200615_225406-615528d7.pth", 43.69, 45.21),
    "deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024": ("deeplabv3_r50-d8_512x1024_40k_cityscapes_20200605_022449-acadc2f8.pth", 79.09, 80.45),
    "deeplabv3_r101-d8_4xb2-40k_cityscapes-512x1024": ("deeplabv3_r101-d8_512x1024_40k_cityscapes_20200605_012241-7fd3f799.pth", 77.12, 79.61),
    "deeplabv3_r50-d8_4xb2-40k_cityscapes-769x769": ("deeplabv3_r50-d8_769x769_40k_cityscapes_20200606_113723-7eda553c.pth", 78.58, 79.89),
    "deeplabv3_r101-d8_4xb2-40k_cityscapes-769x769": ("deeplabv3_r101-d8_769x769_40k_cityscapes_20200606_113809-c64f889f.pth", 79.27, 80.11),
    "deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024": ("deeplabv3_r50-d8_512x1024_80k_cityscapes_20200606_113404-b92cfdd4.pth", 79.32, 80.57),
    "deeplabv3_r101-d8_4xb2-80k_cityscapes-512x1024": ("deeplabv3_r101-d8_512x1024_80k_cityscapes_20200606_113503-9e428899.pth", 80.2, 81.21),
    "deeplabv3_r50-d8_4xb2-80k_cityscapes-769x769": ("deeplabv3_r50-d8_769x769_80k_cityscapes_20200606_221338-788d6228.pth", 79.89, 81.06),
    "deeplabv3_r101-d8_4xb2-80k_cityscapes-769x769": ("deeplabv3_r101-d8_769x769_80k_cityscapes_20200607_013353-60e95418.pth", 79.67, 80.81),
    "deeplabv3_r50-d8_4xb4-80k_ade20k-512x512": ("deeplabv3_r50-d8_512x512_80k_ade20k_20200614_185028-0bb3f844.pth", 42.42, 43.28),
    "deeplabv3_r101-d8_4xb4-80k_ade20k-512x512": ("deeplabv3_r101-d8_512x512_80k_ade20k_20200615_021256-d89c7fa4.pth", 44.08, 45.19),
    "deeplabv3_r50-d8_4xb4-160k_ade20k-512x512": ("deeplabv3_r50-d8_512x512_160k_ade20k_20200615_123227-5d0ee427.pth", 42.66, 44.09),
    "deeplabv3_r101-d8_4xb4-160k_ade20k-512x512": ("deeplabv3_r101-d8_512x512_160k_ade20k_20200615_105816-b1f72b3b.pth", 45.0, 46.66),
    "pspnet_r50-d8_4xb2-40k_cityscapes-512x1024": ("pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth", 77.85, 79.18),
    "pspnet_r101-d8_4xb2-40k_cityscapes-512x1024": ("pspnet_r101-d8_512x1024_40k_cityscapes_20200604_232751-467e7cf4.pth", 78.34, 79.74),
    "pspnet_r50-d8_4xb2-40k_cityscapes-769x769": ("pspnet_r50-d8_769x769_40k_cityscapes_20200606_112725-86638686.pth", 78.26, 79.88),
    "pspnet_r101-d8_4xb2-40k_cityscapes-769x769": ("pspnet_r101-d8_769x769_40k_cityscapes_20200606_112753-61c6f5be.pth", 79.08, 80.28),
    "pspnet_r50-d8_4xb2-80k_cityscapes-512x1024": ("pspnet_r50-d8_512x1024_80k_cityscapes_20200606_112131-2376f12b.pth", 78.55, 79.79),
    "pspnet_r101-d8_4xb2-80k_cityscapes-512x1024": ("pspnet_r101-d8_512x1024_80k_cityscapes_20200606_112211-e1e1100f.pth", 79.76, 81.01),
    "pspnet_r50-d8_4xb2-80k_cityscapes-769x769": ("pspnet_r50-d8_769x769_80k_cityscapes_20200606_210121-5ccf03dd.pth", 79.59, 80.69),
    "pspnet_r101-d8_4xb2-80k_cityscapes-769x769": ("pspnet_r101-d8_769x769_80k_cityscapes_20200606_225055-dba412fa.pth", 79.77, 81.06),
    "pspnet_r50-d8_4xb4-80k_ade20k-512x512": ("pspnet_r50-d8_512x512_80k_ade20k_20200615_014128-15a8b914.pth", 41.13, 41.94),
    "pspnet_r101-d8_4xb4-80k_ade20k-512x512": ("pspnet_r101-d8_512x512_80k_ade20k_20200614_031423-b6e782f0.pth", 43.57, 44.35),
    "pspnet_r50-d8_4xb4-160k_ade20k-512x512": ("pspnet_r50-d8_512x512_160k_ade20k_20200615_184358-1890b0bd.pth", 42.48, 43.44),
    "pspnet_r101-d8_4xb4-160k_ade20k-512x512": ("pspnet_r101-d8_512x512_160k_ade20k_20200615_100650-967c316f.pth", 44.39, 45.35),
    # SegFormer: mmseg's configs/segformer/metafile.yaml (8 GPUs; MiT weights from the paper's
    # ImageNet-1k pre-training)
    "segformer_mit-b0_8xb2-160k_ade20k-512x512": ("segformer_mit-b0_512x512_160k_ade20k_20210726_101530-8ffa8fda.pth", 37.41, 38.34),
    "segformer_mit-b1_8xb2-160k_ade20k-512x512": ("segformer_mit-b1_512x512_160k_ade20k_20210726_112106-d70e859d.pth", 40.97, 42.54),
    "segformer_mit-b2_8xb2-160k_ade20k-512x512": ("segformer_mit-b2_512x512_160k_ade20k_20210726_112103-cbd414ac.pth", 45.58, 47.03),
    "segformer_mit-b3_8xb2-160k_ade20k-512x512": ("segformer_mit-b3_512x512_160k_ade20k_20210726_081410-962b98d2.pth", 47.82, 48.81),
    "segformer_mit-b4_8xb2-160k_ade20k-512x512": ("segformer_mit-b4_512x512_160k_ade20k_20210728_183055-7f509d7d.pth", 48.46, 49.76),
    "segformer_mit-b5_8xb2-160k_ade20k-512x512": ("segformer_mit-b5_512x512_160k_ade20k_20210726_145235-94cedf59.pth", 49.13, 50.22),
    "segformer_mit-b5_8xb2-160k_ade20k-640x640": ("segformer_mit-b5_640x640_160k_ade20k_20210801_121243-41d2845b.pth", 49.62, 50.36),
    "segformer_mit-b0_8xb1-160k_cityscapes-1024x1024": ("segformer_mit-b0_8x1_1024x1024_160k_cityscapes_20211208_101857-e7f88502.pth", 76.54, 78.22),
    "segformer_mit-b1_8xb1-160k_cityscapes-1024x1024": ("segformer_mit-b1_8x1_1024x1024_160k_cityscapes_20211208_064213-655c7b3f.pth", 78.56, 79.73),
    "segformer_mit-b2_8xb1-160k_cityscapes-1024x1024": ("segformer_mit-b2_8x1_1024x1024_160k_cityscapes_20211207_134205-6096669a.pth", 81.08, 82.18),
    "segformer_mit-b3_8xb1-160k_cityscapes-1024x1024": ("segformer_mit-b3_8x1_1024x1024_160k_cityscapes_20211206_224823-a8f8a177.pth", 81.94, 83.14),
    "segformer_mit-b4_8xb1-160k_cityscapes-1024x1024": ("segformer_mit-b4_8x1_1024x1024_160k_cityscapes_20211207_080709-07f6c333.pth", 81.89, 83.38),
    "segformer_mit-b5_8xb1-160k_cityscapes-1024x1024": ("segformer_mit-b5_8x1_1024x1024_160k_cityscapes_20211206_072934-87a052ec.pth", 82.25, 83.48),
}

_FAMILIES = ("fcn", "danet", "ccnet", "nonlocal", "psanet", "gcnet", "deeplabv3", "pspnet")
_STEM = re.compile(
    r"(?P<family>[a-z0-9]+)_r(?P<depth>18|50|101)-d8_4xb(?P<batch>\d)-(?P<iters>\d+)k_"
    r"(?P<dataset>cityscapes-512x1024|cityscapes-769x769|ade20k-512x512)")
_SEGFORMER_STEM = re.compile(
    r"segformer_mit-b(?P<size>[0-5])_8xb(?P<batch>\d)-160k_"
    r"(?P<dataset>cityscapes-1024x1024|ade20k-512x512|ade20k-640x640)")

# mmseg's dataset configs: classes, test-time resize (keep ratio) and inference mode
_PROTOCOLS = {
    "cityscapes-512x1024": dict(dataset="cityscapes", num_classes=19, crop=(512, 1024),
                                scale=(2048, 1024), mode="whole", stride=(341, 682),
                                align_corners=False, mask_size=(97, 97)),
    "cityscapes-769x769": dict(dataset="cityscapes", num_classes=19, crop=(769, 769),
                               scale=(2049, 1025), mode="slide", stride=(513, 513),
                               align_corners=True, mask_size=(97, 97)),
    "ade20k-512x512": dict(dataset="ade20k", num_classes=150, crop=(512, 512), scale=(2048, 512),
                           mode="whole", stride=(341, 341), align_corners=False,
                           mask_size=(66, 66)),
    # SegFormer's: 1024x1024 windows of stride 768 on Cityscapes; ADE20K at 640 (the B5 recipe
    # tests at 2048x640, as at 512)
    "cityscapes-1024x1024": dict(dataset="cityscapes", num_classes=19, crop=(1024, 1024),
                                 scale=(2048, 1024), mode="slide", stride=(768, 768),
                                 align_corners=False),
    "ade20k-640x640": dict(dataset="ade20k", num_classes=150, crop=(640, 640), scale=(2048, 640),
                           mode="whole", stride=(426, 426), align_corners=False),
}

# mmseg key -> attnzoo key, applied in order (re.sub on every key)
_RENAMES = (
    (r"^backbone\.stem\.7\.", "backbone.bn1."),  # ResNetV1c's deep stem: timm's conv1.* / bn1
    (r"^backbone\.stem\.", "backbone.conv1."),
    (r"^decode_head\.", "head."),
    (r"^auxiliary_head\.", "aux_head."),
    (r"^(head|aux_head)\.conv_seg\.", r"\1.cls.conv_seg."),
    (r"^head\.(pam|cam)_conv_seg\.", r"head.\1_cls.conv_seg."),
    (r"^head\.pam\.(query|key|value)_project\.", r"head.pam.\1_conv."),
    (r"^head\.(cca|nl_block|gc_block)\.", "head.attention."),
    (r"\.gamma\.scale$", ".gamma"),  # mmcv's Scale module
    (r"^head\.attention\.conv_mask\.", "head.attention.conv_attn."),  # ContextBlock -> GC names
    (r"^head\.attention\.channel_add_conv\.0\.", "head.attention.mlp_add.fc1."),
    (r"^head\.attention\.channel_add_conv\.1\.", "head.attention.mlp_add.norm."),
    (r"^head\.attention\.channel_add_conv\.3\.", "head.attention.mlp_add.fc2."),
    (r"^head\.image_pool\.1\.", "head.image_pool."),
    (r"^head\.aspp_modules\.(\d+)\.", r"head.aspp.\1."),
    (r"^head\.psp_modules\.(\d+)\.1\.", r"head.pool_convs.\1."),
)


@dataclasses.dataclass(frozen=True)
class MmsegRecipe:
    """What an mmseg config stem fixes.

    Attributes:
      stem: the config file's stem.
      model: the attnzoo model name (``danet_r50_d8``).
      model_kwargs: ``models.create`` overrides (heads' ``align_corners``, PSANet's mask size).
      protocol: dataset, classes, crop, test resize, inference mode and window stride.
    """

    stem: str
    model: str
    model_kwargs: Mapping[str, Any]
    protocol: Mapping[str, Any]


def mmseg_recipe(stem: str) -> MmsegRecipe:
    """Parse mmseg config ``stem``; ValueError naming the supported families and datasets."""
    s = _SEGFORMER_STEM.fullmatch(stem)
    if s is not None:  # mmseg's head: 256 channels at every size, BN + ReLU per stage
        return MmsegRecipe(stem, f"segformer_mit-b{s['size']}",
                           {"head_kwargs": {"channels": 256, "stage_norm": True}},
                           _PROTOCOLS[s["dataset"]])
    m = _STEM.fullmatch(stem)
    if m is None or m["family"] not in _FAMILIES:
        raise ValueError(
            f"config {stem!r} is not an mmseg config attnzoo rebuilds; supported: "
            f"<family>_r{{18,50,101}}-d8_4xb<n>-<iters>k_<dataset> with family in "
            f"{list(_FAMILIES)} and dataset in cityscapes-512x1024, cityscapes-769x769, "
            f"ade20k-512x512; or segformer_mit-b{{0..5}}_8xb<n>-160k_<dataset> with dataset in "
            f"cityscapes-1024x1024, ade20k-512x512, ade20k-640x640 (e.g. "
            f"'danet_r50-d8_4xb2-80k_cityscapes-512x1024'; published ones: "
            f"attnzoo.convert.mmseg.PUBLISHED)")
    protocol = _PROTOCOLS[m["dataset"]]
    kwargs: dict[str, Any] = {}
    if protocol["align_corners"]:
        kwargs["align_corners"] = True
    if m["family"] == "psanet":
        kwargs["head_kwargs"] = {"mask_size": protocol["mask_size"]}
    return MmsegRecipe(stem, f"{m['family']}_r{m['depth']}_d8", kwargs, protocol)


def mmseg_model(stem: str) -> nn.Module:
    """The attnzoo model of mmseg config ``stem`` (untrained)."""
    recipe = mmseg_recipe(stem)
    return models.create(recipe.model, num_classes=recipe.protocol["num_classes"],
                         **recipe.model_kwargs)


def from_mmseg(config: str, state_dict: Mapping[str, Any] | str | Path
               ) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, variables)`` of mmseg config ``config`` from its trained weights.

    Args:
      config: mmseg's config file stem, e.g. ``"ccnet_r101-d8_4xb4-160k_ade20k-512x512"``.
      state_dict: names -> arrays (numpy or torch), as ``torch.load(path)["state_dict"]``
        gives, or the checkpoint file's path.

    Returns:
      The model (``models.create`` of the matching name) and ``{"params", "batch_stats"}``:
      ``model.apply(variables, images_nhwc)["out"]`` are mmseg's ``encode_decode`` logits.

    Raises:
      ValueError for an unknown config; ConversionError listing every unused, missing and
      mis-shaped key when the weights are not of that architecture.
    """
    if isinstance(state_dict, (str, Path)):
        from attnzoo.convert.backbones import load_state_dict

        state_dict = load_state_dict(state_dict)
    model = mmseg_model(config)
    renames = _RENAMES
    if isinstance(model.head, SegFormerHead):
        state_dict = reverse_fusion_inputs(split_in_proj(state_dict),
                                           "decode_head.fusion_conv.conv.weight")
        renames = MMSEG_RENAMES
    target = target_shapes(model, jnp.zeros((1, 64, 64, 3), jnp.float32))
    return model, convert_state_dict(state_dict, target, regex_renames=renames)


def set_protocol(c: Any, p: Mapping[str, Any]) -> None:
    """Set an mmseg dataset protocol (a ``_PROTOCOLS`` value) on engine config ``c``: dataset,
    classes, crop, test resize, inference mode; ADE20K one image at a time at its size."""
    c.dataset.name = p["dataset"]
    c.dataset.num_classes = p["num_classes"]
    c.dataset.crop_size = p["crop"]
    c.dataset.scale = p["scale"]
    c.dataset.eval_scale = p["scale"]
    if p["dataset"] == "ade20k":  # images of mixed sizes, each at its own size, as mmseg
        c.dataset.eval_label_canvas = (2048, 2048)
        c.eval_batch_size = 1
    c.eval.mode = p["mode"]
    c.eval.crop_size = p["crop"]
    c.eval.stride = p["stride"]


def mmseg_config(stem: str) -> Any:
    """The attnzoo engine config that evaluates (and fine-tunes) mmseg config ``stem`` as mmseg
    does: its model, classes, test resize (keep ratio), whole or sliding-window inference;
    ADE20K images one at a time at their resized size, the logits resized back to each
    label's original size (``eval_batch_size`` 1, ``eval_label_canvas`` 2048x2048: one
    device; set ``dataset.eval_canvas`` to batch them on a padded canvas)."""
    from attnzoo.engine import default_config

    recipe = mmseg_recipe(stem)
    c = default_config()
    c.model.name = recipe.model
    c.model.align_corners = bool(recipe.model_kwargs.get("align_corners", False))
    c.model.head_kwargs = dict(recipe.model_kwargs.get("head_kwargs", {}))
    set_protocol(c, recipe.protocol)
    return c
