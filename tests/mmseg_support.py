"""Test-side support for building mmsegmentation's models on CPU with mmcv-lite.

mmcv-lite ships ``mmcv/ops`` as source only (no compiled ``_ext``), so ``import mmcv.ops``
fails. mmseg imports four names from it; :func:`install_mmcv_ops` puts a module in
``sys.modules["mmcv.ops"]`` that provides them: ``CrissCrossAttention`` and
``point_sample`` from mmcv's own pure-PyTorch files, ``PSAMask`` written here from the
definition of mmcv's C++ kernel (looped over feature positions), and
``sigmoid_focal_loss`` (imported at module level by mmseg, used only on CUDA), which raises;
and for mmdet (mmseg's Mask2Former and MaskFormer heads), mmcv's own pure-PyTorch
``MultiScaleDeformableAttention`` and stand-ins for the compiled names mmdet imports.
Then :func:`build` builds a model from one of mmseg's shipped config files, with nothing
downloaded (SyncBN -> BN, no pretrained backbone).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _psa_mask_class():
    import torch
    from torch import nn

    class PSAMask(nn.Module):
        """mmcv's ``PSAMask`` forward, from its C++ definition: the over-complete
        ``(N, Hm*Wm, H, W)`` map scattered into ``(N, H*W, H, W)`` with the mask centre on
        each feature position; ``collect`` indexes by the other position first, ``distribute``
        by this position first; zeros outside the window."""

        def __init__(self, psa_type: str, mask_size=None):
            super().__init__()
            self.psa_type, self.mask_size = psa_type, tuple(mask_size)

        def forward(self, mask):
            n, _, h, w = mask.shape
            hm, wm = self.mask_size
            out = mask.new_zeros((n, h * w, h, w))
            for y in range(h):
                for x in range(w):
                    for dy in range(max(0, (hm - 1) // 2 - y), min(hm, h + (hm - 1) // 2 - y)):
                        for dx in range(max(0, (wm - 1) // 2 - x),
                                        min(wm, w + (wm - 1) // 2 - x)):
                            oy, ox = dy + y - (hm - 1) // 2, dx + x - (wm - 1) // 2
                            value = mask[:, dy * wm + dx, y, x]
                            if self.psa_type == "collect":
                                out[:, oy * w + ox, y, x] = value
                            else:
                                out[:, y * w + x, oy, ox] = value
            return out

    return PSAMask


def install_mmcv_ops() -> None:
    """Provide ``mmcv.ops`` as described in the module docstring (idempotent)."""
    if "mmcv.ops" in sys.modules and hasattr(sys.modules["mmcv.ops"], "PSAMask"):
        return
    import mmcv

    folder = Path(mmcv.__file__).parent / "ops"
    ops = types.ModuleType("mmcv.ops")
    ops.__path__ = []  # a package, so that its submodules can be registered
    sys.modules["mmcv.ops"] = ops
    ops.CrissCrossAttention = _load("mmcv.ops.cc_attention",
                                    folder / "cc_attention.py").CrissCrossAttention
    ops.point_sample = _load("mmcv.ops.point_sample", folder / "point_sample.py").point_sample
    ops.PSAMask = _psa_mask_class()

    def sigmoid_focal_loss(*args, **kwargs):
        raise RuntimeError("sigmoid_focal_loss needs mmcv's compiled ops (not used here)")

    ops.sigmoid_focal_loss = sigmoid_focal_loss
    _install_mmdet_names(ops, folder)


# what mmdet 3.3.0 imports from mmcv.ops beyond the above, by submodule ("" for mmcv.ops
# itself): classes and functions of compiled kernels that mmseg's Mask2Former never calls
_MMDET_NAMES = {
    "": ("CornerPool", "DeformConv2d", "MaskedConv2d", "RoIPool", "deform_conv2d",
         "rel_roi_point_to_rel_img_point"),
    "nms": ("batched_nms", "nms", "nms_match"),
    "carafe": ("CARAFEPack",),
    "merge_cells": ("ConcatCell", "GlobalPoolingCell", "SumCell"),
    "modulated_deform_conv": ("ModulatedDeformConv2d",),
    "roi_align": ("roi_align",),
}


def _install_mmdet_names(ops: types.ModuleType, folder: Path) -> None:
    """mmcv's own ``MultiScaleDeformableAttention`` (its file loaded with the compiled-kernel
    loader answering with nothing: on CPU the module runs the file's pure-PyTorch
    ``multi_scale_deformable_attn_pytorch``), and stand-ins for the names of
    :data:`_MMDET_NAMES` (classes to derive from, functions; each raises when used)."""
    from mmcv.utils import ext_loader
    from torch import nn

    load_ext = ext_loader.load_ext
    ext_loader.load_ext = lambda name, funcs: types.SimpleNamespace()
    try:
        ops.MultiScaleDeformableAttention = _load(
            "mmcv.ops.multi_scale_deform_attn",
            folder / "multi_scale_deform_attn.py").MultiScaleDeformableAttention
    finally:
        ext_loader.load_ext = load_ext

    def stand_in(name: str):
        def fail(*args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} needs mmcv's compiled ops (not used here)")

        if name[0].isupper():
            return type(name, (nn.Module,), {"__init__": fail})
        return fail

    for sub, names in _MMDET_NAMES.items():
        module = ops
        if sub:
            module = types.ModuleType(f"mmcv.ops.{sub}")
            sys.modules[module.__name__] = module
            setattr(ops, sub, module)
        for name in names:
            value = stand_in(name)
            setattr(module, name, value)
            setattr(ops, name, getattr(ops, name, value))


def config_path(stem: str) -> Path:
    """The path of mmseg's shipped config ``stem`` (e.g. ``danet_r50-d8_4xb2-80k_cityscapes-512x1024``)."""
    import mmseg

    root = Path(mmseg.__file__).parent / ".mim" / "configs"
    found = sorted(root.glob(f"*/{stem}.py"))
    if not found:
        raise FileNotFoundError(f"mmseg ships no config {stem!r}")
    return found[0]


