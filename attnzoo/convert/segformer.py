"""SegFormer weights from Hugging Face ``SegformerForSemanticSegmentation`` checkpoints
(mmsegmentation's segformer checkpoints convert like every mmseg family: ``convert.mmseg``).

``from_transformers(state_dict, config)`` takes the hub's two files as downloaded
(``model.safetensors`` + ``config.json``, read without torch) or a loaded state dict and
config dict, in either key layout: the hub's files keep transformers 4.x names
(``segformer.encoder.block.0.0.attention.self.query.weight``); transformers 5.x renames
them when it loads (``segformer.stages.0.blocks.0.attention.q_proj.weight``; its
``conversion_mapping.py``). Both map onto attnzoo's names below.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from attnzoo import models
from attnzoo.convert.mmseg import PROTOCOLS, protocol_fields
from attnzoo.convert.torch_weights import convert_state_dict, target_shapes

# the mmseg protocols of SegFormer's recipes, a hub model may be evaluated with
PROTOCOLS_OF_SEGFORMER = ("ade20k-512x512", "ade20k-640x640", "cityscapes-1024x1024")

# transformers key -> attnzoo key (re.sub, in order); 4.x and 5.x layouts
TRANSFORMERS_RENAMES = (
    # 4.x
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.layer_norm\.", r"backbone.patch_embed_\1.norm."),
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.", r"backbone.patch_embed_\1."),
    (r"^segformer\.encoder\.block\.(\d+)\.(\d+)\.", r"backbone.block_\1_\2."),
    (r"^segformer\.encoder\.layer_norm\.(\d+)\.", r"backbone.norm_\1."),
    (r"\.layer_norm_1\.", ".norm1."),
    (r"\.layer_norm_2\.", ".norm2."),
    (r"\.attention\.self\.(query|key|value|sr)\.", r".attn.\1."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.mlp\.dense([12])\.", r".mlp.fc\1."),
    (r"^decode_head\.linear_c\.(\d+)\.proj\.", r"head.proj_\1.conv."),
    # 5.x
    (r"^segformer\.stages\.(\d+)\.patch_embeddings\.layer_norm\.", r"backbone.patch_embed_\1.norm."),
    (r"^segformer\.stages\.(\d+)\.patch_embeddings\.", r"backbone.patch_embed_\1."),
    (r"^segformer\.stages\.(\d+)\.blocks\.(\d+)\.", r"backbone.block_\1_\2."),
    (r"^segformer\.stages\.(\d+)\.layer_norm\.", r"backbone.norm_\1."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.q_proj\.", ".attn.query."),
    (r"\.attention\.k_proj\.", ".attn.key."),
    (r"\.attention\.v_proj\.", ".attn.value."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attn.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attn.norm."),
    (r"^decode_head\.linear_projections\.(\d+)\.proj\.", r"head.proj_\1.conv."),
    # both
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^decode_head\.linear_fuse\.", "head.fuse.conv."),
    (r"^decode_head\.batch_norm\.", "head.fuse.bn."),
    (r"^decode_head\.classifier\.", "head.cls.conv_seg."),
)


def _config_from(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(config, (str, Path)):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"config {str(path)!r} does not exist (the hub's "
                                    f"config.json)")
        return json.loads(path.read_text())
    return dict(config)


def transformers_model_kwargs(config: Mapping[str, Any] | str | Path
                              ) -> tuple[str, dict[str, Any]]:
    """``(model name, models.create overrides)`` for a Hugging Face SegFormer ``config.json``
    (a dict or its path): the registered ``segformer_mit_b<k>`` whose encoder has these sizes
    (``segformer_mit_b0`` otherwise), with every encoder field, the decoder width, the classes
    and LayerNorm epsilon 1e-5 (``nn.LayerNorm``'s default, which Hugging Face's port uses
    everywhere) given explicitly.

    Raises:
      ValueError naming the field when the config is not a SegFormer that attnzoo rebuilds.
    """
    c = _config_from(config)
    if c.get("model_type", "segformer") != "segformer":
        raise ValueError(f"config model_type is {c['model_type']!r}; expected 'segformer'")
    defaults = dict(num_channels=3, num_encoder_blocks=4, depths=[2, 2, 2, 2],
                    sr_ratios=[8, 4, 2, 1], hidden_sizes=[32, 64, 160, 256],
                    patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
                    num_attention_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4],
                    hidden_act="gelu", decoder_hidden_size=256, reshape_last_stage=True)
    c = {**defaults, **c}
    if c["num_encoder_blocks"] != 4:
        raise ValueError(f"config num_encoder_blocks={c['num_encoder_blocks']}; attnzoo's MiT "
                         f"has 4 stages")
    if c["hidden_act"] != "gelu":
        raise ValueError(f"config hidden_act={c['hidden_act']!r}; attnzoo's Mix-FFN uses 'gelu'")
    if len(set(c["mlp_ratios"])) != 1:
        raise ValueError(f"config mlp_ratios={c['mlp_ratios']}; attnzoo's MiT takes one ratio "
                         f"for all stages")
    if not c["reshape_last_stage"]:
        raise ValueError("config reshape_last_stage=false (a classification encoder); expected "
                         "a SegformerForSemanticSegmentation config")
    num_classes = c.get("num_labels") or len(c.get("id2label") or {}) or 2
    backbone = dict(embed_dims=tuple(c["hidden_sizes"]), depths=tuple(c["depths"]),
                    num_heads=tuple(c["num_attention_heads"]), sr_ratios=tuple(c["sr_ratios"]),
                    patch_sizes=tuple(c["patch_sizes"]), strides=tuple(c["strides"]),
                    mlp_ratio=int(c["mlp_ratios"][0]), in_channels=int(c["num_channels"]),
                    norm_eps=1e-5)
    name = next((m for m in models.list_models() if m.startswith("segformer_mit_")
                 and _encoder_matches(m, backbone)), "segformer_mit_b0")
    return name, dict(num_classes=int(num_classes), backbone_kwargs=backbone,
                      head_kwargs={"channels": int(c["decoder_hidden_size"])})


def _encoder_matches(model: str, fields: Mapping[str, Any]) -> bool:
    from attnzoo import backbones

    encoder = backbones.create(models.get_spec(model).backbone)
    return all(tuple(np.atleast_1d(getattr(encoder, k))) == tuple(np.atleast_1d(v))
               for k, v in fields.items() if k not in ("norm_eps", "in_channels"))


def _state_dict_from(state_dict: Mapping[str, Any] | str | Path) -> Mapping[str, Any]:
    if not isinstance(state_dict, (str, Path)):
        return state_dict
    from attnzoo.convert.backbones import load_state_dict

    path = Path(state_dict)
    if path.is_dir():
        files = [path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()]
        if not files:
            raise FileNotFoundError(f"{str(path)!r} holds neither model.safetensors nor "
                                    f"pytorch_model.bin")
        path = files[0]
    return load_state_dict(path)


def from_transformers(state_dict: Mapping[str, Any] | str | Path,
                      config: Mapping[str, Any] | str | Path
                      ) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, variables)`` of a Hugging Face ``SegformerForSemanticSegmentation`` checkpoint.

    Args:
      state_dict: names -> arrays (numpy or torch), in transformers 4.x (the hub's files) or
        5.x key names; or the path of ``model.safetensors`` / ``pytorch_model.bin``, or of the
        directory holding it.
      config: the ``config.json`` as a dict, or its path (or its directory).

    Returns:
      The model (``models.create`` of :func:`transformers_model_kwargs`) and ``{"params",
      "batch_stats"}``: ``model.apply(variables, images_nhwc)["out"]`` are Hugging Face's
      logits resized bilinearly to the input (``F.interpolate``, as its loss does).

    Raises:
      ValueError for a config attnzoo does not rebuild; ConversionError listing every unused,
      missing and mis-shaped key.
    """
    name, kwargs = transformers_model_kwargs(config)
    model = models.create(name, **kwargs)
    size = 32 * max(model.backbone.sr_ratios)
    target = target_shapes(model, jnp.zeros((1, size, size, model.backbone.in_channels)))
    return model, convert_state_dict(_state_dict_from(state_dict), target,
                                     regex_renames=TRANSFORMERS_RENAMES)


