"""Segmentors described as data: which backbone, which head, which auxiliary head.

A registered model name (``danet_r50_d8``) is one of these descriptions;
``build`` turns it, with the user's overrides, into a Flax module.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from attnzoo import backbones, blocks, heads
from attnzoo._checks import check_fields, check_positive, module_fields
from attnzoo.blocks.common import REMAT_KINDS, with_remat
from attnzoo.models.segmentor import AttentionUNet, EncoderDecoder

Dtype = Any


@dataclasses.dataclass(frozen=True)
class EncoderDecoderSpec:
    """An :class:`EncoderDecoder`: backbone + decode head + auxiliary head.

    Attributes:
      backbone: a ``backbones.list_backbones()`` name.
      head: a ``heads.list_heads()`` name, reading the backbone's ``in_feature``.
      output_stride: 8, 16 or 32 (a ResNet's dilated last stages); None for backbones
        of one fixed stride (MiT).
      backbone_kwargs: fields of the backbone (e.g. ``{"attn": "se"}``).
      head_kwargs: fields of the head (e.g. ``{"channels": 512}``).
      aux_head: the auxiliary head's name (reading ``aux_feature``), or None.
      aux_kwargs: its fields.
      aux_weight: its loss weight.
      aux_feature: the feature the auxiliary head reads (``"c3"``); a tuple of them for one
        auxiliary head (of the same kind and fields) on each (SETR's).
      neck: a ``heads.list_necks()`` name between the backbone and the heads, or None.
      neck_kwargs: its fields.
      in_feature: the feature the head reads (``"c4"``), or a tuple of them
        (SegFormer's head reads ``("c1", "c2", "c3", "c4")``).
      resize_concat: the head reads the features of ``in_feature`` resized to the first's size
        and concatenated (mmseg's ``input_transform="resize_concat"``: HRNet's heads).
      family: the head family (``heads.list_families()``) it was registered from, or None.
      recipe: engine config fields (dotted names) its training recipe sets beyond mmseg's
        schedule and the family's :attr:`~attnzoo.heads.Family.recipe`: the backbone's (mmseg
        trains its Swin and ViT models with AdamW whatever the head).
    """

    backbone: str
    head: str
    output_stride: int | None = 8
    backbone_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    head_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    aux_head: str | None = "fcn"
    aux_kwargs: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"channels": 256, "num_convs": 1, "concat_input": False})
    aux_weight: float = 0.4
    aux_feature: str | tuple[str, ...] = "c3"
    neck: str | None = None
    neck_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    in_feature: str | tuple[str, ...] = "c4"
    resize_concat: bool = False
    family: str | None = None
    recipe: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        """The parts must be registered and their fields theirs (ValueError naming the
        nearest), so that a misspelt description fails when it is made, not when it is built."""
        backbone_cls, _ = backbones.BACKBONES.get(self.backbone)
        check_fields(self.backbone_kwargs, module_fields(backbone_cls),
                     f"backbone {self.backbone!r} ({backbone_cls.__name__})")
        parts = [(self.head, self.head_kwargs, heads.HEADS, "head")]
        if self.aux_head is not None:
            parts.append((self.aux_head, self.aux_kwargs, heads.HEADS, "head"))
        if self.neck is not None:
            parts.append((self.neck, self.neck_kwargs, heads.NECKS, "neck"))
        for name, kwargs, registry, kind in parts:
            cls = registry.get(name)
            check_fields(kwargs, module_fields(cls), f"{kind} {name!r} ({cls.__name__})")

    def options(self) -> list[str]:
        """The keywords :meth:`build` takes besides ``num_classes`` (``models.create``'s
        overrides): its own and the :class:`EncoderDecoder` fields it does not set."""
        own = [p for p in inspect.signature(self.build).parameters
               if p not in ("num_classes", "kwargs")]
        return own + ["pixel_mean", "pixel_std"]

    def summary(self) -> str:
        """One line: head on backbone (and output stride)."""
        stride = "" if self.output_stride is None else f", output stride {self.output_stride}"
        neck = f" + {self.neck} neck" if self.neck else ""
        return f"{self.head} head on {self.backbone}{neck}{stride}"

    def build(self, *, num_classes: int, dtype: Dtype = jnp.float32,
              backbone_kwargs: Mapping[str, Any] | None = None,
              head_kwargs: Mapping[str, Any] | None = None,
              aux_kwargs: Mapping[str, Any] | None = None, memory_efficient: bool = False,
              head_channels: int | None = None, aux_channels: int | None = None,
              align_corners: bool = False, crf: Mapping[str, Any] | None = None,
              remat: Mapping[str, str] | None = None, scan_layers: bool = False,
              **kwargs: Any) -> EncoderDecoder:
        """The module, with overrides: ``backbone_kwargs`` / ``head_kwargs`` / ``aux_kwargs``
        update the description's, ``head_channels`` / ``aux_channels`` set the heads' widths (e.g. for a
        narrow CPU-sized model), ``memory_efficient`` switches the heads and backbones that
        have exact memory-bounded attention (DANet, non-local, MiT) to it, ``align_corners`` sets the flag of
        the heads' and the output's bilinear resizing (mmseg's 769x769 recipes); ``crf`` (the
        fields of :class:`~attnzoo.blocks.DenseCRF`, ``{}`` for its defaults) adds a trainable
        CRF-as-RNN after the head; ``remat`` maps block kinds
        (:data:`~attnzoo.blocks.common.REMAT_KINDS`: ``"transformer"``, ``"bottleneck"``,
        ``"head"``) to the rematerialisation policy of those blocks (``{"transformer": "dots"}``:
        the backbone's Transformer layers; ``"head"``: the decode head and each auxiliary
        head, each as one block), a kind
        the model lacks refused; ``scan_layers`` runs a ViT backbone's layers (a MiT's
        stages) as one ``nn.scan`` each (:class:`~attnzoo.backbones.VisionTransformer`'s and
        :class:`~attnzoo.backbones.MixVisionTransformer`'s field; refused for other backbones); ``kwargs`` are :class:`EncoderDecoder` fields."""
        check_positive(num_classes, "num_classes")
        stride = {} if self.output_stride is None else {"output_stride": self.output_stride}
        backbone = backbones.create(self.backbone, dtype=dtype, **stride,
                                    **{**self.backbone_kwargs, **(backbone_kwargs or {})})
        head = heads.create(self.head, num_classes=num_classes, dtype=dtype,
                            align_corners=align_corners,
                            **_with_channels(self.head_kwargs, head_kwargs, head_channels,
                                             "head_channels"))
        if memory_efficient:
            backbone, head = (m.clone(memory_efficient=True)
                              if "memory_efficient" in type(m).__dataclass_fields__ else m
                              for m in (backbone, head))
        if scan_layers:
            if "scan_layers" not in type(backbone).__dataclass_fields__:
                raise ValueError(f"scan_layers: backbone {self.backbone!r} "
                                 f"({type(backbone).__name__}) has no scanned form (the "
                                 "Vision Transformers and MiT have)")
            backbone = backbone.clone(scan_layers=True)
        backbone, head = _rematerialised(backbone, head, dict(remat or {}), self.summary())
        aux = None
        if self.aux_head is not None:
            def make_aux() -> nn.Module:
                return with_remat(heads.create(self.aux_head, num_classes=num_classes, dtype=dtype,
                                    align_corners=align_corners,
                                    **_with_channels(self.aux_kwargs, aux_kwargs, aux_channels,
                                                     "aux_channels")),
                                  (remat or {}).get("head"))

            aux = (make_aux() if isinstance(self.aux_feature, str)
                   else tuple(make_aux() for _ in self.aux_feature))
        crf_layer = None if crf is None else blocks.create("crf", num_classes=num_classes,
                                                           dtype=dtype, **crf)
        neck = (None if self.neck is None
                else heads.create_neck(self.neck, dtype=dtype, **self.neck_kwargs))
        return EncoderDecoder(backbone, head, aux, neck, in_feature=self.in_feature,
                              resize_concat=self.resize_concat, aux_weight=self.aux_weight,
                              aux_feature=self.aux_feature,
                              align_corners=align_corners,
                              crf=crf_layer, **kwargs)


def _rematerialised(backbone: nn.Module, head: nn.Module, policies: dict[str, str], what: str
                    ) -> tuple[nn.Module, nn.Module]:
    """``backbone`` with its blocks and the decode ``head`` as a whole rematerialised as
    ``policies`` (block kind -> policy) says (the auxiliary heads are built so where they are
    made); ValueError naming a kind the model has no blocks of."""
    check_fields(policies, REMAT_KINDS, "remat")
    kind = getattr(type(backbone), "remat_kind", None)
    for name in policies:
        if name not in (kind, "head"):
            raise ValueError(f"remat: {what} has no {name!r} blocks to rematerialise (its "
                             f"backbone's are {kind!r}; the heads are 'head')")
    if kind in policies:
        backbone = backbone.clone(remat=policies[kind])
    return backbone, with_remat(head, policies.get("head"))


def _with_channels(base: Mapping[str, Any], overrides: Mapping[str, Any] | None,
                   channels: int | None, field: str) -> dict[str, Any]:
    kwargs = {**base, **(overrides or {})}
    if channels is not None:
        check_positive(channels, field)
        kwargs["channels"] = channels
    return kwargs


@dataclasses.dataclass(frozen=True)
class UNetSpec:
    """An :class:`AttentionUNet` of the given level ``widths`` (no backbone, no heads)."""

    widths: tuple[int, ...]

    def options(self) -> list[str]:
        """The keywords :meth:`build` takes besides ``num_classes``."""
        return ["dtype", "widths", "in_channels", "param_dtype"]

    def summary(self) -> str:
        """One line: the levels' widths."""
        return f"Attention U-Net, levels {self.widths} wide"

    def build(self, *, num_classes: int, dtype: Dtype = jnp.float32, **kwargs: Any
              ) -> nn.Module:
        """The module; ``kwargs`` are :class:`AttentionUNet` fields (``widths``,
        ``in_channels``, ``param_dtype``)."""
        check_positive(num_classes, "num_classes")
        check_fields(kwargs, self.options(), "an Attention U-Net (no backbone or decode head)")
        return AttentionUNet(num_classes, **{"widths": self.widths, **kwargs}, dtype=dtype)


ModelSpec = EncoderDecoderSpec | UNetSpec
