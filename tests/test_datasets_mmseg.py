"""Pascal VOC 2012 + SBD, Pascal Context (60 / 59) and COCO-Stuff (164k / 10k), prepared from
small archives the tests write in the official layouts and formats (tar and zip trees, SBD's
``GTcls`` .mat struct, Pascal Context's ``trainval_merged.json`` with COCO run-length masks,
COCO-Stuff's PNG maps and 10k .mat files); every label checked pixel for pixel against mappings
written here as mmsegmentation's dataset converters state them; and converted mmseg checkpoints of
each dataset's classes evaluated end to end on them with the published protocol."""

import io
import json
import logging
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("importlib_resources")

from PIL import Image  # noqa: E402
from scipy.io import savemat  # noqa: E402

from attnzoo import data  # noqa: E402
from attnzoo.data import builders, datasets, input as data_input  # noqa: E402
from attnzoo.sharding import make_mesh  # noqa: E402
from dataset_files import (  # noqa: E402
    add_to_tar, assert_some_row, blocks, dataset_config, first, image_like, jpeg, png)


def examples(builder, split):
    """``file name -> (image, mask)`` of a prepared split."""
    return {ex["file_name"].decode(): (ex["image"], ex["segmentation_mask"][..., 0])
            for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def mapped(mask: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """``mask`` through ``table`` (values not in it: 255)."""
    return np.vectorize(lambda v: table.get(int(v), 255))(mask).astype(np.int64)


def eval_labels(name, tmp_path, manual, canvas=(64, 64)):
    """The evaluation split's labels of dataset ``name`` through the engine's input path, each
    at its original size on a ``canvas``."""
    config = dataset_config(name, tmp_path, manual_dir=str(manual), eval_canvas=canvas)
    builder = data_input.prepared_builder(config)
    assert data_input.class_names(config, builder) == list(datasets.spec(name).classes)
    val, _ = first(data_input.eval_batches(config, batch_size=8, mesh=make_mesh(),
                                           builder=builder))
    return val["label"]


def test_class_names_and_colours_are_mmsegs():
    """``classes.json`` holds mmseg's METAINFO of its VOC, Pascal Context and COCO-Stuff
    datasets; the 59-class names are the 60 without the background."""
    mmseg_support = pytest.importorskip("mmseg_support")
    mmseg_support.install_mmcv_ops()
    from mmseg import datasets as mm

    for name, cls in (("voc12aug", mm.PascalVOCDataset), ("pascal_context", mm.PascalContextDataset),
                      ("pascal_context_59", mm.PascalContextDataset59),
                      ("coco_stuff164k", mm.COCOStuffDataset), ("coco_stuff10k", mm.COCOStuffDataset)):
        spec = datasets.spec(name)
        assert spec.classes == tuple(cls.METAINFO["classes"]), name
        assert spec.palette == tuple(tuple(c) for c in cls.METAINFO["palette"]), name


# --- Pascal VOC 2012 + SBD -------------------------------------------------------------------

VOC_TRAIN, VOC_VAL = ["2007_000032", "2007_000039"], ["2007_000033"]
SBD_TRAIN, SBD_VAL = ["2007_000032", "2008_000002", "2007_000033"], ["2008_000003"]


def voc_png(mask: np.ndarray) -> bytes:
    """A VOC ``SegmentationClass`` PNG: palette mode, the indices the class ids."""
    image = Image.fromarray(mask, "P")
    image.putpalette([int(v) for v in np.random.default_rng(0).integers(0, 256, 768)])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def sbd_mat(mask: np.ndarray) -> bytes:
    """An SBD ``cls/<stem>.mat``: the struct ``GTcls`` with ``Segmentation``, ``Boundaries``
    (a 20 x 1 cell) and ``CategoriesPresent``."""
    boundaries = np.empty((20, 1), object)
    for k in range(20):
        boundaries[k, 0] = (mask == k + 1).astype(np.uint8)
    buf = io.BytesIO()
    savemat(buf, {"GTcls": {"Segmentation": mask, "Boundaries": boundaries,
                            "CategoriesPresent": np.unique(mask[mask > 0])[:, None]}})
    return buf.getvalue()


def lines(names):
    return "".join(f"{n}\n" for n in names).encode()


@pytest.fixture(scope="module")
def voc_manual(tmp_path_factory):
    """``VOCtrainval_11-May-2012.tar`` (2 train, 1 val image with masks; every image in
    JPEGImages) and SBD's ``benchmark.tgz`` (one image in VOC train, one in VOC val, two in
    neither), images of four sizes."""
    root = tmp_path_factory.mktemp("voc_manual")
    rng = np.random.default_rng(5)
    stems = sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))
    sizes = {stem: (24 + 8 * i, 32 - 4 * i) for i, stem in enumerate(stems)}
    voc_masks, sbd_masks = {}, {}
    with tarfile.open(root / "VOCtrainval_11-May-2012.tar", "w") as voc:
        for stem in stems:
            add_to_tar(voc, f"VOCdevkit/VOC2012/JPEGImages/{stem}.jpg",
                       jpeg(rng.integers(0, 256, (*sizes[stem], 3), dtype=np.uint8)))
        for split, names in (("train", VOC_TRAIN), ("val", VOC_VAL),
                             ("trainval", VOC_TRAIN + VOC_VAL)):
            add_to_tar(voc, f"VOCdevkit/VOC2012/ImageSets/Segmentation/{split}.txt", lines(names))
        for stem in VOC_TRAIN + VOC_VAL:
            mask = blocks(rng, *sizes[stem], [0, 1, 15, 20])
            mask[::7] = 255  # VOC's object boundaries
            voc_masks[stem] = mask
            add_to_tar(voc, f"VOCdevkit/VOC2012/SegmentationClass/{stem}.png", voc_png(mask))
    with tarfile.open(root / "benchmark.tgz", "w:gz") as sbd:
        for split, names in (("train", SBD_TRAIN), ("val", SBD_VAL)):
            add_to_tar(sbd, f"benchmark_RELEASE/dataset/{split}.txt", lines(names))
            for stem in names:
                mask = blocks(rng, *sizes[stem], [0, 3, 7, 12])
                sbd_masks[stem] = mask
                add_to_tar(sbd, f"benchmark_RELEASE/dataset/cls/{stem}.mat", sbd_mat(mask))
                add_to_tar(sbd, f"benchmark_RELEASE/dataset/img/{stem}.jpg",
                           jpeg(image_like(rng, mask)))
    return root, voc_masks, sbd_masks


