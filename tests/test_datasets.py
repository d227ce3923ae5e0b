"""Cityscapes, ADE20K, Oxford-IIIT Pet and folder datasets, prepared from fake files that the
tests write in each dataset's official layout, read through the engine's input path
(``attnzoo.data.input``) onto 8 simulated devices."""

import tarfile
import zipfile

import jax
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("importlib_resources")

from PIL import Image  # noqa: E402

from attnzoo import data  # noqa: E402
from attnzoo.data import datasets, input as data_input  # noqa: E402
from attnzoo.sharding import make_mesh  # noqa: E402
from dataset_files import (  # noqa: E402
    add_to_tar, assert_some_row, blocks, dataset_config, first, image_like, jpeg, png)


# --- Cityscapes ------------------------------------------------------------------------------

CITY_IDS = [0, 7, 8, 26, 33, 4, 24]  # unlabeled, road, sidewalk, car, bicycle, static, person


@pytest.fixture(scope="module")
def cityscapes_manual(tmp_path_factory):
    """``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` with 2 train, 1 val and
    1 test image at Cityscapes' 1024x2048."""
    root = tmp_path_factory.mktemp("cityscapes_manual")
    rng = np.random.default_rng(0)
    masks = {}
    with zipfile.ZipFile(root / "leftImg8bit_trainvaltest.zip", "w") as images, \
            zipfile.ZipFile(root / "gtFine_trainvaltest.zip", "w") as labels:
        for split, city, n in (("train", "aachen", 2), ("val", "lindau", 1), ("test", "bonn", 1)):
            for i in range(n):
                stem = f"{city}_{i:06d}_000019"
                mask = blocks(rng, 1024, 2048, CITY_IDS)
                masks[stem] = mask
                images.writestr(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
                                png(image_like(rng, mask)))
                labels.writestr(f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png", png(mask))
    return root, masks


def test_missing_cityscapes_files_are_named_with_their_source(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "gtFine_trainvaltest.zip").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="leftImg8bit_trainvaltest.zip .from https://www.cityscapes"):
        data.prepare("cityscapes", tmp_path / "tfds", manual_dir=tmp_path / "manual")
    with pytest.raises(FileNotFoundError, match="manual_dir"):
        data.prepare("ade20k", tmp_path / "tfds")


