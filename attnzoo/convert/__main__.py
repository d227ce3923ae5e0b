r"""Convert a PyTorch checkpoint on disk into an attnzoo (orbax) checkpoint.

    python -m attnzoo.convert --source mmseg:danet_r50-d8_4xb2-80k_cityscapes-512x1024 \
        --checkpoint danet_r50-d8_512x1024_80k_cityscapes_20200607_133029-2bfa2293.pth --out DIR
    python -m attnzoo.convert --source transformers:segformer \
        --checkpoint segformer-b0-finetuned-ade-512-512/ --out DIR
    python -m attnzoo.convert --source timm:resnet50d --checkpoint weights.pth --out DIR
    python -m attnzoo.convert --source timm:hrnet_w18 --checkpoint hrnetv2_w18-00eb2006.pth \
        --out DIR
    python -m attnzoo.convert --source torchvision:resnet101 --checkpoint r101.pth \
        --out DIR --output-stride 8
    python -m attnzoo.convert --source timm:deit_small_patch16_224 \
        --checkpoint deit_small_patch16_224-cd65a155.pth --model upernet_deit_s16_ln_mln --out DIR

Nothing is downloaded: ``--checkpoint`` is a ``.pth``/``.pt``/``.bin`` (read
with torch) or ``.safetensors`` (read with numpy) file; for ``transformers:segformer``, the
folder of a Hugging Face hub download (``model.safetensors`` + ``config.json``). A whole
segmentor (``mmseg:<config stem>``, ``transformers:segformer``) becomes a run directory:
``DIR/checkpoints/0`` and ``DIR/config.json`` with the evaluation protocol (mmseg's; for a
hub SegFormer of 150 / 19 classes SegFormer's ADE20K / Cityscapes one, or ``--protocol``), which
``python -m attnzoo.evaluate --workdir DIR``, ``attnzoo.predict``,
``engine.restore(DIR)`` and ``train.py --config.init_from=DIR`` take. A
backbone (``timm:``, ``torchvision:``) becomes ``DIR/variables/`` and
``DIR/attnzoo_backbone.json``; restore with ``attnzoo.convert.load_backbone(DIR)``.
``--out`` must be a new or empty folder: converting into a run would mix two models' steps and
configs; ``--overwrite`` replaces the folder whole once the conversion has succeeded.
``--model`` builds a timm backbone with the fields of the registered model it will initialise
(``train.py --config.init_from=DIR``): a ViT's position embedding resized to the model's grid,
its final norm.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attnzoo._checks import check_writable_folder
from attnzoo.convert.backbones import from_timm, from_torchvision, load_state_dict, save_backbone
from attnzoo.convert.segformer import PROTOCOLS_OF_SEGFORMER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnzoo.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True,
                        help="mmseg:CONFIG_STEM or transformers:segformer (trained "
                             "segmentors), timm:MODEL (e.g. timm:resnet50d, timm:hrnet_w18, "
                             "which also reads mmseg's HRNet ImageNet files) or "
                             "torchvision:MODEL (backbones)")
    parser.add_argument("--checkpoint", required=True,
                        help="state dict file on disk (transformers: the hub folder or its "
                             "model.safetensors)")
    parser.add_argument("--out", required=True,
                        help="output directory: new or empty (--overwrite replaces one)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out whole if it holds anything (after converting)")
    parser.add_argument("--output-stride", type=int, default=32, choices=(8, 16, 32))
    parser.add_argument("--model", default=None,
                        help="timm:MODEL: the registered attnzoo model the backbone will "
                             "initialise; the backbone gets that model's backbone fields (a "
                             "ViT's position-embedding grid and final norm)")
    parser.add_argument("--protocol", default=None, choices=PROTOCOLS_OF_SEGFORMER,
                        help="transformers:segformer: the evaluation protocol to record "
                             "(default from the classes: 150 -> ADE20K 512, 19 -> Cityscapes)")
    args = parser.parse_args(argv)
    _check_out(Path(args.out), args.overwrite)
    library, _, model = args.source.partition(":")
    if library in ("mmseg", "transformers") and model:
        from attnzoo.engine.checkpoint import save_pretrained
        from attnzoo.engine.config import from_fields

        if library == "mmseg":
            from attnzoo.convert.mmseg import from_mmseg, mmseg_recipe

            _, variables = from_mmseg(model, load_state_dict(args.checkpoint))
            config = from_fields(mmseg_recipe(model).config_fields())
        elif model == "segformer":
            from attnzoo.convert.segformer import from_transformers, transformers_config_fields

            folder = Path(args.checkpoint)
            config_path = (folder if folder.is_dir() else folder.parent) / "config.json"
            _, variables = from_transformers(folder, config_path)
            config = from_fields(transformers_config_fields(config_path, args.protocol))
        else:
            parser.error(f"--source transformers:MODEL converts segformer; got {args.source!r}")
        _clear(Path(args.out), args.overwrite)
        out = save_pretrained(args.out, variables, config)
        n = sum(x.size for x in __import__("jax").tree.leaves(variables["params"]))
        names = list(config.dataset.class_names or [])
        data = (f" --manual-dir YOUR_FOLDER (images/ and masks/ of its {len(names)} classes: "
                f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                if config.dataset.name == "folder" else "")
        print(f"wrote {args.source} ({n:,} parameters, dataset {config.dataset.name}) to {out}; "
              f"evaluate with python -m attnzoo.evaluate --workdir {out}{data}")
        return 0
    convert = {"timm": from_timm, "torchvision": from_torchvision}.get(library)
    if convert is None or not model:
        parser.error(f"--source must be mmseg:CONFIG_STEM, transformers:segformer, timm:MODEL or "
                     f"torchvision:MODEL; "
                     f"got {args.source!r}")
    if args.model is not None:
        if library != "timm":
            parser.error(f"--model applies to timm:MODEL sources; got {args.source!r}")
        fields = _backbone_fields_of(args.model, model)
        module, variables = from_timm(model, load_state_dict(args.checkpoint),
                                      args.output_stride, fields)
    else:
        module, variables = convert(model, load_state_dict(args.checkpoint), args.output_stride)
    _clear(Path(args.out), args.overwrite)
    out = save_backbone(args.out, module, variables, source=args.source)
    n = sum(x.size for x in __import__("jax").tree.leaves(variables["params"]))
    print(f"wrote {args.source} ({n:,} parameters, output stride {args.output_stride}) to {out}")
    return 0


def _check_out(out: Path, overwrite: bool) -> None:
    """ValueError unless ``out`` is new or an empty folder, or ``overwrite`` (a run written
    into another run mixed their steps and configs): names what is there. A file in the way
    or a folder that cannot be written is refused first (:func:`check_writable_folder`)."""
    check_writable_folder(out, "--out")
    held = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir()) \
        if out.is_dir() else []
    if held and not overwrite:
        what = "a run" if "checkpoints/" in held or "variables/" in held else "files"
        raise ValueError(f"--out {out} holds {what} ({', '.join(held[:6])}"
                         f"{', ...' if len(held) > 6 else ''}): give a new folder, or "
                         "--overwrite to replace it whole")


def _clear(out: Path, overwrite: bool) -> None:
    """Remove ``out`` when ``overwrite`` (the conversion succeeded: the old one is not lost to
    a failed one)."""
    if overwrite and out.exists():
        import shutil

        shutil.rmtree(out)


def _backbone_fields_of(model: str, timm_model: str) -> dict:
    """The backbone fields of registered model ``model`` (its backbone's registered ones and the
    model's own), which must be built on the backbone timm's ``timm_model`` converts to."""
    from attnzoo import backbones, models
    from attnzoo.convert.backbones import timm_backbone

    spec = models.get_spec(model)
    name = timm_backbone(timm_model)[0]
    if getattr(spec, "backbone", None) != name:
        raise ValueError(f"--model {model!r} is not built on {name!r} (timm's {timm_model!r}): "
                         f"its backbone is {getattr(spec, 'backbone', None)!r}")
    return {**backbones.BACKBONES.get(name)[1], **spec.backbone_kwargs}


if __name__ == "__main__":
    from attnzoo import _cli

    _cli.run(main)
