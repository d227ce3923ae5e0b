"""What the recipes share: mmsegmentation's schedule, the dataset table and the argument parser.

Every recipe starts from ``attnzoo.engine.default_config()`` (all fields the
engine reads) and :func:`mmseg_schedule` sets mmsegmentation's
``schedule_80k`` / ``schedule_160k`` and dataset settings on it:

* SGD, lr 0.01, momentum 0.9, weight decay 5e-4 (kernels only), poly decay
  (power 0.9, min lr 1e-4);
* ``cityscapes``: 512x1024 crops of images resized to 2048x1024 (ratio
  0.5-2.0), 80k steps of batch 8, whole-image evaluation;
* ``cityscapes769``: 769x769 crops of 2049x1025, 80k, batch 8, sliding-window
  evaluation (769 windows, stride 513);
* ``ade20k``: 512x512 crops of 2048x512, 160k steps of batch 16, evaluation
  resized to 2048x512 on a 1024x1024 canvas, the logits resized back to each
  label's original size before the metric (as mmsegmentation);
* ``cityscapes1024``: SegFormer's 1024x1024 crops of 2048x1024, 160k steps of
  batch 8, sliding-window evaluation (1024 windows, stride 768);
* ``voc12aug``, ``pascal_context``, ``pascal_context_59``, ``coco_stuff164k``,
  ``coco_stuff10k``: mmsegmentation's protocol of each
  (``attnzoo.convert.mmseg.PROTOCOLS``: VOC and COCO-Stuff 512x512 crops of 2048x512,
  Pascal Context 480x480 crops of 520x520 and 480x480 windows of stride 320), batch 16
  (4 GPUs x 4) for 40k steps (VOC, COCO-Stuff 10k), 80k (Pascal Context) or 160k
  (COCO-Stuff 164k), each image evaluated at its own size and scored at its original size.

Options every recipe takes on the command line besides mmseg's settings, for models that do not
fit a device otherwise: ``--config.model.remat.transformer`` / ``.bottleneck`` / ``.head``
(``"dots"`` or ``"nothing"``: rematerialise the backbone's Transformer layers, its residual
blocks or the decode and auxiliary heads; ``attnzoo.blocks.common.REMAT_POLICIES``; memory per recipe in
``docs/benchmarks.md#big-models-remat``); ``--config.model.scan_layers=True`` (a ViT
backbone's layers, a MiT's stages, as one ``nn.scan`` each: compile time flat in depth); ``--config.mesh.fsdp=N``
(parameters, BatchNorm statistics and optimizer state split over groups of ``N`` devices,
fully sharded data parallelism: ``attnzoo.sharding``; ``--config.mesh.rules`` overrides the
layout of the arrays a pattern names).
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

from attnzoo import heads, models
from attnzoo._checks import did_you_mean
from attnzoo.convert.mmseg import protocol_fields
from attnzoo.engine import default_config


def _mmseg_protocol(protocol: str, num_steps: int, batch_size: int = 16,
                    **dataset: Any) -> dict[str, Any]:
    """A :data:`DATASETS` row of mmseg's dataset protocol ``protocol``
    (:func:`attnzoo.convert.mmseg.protocol_fields`), ``dataset`` fields on top."""
    fields = protocol_fields(protocol)
    return dict(dataset={**{k.removeprefix("dataset."): v for k, v in fields.items()
                            if k.startswith("dataset.")}, **dataset},
                num_steps=num_steps, batch_size=batch_size, eval_mode=fields["eval.mode"],
                stride=fields["eval.stride"],
                eval_batch_size=8 if dataset else fields.get("eval_batch_size", 8))


# dataset -> (config.dataset fields, steps, batch, eval mode, eval window stride, eval batch)
DATASETS: dict[str, dict[str, Any]] = {
    "cityscapes": _mmseg_protocol("cityscapes-512x1024", 80_000, batch_size=8),
    "cityscapes769": _mmseg_protocol("cityscapes-769x769", 80_000, batch_size=8),
    # batched evaluation during training: each image resized, padded onto a 1024x1024 canvas
    "ade20k": _mmseg_protocol("ade20k-512x512", 160_000, eval_canvas=(1024, 1024)),
    # SegFormer's Cityscapes: 1024x1024 crops, batch 8, 160k, 1024x1024 windows of stride 768
    "cityscapes1024": _mmseg_protocol("cityscapes-1024x1024", 160_000, batch_size=8),
    "voc12aug": _mmseg_protocol("voc12aug-512x512", 40_000),
    "pascal_context": _mmseg_protocol("pascal-context-480x480", 80_000),
    "pascal_context_59": _mmseg_protocol("pascal-context-59-480x480", 80_000),
    "coco_stuff164k": _mmseg_protocol("coco-stuff164k-512x512", 160_000),
    "coco_stuff10k": _mmseg_protocol("coco-stuff10k-512x512", 40_000),
}


def parse_arg(arg: str, **fields: Any) -> ConfigDict:
    """Parse a recipe argument into typed fields (after big_vision's ``parse_arg``).

    Each keyword names a field and gives its default: a tuple of allowed
    strings (the first is the default) or a value of type ``str``, ``int``,
    ``float`` or ``bool``. ``arg`` is comma-separated: ``key=value`` sets a
    field (converted to the default's type, checked against the choices), a
    bare ``value`` sets the one field whose choices contain it.

    >>> parse_arg("danet_r101_d8,dataset=ade20k", model=("danet_r50_d8", "danet_r101_d8"),
    ...           dataset=tuple(DATASETS)).model
    'danet_r101_d8'

    Raises:
      ValueError naming the token, the fields and their choices.
    """
    values = {k: (v[0] if isinstance(v, tuple) else v) for k, v in fields.items()}
    choices = {k: v for k, v in fields.items() if isinstance(v, tuple)}

    def describe() -> str:
        return ", ".join(f"{k} in {list(choices[k])}" if k in choices else
                         f"{k}={type(v).__name__}" for k, v in values.items())

    for token in filter(None, (t.strip() for t in arg.split(","))):
        key, sep, text = token.partition("=")
        if not sep:
            owners = [k for k, c in choices.items() if token in c]
            if len(owners) != 1:
                every = [c for options in choices.values() for c in options]
                raise ValueError(f"config argument {token!r} matches no field"
                                 f"{did_you_mean(token, every)}; expected {describe()}")
            values[owners[0]] = token
            continue
        if key not in values:
            raise ValueError(f"config argument {key!r} is not a field{did_you_mean(key, values)}; "
                             f"expected {describe()}")
        if key in choices and text not in choices[key]:
            raise ValueError(f"config argument {key}={text!r} must be one of {list(choices[key])}"
                             f"{did_you_mean(text, choices[key])}")
        values[key] = _typed(text, values[key], key)
    return ConfigDict(values)


def _typed(text: str, default: Any, key: str) -> Any:
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"config argument {key}={text!r} must be true or false")
        return text.lower() in ("true", "1")
    try:
        return type(default)(text)
    except ValueError as err:
        raise ValueError(f"config argument {key}={text!r} must be a {type(default).__name__}") from err


def mmseg_schedule(dataset: str, model: str) -> ConfigDict:
    """``default_config()`` with model ``model`` and mmsegmentation's schedule and data settings
    for ``dataset`` (see the module docstring), and the recipe settings of the model's head
    family (``heads.get_family(name).recipe``, e.g. SegFormer's AdamW) and of the model itself
    (``models.get_spec(name).recipe``: the Swin and ViT models' AdamW)."""
    d = DATASETS[dataset]
    c = default_config()
    c.model.name = model
    c.dataset.update(d["dataset"])
    c.num_steps = d["num_steps"]
    c.batch_size = d["batch_size"]
    c.eval_batch_size = d["eval_batch_size"]
    c.optimizer.update(dict(name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=5e-4,
                            schedule="poly", power=0.9, min_lr=1e-4))
    c.eval.mode = d["eval_mode"]
    c.eval.crop_size = d["dataset"]["crop_size"]
    c.eval.stride = d["stride"]
    c.eval_every = c.num_steps // 10
    spec = models.get_spec(model)
    family = getattr(spec, "family", None)
    if family is not None:
        c.update_from_flattened_dict(dict(heads.get_family(family).recipe))
    c.update_from_flattened_dict(dict(getattr(spec, "recipe", {})))
    return c
