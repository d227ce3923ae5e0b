"""Engine configuration: every field the engine reads, with its default.

A config is an ``ml_collections.ConfigDict``; the recipes in ``configs/``
start from :func:`default_config` and ``train.py`` loads one with
``config_flags``, so any field can be overridden on the command line
(``--config.optimizer.learning_rate=0.005``); in Python, use
``config.update_from_flattened_dict({"optimizer.learning_rate": 0.005})``.

Fields (defaults in :func:`default_config`):

* ``seed``; ``num_steps`` (train-step calls); ``batch_size`` (global, over
  all devices and processes); ``eval_batch_size``; ``compute_dtype``
  (``"float32"`` or ``"bfloat16"``; parameters stay float32); ``conv_implementation``
  (``"auto"`` | ``"products"`` | ``"xla"``: how the convolutions are computed,
  :mod:`attnzoo.ops.conv`; the jitted steps trace under it).
* ``model``: ``name`` (``attnzoo.models.list_models()``), ``backbone_kwargs``,
  ``head_kwargs``, ``aux_kwargs`` (fields of the auxiliary heads), ``head_channels``, ``aux_channels``, ``memory_efficient``,
  ``align_corners`` (bilinear resizing of the logits and in the heads, as
  mmsegmentation's 769x769 Cityscapes recipes), ``crf`` (a trainable CRF-as-RNN layer
  after the head, ``attnzoo.blocks.DenseCRF``) and its fields ``crf_kwargs``
  (e.g. ``{"iterations": 5, "learn_bandwidths": True}``), ``pixel_mean`` / ``pixel_std``
  (the normalisation the model expects of its input: the data pipelines, ``predict`` and the
  CRF use it; ImageNet's, as mmsegmentation), ``remat`` (rematerialisation by block kind:
  ``remat.transformer`` for a ViT / Swin / MiT / Twins backbone's layers,
  ``remat.bottleneck`` for a ResNet / HRNet backbone's residual blocks, ``remat.head`` for
  the decode and auxiliary heads; each None, ``"nothing"`` or ``"dots"``, :data:`attnzoo.blocks.common.
  REMAT_POLICIES`: less activation memory in training for a second forward pass of those
  blocks; outputs and gradients unchanged), ``scan_layers`` (a ViT backbone's layers, each stage
  of a MiT's, as one ``nn.scan``: one layer compiled instead of each; parameters stacked, a plain
  model's checkpoint fills them through ``init_from``).
* ``dataset``: see ``attnzoo.data.input``.
* ``optimizer``: ``name`` (``"sgd"`` | ``"adamw"``), ``learning_rate``,
  ``momentum``, ``nesterov``, ``b1``, ``b2``, ``weight_decay``, ``schedule``
  (``"poly"`` | ``"cosine"`` | ``"constant"``), ``power``, ``min_lr``,
  ``warmup_steps``, ``decay_ratio`` (the fraction of the steps, at the end, that
  the decay takes; the peak learning rate is held between the warm-up and it),
  ``clip_norm`` (0 = none), ``accumulate_steps``, ``lr_mult``
  (top-level module -> learning-rate multiplier, e.g. ``{"head": 10.0}`` as
  mmseg's ``paramwise_cfg`` for SegFormer).
* ``loss``: ``name`` of the per-pixel loss (``attnzoo.losses.PIXEL_LOSSES``) and
  its ``kwargs``; the model's own terms give the outputs and weights
  (auxiliary 0.4, DANet branches 1.0; EncNet's SE-loss keeps its own loss, 0.2).
* ``eval``: ``mode`` (``"whole"`` | ``"slide"``), ``crop_size``,
  ``stride``, ``scales``, ``flip``.
* ``log_every``, ``eval_every``, ``checkpoint_every`` (steps; the last step
  always evaluates and saves), ``keep`` (latest checkpoints kept),
  ``keep_best`` (best by validation mIoU kept), ``async_checkpoints``.
* ``init_from``: a backbone checkpoint written by ``python -m attnzoo.convert``,
  loaded into the segmentor's backbone before training.
* ``force_resume``: resume a workdir even though a field that shapes the model or
  the optimizer state changed (``attnzoo.engine.workdir.SHAPING``; refused otherwise).
* ``distributed``: call ``jax.distributed.initialize()`` (multi-host).
* ``mesh``: the device mesh (:mod:`attnzoo.sharding`): ``fsdp`` devices share each
  parameter's, BatchNorm statistic's and optimizer moment's parts (fully sharded data
  parallelism; 1 = replicated), ``data`` (None: the devices left) such groups hold copies; the
  batch is split over both. ``min_shard_size``: arrays with fewer elements stay replicated;
  ``rules``: ``(regular expression, layout)`` pairs overriding the default layout (each array
  along its largest dimension the ``fsdp`` size divides) for the arrays whose path
  (``"params/backbone/.../kernel"``, ``"opt_state/.../mu/..."``) matches, e.g.
  ``(("pos_embed", ()),)`` keeps position embeddings replicated. A resume may change the
  mesh: checkpoints are restored onto the new layout.

Numeric fields with a domain are checked against it, from one table (:data:`DOMAINS`,
:func:`check_domains`; ``train.py`` does before anything is built): a non-positive learning rate,
a NaN weight decay or a momentum of 1 is refused naming the field.

Configs written by earlier versions (a run's ``config.json``, a checkpoint's config, a recipe
naming an old model) are brought up to date by :func:`migrate`: missing fields take their
defaults and renamed models and blocks (:data:`RENAMED_MODELS`, :data:`RENAMED_BLOCKS`) their
new names.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict, config_dict

from attnzoo.blocks.common import REMAT_KINDS, REMAT_POLICIES
from attnzoo.pixels import IMAGENET_MEAN, IMAGENET_STD
from attnzoo.sharding import MIN_SHARD_SIZE

log = logging.getLogger("attnzoo")

# Names that changed (attnzoo 0.1 -> 0.2): model name pattern -> (new name, head fields it
# implied), block name -> (new name, block fields it implied).
RENAMED_MODELS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (r"psa_(r\d+_d\d+)", r"polarized_\1", {}),
    (r"psas_(r\d+_d\d+)", r"polarized_\1", {"mode": "sequential"}),
    (r"segformer_mit-b(\d)", r"segformer_mit_b\1", {}),
)
RENAMED_BLOCKS: dict[str, tuple[str, dict[str, Any]]] = {
    "psa_p": ("polarized", {}), "psa_s": ("polarized", {"mode": "sequential"})}


def default_config() -> ConfigDict:
    """Every field the engine reads, with mmsegmentation-like defaults."""
    c = ConfigDict()
    c.seed = 0
    c.num_steps = 80_000
    c.batch_size = 8
    c.eval_batch_size = 8
    c.compute_dtype = "float32"
    c.conv_implementation = "auto"
    c.model = ConfigDict(dict(
        name="danet_r50_d8", backbone_kwargs={}, head_kwargs={}, aux_kwargs={},
        head_channels=config_dict.placeholder(int), aux_channels=config_dict.placeholder(int),
        memory_efficient=False, align_corners=False, crf=False, crf_kwargs={},
        pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD,
        remat=ConfigDict({kind: config_dict.placeholder(str) for kind in REMAT_KINDS}),
        scan_layers=False,
    ))
    c.dataset = ConfigDict(dict(
        name="context_shapes", data_dir=config_dict.placeholder(str),
        manual_dir=config_dict.placeholder(str), train_split=config_dict.placeholder(str),
        eval_split=config_dict.placeholder(str),
        num_classes=9, ignore_index=255, crop_size=(128, 128), ratio_range=(0.5, 2.0),
        scale=config_dict.placeholder(tuple), cat_max_ratio=0.75, photometric=True,
        shuffle_buffer=1000, eval_scale=config_dict.placeholder(tuple),
        eval_canvas=config_dict.placeholder(tuple),
        eval_label_canvas=config_dict.placeholder(tuple),
        class_names=config_dict.placeholder(tuple),
    ))
    c.optimizer = ConfigDict(dict(
        name="sgd", learning_rate=0.01, momentum=0.9, nesterov=False, b1=0.9, b2=0.999,
        weight_decay=5e-4, schedule="poly", power=0.9, min_lr=1e-4, warmup_steps=0, decay_ratio=1.0,
        clip_norm=0.0, accumulate_steps=1, lr_mult={},
    ))
    c.loss = ConfigDict(dict(name="cross_entropy", kwargs={}))
    c.eval = ConfigDict(dict(mode="whole", crop_size=(512, 1024), stride=(341, 682),
                             scales=(1.0,), flip=False))
    c.log_every = 50
    c.eval_every = 8000
    c.checkpoint_every = 4000
    c.keep = 3
    c.keep_best = 1
    c.async_checkpoints = True
    c.init_from = ""
    c.force_resume = False
    c.distributed = False
    c.mesh = ConfigDict(dict(data=config_dict.placeholder(int), fsdp=1, rules=(),
                             min_shard_size=MIN_SHARD_SIZE))
    return c


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pair(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(map(test, v))


_POSITIVE_INT = (lambda v: _integer(v) and v > 0, "a positive integer")
_POSITIVE = (lambda v: _number(v) and v > 0, "a positive finite number")
_NON_NEGATIVE = (lambda v: _number(v) and v >= 0, "a finite number >= 0")
_FRACTION = (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")
_WINDOW = (_pair(lambda v: _integer(v) and v > 0), "a pair of positive integers")
# the numeric fields with a domain: (dotted field, test, what the value must be); ``None`` is
# accepted where the field is optional (a placeholder)
DOMAINS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    *((name, *_POSITIVE_INT) for name in (
        "num_steps", "batch_size", "eval_batch_size", "log_every", "eval_every",
        "checkpoint_every", "keep", "optimizer.accumulate_steps", "dataset.num_classes",
        "dataset.shuffle_buffer", "model.head_channels", "model.aux_channels", "mesh.data",
        "mesh.fsdp")),
    ("mesh.min_shard_size", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("mesh.rules", lambda v: all(
        isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], str)
        and isinstance(r[1], (tuple, list)) and all(a is None or isinstance(a, str) for a in r[1])
        for r in v), "pairs (regular expression, [mesh axis or None, ...])"),
    ("keep_best", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("optimizer.learning_rate", *_POSITIVE),
    ("optimizer.power", *_POSITIVE),
    *((name, *_NON_NEGATIVE) for name in (
        "optimizer.weight_decay", "optimizer.min_lr", "optimizer.clip_norm")),
    ("optimizer.warmup_steps", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("optimizer.decay_ratio", lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    *((name, *_FRACTION) for name in ("optimizer.momentum", "optimizer.b1", "optimizer.b2")),
    ("optimizer.lr_mult", lambda v: all(_number(m) and m >= 0 for m in dict(v).values()),
     "a mapping to finite multipliers >= 0"),
    ("dataset.ignore_index", lambda v: _integer(v) and 0 <= v <= 255, "an integer in 0..255"),
    ("dataset.cat_max_ratio", lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("dataset.ratio_range", _pair(lambda v: _number(v) and v > 0),
     "a pair of positive finite numbers"),
    *((name, *_WINDOW) for name in (
        "dataset.crop_size", "dataset.scale", "dataset.eval_scale", "dataset.eval_canvas",
        "dataset.eval_label_canvas", "eval.crop_size", "eval.stride")),
    ("eval.scales", lambda v: len(v) > 0 and all(_number(s) and s > 0 for s in v),
     "positive finite numbers"),
    *((f"model.remat.{kind}", lambda v: v in REMAT_POLICIES,
       f"one of {list(REMAT_POLICIES)} (or None)") for kind in REMAT_KINDS),
)


def check_domain(name: str, value: Any) -> None:
    """ValueError unless ``value`` is in the domain :data:`DOMAINS` gives field ``name`` (a
    dotted name; ``None``, a placeholder, passes): ``config.optimizer.learning_rate must be a
    positive finite number; got -0.01``."""
    for field, test, what in DOMAINS:
        if field == name and value is not None and not test(value):
            raise ValueError(f"config.{name} must be {what}; got {value!r}")


def check_domains(config: Mapping[str, Any]) -> None:
    """:func:`check_domain` for every field of :data:`DOMAINS` (the first one outside its
    domain is named)."""
    for name, _, _ in DOMAINS:
        value: Any = config
        for part in name.split("."):
            value = value[part]
        check_domain(name, value)
    lo, hi = config["dataset"]["ratio_range"]
    if lo > hi:
        raise ValueError(f"config.dataset.ratio_range must be (low, high) with low <= high; got "
                         f"{(lo, hi)}")


def load_config_file(spec: str) -> ConfigDict:
    """The config ``train.py --config SPEC`` would read: ``SPEC`` is a file and an optional
    argument, ``"configs/danet.py:r101,cityscapes"``; ``get_config(arg)`` is called with the
    argument when there is one. A recipe inside a package (``configs/``) may import its
    siblings (``from configs import common``): the package's parent goes on ``sys.path``."""
    path_text, _, arg = spec.partition(":")
    path = Path(path_text).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file {path_text!r} does not exist")
    if (path.parent / "__init__.py").is_file() and str(path.parent.parent) not in sys.path:
        sys.path.insert(0, str(path.parent.parent))
    module_spec = importlib.util.spec_from_file_location(f"_attnzoo_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def from_fields(fields: Mapping[str, Any]) -> ConfigDict:
    """:func:`default_config` with ``fields`` (dotted names, e.g. ``{"dataset.num_classes": 19}``:
    what the converters give) set; ValueError naming a field the config does not have."""
    c = default_config()
    for name, value in fields.items():
        *parents, leaf = name.split(".")
        node = c
        for part in parents:
            node = node.get(part) if isinstance(node, ConfigDict) else None
        if not isinstance(node, ConfigDict) or leaf not in node:
            raise ValueError(f"config field {name!r} does not exist (attnzoo.engine.config)")
        setattr(node, leaf, value)
    return c


def migrate(config: Mapping[str, Any]) -> ConfigDict:
    """``config`` (a ConfigDict or its dict, as saved) brought up to date: fields it lacks take
    their defaults, a renamed model or residual-block attention its new name (and the head or
    block fields the old name implied), each rename logged once. Values it has are kept."""
    saved = json.loads(config.to_json_best_effort()) if isinstance(config, ConfigDict) \
        else json.loads(json.dumps(dict(config), default=list))
    c = default_config()
    _merge(c, saved)
    m = c.model
    for pattern, replacement, head_fields in RENAMED_MODELS:
        if re.fullmatch(pattern, m.name):
            new = re.sub(pattern, replacement, m.name)
            log.info("model %r is called %r since attnzoo 0.2; read as it", m.name, new)
            m.name = new
            m.head_kwargs = {**head_fields, **m.head_kwargs}
    attn = m.backbone_kwargs.get("attn")
    if attn in RENAMED_BLOCKS:
        new, block_fields = RENAMED_BLOCKS[attn]
        log.info("block %r is called %r since attnzoo 0.2; read as it", attn, new)
        m.backbone_kwargs.attn = new
        m.backbone_kwargs.attn_kwargs = {**block_fields, **m.backbone_kwargs.get("attn_kwargs", {})}
    return c


def _merge(into: ConfigDict, values: Mapping[str, Any]) -> None:
    """Set ``values`` (nested dicts) on ``into``: sub-configs merged, other values replaced."""
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), ConfigDict) and into[key]:
            _merge(into[key], value)
        else:
            setattr(into, key, value)