# the schedule of SegFormer's mmseg recipe of each protocol: (iterations, batch)
SEGFORMER_SCHEDULES = {"ade20k-512x512": (160_000, 16), "ade20k-640x640": (160_000, 16),
                       "cityscapes-1024x1024": (160_000, 8)}


def hub_class_names(config: Mapping[str, Any] | str | Path) -> tuple[str, ...] | None:
    """The class names of a Hugging Face config's ``id2label``, in label order (surrounding
    spaces removed); ``None`` when it has none or only transformers' placeholder
    ``LABEL_<i>`` names."""
    labels = _config_from(config).get("id2label") or {}
    names = tuple(str(labels[k]).strip() for k in sorted(labels, key=int))
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


def transformers_config_fields(config: Mapping[str, Any] | str | Path,
                               protocol: str | None = None) -> dict[str, Any]:
    """The engine config fields (dotted names) of a converted Hugging Face SegFormer: its model
    (name and overrides), classes (``dataset.class_names``, from ``id2label``), evaluation
    protocol and the schedule of SegFormer's recipe for it (160k iterations; batch 16 on
    ADE20K, 8 on Cityscapes).

    Args:
      config: the hub's ``config.json`` (dict or path).
      protocol: an mmseg dataset protocol of SegFormer's recipes (``"ade20k-512x512"``,
        ``"ade20k-640x640"``, ``"cityscapes-1024x1024"``: test resize, whole or 1024x1024
        sliding windows). By default the ADE20K 512 one for ADE20K's 150 classes and the
        Cityscapes one for Cityscapes' 19 (the same names, or none given); otherwise the
        model's classes are a ``folder`` dataset's (``dataset.manual_dir``: your data),
        never a built-in dataset's.

    Raises:
      ValueError for an unknown protocol or one whose class count differs from the config's.
    """
    from attnzoo.data.datasets import spec

    name, kwargs = transformers_model_kwargs(config)
    n, names = kwargs["num_classes"], hub_class_names(config)
    fields: dict[str, Any] = {"model.name": name,
                              "model.backbone_kwargs": dict(kwargs["backbone_kwargs"]),
                              "model.head_kwargs": dict(kwargs["head_kwargs"]),
                              "dataset.num_classes": n, "dataset.class_names": names}
    if protocol is None:
        known = {150: PROTOCOLS_OF_SEGFORMER[0], 19: PROTOCOLS_OF_SEGFORMER[2]}.get(n)
        if known is not None and (names is None or _same_names(
                names, spec(PROTOCOLS[known]["dataset"]).classes)):
            protocol = known
    if protocol is None:
        return {**fields, "dataset.name": "folder",
                "dataset.class_names": names or tuple(f"class_{i}" for i in range(n))}
    if protocol not in PROTOCOLS_OF_SEGFORMER:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS_OF_SEGFORMER)}; got "
                         f"{protocol!r}")
    if PROTOCOLS[protocol]["num_classes"] != n:
        raise ValueError(f"protocol {protocol!r} has {PROTOCOLS[protocol]['num_classes']} "
                         f"classes but the config {n}")
    iterations, batch = SEGFORMER_SCHEDULES[protocol]
    return {**fields, **protocol_fields(protocol), "num_steps": iterations, "batch_size": batch}


def _same_names(ours: tuple[str, ...], theirs: tuple[str, ...]) -> bool:
    """Whether two class lists hold the same names (case and surrounding spaces aside)."""
    return [n.strip().lower() for n in ours] == [n.strip().lower() for n in theirs]