def test_cityscapes_through_tfds_builder_to_train_ids(cityscapes_manual, tmp_path):
    manual, masks = cityscapes_manual
    config = dataset_config("cityscapes", tmp_path, manual_dir=str(manual), crop_size=(256, 512),
                            scale=(2048, 1024), ratio_range=(0.5, 1.0))
    builder = data_input.prepared_builder(config)
    assert builder.name == "cityscapes"
    assert {s: builder.info.splits[s].num_examples for s in ("train", "validation", "test")} == \
        {"train": 2, "validation": 1, "test": 1}
    assert data_input.class_names(config, builder) == list(datasets.CITYSCAPES_CLASSES)

    mesh = make_mesh()
    train, arrays = first(data_input.train_batches(config, batch_size=8, mesh=mesh, seed=0,
                                                   builder=builder))
    assert train["image"].shape == (8, 256, 512, 3) and train["image"].dtype == np.float32
    assert train["label"].shape == (8, 256, 512) and train["label"].dtype == np.int32
    assert set(np.unique(train["label"])) <= {0, 1, 13, 18, 11, 255}
    assert arrays["image"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    assert len(arrays["image"].addressable_shards) == 8

    config.eval_split = "validation"
    val, _ = first(data_input.eval_batches(config, batch_size=8, mesh=mesh, builder=builder))
    assert val["label"].shape == (8, 1024, 2048)
    lut = np.full(256, 255)
    for label_id, train_id in datasets.CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    np.testing.assert_array_equal(val["label"][0], lut[masks["lindau_000000_000019"]])
    assert (val["label"][1:] == 255).all()  # padding of the last batch counts for nothing


# --- ADE20K ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ade_manual(tmp_path_factory):
    """``ADEChallengeData2016.zip`` with 3 training and 2 validation images of mixed sizes."""
    root = tmp_path_factory.mktemp("ade_manual")
    rng = np.random.default_rng(1)
    masks = {}
    with zipfile.ZipFile(root / "ADEChallengeData2016.zip", "w") as z:
        z.writestr("ADEChallengeData2016/objectInfo150.txt", "Idx\tRatio\tTrain\tVal\tName\n")
        for split, folder, sizes in (("train", "training", [(64, 96), (96, 64), (80, 80)]),
                                     ("val", "validation", [(64, 128), (96, 72)])):
            for i, (h, w) in enumerate(sizes, 1):
                stem = f"ADE_{split}_{i:08d}"
                mask = blocks(rng, h, w, [0, 1, 2, 13, 150], n=8)
                masks[stem] = mask
                z.writestr(f"ADEChallengeData2016/images/{folder}/{stem}.jpg",
                           jpeg(image_like(rng, mask)))
                z.writestr(f"ADEChallengeData2016/annotations/{folder}/{stem}.png", png(mask))
    return root, masks


def test_ade20k_reduces_the_zero_label_and_batches_mixed_sizes(ade_manual, tmp_path):
    manual, masks = ade_manual
    config = dataset_config("ade20k", tmp_path, manual_dir=str(manual), crop_size=(64, 64),
                            scale=(128, 64), eval_canvas=(128, 128))
    builder = data_input.prepared_builder(config)
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["validation"].num_examples == 2
    assert len(data_input.class_names(config, builder)) == 150

    mesh = make_mesh()
    train, _ = first(data_input.train_batches(config, batch_size=8, mesh=mesh, seed=0,
                                              builder=builder))
    assert train["label"].shape == (8, 64, 64)
    assert set(np.unique(train["label"])) <= {0, 1, 12, 149, 255}

    val, _ = first(data_input.eval_batches(config, batch_size=8, mesh=mesh, builder=builder))
    assert val["image"].shape == (8, 128, 128, 3) and val["label"].shape == (8, 128, 128)
    for stem in ("ADE_val_00000001", "ADE_val_00000002"):
        raw = masks[stem].astype(int)
        assert_some_row(val["label"][:2], np.where(raw == 0, 255, raw - 1))
    assert (val["image"][:2, 96:] == 0).all()  # padded with zeros after normalisation
    assert (val["label"][2:] == 255).all()

    # mmseg's protocol: labels at their original size, with each image's sizes
    config.eval_label_canvas = (160, 160)
    val, _ = first(data_input.eval_batches(config, batch_size=8, mesh=mesh, builder=builder))
    assert val["image"].shape == (8, 128, 128, 3) and val["label"].shape == (8, 160, 160)
    for stem in ("ADE_val_00000001", "ADE_val_00000002"):
        raw = masks[stem].astype(int)
        assert_some_row(val["label"][:2], np.where(raw == 0, 255, raw - 1))
    got = {tuple(s): tuple(o) for s, o in zip(np.asarray(val["size"][:2]),
                                               np.asarray(val["label_size"][:2]))}
    originals = {masks[stem].shape for stem in ("ADE_val_00000001", "ADE_val_00000002")}
    assert set(got.values()) == originals
    assert all(size == original for size, original in got.items())  # both fit the canvas


# --- Oxford-IIIT Pet -------------------------------------------------------------------------

PET_URL = "https://thor.robots.ox.ac.uk/~vgg/data/pets/"


@pytest.fixture(scope="module")
def pet_manual(tmp_path_factory):
    """``images.tar.gz`` and ``annotations.tar.gz`` (trimaps, trainval.txt, test.txt) with
    3 trainval and 2 test images."""
    root = tmp_path_factory.mktemp("pet_manual")
    rng = np.random.default_rng(2)
    names = {"trainval": ["Bengal_1", "pug_2", "samoyed_3"], "test": ["Bengal_4", "pug_5"]}
    trimaps = {}

    with tarfile.open(root / "images.tar.gz", "w:gz") as images, \
            tarfile.open(root / "annotations.tar.gz", "w:gz") as annotations:
        for split, stems in names.items():
            lines = []
            for i, stem in enumerate(stems):
                h, w = 48 + 16 * i, 64
                trimap = blocks(rng, h, w, [1, 2, 3], n=4)
                trimaps[stem] = trimap
                add_to_tar(images, f"images/{stem}.jpg", jpeg(image_like(rng, trimap)))
                add_to_tar(annotations, f"annotations/trimaps/{stem}.png", png(trimap))
                lines.append(f"{stem} {i + 1} {1 + i % 2} 1")
            add_to_tar(annotations, f"annotations/{split}.txt", ("\n".join(lines) + "\n").encode())
    return root, trimaps


@pytest.fixture
def pet_checksums(pet_manual, monkeypatch):
    """Register the fake archives' checksums in place of the real ones (which only the real
    archives match): the rest of TFDS's manual-download path runs as it does for a user."""
    from tensorflow_datasets.core.download import checksums

    root, _ = pet_manual
    builder_cls = type(data.builder("oxford_iiit_pet"))
    infos = {}
    for name in ("images.tar.gz", "annotations.tar.gz"):
        info = checksums.compute_url_info(root / name)
        infos[PET_URL + name] = checksums.UrlInfo(size=info.size, checksum=info.checksum,
                                                  filename=name)
    assert set(infos) == set(builder_cls.url_infos)
    monkeypatch.setattr(builder_cls, "url_infos", infos)


@pytest.mark.parametrize("name, lut", [("oxford_iiit_pet", {1: 1, 2: 0, 3: 2}),
                                       ("oxford_iiit_pet_binary", {1: 1, 2: 0, 3: 255})])
def test_oxford_pet_trimaps(name, lut, pet_manual, pet_checksums, tmp_path):
    manual, trimaps = pet_manual
    config = dataset_config(name, tmp_path, manual_dir=str(manual), crop_size=(48, 48),
                            eval_canvas=(96, 96), eval_split="test")
    builder = data_input.prepared_builder(config)
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["test"].num_examples == 2
    mesh = make_mesh()
    train, _ = first(data_input.train_batches(config, batch_size=8, mesh=mesh, seed=1,
                                              builder=builder))
    assert train["label"].shape == (8, 48, 48)
    assert set(np.unique(train["label"])) <= set(lut.values()) | {255}
    val, _ = first(data_input.eval_batches(config, batch_size=8, mesh=mesh, builder=builder))
    table = np.vectorize(lut.get)
    for stem in ("Bengal_4", "pug_5"):
        assert_some_row(val["label"][:2], table(trimaps[stem]))


# --- folder ----------------------------------------------------------------------------------

def make_folder(root, rng, splits=("train", "val"), n=3, classes=("sky", "grass", "cow")):
    for split in splits:
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            h, w = 40 + 8 * i, 56
            mask = blocks(rng, h, w, [0, 1, 2, 255], n=4)
            image = image_like(rng, mask)
            if i % 2:
                (root / "images" / split / f"{split}{i}.jpg").write_bytes(jpeg(image))
            else:
                (root / "images" / split / f"{split}{i}.png").write_bytes(png(image))
            (root / "masks" / split / f"{split}{i}.png").write_bytes(png(mask))
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")


def test_folder_dataset_through_the_input_path(tmp_path):
    folder = tmp_path / "my data"
    make_folder(folder, np.random.default_rng(3))
    config = dataset_config("folder", tmp_path, manual_dir=str(folder), num_classes=3,
                            crop_size=(32, 32), eval_split="val", eval_canvas=(64, 64))
    builder = data_input.prepared_builder(config)
    assert sorted(builder.info.splits) == ["train", "val"]
    assert builder.info.splits["val"].num_examples == 3
    assert data_input.class_names(config, builder) == ["sky", "grass", "cow"]
    mesh = make_mesh()
    train, _ = first(data_input.train_batches(config, batch_size=8, mesh=mesh, seed=0,
                                              builder=builder))
    assert train["label"].shape == (8, 32, 32) and set(np.unique(train["label"])) <= {0, 1, 2, 255}
    val, _ = first(data_input.eval_batches(config, batch_size=8, mesh=mesh, builder=builder))
    for i in range(3):
        assert_some_row(val["label"][:3], np.asarray(Image.open(folder / "masks" / "val" / f"val{i}.png")))
    # The same folder is prepared once; another folder gets its own dataset.
    assert data.prepare("folder", config.data_dir, manual_dir=folder, num_classes=3).data_dir \
        == builder.data_dir
    other = tmp_path / "other"
    make_folder(other, np.random.default_rng(4), splits=("train",))
    assert data.builder("folder", config.data_dir, manual_dir=other).data_dir != builder.data_dir


def test_folder_without_split_folders_is_one_train_split(tmp_path):
    folder = tmp_path / "flat"
    make_folder(folder, np.random.default_rng(5), splits=("train",), n=2, classes=())
    for sub in ("images", "masks"):
        for f in (folder / sub / "train").iterdir():
            f.rename(folder / sub / f.name)
        (folder / sub / "train").rmdir()
    builder = data.prepare("folder", tmp_path / "tfds", manual_dir=folder, num_classes=3)
    assert list(builder.info.splits) == ["train"] and builder.info.splits["train"].num_examples == 2
    assert builder.info.metadata["classes"] == ["class_0", "class_1", "class_2"]


@pytest.mark.parametrize("damage, message", [
    ("corrupt", r"image .*train1\.jpg is not a readable image"),
    ("size", r"mask .*train0\.png is 56x40 \(w x h\) but its image .*train0\.png is 28x20"),
    ("ids", r"mask .*train2\.png holds ids \[7\] outside the 3 classes"),
    ("missing", r"train1\.jpg has no mask; expected .*masks/train/train1\.png"),
    ("rgb", r"mask .*train0\.png has mode 'RGB'"),
    ("stem", r"images of one name in .*images/train: train0.jpg and train0.png"),
])
def test_folder_bad_files_are_named(damage, message, tmp_path):
    folder = tmp_path / "bad"
    make_folder(folder, np.random.default_rng(6), splits=("train",))
    images, masks = folder / "images" / "train", folder / "masks" / "train"
    if damage == "corrupt":
        (images / "train1.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    elif damage == "size":
        Image.open(images / "train0.png").resize((28, 20)).save(images / "train0.png")
    elif damage == "ids":
        mask = np.asarray(Image.open(masks / "train2.png")).copy()
        mask[0, 0] = 7
        (masks / "train2.png").write_bytes(png(mask))
    elif damage == "missing":
        (masks / "train1.png").unlink()
    elif damage == "stem":  # both would be read with masks/train/train0.png
        (images / "train0.jpg").write_bytes((images / "train1.jpg").read_bytes())
    else:
        Image.open(masks / "train0.png").convert("RGB").save(masks / "train0.png")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        data.prepare("folder", tmp_path / "tfds", manual_dir=folder)


def test_folder_needs_classes_and_a_folder(tmp_path):
    folder = tmp_path / "nameless"
    make_folder(folder, np.random.default_rng(7), splits=("train",), n=1, classes=())
    with pytest.raises(ValueError, match="give num_classes or write .*classes.txt"):
        data.builder("folder", tmp_path, manual_dir=folder)
    with pytest.raises(ValueError, match="needs manual_dir"):
        data.builder("folder", tmp_path)
    (folder / "classes.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="num_classes=3 but .*classes.txt names 2"):
        data.builder("folder", tmp_path, manual_dir=folder, num_classes=3)
    with pytest.raises(ValueError, match="name must be one of"):
        data.builder("voc", tmp_path)


def test_a_changed_folder_is_prepared_again_with_a_message(tmp_path, caplog):
    """Prepared folder datasets are keyed by their contents (names, sizes, modification
    times): an edited mask or an added file is read, never the old data."""
    import logging
    import os

    folder = tmp_path / "data"
    make_folder(folder, np.random.default_rng(4), splits=("train",), n=2)
    config = dataset_config("folder", tmp_path, manual_dir=str(folder), num_classes=3)
    first_builder = data_input.prepared_builder(config)
    assert first_builder.info.splits["train"].num_examples == 2
    assert data_input.prepared_builder(config).data_dir == first_builder.data_dir  # unchanged
    mask_path = folder / "masks" / "train" / "train0.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[:] = 2
    mask_path.write_bytes(png(mask))
    stat = mask_path.stat()  # the same size and time would be a change nobody could see
    os.utime(mask_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with caplog.at_level(logging.WARNING, logger="attnzoo"):
        edited = data_input.prepared_builder(config)
    assert "changed since it was prepared" in caplog.text and edited.data_dir != first_builder.data_dir
    labels = [ex["segmentation_mask"] for ex in edited.as_dataset(split="train").as_numpy_iterator()]
    assert any((label == 2).all() for label in labels)
    make_folder(folder / "more", np.random.default_rng(5), splits=("train",), n=1)
    for sub in ("images", "masks"):
        for f in (folder / "more" / sub / "train").iterdir():
            f.rename(folder / sub / "train" / f"extra_{f.name}")
    assert data_input.prepared_builder(config).info.splits["train"].num_examples == 3
    # the same files read with other classes: another dataset, prepared again (the old one,
    # with its class list, was opened)
    (folder / "classes.txt").unlink()
    config.num_classes = 4
    assert data_input.prepared_builder(config).info.metadata["classes"] == [
        f"class_{i}" for i in range(4)]
    config.num_classes = 5
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="attnzoo"):
        renamed = data_input.prepared_builder(config)
    assert "changed since it was prepared" in caplog.text
    assert renamed.info.metadata["classes"] == [f"class_{i}" for i in range(5)]