def test_voc12aug_is_voc_train_and_sbd_outside_voc_val(voc_manual, tmp_path, caplog):
    """mmseg's voc_aug.py: train_aug = VOC train (its masks) + SBD train and val minus VOC
    train and val (SBD's masks); VOC val for evaluation, its 255 boundaries ignored."""
    manual, voc_masks, sbd_masks = voc_manual
    with caplog.at_level(logging.WARNING, logger="attnzoo"):
        builder = data.prepare("voc12aug", tmp_path / "tfds", manual_dir=manual)
    expected = {"train": {s: voc_masks[s] for s in VOC_TRAIN},
                "validation": {s: voc_masks[s] for s in VOC_VAL},
                "train_aug": {**{s: voc_masks[s] for s in VOC_TRAIN},
                              "2008_000002": sbd_masks["2008_000002"],
                              "2008_000003": sbd_masks["2008_000003"]}}
    for split, masks in expected.items():
        got = examples(builder, split)
        assert sorted(got) == sorted(f"{s}.jpg" for s in masks), split
        for stem, mask in masks.items():
            image, label = got[f"{stem}.jpg"]
            assert image.shape == (*mask.shape, 3)
            np.testing.assert_array_equal(label, mask)
    assert "split train_aug holds 4 examples; the official files give 10582" in caplog.text

    labels = eval_labels("voc12aug", tmp_path, manual)
    assert_some_row(labels[:1], voc_masks["2007_000033"])
    config = dataset_config("voc12aug", tmp_path, manual_dir=str(manual), crop_size=(16, 16),
                            scale=(64, 16))
    train, _ = first(data_input.train_batches(config, batch_size=8, mesh=make_mesh(), seed=0,
                                              builder=builder))
    assert set(np.unique(train["label"])) <= {0, 1, 3, 7, 12, 15, 20, 255}


