"""TFDS builders of attnzoo (TensorFlow is imported here and only here)."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from attnzoo.data import context_shapes as cs


class ContextShapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic segmentation that needs long-range context (see ``context_shapes.py``).

    Splits: ``train`` (3000 images) and ``validation`` (500), 128x128, five
    classes. Generated from ``SEED``; no download.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
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
