"""The quickstart task with each attention head at the same budget, over several seeds: the
analogue of the DANet paper's ablation (FCN baseline vs. position / channel attention).

    python benchmarks/quickstart_heads.py --workdir runs/heads [--heads fcn danet ccnet nonlocal]
        [--seeds 0 1 2] [--num-steps 1000] [--data-dir DIR]

Each (head, seed) trains ``configs/quickstart.py:<head>`` with ``seed`` (and
``num_steps`` when given) in ``WORKDIR/<head>_s<seed>``; a finished run is
not retrained (the engine resumes, or only evaluates), so the script can be
stopped and started again. Prints the validation mIoU and the mean IoU of the
three shape classes (alpha, beta, gamma: the pixels whose class needs the
far-away marker) as mean +- std over the seeds, with the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def quickstart_config(head: str):
    from attnzoo.engine.config import load_config_file

    return load_config_file(f"{ROOT / 'configs' / 'quickstart.py'}:{head}")


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} +- {100 * std:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--heads", nargs="+", default=["fcn", "danet", "ccnet", "nonlocal"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    from attnzoo.engine import train_and_evaluate

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
            result = train_and_evaluate(config, Path(args.workdir) / f"{head}_s{seed}")
            seconds.append(time.perf_counter() - start)
            mious.append(float(result["mIoU"]))
            shapes.append(statistics.mean(float(result["IoU"][i]) for i in (1, 2, 3)))
        rows.append([f"{head}_r18_d8", mean_std(mious), mean_std(shapes),
                     f"{statistics.mean(seconds):.0f}"])
    steps = args.num_steps or quickstart_config("danet").num_steps
    print(f"\nquickstart task, {steps} steps of batch 8, seeds {args.seeds}; {machine()}")
    print(table(["model", "mIoU (%)", "shape-class IoU (%)", "s / run"], rows))


if __name__ == "__main__":
    main()