# --- Pascal Context --------------------------------------------------------------------------

# mmseg's pascal_context.py: the 60 category ids kept (background 0 and the 59 classes), in its
# order; a mask's class index is the id's rank after sorting
MMSEG_CONTEXT_IDS = [0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158,
                     159, 416, 33, 162, 420, 454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445,
                     31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355, 85, 347, 220,
                     349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115]


def runs_of(mask: np.ndarray) -> list[int]:
    """The run lengths of ``mask`` in column-major order, starting with a run of zeros."""
    runs, value, n = [], False, 0
    for v in mask.T.ravel().astype(bool):
        if v == value:
            n += 1
        else:
            runs.append(n)
            value, n = v, 1
    return runs + [n]


def coco_rle_string(mask: np.ndarray) -> str:
    """The COCO API's ``rleToString`` of ``mask``."""
    runs, chars = runs_of(mask), []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
    return "".join(chars)


def test_run_length_masks_decode_as_the_coco_api_encodes_them():
    rng = np.random.default_rng(3)
    for shape, density in (((7, 5), 0.5), ((40, 61), 0.1), ((33, 2000), 0.002), ((5, 4), 0.0)):
        mask = rng.random(shape) < density
        mask[0, 0] = density > 0.3  # a first run of length 0 in some cases
        segmentation = {"size": list(shape), "counts": coco_rle_string(mask)}
        np.testing.assert_array_equal(builders.rle_decode(segmentation), mask)
        np.testing.assert_array_equal(
            builders.rle_decode({"size": list(shape), "counts": runs_of(mask)}), mask)
    with pytest.raises(ValueError, match="size 3x3 has 8 pixels"):
        builders.rle_decode({"size": [3, 3], "counts": [4, 4]})


