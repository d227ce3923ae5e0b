"""TFDS builders of attnzoo (TensorFlow is imported here and in ``pipeline``, nowhere else).

``ContextShapes`` is generated; ``Ade20k``, ``PascalVoc2012`` (with SBD's
augmentation), ``PascalContext``, ``CocoStuff164k`` and ``CocoStuff10k`` read
the official archives from ``manual_dir`` (nothing is downloaded or written
beside them); ``SegmentationFolder`` turns a user's folder of images and
masks into a TFDS dataset so that it goes through the same input path as
every other. Cityscapes and Oxford-IIIT Pet use TFDS's own builders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from attnzoo._checks import same_stems
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


class _Archives(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A dataset read from its official archives in ``manual_dir``: JPEG images, PNG masks of
    class ids and the file names; ``DATASET``'s classes in the metadata."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    DATASET = ""  # the attnzoo dataset (attnzoo.data.datasets) whose classes these are
    HOMEPAGE = ""

    def _info(self) -> tfds.core.DatasetInfo:
        from attnzoo.data.datasets import DATASETS

        return tfds.core.DatasetInfo(
            builder=self, description=self.__doc__, homepage=self.HOMEPAGE,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "segmentation_mask": tfds.features.Image(shape=(None, None, 1),
                                                         encoding_format="png"),
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "segmentation_mask"),
            metadata=tfds.core.MetadataDict(classes=list(DATASETS[self.DATASET].classes)),
        )


def _one(root: Path, pattern: str, archive: str) -> Path:
    """The one path under ``root`` (an extracted archive) that matches ``pattern``."""
    found = sorted(root.glob(pattern))
    if len(found) != 1:
        raise FileNotFoundError(f"{archive}: expected one {pattern} inside it, found "
                                f"{[str(p) for p in found] or 'none'}; is it the official archive?")
    return found[0]


def _stems(path: Path) -> list[str]:
    """The image stems listed in ``path`` (one per line, as VOC's and COCO-Stuff's lists)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _mask_png(path: Path) -> np.ndarray:
    """A PNG's stored values (a palette PNG's indices), ``(H, W, 1)`` uint8."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("L", "P"):
            raise ValueError(f"mask {path} has mode {image.mode!r}; expected a single-channel PNG")
        return np.asarray(image, np.uint8)[..., None]


def _mat_field(path: Path, *fields: str) -> np.ndarray:
    """A MATLAB (v5) file's array at ``fields`` (a struct's field after the variable's name),
    as uint8 ``(H, W, 1)``; values above 255 are an error naming the file."""
    from scipy.io import loadmat

    value = loadmat(str(path), squeeze_me=True, struct_as_record=False)[fields[0]]
    for field in fields[1:]:
        value = getattr(value, field)
    value = np.asarray(value)
    if value.ndim != 2 or value.size and (value.min() < 0 or value.max() > 255):
        raise ValueError(f"{path}: {'.'.join(fields)} is not a 2-D mask of values 0..255 "
                         f"(shape {value.shape})")
    return value.astype(np.uint8)[..., None]


class PascalVoc2012(_Archives):
    """Pascal VOC 2012 segmentation with SBD's augmentation, as mmsegmentation's ``voc12aug``.

    Splits: ``train`` (VOC 2012's 1,464), ``validation`` (1,449) and ``train_aug``
    (10,582: VOC train with its own masks, and every image of SBD's train and val lists that
    is in neither VOC list, with SBD's ``GTcls.Segmentation`` mask). 21 classes with 0 the
    background; VOC's masks mark object boundaries 255 (ignored), SBD's have none.
    """

    DATASET, HOMEPAGE = "voc12aug", "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
    VOC, SBD = "VOCtrainval_11-May-2012.tar", "benchmark.tgz"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place {VOC} and {SBD} (SBD) in manual_dir."

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        voc_root = Path(dl_manager.extract(dl_manager.manual_dir / self.VOC))
        sbd_root = Path(dl_manager.extract(dl_manager.manual_dir / self.SBD))
        voc = _one(voc_root, "*/VOC2012", self.VOC)
        sbd = _one(sbd_root, "*/dataset", self.SBD)
        lists = voc / "ImageSets" / "Segmentation"
        train, val = _stems(lists / "train.txt"), _stems(lists / "val.txt")
        own = {stem: voc / "SegmentationClass" / f"{stem}.png" for stem in train + val}
        seen = set(train) | set(val)
        extra = sorted({stem for name in ("train.txt", "val.txt")
                        for stem in _stems(sbd / name)} - seen)
        aug = {stem: sbd / "cls" / f"{stem}.mat" for stem in extra}
        images = voc / "JPEGImages"
        return {"train": self._generate_examples(images, {s: own[s] for s in train}),
                "validation": self._generate_examples(images, {s: own[s] for s in val}),
                "train_aug": self._generate_examples(
                    images, {**{s: own[s] for s in train}, **aug})}

    def _generate_examples(self, images: Path, masks: Mapping[str, Path]):
        for stem, mask in masks.items():
            label = (_mat_field(mask, "GTcls", "Segmentation") if mask.suffix == ".mat"
                     else _mask_png(mask))
            yield stem, {"image": images / f"{stem}.jpg", "segmentation_mask": label,
                         "file_name": f"{stem}.jpg"}


# Pascal Context's 59 classes and background among the 459 category ids of
# trainval_merged.json; a mask's class index is the id's rank in this sorted tuple
CONTEXT_IDS = (0, 2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98,
               104, 105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260,
               284, 295, 296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416,
               420, 424, 427, 440, 445, 454, 458)


def rle_counts(counts: str | list[int]) -> list[int]:
    """The run lengths of a COCO run-length encoding: a list as it is, or the compressed string
    of the COCO API (each run in 5-bit groups offset by 48, a ``0x20`` bit continuing it, the
    top group's ``0x10`` bit the sign; from the fourth run on, a difference to the run two
    before, as the COCO API's ``rleFrString``)."""
    if not isinstance(counts, str):
        return [int(c) for c in counts]
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            group = ord(counts[pos]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos, shift = pos + 1, shift + 5
            if not more and group & 0x10:
                value -= 1 << shift
        runs.append(value + runs[-2] if len(runs) > 2 else value)
    return runs


def rle_decode(segmentation: Mapping) -> np.ndarray:
    """The ``(H, W)`` bool mask of a COCO-style ``{"size": [H, W], "counts": ...}``: runs
    alternate between 0 and 1, starting with 0, over the pixels in column-major order."""
    h, w = segmentation["size"]
    runs = rle_counts(segmentation["counts"])
    if sum(runs) != h * w:
        raise ValueError(f"run-length mask of size {h}x{w} has {sum(runs)} pixels")
    values = np.zeros(len(runs), bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape(w, h).T


class PascalContext(_Archives):
    """Pascal Context on VOC 2010 (4,998 training and 5,105 validation images), as
    mmsegmentation's ``pascal_context.py`` converter draws it from ``trainval_merged.json``: each
    image's segmentation annotations painted in the file's order (a later one over an earlier),
    then each category id replaced by its rank among the 60 kept ids (``CONTEXT_IDS``; 0 is the
    background). The ``pascal_context_59`` dataset reads the same masks with the background
    ignored.
    """

    DATASET, HOMEPAGE = "pascal_context", "https://cs.stanford.edu/~roozbeh/pascal-context/"
    VOC, JSON = "VOCtrainval_03-May-2010.tar", "trainval_merged.json"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place {VOC} and {JSON} in manual_dir."

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        voc = _one(Path(dl_manager.extract(dl_manager.manual_dir / self.VOC)), "*/VOC2010",
                   self.VOC)
        path = Path(dl_manager.manual_dir) / self.JSON
        with open(path) as f:
            detail = json.load(f)
        annotations: dict[int, list[dict]] = {}
        for ann in detail["annos_segmentation"]:
            annotations.setdefault(ann["image_id"], []).append(ann)
        return {split: self._generate_examples(
                    voc / "JPEGImages", [im for im in detail["images"] if im["phase"] == phase],
                    annotations, path)
                for split, phase in (("train", "train"), ("validation", "val"))}

    def _generate_examples(self, images: Path, entries: list[dict],
                           annotations: Mapping[int, list[dict]], source: Path):
        ids = np.asarray(CONTEXT_IDS)
        for entry in entries:
            mask = np.zeros((entry["height"], entry["width"]), np.int64)
            for ann in annotations.get(entry["image_id"], ()):
                mask[rle_decode(ann["segmentation"])] = ann["category_id"]
            index = np.searchsorted(ids, mask)
            outside = np.unique(mask[ids[np.minimum(index, len(ids) - 1)] != mask])
            if outside.size:
                raise ValueError(f"{source}: image {entry['file_name']} holds category ids "
                                 f"{outside.tolist()} outside Pascal Context's 60")
            stem = Path(entry["file_name"]).stem
            yield stem, {"image": images / entry["file_name"],
                         "segmentation_mask": index.astype(np.uint8)[..., None],
                         "file_name": entry["file_name"]}


class CocoStuff164k(_Archives):
    """COCO-Stuff 164k: COCO 2017's 118,287 training and 5,000 validation images with the
    stuff+things maps (0-based ids of 182 classes, 255 unlabeled), kept raw; the
    ``coco_stuff164k`` dataset maps the 171 used ids to train ids."""

    DATASET, HOMEPAGE = "coco_stuff164k", "https://github.com/nightrome/cocostuff"
    ARCHIVES = {"train": "train2017.zip", "validation": "val2017.zip"}
    MAPS = "stuffthingmaps_trainval2017.zip"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place train2017.zip, val2017.zip and {MAPS} in manual_dir."

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        maps = Path(dl_manager.extract(dl_manager.manual_dir / self.MAPS))
        out = {}
        for split, archive in self.ARCHIVES.items():
            folder = archive.removesuffix(".zip")
            images = _one(Path(dl_manager.extract(dl_manager.manual_dir / archive)),
                          f"**/{folder}", archive)
            out[split] = self._generate_examples(images, _one(maps, f"**/{folder}", self.MAPS))
        return out

    def _generate_examples(self, images: Path, masks: Path):
        for image in sorted(images.glob("*.jpg")):
            mask = masks / f"{image.stem}.png"
            if not mask.is_file():
                raise FileNotFoundError(f"{self.MAPS} has no {mask.parent.name}/{mask.name} "
                                        f"for {image.name}")
            yield image.stem, {"image": image, "segmentation_mask": _mask_png(mask),
                               "file_name": image.name}


class CocoStuff10k(_Archives):
    """COCO-Stuff 10k (v1.1): 9,000 training and 1,000 test images of COCO 2014, masks the
    ``S`` array of each ``annotations/<stem>.mat`` (1-based ids of 182 classes, 0 unlabeled),
    kept raw; the ``coco_stuff10k`` dataset maps them to COCO-Stuff 164k's train ids."""

    DATASET, HOMEPAGE = "coco_stuff10k", "https://github.com/nightrome/cocostuff10k"
    ZIP = "cocostuff-10k-v1.1.zip"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place {ZIP} in manual_dir."

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        lists = _one(Path(dl_manager.extract(dl_manager.manual_dir / self.ZIP)),
                     "**/imageLists", self.ZIP)
        return {split: self._generate_examples(lists.parent, _stems(lists / f"{split}.txt"))
                for split in ("train", "test")}

    def _generate_examples(self, root: Path, stems: list[str]) -> Iterator:
        for stem in stems:
            yield stem, {"image": root / "images" / f"{stem}.jpg",
                         "segmentation_mask": _mat_field(root / "annotations" / f"{stem}.mat", "S"),
                         "file_name": f"{stem}.jpg"}


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
    digest = _content_digest(root, f"{classes!r} {ignore_index}")
    return FolderConfig(name=f"{folder_key(root)}_{digest}", version="1.0.0",
                        folder=str(root),
                        classes=classes, ignore_index=ignore_index,
                        description=f"images and masks under {root}")


def folder_key(root: Path) -> str:
    """The folder's name and a hash of its absolute path (prepared datasets of two folders
    never mix)."""
    slug = re.sub(r"[^a-zA-Z0-9_]", "_", root.name).strip("_").lower() or "folder"
    return f"{slug}_{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"


def _content_digest(root: Path, settings: str) -> str:
    """A hash of the folder's files (names, sizes, modification times) and ``settings`` (the
    class names and ignore index it is read with)."""
    h = hashlib.sha1(settings.encode())
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
        shared = same_stems(files, show=lambda path: path.name)
        if shared:
            raise ValueError(f"folder dataset: images of one name in {images}: "
                             + "; ".join(" and ".join(names) for names in shared)
                             + " (each image's mask is <stem>.png: keep one of each)")
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
