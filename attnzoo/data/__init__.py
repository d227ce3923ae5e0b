"""Datasets and input pipelines. The only package of attnzoo that imports TensorFlow,
and only when one of these functions is called (``import attnzoo.data`` is cheap).

Datasets (see :mod:`attnzoo.data.datasets`): ``context_shapes`` (built in,
generated), ``cityscapes``, ``ade20k``, ``voc12aug``, ``pascal_context``,
``pascal_context_59``, ``coco_stuff164k``, ``coco_stuff10k``,
``oxford_iiit_pet``, ``oxford_iiit_pet_binary`` and ``folder`` (your own
images and masks).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from attnzoo.data.datasets import DATASETS, DatasetSpec, spec
from attnzoo.data.tf_loader import import_tensorflow
from attnzoo.pixels import IMAGENET_MEAN, IMAGENET_STD, denormalize_image, normalize_image

log = logging.getLogger("attnzoo")


def builder(name: str, data_dir: str | Path | None = None, *, manual_dir: str | Path | None = None,
            num_classes: int | None = None, ignore_index: int = 255) -> Any:
    """The TFDS builder of dataset ``name`` (a key of ``DATASETS``), not yet prepared.

    ``data_dir`` defaults to TFDS's own (``~/tensorflow_datasets``). The
    ``folder`` dataset needs ``manual_dir`` (the folder) and takes its class
    names from ``manual_dir/classes.txt`` or ``num_classes``.
    """
    import_tensorflow()
    import tensorflow_datasets as tfds

    from attnzoo.data import builders

    kind, _, target = spec(name).builder.partition(":")
    data_dir = None if data_dir is None else str(data_dir)
    if kind == "tfds":
        return tfds.builder(target, data_dir=data_dir)
    if name != "folder":
        return getattr(builders, target)(data_dir=data_dir)
    if manual_dir is None:
        raise ValueError("the folder dataset needs manual_dir: the folder holding images/ and masks/")
    return builders.SegmentationFolder(
        data_dir=data_dir, config=builders.folder_config(manual_dir, num_classes, ignore_index))


def prepare(name: str, data_dir: str | Path | None = None, *,
            manual_dir: str | Path | None = None, num_classes: int | None = None,
            ignore_index: int = 255) -> Any:
    """The builder of ``name``, prepared: generated, or read from the files in ``manual_dir``
    (checked first: a missing file is named with where to get it). A dataset prepared
    before is only opened."""
    import_tensorflow()
    import tensorflow_datasets as tfds

    b = builder(name, data_dir, manual_dir=manual_dir, num_classes=num_classes,
                ignore_index=ignore_index)
    if b.is_prepared():
        return b
    if name == "folder":
        from attnzoo.data.builders import folder_key

        versions = Path(b.data_dir).parents[1]  # <data_dir>/segmentation_folder/<config>/<version>
        key = folder_key(Path(manual_dir).expanduser().resolve())
        if any(p.name.startswith(key + "_") for p in versions.glob("*") if p.is_dir()):
            log.warning("folder dataset %s changed since it was prepared (files added, removed "
                        "or modified); preparing it again", manual_dir)
    s = spec(name)
    if s.manual_files and (manual_dir is not None or not s.download):
        missing = [(f, where) for f, where in s.manual_files
                   if manual_dir is None or not (Path(manual_dir) / f).exists()]
        if missing:
            raise FileNotFoundError(
                f"dataset {name!r} is prepared from files you download yourself; missing in "
                f"manual_dir={str(manual_dir) if manual_dir else '(not set)'}: "
                + "; ".join(f"{f} (from {where})" for f, where in missing)
                + ". Set config.dataset.manual_dir to the folder holding them.")
    config = None if manual_dir is None else tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    b.download_and_prepare(download_config=config)
    _check_counts(name, b)
    return b


def _check_counts(name: str, b: Any) -> None:
    """Warn, once per split, when a prepared split holds another number of examples than the
    official archives give (an incomplete download, or a subset on purpose)."""
    for split, expected in spec(name).counts.items():
        got = b.info.splits[split].num_examples if split in b.info.splits else 0
        if got != expected:
            log.warning("dataset %s: split %s holds %d examples; the official files give %d "
                        "(an incomplete or partial download?)", name, split, got, expected)


__all__ = ["DATASETS", "DatasetSpec", "IMAGENET_MEAN", "IMAGENET_STD", "builder",
           "denormalize_image", "normalize_image", "prepare", "spec"]
