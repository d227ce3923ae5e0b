"""Config-driven input: the TFDS dataset a config names -> global batches on a device mesh.

``config`` here is the ``dataset`` part of an engine config (see
``attnzoo.engine.config``): ``name``, ``data_dir``, ``manual_dir``,
``train_split``, ``eval_split`` (unset: the dataset's own,
:func:`dataset_split`),
``num_classes``, ``ignore_index``,
``crop_size``, ``ratio_range``, ``scale``, ``cat_max_ratio``, ``photometric``,
``shuffle_buffer``, ``eval_scale``, ``eval_canvas`` and ``eval_label_canvas``
(see ``pipeline.eval_dataset``; needed for datasets of mixed image sizes), ``class_names``
(the model's classes, recorded by a conversion: a Hugging Face model's ``id2label``; unset,
the dataset's own). Every
process reads its own shard; batches come back as global ``jax.Array``s
sharded over the mesh's ``data`` axis, images normalised with the model's ``pixel_mean`` /
``pixel_std`` (``config.model``'s, which the engine passes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from attnzoo.pixels import IMAGENET_MEAN, IMAGENET_STD
from attnzoo.sharding import local_batch_size, prefetch_to_mesh


def prepared_builder(config: Mapping[str, Any]):
    """The dataset's TFDS builder, prepared (generated or read from ``manual_dir``) if needed."""
    from attnzoo import data

    return data.prepare(config["name"], config.get("data_dir"), manual_dir=config.get("manual_dir"),
                        num_classes=config["num_classes"], ignore_index=config["ignore_index"])


def dataset_split(config: Mapping[str, Any], field: str) -> str:
    """The TFDS split ``field`` (``"train_split"`` or ``"eval_split"``) of ``config``: as set,
    or the dataset's own (:class:`attnzoo.data.DatasetSpec`: VOC trains on ``train_aug``,
    COCO-Stuff 10k and Oxford-IIIT Pet evaluate on ``test``)."""
    from attnzoo import data

    return config.get(field) or getattr(data.spec(config["name"]), field)


def check_splits(config: Mapping[str, Any], builder: Any) -> None:
    """ValueError naming the field unless ``train_split`` and ``eval_split`` (TFDS split
    strings, e.g. ``validation[:16]``) name splits of the prepared dataset."""
    splits = sorted(builder.info.splits)
    for field in ("train_split", "eval_split"):
        value = dataset_split(config, field)
        if value.split("[")[0] not in splits:
            raise ValueError(f"dataset.{field}={value!r}: dataset {config['name']!r} "
                             f"has the splits {splits}")


def class_names(config: Mapping[str, Any], builder: Any) -> list[str]:
    """``class_names`` if the config records them, else the dataset's; ValueError if they
    disagree with ``num_classes``."""
    from attnzoo import data

    names = list(config.get("class_names") or data.spec(config["name"]).classes
                 or builder.info.metadata["classes"])
    if len(names) != config["num_classes"]:
        raise ValueError(
            f"dataset.num_classes={config['num_classes']} but dataset {config['name']!r} has "
            f"{len(names)} classes: {names}"
        )
    return names


