"""TFDS builders of attnzoo (TensorFlow is imported here and in ``pipeline``, nowhere else).

``ContextShapes`` is generated; ``Ade20k`` reads the scene-parsing zip from
``manual_dir``; ``SegmentationFolder`` turns a user's folder of images and
masks into a TFDS dataset so that it goes through the same input path as
every other. Cityscapes and Oxford-IIIT Pet use TFDS's own builders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path

import numpy as np

from attnzoo.data import context_shapes as cs
from attnzoo.data.tf_loader import import_tensorflow

import_tensorflow()
import tensorflow_datasets as tfds  # noqa: E402  (after TensorFlow's quiet import)

from attnzoo.data.datasets import ADE20K_CLASSES
from attnzoo.viz import to_rgb8


class ContextShapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic segmentation that needs long-range context (see ``context_shapes.py``).

    Splits: ``train`` (3000 images) and ``validation`` (500), 128x128, nine
    classes. Generated from ``SEED``; no download.
    """

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"1.0.0": "First release.", "2.0.0": "Nine classes (a shape's kind and the image's mode; "
                     "the marker's mode); mode marker 20x20 (was 12x12)."}
    SEED = 20261122
    SPLITS = {"train": (0, 3000), "validation": (1, 500)}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=cs.__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(cs.SIZE, cs.SIZE, 3)),
                "segmentation_mask": tfds.features.Image(shape=(cs.SIZE, cs.SIZE, 1)),
                "mode": tfds.features.ClassLabel(num_classes=2),
            }),
            supervised_keys=("image", "segmentation_mask"),
            metadata=tfds.core.MetadataDict(classes=list(cs.CLASSES)),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {name: self._generate_examples(split, n) for name, (split, n) in self.SPLITS.items()}

    def _generate_examples(self, split: int, n: int):
        for i in range(n):
            image, mask, mode = cs.render(self.SEED, split, i)
            yield i, {"image": image, "segmentation_mask": mask[..., None].astype(np.uint8),
                      "mode": mode}


