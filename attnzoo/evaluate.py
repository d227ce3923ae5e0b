"""Evaluate a trained run on its dataset's evaluation split.

    python -m attnzoo.evaluate --workdir runs/quickstart
    python -m attnzoo.evaluate --workdir runs/danet --mode slide --tta --memory-efficient
    python -m attnzoo.evaluate --workdir runs/quickstart --crf

Prints mmsegmentation's per-class table (IoU, Acc) and aAcc / mIoU / mAcc /
mDice, and writes them to ``WORKDIR/eval_<split>_step<N>.json``. ``--tta``
averages the softmax of scales 0.5-1.75 and horizontal flips. ``--crf`` refines the
predictions with the fully connected CRF (:func:`attnzoo.ops.dense_crf`, DeepLab's parameters
unless ``--crf-params`` sets them).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from attnzoo import _cli

log = logging.getLogger("attnzoo")


def _eval_devices(batch_size: int) -> list[Any]:
    """The devices an evaluation batch of ``batch_size`` is spread over: all of them, or in
    one process as many as divide the batch (mmseg's protocol on datasets of mixed image
    sizes evaluates one image at a time, ``eval_batch_size`` 1: one device), said in one
    line."""
    import math

    import jax

    devices = jax.devices()
    if jax.process_count() > 1 or batch_size % len(devices) == 0:
        return devices
    used = math.gcd(batch_size, len(devices))
    log.info("evaluating on %d of the %d devices (eval_batch_size=%d)", used, len(devices),
             batch_size)
    return devices[:used]


def evaluate_run(workdir: str | Path, *, step: int | None = None, split: str | None = None,
                 mode: str | None = None, tta: bool = False, memory_efficient: bool = False,
                 data_dir: str | None = None, manual_dir: str | None = None,
                 batch_size: int | None = None, crf: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Restore ``workdir``'s checkpoint and evaluate it (arguments override the saved config's
    ``eval`` settings; ``crf``: :func:`attnzoo.ops.dense_crf` arguments, ``{}`` for its
    defaults, refines the predictions). Returns the metrics with ``"classes"``, ``"step"``,
    ``"split"`` and the run's ``"conv_implementation"`` (logged: the scores are computed with
    it)."""
    import math

    import jax
    import numpy as np

    from attnzoo.data import input as data_input
    from attnzoo.engine import checkpoint, evaluate, make_eval_step
    from attnzoo.inference import TTA_SCALES
    from attnzoo.ops.conv import describe_implementation
    from attnzoo.engine.state import layout
    from attnzoo.sharding import make_mesh

    overrides: dict[str, Any] = {"model.memory_efficient": memory_efficient}
    if data_dir:
        overrides["dataset.data_dir"] = data_dir
    if manual_dir:
        overrides["dataset.manual_dir"] = manual_dir
    model, variables, config, saved_step = checkpoint.restore_with_step(
        workdir, step=step, config_overrides=overrides)
    log.info("%s", describe_implementation(config.conv_implementation))
    devices = _eval_devices(batch_size or config.eval_batch_size)
    mesh = make_mesh(devices, fsdp=math.gcd(config.mesh.fsdp, len(devices)))
    builder = data_input.prepared_builder(config.dataset)
    names = data_input.class_names(config.dataset, builder)
    eval_step = make_eval_step(model, config, mesh, mode=mode,
                               scales=TTA_SCALES if tta else None, flip=True if tta else None,
                               crf=crf)
    # the run's layout: parameters split along fsdp where its mesh had them split
    variables = jax.device_put(variables, {k: layout(v, mesh, config, f"{k}/")
                                           for k, v in variables.items()})
    result = evaluate(eval_step, variables, data_input.eval_batches(
        config.dataset, batch_size=batch_size or config.eval_batch_size, mesh=mesh, split=split,
        builder=builder, pixel_mean=tuple(config.model.pixel_mean),
        pixel_std=tuple(config.model.pixel_std)))
    out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}
    return {**out, "classes": names, "step": saved_step,
            "split": split or data_input.dataset_split(config.dataset, "eval_split"),
            "conv_implementation": config.conv_implementation}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m attnzoo.evaluate",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="training workdir or checkpoint directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    parser.add_argument("--split", default=None, help="dataset split (default: the config's)")
    parser.add_argument("--mode", choices=("whole", "slide"), default=None)
    parser.add_argument("--tta", action="store_true", help="multi-scale + flip")
    parser.add_argument("--memory-efficient", action="store_true",
                        help="exact memory-bounded attention (large images)")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir (default: the config's)")
    parser.add_argument("--manual-dir", default=None,
                        help="the dataset's downloaded files, to prepare it (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=None)
    _cli.add_crf_arguments(parser)
    _cli.add_cache_arguments(parser)
    args = parser.parse_args(argv)
    _cli.use_cache(args)

    from attnzoo.engine.logging import class_table

    result = evaluate_run(args.workdir, step=args.step, split=args.split, mode=args.mode,
                          tta=args.tta, memory_efficient=args.memory_efficient,
                          data_dir=args.data_dir, manual_dir=args.manual_dir,
                          batch_size=args.batch_size,
                          crf=_cli.crf_arguments(args))
    print(f"step {result['step']}, split {result['split']!r}"
          + (", multi-scale + flip" if args.tta else "") + (", dense CRF" if args.crf else ""))
    print(class_table(result["classes"], result))
    suffix = "_crf" if args.crf else ""
    out = Path(args.workdir) / f"eval_{result['split']}_step{result['step']}{suffix}.json"
    if out.parent.is_dir():  # a workdir (a checkpoint step's folder is read from, not into)
        try:
            out.write_text(json.dumps(result, indent=1))
        except OSError as err:
            raise PermissionError(f"the metrics above could not be written to {out} "
                                  f"({err.strerror}); the table is the result") from None
        print(f"written to {out}")
    return result


if __name__ == "__main__":
    _cli.run(main)
