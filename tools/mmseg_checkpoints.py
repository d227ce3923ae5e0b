"""Regenerate ``attnzoo/convert/mmseg_checkpoints.csv``, the published mmsegmentation
checkpoints attnzoo restores, from mmsegmentation's own model-zoo metadata: the
``configs/<family>/metafile.yaml`` files mmseg ships in its package (``mmseg/.mim/configs``).

    python tools/mmseg_checkpoints.py            # write the file (needs mmsegmentation installed)
    python tools/mmseg_checkpoints.py --check    # exit 1 if the committed file differs

One row for each model of a metafile whose config stem :func:`attnzoo.convert.mmseg.mmseg_recipe`
accepts (a registered family, backbone and dataset protocol): the family, the config stem, the
dataset, the crop and the schedule (from the stem), the checkpoint file name (the last part of
the metafile's ``Weights`` URL) and the published ``mIoU`` and ``mIoU(ms+flip)`` as the metafile
states them (OpenMMLab's runs; not measured by attnzoo).

Three slips of mmseg 1.2.2's metafiles are read through, and the stems must come out distinct:
a ``Name`` naming no shipped config is read with the folder's family as its prefix (the emanet
metafile's ``eemanet_r50-d8_...``), and a ``Name`` contradicting its own checkpoint's schedule
takes the config of the checkpoint's schedule when mmseg ships one (the deeplabv3plus metafile
names its R-101 80k ADE20K model ``..._4xb4-160k_ade20k-512x512``, as the 160k one; the
checkpoint file says ``512x512_80k_ade20k``), and a ``Name`` naming another model than its
checkpoint's takes the config named as the checkpoint when mmseg ships one (the twins metafile
lists its SVT-L UPerNet, weights ``twins_svt-l_uperhead_8x2_...``, as a second
``twins_pcpvt-l_uperhead_8xb2-160k_ade20k-512x512``).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "attnzoo" / "convert" / "mmseg_checkpoints.csv"


def mmseg_configs() -> Path:
    """The ``configs`` folder of the installed mmsegmentation."""
    import mmseg

    return Path(mmseg.__file__).parent / ".mim" / "configs"


def rows(configs: Path) -> list[dict[str, str]]:
    """The CSV rows for every supported model of the metafiles under ``configs``, by family
    (alphabetical) and in each metafile's order."""
    import yaml

    from attnzoo.convert.mmseg import FIELDS, mmseg_recipe

    out = []
    for metafile in sorted(configs.glob("*/metafile.yaml")):
        for model in yaml.safe_load(metafile.read_text()).get("Models", []):
            try:
                recipe = mmseg_recipe(stem_of(model, metafile.parent))
            except ValueError:
                continue
            metrics = model["Results"]["Metrics"]
            ms = metrics.get("mIoU(ms+flip)")
            out.append(dict(zip(FIELDS, (
                recipe.family, recipe.stem, recipe.dataset, recipe.crop, recipe.schedule,
                model["Weights"].rsplit("/", 1)[-1], f"{float(metrics['mIoU']):.2f}",
                "" if ms is None else f"{float(ms):.2f}"))))
    stems = [r["config"] for r in out]
    repeated = sorted({st for st in stems if stems.count(st) > 1})
    if repeated:
        raise ValueError(f"the metafiles under {configs} name several models {repeated}")
    return sorted(out, key=lambda r: r["family"])  # stable: each metafile's order kept


def stem_of(model: dict, folder: Path) -> str:
    """The config stem of metafile entry ``model`` of family folder ``folder``: its ``Name``,
    read with the folder's name as its family prefix when ``folder`` holds no such config, with
    the model its checkpoint file names and the config of its checkpoint's schedule where they
    disagree and ``folder`` holds that config."""
    name = model["Name"]
    if not (folder / f"{name}.py").is_file() and "_" in name:
        renamed = f"{folder.name}_{name.split('_', 1)[1]}"
        if (folder / f"{renamed}.py").is_file():
            name = renamed
    weights_file = model.get("Weights", "").rsplit("/", 1)[-1]
    trained = re.match(r"(.+?)_\d+x\d+_", weights_file)
    named_model = re.match(r"(.+?)_\d+xb\d+-", name)
    if trained and named_model and trained[1] != named_model[1]:
        other = trained[1] + name[len(named_model[1]):]
        if (folder / f"{other}.py").is_file():
            name = other
    weights = re.search(r"_(\d+)k_", weights_file)
    named = re.search(r"-(\d+)k_", name)
    if weights and named and weights[1] != named[1]:
        fixed = name.replace(named[0], f"-{weights[1]}k_", 1)
        if (folder / f"{fixed}.py").is_file():
            return fixed
    return name


def render(table: list[dict[str, str]]) -> str:
    """The CSV text of ``table``."""
    from attnzoo.convert.mmseg import FIELDS

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=Path, default=None,
                        help="mmseg's configs folder (default: the installed package's)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed file instead of writing it")
    args = parser.parse_args(argv)
    text = render(rows(args.configs or mmseg_configs()))
    if args.check:
        if TARGET.read_text() != text:
            print(f"{TARGET} differs from mmseg's metafiles: run python tools/mmseg_checkpoints.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {len(text.splitlines()) - 1} rows to {TARGET}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
