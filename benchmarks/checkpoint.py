"""What checkpoint checksums cost: save and restore time of a run's train state with and
without them (``engine.Checkpoints(checksums=...)``).

For each config, the train state (parameters, optimizer state, batch statistics) is built on
one device, saved synchronously ``--repeats`` times into a fresh folder and restored as many
times; the median of each is printed, with the first save (which compiles the checksum's
jitted sums once per state structure) apart.

    python benchmarks/checkpoint.py                      # quickstart, DANet-R50-D8 (Cityscapes)
    python benchmarks/checkpoint.py --configs configs/quickstart.py --repeats 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from common import machine, table  # noqa: E402

from attnzoo import engine, sharding  # noqa: E402
from attnzoo.engine import state as state_lib  # noqa: E402

CONFIGS = ("configs/quickstart.py", "configs/mmseg.py:danet_r50_d8,cityscapes")


def load_config(spec: str):
    """``path.py[:arg]`` -> the config its ``get_config(arg)`` gives."""
    import importlib

    path, _, arg = spec.partition(":")
    module = importlib.import_module(Path(path).with_suffix("").as_posix().replace("/", "."))
    return module.get_config(arg)


def measure(spec: str, repeats: int, root: Path) -> list[list[str]]:
    """Rows ``[config, MB, checksums, first save, save, restore]`` (seconds) for one config."""
    config = load_config(spec)
    model = state_lib.build_model(config)
    tx, _ = engine.make_optimizer(config.optimizer, config.num_steps)
    mesh = sharding.make_mesh(jax.devices()[:1])
    state = state_lib.init_state(model, tx, config, mesh)
    target = state_lib.abstract_state(model, tx, config, mesh)
    megabytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)) / 2**20
    rows = []
    for checksums in (False, True):
        directory = root / f"{len(rows)}"
        ckpts = engine.Checkpoints(directory, keep=repeats + 1, async_save=False,
                                   checksums=checksums)
        saves = []
        for step in range(repeats + 1):
            t0 = time.perf_counter()
            ckpts.save(step, state, config)
            ckpts.wait()
            saves.append(time.perf_counter() - t0)
        restores = []
        for step in range(repeats):
            t0 = time.perf_counter()
            restored, _ = ckpts.restore_state(target, step)
            jax.block_until_ready(restored)
            restores.append(time.perf_counter() - t0)
        ckpts.close()
        shutil.rmtree(directory)
        rows.append([spec, f"{megabytes:.0f}", "yes" if checksums else "no",
                     f"{saves[0]:.2f}", f"{statistics.median(saves[1:]):.2f}",
                     f"{statistics.median(restores):.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS),
                        help="config specs (path.py[:arg])")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for spec in args.configs:
            rows += measure(spec, args.repeats, Path(root))
    print(table(["config", "state MB", "checksums", "first save s", "save s", "restore s"], rows))


if __name__ == "__main__":
    main()
