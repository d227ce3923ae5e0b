"""Shared by the dataset tests: images and masks in the files' real formats, the dataset config
of a test, and checks on evaluation batches."""

import io
import tarfile

import numpy as np
from PIL import Image

from attnzoo.data import datasets
from attnzoo.engine.config import default_config


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def blocks(rng: np.random.Generator, h: int, w: int, values: list[int], n: int = 4) -> np.ndarray:
    """A mask of ``n`` x ``n`` solid blocks drawn from ``values`` (compresses to little)."""
    grid = rng.choice(values, size=(n, n)).astype(np.uint8)
    return np.kron(grid, np.ones((h // n, w // n), np.uint8))


def image_like(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    colours = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    return colours[mask]


def dataset_config(name: str, tmp_path, **overrides):
    c = default_config().dataset
    c.name = name
    c.data_dir = str(tmp_path / "tfds")
    c.num_classes = len(datasets.spec(name).classes) or overrides.pop("num_classes")
    c.photometric = False
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def assert_some_row(labels: np.ndarray, expected: np.ndarray) -> None:
    """One of ``labels`` (padded to a canvas) is ``expected`` in its top-left corner and ignore
    elsewhere (TFDS shuffles examples when it writes them, so the order is not the files')."""
    h, w = expected.shape
    assert any(np.array_equal(row[:h, :w], expected) and (row[h:] == 255).all()
               and (row[:, w:] == 255).all() for row in labels), f"no row holds the {h}x{w} mask"


def first(batches):
    batch = next(batches)
    return {k: np.asarray(v) for k, v in batch.items()}, batch


def add_to_tar(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a file ``name`` holding ``data`` to ``tar``."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
