"""The quickstart task with each attention head at the same budget, over several seeds: the
analogue of the DANet paper's ablation (FCN baseline vs. position / channel attention).

    python benchmarks/quickstart_heads.py --workdir runs/heads
        [--heads fcn danet ...] [--seeds 0 1 2 3 4] [--num-steps N]
        [--data-dir DIR] [--devices 8] [--xla-flags=--xla_cpu_use_onednn=true]

Each (head, seed) trains ``configs/quickstart.py:<head>`` with ``seed`` (and
``num_steps`` when given) in ``WORKDIR/<head>_s<seed>``; a finished run is
not retrained (the engine resumes, or only evaluates), so the script can be
stopped and started again. Prints the validation mIoU and the mean IoU of the
six shape classes (the pixels whose class needs the far-away marker) as mean
+- sample std over the seeds, each seed's mIoU / shape-class IoU, how many
seeds read the marker (shape-class IoU above 50%: a model blind to it is right
on half of the shapes' pixels at best, ~1/3 IoU) and the machine. The default
heads are every head family's (``attnzoo.heads.list_families()``).
``--devices N`` simulates N CPU devices and ``--xla-flags`` adds XLA options
(both before JAX starts): the same runs under another reduction order or
other kernels, as on another machine; the workdirs are then named after them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from attnzoo.heads import list_families  # noqa: E402

HEADS = list_families()

READS_MARKER = 0.5  # shape-class IoU above which a run has learnt the marker


def quickstart_config(head: str):
    from attnzoo.engine.config import load_config_file

    return load_config_file(f"{ROOT / 'configs' / 'quickstart.py'}:{head}")


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} +- {100 * std:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--heads", nargs="+", choices=HEADS,
                        default=["fcn", *(h for h in HEADS if h != "fcn")])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--devices", type=int, default=None,
                        help="simulate this many CPU devices (the global batch stays 8)")
    parser.add_argument("--xla-flags", default="", help="more XLA_FLAGS, e.g. "
                        "--xla-flags=--xla_cpu_use_onednn=true")
    args = parser.parse_args(argv)
    flags = args.xla_flags.split()
    if args.devices:
        flags.append(f"--xla_force_host_platform_device_count={args.devices}")
    if flags:  # read when JAX starts its backend, which nothing has done yet
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()
    variant = "".join(f"_{f.lstrip('-').replace('=', '-')}" for f in flags)

    from attnzoo.data import context_shapes as cs
    from attnzoo.engine import train_and_evaluate

    shape_classes = [cs.CLASSES.index(f"{kind}_m{mode}") for mode in (0, 1) for kind in cs.KINDS]

    rows = []
    for head in args.heads:
        mious, shapes, seconds = [], [], []
        for seed in args.seeds:
            config = quickstart_config(head)
            config.seed = seed
            if args.num_steps:
                config.num_steps = config.eval_every = args.num_steps
                config.checkpoint_every = args.num_steps
            if args.data_dir:
                config.dataset.data_dir = args.data_dir
            start = time.perf_counter()
            result = train_and_evaluate(config, Path(args.workdir) / f"{head}_s{seed}{variant}")
            seconds.append(time.perf_counter() - start)
            mious.append(float(result["mIoU"]))
            shapes.append(statistics.mean(float(result["IoU"][i]) for i in shape_classes))
        rows.append([config.model.name, mean_std(mious), mean_std(shapes),
                     " / ".join(f"{100 * m:.1f}, {100 * s:.1f}" for m, s in zip(mious, shapes)),
                     f"{statistics.mean(seconds):.0f}",
                     f"{sum(s > READS_MARKER for s in shapes)} of {len(shapes)}"])
    steps = args.num_steps or quickstart_config("danet").num_steps
    print(f"\nquickstart task, {steps} steps of batch 8, seeds {args.seeds}"
          f"{', XLA_FLAGS ' + ' '.join(flags) if flags else ''}; {machine()}")
    print(table(["model", "mIoU (%)", "shape-class IoU (%)",
                 f"mIoU, shape IoU per seed {' / '.join(map(str, args.seeds))}", "s / run",
                 "seeds that read the marker"], rows))


if __name__ == "__main__":
    main()
