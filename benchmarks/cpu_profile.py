"""Where DANet-R50-D8 inference spends its time on XLA:CPU, and what XLA:CPU's own options change.

Part 1, by operation: the model's heaviest convolutions alone (each as in DANet-R50-D8 at
512x512, batch 1), in JAX (jitted ``lax.conv_general_dilated``, NHWC) and in PyTorch eager
(``F.conv2d``, NCHW): the forward convolution, and its backward pass (gradients with respect
to input and kernel, as a train step needs them) by XLA's own differentiation and by
``attnzoo.ops.conv2d`` (the kernel gradient as one matrix product per tap, which the models
use on CPU); median milliseconds and achieved GFLOP/s.

Part 2, by XLA:CPU option: the whole forward pass in fresh processes with ``XLA_FLAGS``
variants (oneDNN and XNNPACK code paths that this jaxlib carries as experimental flags).

    python benchmarks/cpu_profile.py [--size 512x512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# (name, input channels, output channels, kernel, dilation, feature stride): the convolutions
# that dominate DANet-R50-D8's FLOPs (layer3/layer4 bottlenecks and the head's 3x3 convs).
CONVS = [
    ("layer3 3x3, dilation 2 (256->256)", 256, 256, 3, 2, 8),
    ("layer4 3x3, dilation 4 (512->512)", 512, 512, 3, 4, 8),
    ("layer4 1x1 (512->2048)", 512, 2048, 1, 1, 8),
    ("head 3x3 (2048->512)", 2048, 512, 3, 1, 8),
]

VARIANTS = {
    "default": "",
    "oneDNN (xla_cpu_use_onednn)": "--xla_cpu_use_onednn=true",
    "XNNPACK (xla_cpu_use_xnnpack)": "--xla_cpu_use_xnnpack=true",
}


def conv_rows(size: tuple[int, int], repeats: int) -> list[list[str]]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import torch.nn.functional as F

    from attnzoo import ops
    from common import time_fn

    rows = []
    for name, cin, cout, k, dil, stride in CONVS:
        h, w = size[0] // stride, size[1] // stride
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, h, w, cin)).astype(np.float32)
        kern = rng.standard_normal((k, k, cin, cout)).astype(np.float32) * 0.01
        pad = dil * (k // 2)
        fn = jax.jit(lambda a, b: jax.lax.conv_general_dilated(
            a, b, (1, 1), [(pad, pad), (pad, pad)], rhs_dilation=(dil, dil),
            dimension_numbers=("NHWC", "HWIO", "NHWC")))
        xj, kj = jnp.asarray(x), jnp.asarray(kern)
        t_jax = time_fn(lambda: fn(xj, kj), repeats)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        kt = torch.from_numpy(kern.transpose(3, 2, 0, 1).copy())
        with torch.inference_mode():
            F.conv2d(xt, kt, padding=pad, dilation=dil)
            t_torch = time_fn(lambda: F.conv2d(xt, kt, padding=pad, dilation=dil), repeats)
        grad = jax.jit(jax.grad(lambda a, b: fn(a, b).sum(), argnums=(0, 1)))
        b_jax = time_fn(lambda: grad(xj, kj), repeats)
        ours = jax.jit(jax.grad(lambda a, b: ops.conv2d(
            a, b, dilation=dil, padding=pad, implementation="products").sum(), argnums=(0, 1)))
        b_ours = time_fn(lambda: ours(xj, kj), repeats)
        xg, kg = xt.clone().requires_grad_(), kt.clone().requires_grad_()

        def torch_backward():
            F.conv2d(xg, kg, padding=pad, dilation=dil).sum().backward()
            return kg.grad

        torch_backward()
        b_torch = time_fn(torch_backward, repeats)
        gflop = 2 * h * w * k * k * cin * cout / 1e9
        rows.append([name, f"{h}x{w}", f"{gflop:.1f}", f"{t_jax * 1e3:.0f}",
                     f"{t_torch * 1e3:.0f}", f"{gflop / t_jax:.0f}", f"{gflop / t_torch:.0f}",
                     f"{t_jax / t_torch:.2f}", f"{b_jax * 1e3:.0f}", f"{b_torch * 1e3:.0f}",
                     f"{b_jax / b_torch:.2f}", f"{b_ours * 1e3:.0f}", f"{b_ours / b_torch:.2f}"])
    return rows


def forward_seconds(size: tuple[int, int], repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    from attnzoo import models
    from common import time_fn

    model = models.create("danet_r50_d8", num_classes=19)
    x = jnp.asarray(jax.random.normal(jax.random.key(0), (1, *size, 3)))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    fn = jax.jit(lambda v, a: model.apply(v, a)["out"])
    return time_fn(lambda: fn(variables, x), repeats)


def in_subprocess(args: list[str], xla_flags: str) -> str:
    env = {**os.environ, "XLA_FLAGS": xla_flags}
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        return "failed: " + (done.stderr.strip().splitlines() or ["no output"])[-1][:100]
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=("convs", "forward"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from common import machine, parse_size, table

    size = parse_size(args.size, "--size")
    if args.worker == "convs":
        print(json.dumps(conv_rows(size, args.repeats)))
        return
    if args.worker == "forward":
        print(json.dumps(forward_seconds(size, args.repeats)))
        return
    print(machine(), flush=True)
    common_args = ["--size", args.size, "--repeats", str(args.repeats)]
    rows = json.loads(in_subprocess(["--worker", "convs", *common_args], ""))
    print(f"\nconvolutions of DANet-R50-D8 at {args.size}, batch 1, float32 (default XLA flags)")
    print(table(["convolution", "feature map", "GFLOP", "JAX ms", "PyTorch ms", "JAX GFLOP/s",
                 "PyTorch GFLOP/s", "JAX / PyTorch", "backward JAX ms", "backward PyTorch ms",
                 "backward JAX / PyTorch", "backward attnzoo ms (ops.conv2d)",
                 "backward attnzoo / PyTorch"], rows), flush=True)
    variant_rows = []
    for name, flags in VARIANTS.items():
        out = in_subprocess(["--worker", "forward", *common_args], flags)
        cell = out if out.startswith("failed") else f"{float(out):.3f}"
        variant_rows.append([name, f"`{flags}`" if flags else "-", cell])
        print(" | ".join(variant_rows[-1]), flush=True)
    print(f"\nDANet-R50-D8 inference at {args.size}, batch 1, by XLA_FLAGS")
    print(table(["variant", "XLA_FLAGS", "s / image"], variant_rows))


if __name__ == "__main__":
    main()
