"""Where a quickstart train step's time goes: the input pipeline, the compiled step, the loop.

    python benchmarks/quickstart_profile.py [--config configs/quickstart.py] [--steps 60]
        [--data-dir DIR]

Times, on the quickstart config (any ``configs/*.py[:arg]``), after a warm-up:

* ``pipeline``: drawing the next global batch alone (tf.data decode, augment, batch, the
  transfer to the devices), the train step not running;
* ``step``: the jitted train step alone, on one batch already on the devices;
* ``loop``: both, as ``train.py`` runs them (the pipeline's threads and XLA share the cores).

``loop - step`` is what the input costs a step; the script prints it as a share of the loop.
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


def per_step(fn, steps: int) -> float:
    """Median seconds of ``fn()`` over ``steps`` calls (each waits for its result)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.py"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    import jax

    from attnzoo.data import input as data_input
    from attnzoo.engine import optim, state as state_lib, steps as steps_lib
    from attnzoo.engine.config import load_config_file
    from attnzoo.sharding import make_mesh

    config = load_config_file(args.config)
    if args.data_dir:
        config.dataset.data_dir = args.data_dir
    mesh = make_mesh()
    model = state_lib.build_model(config)
    tx, schedule = optim.make_optimizer(config.optimizer, config.num_steps)
    state = state_lib.init_state(model, tx, config, mesh)
    train_step = steps_lib.make_train_step(model, tx, schedule, config, mesh)
    batches = data_input.train_batches(config.dataset, batch_size=config.batch_size, mesh=mesh,
                                       seed=config.seed)
    batch = next(batches)
    for _ in range(3):  # compile, warm the pipeline's buffers
        state, metrics = train_step(state, next(batches))
    jax.block_until_ready(metrics)

    def pipeline() -> None:
        jax.block_until_ready(next(batches))

    def step() -> None:
        nonlocal state
        state, m = train_step(state, batch)
        jax.block_until_ready(m)

    def loop() -> None:
        nonlocal state
        state, m = train_step(state, next(batches))
        jax.block_until_ready(m)

    t_pipe, t_step, t_loop = (per_step(f, args.steps) for f in (pipeline, step, loop))
    share = max(t_loop - t_step, 0.0) / t_loop
    print(f"\n{config.model.name}, global batch {config.batch_size}, crop "
          f"{tuple(config.dataset.crop_size)}, {len(jax.devices())} device(s); median of "
          f"{args.steps} steps; {machine()}")
    print(table(["what", "ms / step"], [
        ["pipeline alone (next batch, on the devices)", f"{1e3 * t_pipe:.1f}"],
        ["train step alone (batch already on the devices)", f"{1e3 * t_step:.1f}"],
        ["loop (pipeline + step, as train.py)", f"{1e3 * t_loop:.1f}"],
        ["input's share of the loop", f"{100 * share:.0f}%"],
    ]))


if __name__ == "__main__":
    main()