def model_config(stem: str, **backbone):
    """mmseg's model config of config ``stem`` as :func:`build` builds it (no pretrained
    weights, BN for SyncBN, no data preprocessor; ``backbone`` fields updated), and the whole
    config.

    One slip of mmseg 1.2.2's configs is read through: ``sem_fpn/fpn_r101_4xb4-160k_ade20k``
    assigns ``model`` twice, the second (its data preprocessor) dropping the first's
    ``backbone=dict(depth=101)``, so the file builds an R-50; its published checkpoint (and
    the Cityscapes R-101 config) are R-101, which a stem's ``_r101`` restores here."""
    pytest.importorskip("mmseg", reason="mmsegmentation is not installed (the mmseg test extra)")
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_path(stem)))
    model_cfg = cfg.model
    model_cfg.pretrained = None
    model_cfg.backbone.init_cfg = None
    model_cfg.data_preprocessor = None
    if "_r101" in stem and model_cfg.backbone.get("depth") == 50:
        model_cfg.backbone.depth = 101
    model_cfg.backbone.update(backbone)

    def no_sync_bn(node):
        if isinstance(node, dict):
            if node.get("type") == "SyncBN":
                node["type"] = "BN"
            for v in node.values():
                no_sync_bn(v)
        elif isinstance(node, list):
            for v in node:
                no_sync_bn(v)

    no_sync_bn(model_cfg)
    return model_cfg, cfg


def build(stem: str, **backbone):
    """mmseg's model of config ``stem`` (:func:`model_config`, ``backbone`` fields updated),
    randomly initialised, in eval mode, with its config."""
    install_mmcv_ops()
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    model_cfg, cfg = model_config(stem, **backbone)
    return MODELS.build(model_cfg).eval(), cfg
