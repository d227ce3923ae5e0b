"""What attnzoo knows of each dataset it reads (no TensorFlow here): the TFDS builder behind it,
which features hold the image and the mask, how raw mask values map to train ids, the class
names, and which files a user must place in ``manual_dir`` (and where to get them).

| name | TFDS builder | classes | splits (train, eval) | manual files |
|---|---|---|---|---|
| ``context_shapes`` | attnzoo's, generated | 9 | train, validation | none |
| ``cityscapes`` | TFDS ``cityscapes/semantic_segmentation`` | 19 train ids, 255 ignored | train, validation (test) | ``leftImg8bit_trainvaltest.zip``, ``gtFine_trainvaltest.zip`` |
| ``ade20k`` | attnzoo's, from ``ADEChallengeData2016.zip`` | 150 (0 -> ignore) | train, validation | ``ADEChallengeData2016.zip`` |
| ``voc12aug`` | attnzoo's ``PascalVoc2012`` | 21 (255: boundaries) | train_aug, validation (train) | ``VOCtrainval_11-May-2012.tar``, ``benchmark.tgz`` (SBD) |
| ``pascal_context`` | attnzoo's ``PascalContext`` | 60 (0: background) | train, validation | ``VOCtrainval_03-May-2010.tar``, ``trainval_merged.json`` |
| ``pascal_context_59`` | same | 59 (background -> ignore) | train, validation | same |
| ``coco_stuff164k`` | attnzoo's ``CocoStuff164k`` | 171 of the 182 ids | train, validation | ``train2017.zip``, ``val2017.zip``, ``stuffthingmaps_trainval2017.zip`` |
| ``coco_stuff10k`` | attnzoo's ``CocoStuff10k`` | 171 (0: unlabeled -> ignore) | train, test | ``cocostuff-10k-v1.1.zip`` |
| ``oxford_iiit_pet`` | TFDS ``oxford_iiit_pet`` | 3: background, pet, border | train, test | ``images.tar.gz``, ``annotations.tar.gz`` (else downloaded) |
| ``oxford_iiit_pet_binary`` | same | 2: background, pet (border ignored) | train, test | same |
| ``folder`` | attnzoo's, from a folder | ``classes.txt`` or ``num_classes`` | the folder's | the folder |

ADE20K does not go through TFDS's ``scene_parse150``: that builder reads the
2017 *instance* annotations (``annotations_instance.tar``: the red channel
holds one of 100 instance-challenge categories, the green an instance id),
not the 150-class scene-parsing labels that mmsegmentation and the DANet /
CCNet papers evaluate on. The ``ade20k`` builder reads the scene-parsing
release (the same zip mmsegmentation uses) and reduces the zero label as
mmsegmentation does: 0 ("other") -> ignore, class k -> k - 1.

Pascal VOC, Pascal Context and COCO-Stuff are read as mmsegmentation's dataset converters
(``tools/dataset_converters``) prepare them, from the official archives, with nothing written
beside them: ``voc12aug``'s ``train_aug`` split is VOC 2012 train (its own masks) and every SBD
image outside VOC 2012 val (SBD's ``GTcls`` masks), 10,582 images; Pascal Context's masks are
drawn from ``trainval_merged.json`` (each image's annotations in the file's order, a later one
over an earlier one) and numbered by the sorted ids of its 59 classes and background;
COCO-Stuff keeps the raw ids in its masks and maps the 171 used of the 182 to train ids here
(``COCO_STUFF_TRAIN_IDS``). The class names and colours are mmsegmentation's (``classes.json``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from attnzoo.data import context_shapes


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset as attnzoo reads it.

    ``label_map`` maps raw mask values to train ids; values not in it become
    the ignore index (255). ``None`` keeps the values as they are.
    ``manual_files`` are ``(file name, where to get it)`` pairs expected in
    ``manual_dir``; ``download`` says whether TFDS can fetch them itself
    when no ``manual_dir`` is given. ``builder`` names the TFDS builder:
    ``"attnzoo:<class>"`` (one of :mod:`attnzoo.data.builders`) or
    ``"tfds:<name>"``. ``counts`` are the official archives' split sizes,
    which :func:`attnzoo.data.prepare` compares with what it read.
    """

    name: str
    classes: tuple[str, ...]
    builder: str = ""
    image_key: str = "image"
    mask_key: str = "segmentation_mask"
    label_map: Mapping[int, int] | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    manual_files: tuple[tuple[str, str], ...] = ()
    download: bool = False
    palette: tuple[tuple[int, int, int], ...] | None = None
    counts: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def class_colours(self, num_classes: int) -> np.ndarray:
        """``(num_classes, 3)`` uint8 colours of the classes in pictures: ``palette`` when it
        has ``num_classes`` entries, otherwise :func:`attnzoo.viz.palette`'s."""
        if self.palette is not None and len(self.palette) == num_classes:
            return np.array(self.palette, np.uint8)
        from attnzoo import viz

        return viz.palette(num_classes)

    def lookup_table(self, ignore_index: int = 255) -> list[int] | None:
        """``label_map`` as a 256-entry table (raw uint8 value -> train id), or ``None``."""
        if self.label_map is None:
            return None
        return [self.label_map.get(v, ignore_index) for v in range(256)]


CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
# cityscapesScripts' label id -> train id for the 19 evaluated classes; every other id is ignored.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                        24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# Oxford-IIIT Pet trimaps: 1 pet, 2 background, 3 border ("not classified" in the paper).
PET_TRIMAP = {1: 1, 2: 0, 3: 2}
PET_BINARY = {1: 1, 2: 0}
PET_FILES = (
    ("images.tar.gz", "https://www.robots.ox.ac.uk/~vgg/data/pets/ (images)"),
    ("annotations.tar.gz", "https://www.robots.ox.ac.uk/~vgg/data/pets/ (groundtruth data)"),
)

