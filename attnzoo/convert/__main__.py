"""Convert a PyTorch backbone checkpoint on disk into an attnzoo (orbax) checkpoint.

    python -m attnzoo.convert --source timm:resnet50d --checkpoint weights.pth --out DIR
    python -m attnzoo.convert --source torchvision:resnet101 --checkpoint r101.pth \\
        --out DIR --output-stride 8

Nothing is downloaded: ``--checkpoint`` is a ``.pth``/``.pt``/``.bin`` (read
with torch) or ``.safetensors`` (read with numpy) file. ``DIR`` then holds
``variables/`` (orbax) and ``attnzoo_backbone.json``; restore with
``attnzoo.convert.load_backbone(DIR)``.
"""

from __future__ import annotations

import argparse
import sys

from attnzoo.convert.backbones import from_timm, from_torchvision, load_state_dict, save_backbone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnzoo.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True,
                        help="timm:MODEL (e.g. timm:resnet50d) or torchvision:MODEL")
    parser.add_argument("--checkpoint", required=True, help="state dict file on disk")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--output-stride", type=int, default=32, choices=(8, 16, 32))
    args = parser.parse_args(argv)
    library, _, model = args.source.partition(":")
    convert = {"timm": from_timm, "torchvision": from_torchvision}.get(library)
    if convert is None or not model:
        parser.error(f"--source must be timm:MODEL or torchvision:MODEL; got {args.source!r}")
    module, variables = convert(model, load_state_dict(args.checkpoint), args.output_stride)
    out = save_backbone(args.out, module, variables, source=args.source)
    n = sum(x.size for x in __import__("jax").tree.leaves(variables["params"]))
    print(f"wrote {args.source} ({n:,} parameters, output stride {args.output_stride}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
