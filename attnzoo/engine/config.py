"""Engine configuration: the defaults every ``configs/*.py`` starts from, and the recipes.

A config is an ``ml_collections.ConfigDict``; ``train.py`` loads one with
``config_flags`` so any field can be overridden on the command line
(``--config.optimizer.learning_rate=0.005``).

Fields (defaults in :func:`default_config`):

* ``seed``; ``num_steps`` (train-step calls); ``batch_size`` (global, over
  all devices and processes); ``eval_batch_size``; ``compute_dtype``
  (``"float32"`` or ``"bfloat16"``; parameters stay float32).
* ``model``: ``name`` (``attnzoo.models.list_models()``), ``backbone_kwargs``,
  ``head_kwargs``, ``head_channels``, ``aux_channels``, ``memory_efficient``.
* ``dataset``: see ``attnzoo.data.input``.
* ``optimizer``: ``name`` (``"sgd"`` | ``"adamw"``), ``learning_rate``,
  ``momentum``, ``nesterov``, ``b1``, ``b2``, ``weight_decay``, ``schedule``
  (``"poly"`` | ``"cosine"`` | ``"constant"``), ``power``, ``min_lr``,
  ``warmup_steps``, ``clip_norm`` (0 = none), ``accumulate_steps``.
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
* ``distributed``: call ``jax.distributed.initialize()`` (multi-host).
"""

from __future__ import annotations

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
        memory_efficient=False,
    ))
    c.dataset = ConfigDict(dict(
        name="context_shapes", data_dir=config_dict.placeholder(str),
        manual_dir=config_dict.placeholder(str), train_split="train", eval_split="validation",
        num_classes=5, ignore_index=255, crop_size=(128, 128), ratio_range=(0.5, 2.0),
        scale=config_dict.placeholder(tuple), cat_max_ratio=0.75, photometric=True,
        shuffle_buffer=1000, eval_scale=config_dict.placeholder(tuple),
        eval_canvas=config_dict.placeholder(tuple),
    ))
    c.optimizer = ConfigDict(dict(
        name="sgd", learning_rate=0.01, momentum=0.9, nesterov=False, b1=0.9, b2=0.999,
        weight_decay=5e-4, schedule="poly", power=0.9, min_lr=1e-4, warmup_steps=0,
        clip_norm=0.0, accumulate_steps=1,
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
    c.distributed = False
    return c


# Reference recipes: (crop, num_steps, batch_size, eval mode) per dataset, as mmsegmentation's
# ``_base_`` schedules (Cityscapes 512x1024 80k, 769x769 with slide eval; ADE20K 512x512 160k).
DATASETS = {
    "cityscapes": dict(num_classes=19, crop_size=(512, 1024), scale=(2048, 1024), num_steps=80_000,
                       batch_size=8, eval_mode="whole", eval_split="validation"),
    "cityscapes769": dict(num_classes=19, crop_size=(769, 769), scale=(2049, 1025),
                          num_steps=80_000, batch_size=8, eval_mode="slide",
                          eval_split="validation"),
    "ade20k": dict(num_classes=150, crop_size=(512, 512), scale=(2048, 512), num_steps=160_000,
                   batch_size=16, eval_mode="whole", eval_split="validation",
                   eval_scale=(2048, 512), eval_canvas=(1024, 1024)),
}


def recipe(model_kind: str, arg: str = "") -> ConfigDict:
    """A reference recipe: ``recipe("danet", "r101,cityscapes")`` -> DANet-R101-D8 on Cityscapes.

    ``arg`` is comma-separated: ``r18|r50|r101``, ``d8|d16`` and a dataset
    (``cityscapes``: 512x1024 crops, 80k steps, batch 8, whole-image evaluation;
    ``cityscapes769``: 769x769 crops, 80k, batch 8, sliding-window evaluation;
    ``ade20k``: 512x512, 160k, batch 16); defaults ``r50,d8,cityscapes``
    (``attention_unet`` takes only the dataset). SGD lr 0.01, momentum 0.9,
    weight decay 5e-4, poly (power 0.9, min 1e-4), auxiliary FCN loss 0.4 (the
    model's terms), as mmsegmentation's recipes.
    """
    depth, stride, dataset = "r50", "d8", "cityscapes"
    for part in filter(None, (p.strip() for p in arg.split(","))):
        if part in ("r18", "r50", "r101"):
            depth = part
        elif part in ("d8", "d16"):
            stride = part
        elif part in DATASETS:
            dataset = part
        else:
            raise ValueError(
                f"config argument {part!r} is not a depth (r18, r50, r101), a stride (d8, d16) "
                f"or a dataset {sorted(DATASETS)}"
            )
    d = DATASETS[dataset]
    c = default_config()
    c.model.name = model_kind if model_kind.startswith("attention_unet") else \
        f"{model_kind}_{depth}_{stride}"
    c.dataset.name = "cityscapes" if dataset.startswith("cityscapes") else dataset
    c.dataset.num_classes = d["num_classes"]
    c.dataset.crop_size = d["crop_size"]
    c.dataset.scale = d["scale"]
    c.dataset.eval_split = d["eval_split"]
    # images of mixed sizes: evaluated resized as mmsegmentation's test pipeline, on one canvas
    c.dataset.eval_scale = d.get("eval_scale")
    c.dataset.eval_canvas = d.get("eval_canvas")
    c.num_steps = d["num_steps"]
    c.batch_size = d["batch_size"]
    c.eval_batch_size = 8
    c.eval.mode = d["eval_mode"]
    c.eval.crop_size = d["crop_size"]
    c.eval.stride = (513, 513) if dataset == "cityscapes769" else (341, 682)
    c.eval_every = c.num_steps // 10
    return c