# mmsegmentation's class names and colours of VOC, Pascal Context (60: with background) and
# COCO-Stuff, as its dataset classes' METAINFO states them (tests/test_datasets.py compares)
MMSEG_CLASSES: dict[str, dict[str, list]] = json.loads(
    Path(__file__).with_name("classes.json").read_text())


def _classes(name: str, first: int = 0) -> dict[str, tuple]:
    entry = MMSEG_CLASSES[name]
    return {"classes": tuple(entry["classes"][first:]),
            "palette": tuple(tuple(c) for c in entry["palette"][first:])}


# COCO-Stuff's stuffthingmaps hold 0-based ids 0..181 (80 things among ids 0..90, 91 stuff
# classes 91..181) and 255; 11 thing ids are never used (COCO's unlabelled detection ids). The
# 171 used ids, in order, are the train ids 0..170 (mmseg's coco_stuff164k.py); 255 and any
# unused id are ignored. The 10k release's .mat masks count from 1 (0: unlabeled).
COCO_STUFF_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_TRAIN_IDS = {raw: i for i, raw in enumerate(
    r for r in range(182) if r not in COCO_STUFF_UNUSED)}

VOC2012_FILES = (
    ("VOCtrainval_11-May-2012.tar",
     "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"),
    ("benchmark.tgz", "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/"
                      "semantic_contours/benchmark.tgz (SBD)"),
)
CONTEXT_FILES = (
    ("VOCtrainval_03-May-2010.tar",
     "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar"),
    ("trainval_merged.json", "https://codalabuser.blob.core.windows.net/public/"
                             "trainval_merged.json (Pascal Context in Detail)"),
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("context_shapes", context_shapes.CLASSES, "attnzoo:ContextShapes",
                    palette=context_shapes.CLASS_COLOURS),
        DatasetSpec(
            "cityscapes", CITYSCAPES_CLASSES, "tfds:cityscapes/semantic_segmentation",
            image_key="image_left",
            mask_key="segmentation_label", label_map=CITYSCAPES_TRAIN_IDS,
            manual_files=(
                ("leftImg8bit_trainvaltest.zip",
                 "https://www.cityscapes-dataset.com/downloads/ (registration needed)"),
                ("gtFine_trainvaltest.zip",
                 "https://www.cityscapes-dataset.com/downloads/ (registration needed)"),
            ),
            counts={"train": 2975, "validation": 500, "test": 1525},
        ),
        DatasetSpec(
            "ade20k", ADE20K_CLASSES, "attnzoo:Ade20k", mask_key="annotation",
            label_map={k: k - 1 for k in range(1, 151)},
            manual_files=(("ADEChallengeData2016.zip",
                           "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"),),
            counts={"train": 20210, "validation": 2000},
        ),
        DatasetSpec("voc12aug", builder="attnzoo:PascalVoc2012", train_split="train_aug",
                    manual_files=VOC2012_FILES, **_classes("voc12aug"),
                    counts={"train": 1464, "validation": 1449, "train_aug": 10582}),
        DatasetSpec("pascal_context", builder="attnzoo:PascalContext", manual_files=CONTEXT_FILES,
                    **_classes("pascal_context"), counts={"train": 4998, "validation": 5105}),
        DatasetSpec("pascal_context_59", builder="attnzoo:PascalContext",
                    label_map={k: k - 1 for k in range(1, 60)}, manual_files=CONTEXT_FILES,
                    **_classes("pascal_context", first=1),
                    counts={"train": 4998, "validation": 5105}),
        DatasetSpec("coco_stuff164k", builder="attnzoo:CocoStuff164k",
                    label_map=COCO_STUFF_TRAIN_IDS, **_classes("coco_stuff"),
                    manual_files=(
                        ("train2017.zip", "http://images.cocodataset.org/zips/train2017.zip"),
                        ("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip"),
                        ("stuffthingmaps_trainval2017.zip",
                         "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
                         "stuffthingmaps_trainval2017.zip")),
                    counts={"train": 118287, "validation": 5000}),
        DatasetSpec("coco_stuff10k", builder="attnzoo:CocoStuff10k", eval_split="test",
                    label_map={raw + 1: i for raw, i in COCO_STUFF_TRAIN_IDS.items()},
                    **_classes("coco_stuff"),
                    manual_files=(("cocostuff-10k-v1.1.zip",
                                   "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/"
                                   "cocostuffdataset/cocostuff-10k-v1.1.zip"),),
                    counts={"train": 9000, "test": 1000}),
        DatasetSpec("oxford_iiit_pet", ("background", "pet", "border"), "tfds:oxford_iiit_pet",
                    label_map=PET_TRIMAP, eval_split="test", manual_files=PET_FILES,
                    download=True),
        DatasetSpec("oxford_iiit_pet_binary", ("background", "pet"), "tfds:oxford_iiit_pet",
                    label_map=PET_BINARY, eval_split="test", manual_files=PET_FILES,
                    download=True),
        # manual_dir is the folder itself; SegmentationFolder checks its layout while preparing
        DatasetSpec("folder", (), "attnzoo:SegmentationFolder", eval_split="val"),
    )
}


def spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; ValueError naming the known ones otherwise."""
    from attnzoo._checks import check_choice

    check_choice(name, tuple(DATASETS), "name")
    return DATASETS[name]