class Ade20k(tfds.core.GeneratorBasedBuilder):
    """ADE20K scene parsing (SceneParsing / ADEChallengeData2016): 20,210 training and 2,000
    validation images, masks of 150 classes with 0 for "other" (the pipeline reduces the
    zero label: 0 -> ignore, k -> k - 1)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    ZIP = "ADEChallengeData2016.zip"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Place {ZIP} (http://data.csail.mit.edu/places/ADEchallenge/{ZIP}) in manual_dir."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "annotation": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "annotation"),
            homepage="http://sceneparsing.csail.mit.edu/",
            metadata=tfds.core.MetadataDict(classes=list(ADE20K_CLASSES)),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = Path(dl_manager.extract(dl_manager.manual_dir / self.ZIP)) / "ADEChallengeData2016"
        return {split: self._generate_examples(root / "images" / folder,
                                               root / "annotations" / folder)
                for split, folder in (("train", "training"), ("validation", "validation"))}

    def _generate_examples(self, images: Path, annotations: Path):
        for image in sorted(images.glob("*.jpg")):
            yield image.stem, {"image": image, "annotation": annotations / f"{image.stem}.png",
                               "file_name": image.name}


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
    """A folder of images and masks: ``folder`` (the root), ``classes`` (names, one per id)
    and the ``ignore_index`` masks may also hold."""

    folder: str = ""
    classes: tuple[str, ...] = ()
    ignore_index: int = 255


def folder_config(folder: str | os.PathLike, num_classes: int | None = None,
                  ignore_index: int = 255) -> FolderConfig:
    """The :class:`FolderConfig` of ``folder``: class names from its ``classes.txt`` (one per
    line) or ``class_0 ... class_{num_classes-1}``. The config's name is :func:`folder_key`
    and a hash of the folder's contents (every file's name, size and modification time under
    ``images/`` and ``masks/``, and ``classes.txt``): a changed folder is a new dataset,
    prepared again, never the old one read silently."""
    root = Path(folder).expanduser().resolve()
    names_file = root / "classes.txt"
    if names_file.is_file():
        classes = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
        if num_classes is not None and num_classes != len(classes):
            raise ValueError(f"num_classes={num_classes} but {names_file} names {len(classes)} "
                             f"classes: {list(classes)}")
    elif num_classes:
        classes = tuple(f"class_{i}" for i in range(num_classes))
    else:
        raise ValueError(f"folder dataset {root}: give num_classes or write {names_file} "
                         "(one class name per line, in id order)")
    return FolderConfig(name=f"{folder_key(root)}_{_content_digest(root)}", version="1.0.0",
                        folder=str(root),
                        classes=classes, ignore_index=ignore_index,
                        description=f"images and masks under {root}")


def folder_key(root: Path) -> str:
    """The folder's name and a hash of its absolute path (prepared datasets of two folders
    never mix)."""
    slug = re.sub(r"[^a-zA-Z0-9_]", "_", root.name).strip("_").lower() or "folder"
    return f"{slug}_{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"


def _content_digest(root: Path) -> str:
    h = hashlib.sha1()
    files = [root / "classes.txt"] + sorted(p for sub in ("images", "masks")
                                            for p in (root / sub).rglob("*") if p.is_file())
    for path in files:
        if path.is_file():
            st = path.stat()
            h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:8]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class SegmentationFolder(tfds.core.GeneratorBasedBuilder):
    """A user's segmentation data as a TFDS dataset.

    Layout: ``images/<split>/<stem>.<jpg|png|...>`` and
    ``masks/<split>/<stem>.png`` (or, without split folders, ``images/`` and
    ``masks/`` -> one split ``train``); masks are 8-bit single-channel PNGs
    (mode ``L`` or ``P``) whose values are class ids, or ``ignore_index``.
    Preparing checks every pair: an unreadable image, a missing mask, a mask
    whose size differs from its image, or a mask holding ids outside the
    class list stops with an error naming the file.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS: list[FolderConfig] = []

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "segmentation_mask"),
            metadata=tfds.core.MetadataDict(classes=list(self.builder_config.classes)),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = Path(self.builder_config.folder)
        images, masks = root / "images", root / "masks"
        for d in (images, masks):
            if not d.is_dir():
                raise FileNotFoundError(f"folder dataset: expected the directory {d} "
                                        "(images/ and masks/ with matching file stems)")
        splits = sorted(p.name for p in images.iterdir() if p.is_dir())
        if not splits:
            return {"train": self._generate_examples(images, masks)}
        return {s: self._generate_examples(images / s, masks / s) for s in splits}

    def _generate_examples(self, images: Path, masks: Path):
        config = self.builder_config
        allowed = np.zeros(256, bool)
        allowed[:len(config.classes)] = True
        allowed[config.ignore_index] = True
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"folder dataset: no images ({', '.join(IMAGE_SUFFIXES)}) "
                                    f"in {images}")
        for path in files:
            mask_path = masks / f"{path.stem}.png"
            if not mask_path.is_file():
                raise FileNotFoundError(f"folder dataset: {path} has no mask; expected {mask_path}")
            image = _read(path, "image")
            mask_image = _read(mask_path, "mask")
            if mask_image.mode not in ("L", "P"):
                raise ValueError(f"folder dataset: mask {mask_path} has mode {mask_image.mode!r}; "
                                 "masks must be 8-bit single-channel PNGs (mode L or P) of class ids")
            if mask_image.size != image.size:
                raise ValueError(f"folder dataset: mask {mask_path} is {mask_image.size[0]}x"
                                 f"{mask_image.size[1]} (w x h) but its image {path} is "
                                 f"{image.size[0]}x{image.size[1]}")
            mask = np.asarray(mask_image, np.uint8)
            bad = np.unique(mask[~allowed[mask]])
            if bad.size:
                raise ValueError(
                    f"folder dataset: mask {mask_path} holds ids {bad.tolist()} outside the "
                    f"{len(config.classes)} classes {list(config.classes)} (and ignore_index "
                    f"{config.ignore_index})")
            yield f"{images.name}/{path.stem}", {
                "image": to_rgb8(image, f"folder dataset: image {path}"),
                "segmentation_mask": mask[..., None], "file_name": path.name}


def _read(path: Path, what: str):
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"folder dataset: {what} {path} is not a readable image ({err})") from err
    return image
