"""Engine configuration: every field the engine reads, with its default.

A config is an ``ml_collections.ConfigDict``; the recipes in ``configs/``
start from :func:`default_config` and ``train.py`` loads one with
``config_flags``, so any field can be overridden on the command line
(``--config.optimizer.learning_rate=0.005``); in Python, use
``config.update_from_flattened_dict({"optimizer.learning_rate": 0.005})``.

Fields (defaults in :func:`default_config`):

* ``seed``; ``num_steps`` (train-step calls); ``batch_size`` (global, over
  all devices and processes); ``eval_batch_size``; ``compute_dtype``
  (``"float32"`` or ``"bfloat16"``; parameters stay float32).
* ``model``: ``name`` (``attnzoo.models.list_models()``), ``backbone_kwargs``,
  ``head_kwargs``, ``head_channels``, ``aux_channels``, ``memory_efficient``,
  ``align_corners`` (bilinear resizing of the logits and in the heads, as
  mmsegmentation's 769x769 Cityscapes recipes), ``crf`` (a trainable CRF-as-RNN layer
  after the head, ``attnzoo.blocks.DenseCRF``) and its fields ``crf_kwargs``
  (e.g. ``{"iterations": 5, "learn_bandwidths": True}``).
* ``dataset``: see ``attnzoo.data.input``.
* ``optimizer``: ``name`` (``"sgd"`` | ``"adamw"``), ``learning_rate``,
  ``momentum``, ``nesterov``, ``b1``, ``b2``, ``weight_decay``, ``schedule``
  (``"poly"`` | ``"cosine"`` | ``"constant"``), ``power``, ``min_lr``,
  ``warmup_steps``, ``decay_ratio`` (the fraction of the steps, at the end, that
  the decay takes; the peak learning rate is held between the warm-up and it),
  ``clip_norm`` (0 = none), ``accumulate_steps``, ``lr_mult``
  (top-level module -> learning-rate multiplier, e.g. ``{"head": 10.0}`` as
  mmseg's ``paramwise_cfg`` for SegFormer).
* ``loss``: ``name`` of the per-output loss (``attnzoo.losses.LOSSES``) and
  its ``kwargs``; the model's own terms give the outputs and weights
  (auxiliary 0.4, DANet branches 1.0).
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
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ml_collections import ConfigDict, config_dict


def default_config() -> ConfigDict:
    """Every field the engine reads, with mmsegmentation-like defaults."""
    c = ConfigDict()
    c.seed = 0
    c.num_steps = 80_000
    c.batch_size = 8
    c.eval_batch_size = 8
    c.compute_dtype = "float32"
    c.model = ConfigDict(dict(
        name="danet_r50_d8", backbone_kwargs={}, head_kwargs={},
        head_channels=config_dict.placeholder(int), aux_channels=config_dict.placeholder(int),
        memory_efficient=False, align_corners=False, crf=False, crf_kwargs={},
    ))
    c.dataset = ConfigDict(dict(
        name="context_shapes", data_dir=config_dict.placeholder(str),
        manual_dir=config_dict.placeholder(str), train_split="train", eval_split="validation",
        num_classes=9, ignore_index=255, crop_size=(128, 128), ratio_range=(0.5, 2.0),
        scale=config_dict.placeholder(tuple), cat_max_ratio=0.75, photometric=True,
        shuffle_buffer=1000, eval_scale=config_dict.placeholder(tuple),
        eval_canvas=config_dict.placeholder(tuple),
        eval_label_canvas=config_dict.placeholder(tuple),
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
    return c


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