@pytest.fixture(scope="module")
def context_manual(tmp_path_factory):
    """``VOCtrainval_03-May-2010.tar`` and ``trainval_merged.json`` (2 train, 1 val image;
    overlapping annotations of kept categories, interleaved between images in the file, as
    compressed strings and as count lists)."""
    root = tmp_path_factory.mktemp("context_manual")
    rng = np.random.default_rng(7)
    entries = [(2008_000002, "train", (30, 40)), (2008_000003, "train", (36, 28)),
               (2008_000007, "val", (44, 32))]
    images, per_image, masks = [], [], {}
    with tarfile.open(root / "VOCtrainval_03-May-2010.tar", "w") as voc:
        for image_id, phase, (h, w) in entries:
            name = f"{str(image_id)[:4]}_{str(image_id)[4:]}.jpg"
            images.append({"image_id": image_id, "file_name": name, "height": h, "width": w,
                           "phase": phase})
            add_to_tar(voc, f"VOCdevkit/VOC2010/JPEGImages/{name}",
                       jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
            painted, anns = np.zeros((h, w), np.int64), []
            for k, category in enumerate(rng.choice([2, 9, 115, 259, 458, 44], 4, replace=False)):
                y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
                region = np.zeros((h, w), bool)
                region[y:y + h // 2, x:x + w // 2] = True
                painted[region] = category
                counts = coco_rle_string(region) if k % 2 else runs_of(region)
                anns.append({"image_id": image_id, "category_id": int(category), "iscrowd": 0,
                             "segmentation": {"size": [h, w], "counts": counts}})
            per_image.append(anns)
            masks[name] = np.searchsorted(sorted(MMSEG_CONTEXT_IDS), painted)
    # the images' annotations interleaved in the file, each image's in its painting order
    interleaved = [ann for k in range(4) for anns in per_image for ann in anns[k:k + 1]]
    for i, ann in enumerate(interleaved):
        ann["id"] = i + 1
    detail = {"info": {"description": "PASCAL in Detail (test)"}, "images": images,
              "annos_segmentation": interleaved, "categories": [], "parts": [],
              "annos_occlusion": [], "annos_boundary": []}
    (root / "trainval_merged.json").write_text(json.dumps(detail))
    return root, masks


def test_pascal_context_masks_are_drawn_from_the_json_in_its_order(context_manual, tmp_path):
    """mmseg's pascal_context.py: each annotation painted over the ones before it, the ids
    ranked among the 60 kept; pascal_context reads them as they are (background a class),
    pascal_context_59 with the background ignored and the others one lower."""
    manual, masks = context_manual
    builder = data.prepare("pascal_context", tmp_path / "tfds", manual_dir=manual)
    train, val = examples(builder, "train"), examples(builder, "validation")
    assert sorted(train) == ["2008_000002.jpg", "2008_000003.jpg"]
    assert sorted(val) == ["2008_000007.jpg"]
    for name, (image, label) in {**train, **val}.items():
        assert image.shape == (*masks[name].shape, 3)
        np.testing.assert_array_equal(label, masks[name])
    assert set(np.unique(masks["2008_000007.jpg"])) > {0}

    val60 = eval_labels("pascal_context", tmp_path, manual)
    assert_some_row(val60[:1], masks["2008_000007.jpg"])
    val59 = eval_labels("pascal_context_59", tmp_path, manual)
    assert_some_row(val59[:1], mapped(masks["2008_000007.jpg"], {k: k - 1 for k in range(1, 60)}))


def test_pascal_context_refuses_a_category_outside_the_60(tmp_path):
    root = tmp_path / "manual"
    root.mkdir()
    with tarfile.open(root / "VOCtrainval_03-May-2010.tar", "w") as voc:
        add_to_tar(voc, "VOCdevkit/VOC2010/JPEGImages/2008_000002.jpg",
                   jpeg(np.zeros((4, 4, 3), np.uint8)))
    region = np.ones((4, 4), bool)
    (root / "trainval_merged.json").write_text(json.dumps({
        "images": [{"image_id": 2008000002, "file_name": "2008_000002.jpg", "height": 4,
                    "width": 4, "phase": "train"}],
        "annos_segmentation": [{"id": 1, "image_id": 2008000002, "category_id": 3,
                                "segmentation": {"size": [4, 4], "counts": runs_of(region)}}]}))
    with pytest.raises(ValueError, match=r"image 2008_000002.jpg holds category ids \[3\]"):
        data.prepare("pascal_context", tmp_path / "tfds", manual_dir=root)


# --- COCO-Stuff ------------------------------------------------------------------------------

# mmseg's coco_stuff164k.py, some of its pairs: stuffthingmaps id -> train id; the ids it leaves
# out (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90: never used) and 255 are ignored
COCO_164K = {0: 0, 10: 10, 12: 11, 26: 24, 27: 25, 30: 26, 91: 80, 181: 170}
COCO_164K_VALUES = [*COCO_164K, 11, 90, 255]
# mmseg's coco_stuff10k.py then reduce_zero_label: .mat id -> train id (0 unlabeled: ignored)
COCO_10K = {1: 0, 11: 10, 13: 11, 27: 24, 28: 25, 31: 26, 92: 80, 182: 170}
COCO_10K_VALUES = [*COCO_10K, 0, 12, 91]


@pytest.fixture(scope="module")
def coco164k_manual(tmp_path_factory):
    """``train2017.zip``, ``val2017.zip`` and ``stuffthingmaps_trainval2017.zip`` with 2
    training and 1 validation image."""
    root = tmp_path_factory.mktemp("coco164k_manual")
    rng = np.random.default_rng(11)
    files = {"train2017": ["000000000009", "000000000025"], "val2017": ["000000000139"]}
    masks = {}
    with zipfile.ZipFile(root / "stuffthingmaps_trainval2017.zip", "w") as maps:
        for folder, stems in files.items():
            with zipfile.ZipFile(root / f"{folder}.zip", "w") as images:
                for i, stem in enumerate(stems):
                    mask = blocks(rng, 24 + 8 * i, 32, COCO_164K_VALUES)
                    masks[stem] = mask
                    images.writestr(f"{folder}/{stem}.jpg", jpeg(image_like(rng, mask)))
                    maps.writestr(f"{folder}/{stem}.png", png(mask))
    return root, masks


def test_coco_stuff164k_maps_the_171_used_ids(coco164k_manual, tmp_path):
    manual, masks = coco164k_manual
    builder = data.prepare("coco_stuff164k", tmp_path / "tfds", manual_dir=manual)
    got = {**examples(builder, "train"), **examples(builder, "validation")}
    assert sorted(got) == sorted(f"{stem}.jpg" for stem in masks)
    for stem, mask in masks.items():
        np.testing.assert_array_equal(got[f"{stem}.jpg"][1], mask)  # kept raw
    labels = eval_labels("coco_stuff164k", tmp_path, manual)
    assert_some_row(labels[:1], mapped(masks["000000000139"], COCO_164K))
    assert len(datasets.COCO_STUFF_TRAIN_IDS) == 171


@pytest.fixture(scope="module")
def coco10k_manual(tmp_path_factory):
    """``cocostuff-10k-v1.1.zip``: images/, annotations/ (.mat files holding ``S`` and
    ``names``), imageLists/ with 2 training and 1 test image."""
    root = tmp_path_factory.mktemp("coco10k_manual")
    rng = np.random.default_rng(13)
    lists = {"train": ["COCO_train2014_000000000077", "COCO_train2014_000000000078"],
             "test": ["COCO_train2014_000000000139"]}
    masks = {}
    with zipfile.ZipFile(root / "cocostuff-10k-v1.1.zip", "w") as z:
        for split, stems in lists.items():
            z.writestr(f"imageLists/{split}.txt", lines(stems))
            for i, stem in enumerate(stems):
                mask = blocks(rng, 32, 24 + 4 * i, COCO_10K_VALUES)
                masks[stem] = mask
                z.writestr(f"images/{stem}.jpg", jpeg(image_like(rng, mask)))
                buf = io.BytesIO()
                savemat(buf, {"S": mask.astype(np.uint16),
                              "names": np.array(["unlabeled", "person"], dtype=object)})
                z.writestr(f"annotations/{stem}.mat", buf.getvalue())
        z.writestr("imageLists/all.txt", lines(lists["train"] + lists["test"]))
    return root, masks


def test_coco_stuff10k_reads_the_mat_masks_and_counts_from_one(coco10k_manual, tmp_path, capsys):
    """Prepared by the command, as a user would (``python -m attnzoo.prepare``)."""
    from attnzoo import prepare

    manual, masks = coco10k_manual
    with pytest.raises(FileNotFoundError, match="cocostuff-10k-v1.1.zip .from http"):
        prepare.main(["--dataset", "coco_stuff10k", "--manual-dir", str(tmp_path),
                      "--data-dir", str(tmp_path / "tfds")])
    assert prepare.main(["--dataset", "coco_stuff10k", "--manual-dir", str(manual),
                         "--data-dir", str(tmp_path / "tfds")]) == {"train": 2, "test": 1}
    assert "coco_stuff10k: 171 classes; train 2, test 1 images; prepared in" in capsys.readouterr().out
    builder = data.builder("coco_stuff10k", tmp_path / "tfds")
    got = {**examples(builder, "train"), **examples(builder, "test")}
    assert sorted(got) == sorted(f"{stem}.jpg" for stem in masks)
    for stem, mask in masks.items():
        np.testing.assert_array_equal(got[f"{stem}.jpg"][1], mask)
    labels = eval_labels("coco_stuff10k", tmp_path, manual)
    assert_some_row(labels[:1], mapped(masks["COCO_train2014_000000000139"], COCO_10K))


# --- converted checkpoints, evaluated with the published protocol ------------------------------

@pytest.mark.slow  # ~20 s each: mmseg's model built in a process of its own, then evaluated
@pytest.mark.parametrize("stem,manual", [
    ("fcn_hr18s_4xb4-20k_voc12aug-512x512", "voc_manual"),
    ("fcn_hr18s_4xb4-40k_pascal-context-480x480", "context_manual"),
    ("fcn_hr18s_4xb4-40k_pascal-context-59-480x480", "context_manual"),
    ("fcn_hr18s_4xb4-80k_coco-stuff164k-512x512", "coco164k_manual"),
    ("fcn_hr18s_4xb4-20k_coco-stuff10k-512x512", "coco10k_manual")])
def test_a_converted_checkpoint_evaluates_with_the_published_protocol(stem, manual, request,
                                                                      tmp_path):
    """``python -m attnzoo.convert`` of an mmseg checkpoint of the dataset's classes, then
    ``evaluate`` on the prepared dataset: the run carries the dataset's protocol (test resize,
    whole or sliding windows, the evaluation split, labels at their original size) and the table
    has every class. The checkpoint is mmseg's FCN on HRNetV2-W18-small (its published VOC
    config, random weights) with the dataset's classes: the lightest model that converts
    under each dataset's config stem."""
    pytest.importorskip("mmseg_support")
    from attnzoo import engine, evaluate
    from attnzoo.convert.__main__ import main as convert
    from attnzoo.convert.mmseg import PROTOCOLS, mmseg_recipe

    checkpoint = tmp_path / "checkpoint.pth"
    num_classes = PROTOCOLS[mmseg_recipe(stem).protocol]["num_classes"]
    # mmseg's model is built in a process of its own: importing torchvision after TensorFlow
    # (which this file's builders loaded) crashes the interpreter
    subprocess.run([sys.executable, "-c", (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); import helpers, mmseg_support; "
        "mmseg_support.install_mmcv_ops(); from mmseg.registry import MODELS; "
        "from mmseg.utils import register_all_modules; register_all_modules(); "
        "cfg, _ = mmseg_support.model_config('fcn_hr18s_4xb4-20k_voc12aug-512x512'); "
        "cfg.decode_head.num_classes = int(sys.argv[2]); "
        "model = helpers.randomize_torch(MODELS.build(cfg).eval()); "
        "torch.save({'state_dict': model.state_dict()}, sys.argv[3])"),
        str(Path(__file__).parent), str(num_classes), str(checkpoint)], check=True)
    assert convert(["--source", f"mmseg:{stem}", "--checkpoint", str(checkpoint),
                    "--out", str(tmp_path / "run")]) == 0
    protocol = PROTOCOLS[mmseg_recipe(stem).protocol]
    _, _, config = engine.restore(tmp_path / "run")
    spec = datasets.spec(protocol["dataset"])
    assert (config.dataset.name, config.dataset.num_classes) == (spec.name, len(spec.classes))
    assert tuple(config.dataset.eval_scale) == protocol["scale"]
    assert (config.eval.mode, tuple(config.eval.stride)) == (protocol["mode"], protocol["stride"])

    result = evaluate.main(["--workdir", str(tmp_path / "run"), "--data-dir",
                            str(tmp_path / "tfds"), "--manual-dir",
                            str(request.getfixturevalue(manual)[0])])
    assert result["classes"] == list(spec.classes) and result["split"] == spec.eval_split
    assert len(result["IoU"]) == len(spec.classes) and 0 <= result["mIoU"] <= 100
