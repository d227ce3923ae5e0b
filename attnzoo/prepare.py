"""Prepare a dataset once, from the files you downloaded (nothing is fetched), and say what it holds.

    python -m attnzoo.prepare --dataset voc12aug --manual-dir /data/voc          # the .tar, .tgz
    python -m attnzoo.prepare --dataset pascal_context --manual-dir /data/context --data-dir /data/tfds
    python -m attnzoo.prepare --dataset folder --manual-dir /data/mine --num-classes 3

``--manual-dir`` holds the dataset's official files (``attnzoo.data.datasets``: a missing one
is named with where to get it); the prepared TFDS dataset goes to ``--data-dir`` (default
TFDS's, ``~/tensorflow_datasets``), where ``train.py``, ``evaluate`` and ``predict`` read it
(``--config.dataset.data_dir``). A dataset prepared before is only opened. Pascal Context 60
and 59 share one prepared copy, as do the two Oxford-IIIT Pet variants.
"""

from __future__ import annotations

import argparse

from attnzoo import _cli


def main(argv: list[str] | None = None) -> dict[str, int]:
    """Prepare ``--dataset``; returns its split sizes (printed with its classes and folder)."""
    from attnzoo import data
    from attnzoo.data import DATASETS

    parser = argparse.ArgumentParser(prog="python -m attnzoo.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS), metavar="NAME",
                        help=f"one of {', '.join(sorted(DATASETS))}")
    parser.add_argument("--manual-dir", default=None,
                        help="the folder holding the dataset's downloaded files")
    parser.add_argument("--data-dir", default=None,
                        help="where the prepared dataset goes (default: TFDS's)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="the folder dataset's classes, without a classes.txt")
    args = parser.parse_args(argv)
    builder = data.prepare(args.dataset, args.data_dir, manual_dir=args.manual_dir,
                           num_classes=args.num_classes)
    counts = {split: info.num_examples for split, info in builder.info.splits.items()}
    classes = data.spec(args.dataset).classes or builder.info.metadata["classes"]
    print(f"{args.dataset}: {len(classes)} classes; "
          + ", ".join(f"{split} {n}" for split, n in counts.items())
          + f" images; prepared in {builder.data_dir}")
    return counts


if __name__ == "__main__":
    _cli.run(main)