def _features(config: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline arguments that come from the dataset's spec: feature keys, label map."""
    from attnzoo import data
    from attnzoo.data import pipeline

    spec = data.spec(config["name"])
    table = spec.lookup_table(config["ignore_index"])
    return {"image_key": spec.image_key, "mask_key": spec.mask_key,
            "label_map": None if table is None else pipeline.lookup(table)}


def train_batches(config: Mapping[str, Any], *, batch_size: int, mesh: Mesh, seed: int,
                  start_step: int = 0, builder: Any = None,
                  pixel_mean: Sequence[float] = IMAGENET_MEAN,
                  pixel_std: Sequence[float] = IMAGENET_STD) -> Iterator[dict[str, jax.Array]]:
    """Endless augmented global batches; ``start_step`` resumes the exact stream of a run."""
    from attnzoo.data import pipeline

    builder = builder or prepared_builder(config)
    local = local_batch_size(batch_size, mesh)
    import tensorflow_datasets as tfds

    # no TFDS auto-cache: a run stops inside a pass by design, and a cache left half read makes
    # TensorFlow warn on every run; the pipeline repeats and shuffles the records itself
    ds = builder.as_dataset(split=dataset_split(config, "train_split"), shuffle_files=False,
                            read_config=tfds.ReadConfig(try_autocache=False))
    ds = pipeline.train_dataset(
        ds, batch_size=local, crop_size=tuple(config["crop_size"]),
        num_classes=config["num_classes"], seed=seed,
        ratio_range=tuple(config["ratio_range"]),
        scale=tuple(config["scale"]) if config.get("scale") else None,
        cat_max_ratio=config["cat_max_ratio"], ignore_index=config["ignore_index"],
        photometric=config["photometric"], process_index=jax.process_index(),
        process_count=jax.process_count(), **_features(config),
        shuffle_buffer=config["shuffle_buffer"], skip=start_step * local,
        mean=tuple(pixel_mean), std=tuple(pixel_std),
    )
    return prefetch_to_mesh(pipeline.as_numpy(ds), mesh)


def num_eval_batches(builder: Any, split: str, batch_size: int) -> int:
    """Batches per process that cover the largest process shard of ``split``."""
    n = builder.info.splits[split].num_examples
    largest_shard = math.ceil(n / jax.process_count())
    return math.ceil(largest_shard / (batch_size // jax.process_count()))


def eval_batches(config: Mapping[str, Any], *, batch_size: int, mesh: Mesh,
                 split: str | None = None, builder: Any = None,
                 pixel_mean: Sequence[float] = IMAGENET_MEAN,
                 pixel_std: Sequence[float] = IMAGENET_STD) -> Iterator[dict[str, jax.Array]]:
    """One pass over the evaluation split in global batches of ``batch_size``.

    The last batches are padded with images of zeros whose labels are all
    ``ignore_index`` (they count for nothing), so that every process runs the
    same number of steps and every batch divides over the devices.
    """
    from attnzoo.data import pipeline

    builder = builder or prepared_builder(config)
    split = split or dataset_split(config, "eval_split")
    local = local_batch_size(batch_size, mesh, "eval_batch_size")
    ds = pipeline.eval_dataset(
        builder.as_dataset(split=split, shuffle_files=False), batch_size=local,
        scale=_pair(config.get("eval_scale")), canvas=_pair(config.get("eval_canvas")),
        label_canvas=_pair(config.get("eval_label_canvas")),
        ignore_index=config["ignore_index"], process_index=jax.process_index(),
        process_count=jax.process_count(), **_features(config),
        mean=tuple(pixel_mean), std=tuple(pixel_std),
    )
    steps = num_eval_batches(builder, split, batch_size)

    def padded() -> Iterator[dict[str, np.ndarray]]:
        it, template = pipeline.as_numpy(ds), None
        for _ in range(steps):
            batch = next(it, None)
            if batch is None and template is None:
                raise ValueError(f"split {split!r} has no examples for process {jax.process_index()}")
            if batch is None:
                batch = {k: v[:0] for k, v in template.items()}
            template = batch
            pad = local - len(batch["label"])
            if pad:  # images of zeros, labels all ignored, sizes 1 (they count for nothing)
                fill = {"image": 0, "label": config["ignore_index"]}
                batch = {k: np.concatenate([v, np.full((pad, *v.shape[1:]), fill.get(k, 1),
                                                       v.dtype)]) for k, v in batch.items()}
            yield batch

    return prefetch_to_mesh(padded(), mesh)


def _pair(value: Any) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


__all__ = ["class_names", "eval_batches", "num_eval_batches", "prepared_builder", "train_batches"]
