"""Parameters and FLOPs of every registered model, and the train step's achieved FLOP/s.

    python benchmarks/flops.py [--size 512x1024] [--num-classes 19] [--models danet_r50_d8,...]
        [--mfu-model danet_r50_d8 --mfu-size 512x512 --mfu-batch 1] [--dtype float32|bfloat16]

Table 1 (from the code, nothing trained): trainable parameters (``params``; BatchNorm
statistics excluded) of the model as built for inference and with its training-only branches
(the auxiliary head, DANet's branch classifiers), by tracing ``init`` with ``jax.eval_shape``;
and the FLOPs of one inference forward pass (``model.apply(images)["out"]``, batch 1, at
``--size``) from XLA's cost analysis of the lowered computation: a multiply-add is 2 FLOPs and
taps that fall on zero padding are not counted (so a 3x3 "same" convolution counts slightly
fewer than ``2 * 9 * Cin * Cout * H * W``).

Table 2: the engine's jitted train step (``attnzoo.engine.make_train_step``: forward, loss,
backward, SGD) for ``--mfu-model``; its FLOPs from XLA's cost analysis of the compiled step,
its median time, the achieved FLOP/s, and that as a fraction of the machine's measured matmul
peak (the best of a few ``N x N @ N x N`` products in the compute dtype: this is what the
device reaches on the operation it is best at, not the vendor's datasheet number).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, parse_size, table, time_fn  # noqa: E402

from attnzoo import engine, models  # noqa: E402
from attnzoo.engine.state import DTYPES  # noqa: E402
from attnzoo.sharding import batch_sharding, make_mesh  # noqa: E402


def parameters(name: str, num_classes: int) -> tuple[float, float]:
    """(training, inference) parameter counts in millions (``models.parameter_counts``)."""
    total, inference = models.parameter_counts(models.create(name, num_classes=num_classes))
    return total / 1e6, inference / 1e6


def forward_flops(name: str, num_classes: int, size: tuple[int, int]) -> float:
    """XLA's FLOP count of one inference forward pass at ``size`` (batch 1)."""
    model = models.create(name, num_classes=num_classes)
    x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    lowered = jax.jit(lambda v, images: model.apply(v, images)["out"]).lower(variables, x)
    return float(lowered.cost_analysis()["flops"])


def matmul_peak(dtype: jnp.dtype, n: int) -> float:
    """Best FLOP/s of ``n x n @ n x n`` products in ``dtype`` on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    mm = jax.jit(jnp.matmul)
    return max(2 * n**3 / time_fn(lambda: mm(a, b), repeats=3) for _ in range(3))


def train_step_rate(name: str, num_classes: int, size: tuple[int, int], batch: int, dtype: str,
                    repeats: int) -> tuple[float, float]:
    """(FLOPs of one compiled train step, median seconds per step)."""
    config = engine.default_config()
    config.model.name = name
    config.dataset.num_classes = num_classes
    config.dataset.crop_size = size
    config.batch_size = batch
    config.compute_dtype = dtype
    mesh = make_mesh(jax.devices()[:1])
    model = engine.build_model(config)
    tx, schedule = engine.make_optimizer(config.optimizer, config.num_steps)
    state = engine.init_state(model, tx, config, mesh)
    rng = np.random.default_rng(0)
    data = jax.device_put({
        "image": rng.standard_normal((batch, *size, 3)).astype(np.float32),
        "label": rng.integers(0, num_classes, (batch, *size)).astype(np.int32),
    }, batch_sharding(mesh))
    step = engine.make_train_step(model, tx, schedule, config, mesh)
    flops = float(step.lower(state, data).compile().cost_analysis()["flops"])

    def call():
        nonlocal state
        state, metrics = step(state, data)
        return metrics["loss"]

    return flops, time_fn(call, repeats=repeats, warmup=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512x1024")
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--models", default="", help="comma-separated; default: all registered")
    parser.add_argument("--mfu-model", default="danet_r50_d8", help="'' skips table 2")
    parser.add_argument("--mfu-size", default="512x512")
    parser.add_argument("--mfu-batch", type=int, default=1)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="compute dtype of the train step and the matmul peak")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = parse_size(args.size, "--size")
    names = args.models.split(",") if args.models else models.list_models()
    print(machine(), flush=True)
    rows = []
    for name in names:
        train_m, test_m = parameters(name, args.num_classes)
        gflops = forward_flops(name, args.num_classes, size) / 1e9
        rows.append([name, f"{train_m:.2f}", f"{test_m:.2f}", f"{gflops:.1f}"])
    print(f"\nnum_classes={args.num_classes}; FLOPs of one inference forward pass at "
          f"{size[0]}x{size[1]}, batch 1")
    print(table(["model", "params (M, training)", "params (M, inference)", "GFLOPs"], rows),
          flush=True)
    if not args.mfu_model:
        return
    mfu_size = parse_size(args.mfu_size, "--mfu-size")
    peak = matmul_peak(DTYPES[args.dtype], args.matmul_size)
    flops, seconds = train_step_rate(args.mfu_model, args.num_classes, mfu_size, args.mfu_batch,
                                     args.dtype, args.repeats)
    print(f"\ntrain step of {args.mfu_model}, {mfu_size[0]}x{mfu_size[1]} batch "
          f"{args.mfu_batch}, {args.dtype} compute; matmul peak from {args.matmul_size}^2 "
          f"products")
    print(table(["GFLOPs / step", "s / step", "achieved GFLOP/s", "matmul peak GFLOP/s",
                 "fraction of peak"],
                [[f"{flops / 1e9:.1f}", f"{seconds:.3f}", f"{flops / seconds / 1e9:.1f}",
                  f"{peak / 1e9:.1f}", f"{flops / seconds / peak:.3f}"]]))


if __name__ == "__main__":
    main()
