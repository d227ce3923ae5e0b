"""DANet-R50-D8 in attnzoo (JAX) vs PyTorch eager: inference latency and training-step time.

The PyTorch model is ``torch_danet.TorchDANet`` (timm ``resnet50c`` at output stride 8 and an
mmsegmentation-style DANet head); its weights are copied into attnzoo's ``danet_r50_d8`` with
``attnzoo.convert``, and the script first checks that both give the same logits (eval mode,
PyTorch in float64). Then, for each input size and batch:

* inference: ``model(images)["out"]`` in eval mode (PyTorch under ``inference_mode``);
* train step: forward in training mode, the recipe's loss (cross-entropy on the main, PAM, CAM
  and 0.4 x auxiliary logits, ignore 255), backward and SGD (momentum 0.9, weight decay 5e-4 on
  kernels only, poly learning rate). attnzoo runs the engine's own jitted train step
  (``attnzoo.engine.make_train_step``), PyTorch the same computation in eager mode.

Each (framework, mode, size, batch) runs in a fresh process: one warm-up call (which includes
JAX's compilation, reported separately), then the median of ``--repeats`` calls. The ratio
attnzoo / PyTorch comes from one run of this script (same machine, same threads); with
``--xla-flags`` (repeated) the attnzoo cells run once per set of XLA options beside the same
PyTorch cell. It first
prints both frameworks' rate for a square matmul (``--matmul-size``, default 2048; float32
and bfloat16 inputs): the peak the models' convolutions are measured against.

    python benchmarks/compare_torch.py                       # CPU: 512x512, 512x1024; batch 1, 2
    python benchmarks/compare_torch.py --sizes 256x256 --batches 1 --repeats 2
    python benchmarks/compare_torch.py --device gpu --dtype bfloat16 --batches 2,8   # gpu.sh
    python benchmarks/compare_torch.py --sizes 512x512 --batches 1 \
        --xla-flags= --xla-flags=--xla_cpu_use_onednn=true        # XLA:CPU options side by side
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

NUM_CLASSES = 19


def torch_model(seed: int = 0):
    import torch
    from torch_danet import TorchDANet, randomize

    torch.manual_seed(seed)
    return randomize(TorchDANet(NUM_CLASSES), seed)


def attnzoo_variables(torch_danet: Any, model: Any) -> dict:
    import jax.numpy as jnp
    from attnzoo.convert import convert_state_dict, target_shapes

    target = target_shapes(model, jnp.zeros((1, 64, 64, 3), jnp.float32))
    return convert_state_dict(torch_danet.state_dict(), target)


def batch_arrays(size: tuple[int, int], batch: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, *size, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, (batch, *size)).astype(np.int32)
    labels[:, : size[0] // 8] = 255  # some ignored pixels, as in real label maps
    return images, labels


def timed(fn: Callable[[], Any], repeats: int, sync: Callable[[Any], Any]) -> tuple[float, float]:
    """(first call's seconds, median of ``repeats`` further calls), each synchronised."""
    t0 = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def jax_setup(mode: str, size: tuple[int, int], batch: int, dtype: str
              ) -> tuple[Callable[..., Any], tuple[Any, Any]]:
    """attnzoo's jitted function for ``mode`` and its arguments on one device, with the PyTorch
    model's weights: inference ``(variables, images) -> logits``; train
    ``(state, batch) -> (state, metrics)``, the engine's step for the DANet recipe."""
    import jax
    import jax.numpy as jnp

    from attnzoo import engine
    from attnzoo.engine.config import load_config_file
    from attnzoo.sharding import batch_sharding, make_mesh, replicated

    config = load_config_file(str(Path(__file__).resolve().parents[1] / "configs" / "mmseg.py")
                              + ":danet_r50_d8,cityscapes")
    config.compute_dtype = dtype
    config.dataset.crop_size = size
    config.batch_size = batch
    model = engine.build_model(config)
    variables = attnzoo_variables(torch_model(), model)
    images, labels = batch_arrays(size, batch)
    mesh = make_mesh(jax.devices()[:1])
    if mode == "infer":
        apply = jax.jit(lambda v, x: model.apply(v, x.astype(model.head.dtype))["out"])
        return apply, (jax.device_put(variables, replicated(mesh)),
                       jax.device_put(images, batch_sharding(mesh)))
    tx, schedule = engine.make_optimizer(config.optimizer, config.num_steps)
    params = variables["params"]
    state = engine.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                              rng=jax.random.key_data(jax.random.key(0)))
    step = engine.make_train_step(model, tx, schedule, config, mesh)
    return step, (jax.device_put(state, replicated(mesh)),
                  jax.device_put({"image": images, "label": labels}, batch_sharding(mesh)))


def run_jax(mode: str, size: tuple[int, int], batch: int, dtype: str, repeats: int) -> dict:
    import jax

    fn, (first_arg, data) = jax_setup(mode, size, batch, dtype)
    if mode == "infer":
        first, seconds = timed(lambda: fn(first_arg, data), repeats, jax.block_until_ready)
    else:
        state = first_arg

        def call():
            nonlocal state
            state, metrics = fn(state, data)
            return metrics["loss"]

        first, seconds = timed(call, repeats, jax.block_until_ready)
    return {"first": first, "seconds": seconds}


def run_torch(mode: str, size: tuple[int, int], batch: int, dtype: str, repeats: int,
              device: str) -> dict:
    import torch
    from torch_danet import loss

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    model = torch_model().to(dev)
    images, labels = batch_arrays(size, batch)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(dev)
    y = torch.from_numpy(labels).long().to(dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def sync(value: torch.Tensor) -> float:
        return float(value.float().sum())  # waits for the device

    if mode == "infer":
        model.eval()

        def call():
            with torch.inference_mode(), autocast:
                return model(x)["out"]
    else:
        model.train()
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4},
                               {"params": no_decay, "weight_decay": 0.0}], lr=0.01, momentum=0.9)
        sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=80_000, power=0.9)

        def call():
            opt.zero_grad(set_to_none=True)
            with autocast:
                value = loss(model(x), y)
            value.backward()
            opt.step()
            sched.step()
            return value.detach()

    first, seconds = timed(call, repeats, sync)
    return {"first": first, "seconds": seconds, "threads": torch.get_num_threads()}


def parity() -> float:
    """max |attnzoo - PyTorch| / max |PyTorch| of eval logits on a 64x96 image (PyTorch float64)."""
    import jax
    import numpy as np
    import torch

    from attnzoo import models

    reference = torch_model().eval()
    model = models.create("danet_r50_d8", num_classes=NUM_CLASSES)
    variables = attnzoo_variables(reference, model)
    images, _ = batch_arrays((64, 96), 1)
    got = np.asarray(jax.jit(lambda v, x: model.apply(v, x)["out"])(variables, images))
    with torch.no_grad():
        want = reference.double()(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).double())
    want = want["out"].numpy().transpose(0, 2, 3, 1)
    return float(np.abs(got - want).max() / np.abs(want).max())


def matmul_rates(n: int, repeats: int, device: str) -> dict:
    """GFLOP/s of an ``n x n`` by ``n x n`` product, float32 and bfloat16 inputs (float32 sums
    in JAX via ``preferred_element_type``; PyTorch's CPU bf16 ``mm`` accumulates in float32)."""
    import jax
    import jax.numpy as jnp
    import torch

    rates = {}
    for name, jdt, tdt in [("float32", jnp.float32, torch.float32),
                           ("bfloat16", jnp.bfloat16, torch.bfloat16)]:
        a = jax.random.normal(jax.random.key(0), (n, n), jdt)
        dot = jax.jit(lambda x: jax.lax.dot(x, x, preferred_element_type=jnp.float32))
        _, seconds = timed(lambda: dot(a), repeats, jax.block_until_ready)
        rates[f"jax {name}"] = 2 * n**3 / seconds / 1e9
        t = torch.randn(n, n, dtype=tdt, device="cuda" if device == "gpu" else "cpu")
        _, seconds = timed(lambda: t @ t, repeats, lambda v: float(v[0, 0]))
        rates[f"torch {name}"] = 2 * n**3 / seconds / 1e9
    return rates


def worker(spec: dict) -> dict:
    if spec["framework"] == "parity":
        return {"error": parity()}
    if spec["framework"] == "matmul":
        return matmul_rates(spec["n"], spec["repeats"], spec["device"])
    size = tuple(spec["size"])
    if spec["framework"] == "jax":
        return run_jax(spec["mode"], size, spec["batch"], spec["dtype"], spec["repeats"])
    return run_torch(spec["mode"], size, spec["batch"], spec["dtype"], spec["repeats"],
                     spec["device"])


def in_subprocess(spec: dict, timeout: float | None = None, xla_flags: str = "") -> dict:
    """``worker(spec)`` in a fresh process, ``xla_flags`` added to its ``XLA_FLAGS``."""
    env = dict(os.environ)
    if xla_flags:
        env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), xla_flags]).strip()
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"failed": f"stopped after {timeout:.0f} s (--cell-timeout)"}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
        return {"failed": f"exit {done.returncode}: {tail[:120]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512x512,512x1024")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--modes", default="infer,train")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype (parameters stay float32)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--cell-timeout", type=float, default=None,
                        help="seconds a (framework, mode, size, batch) cell may take")
    parser.add_argument("--xla-flags", action="append", default=None, metavar="FLAGS",
                        help="XLA_FLAGS for the attnzoo cells; repeat to compare several in one "
                             "run ('' is XLA's defaults; the default: only that)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"  # the workers inherit it
    from common import machine, parse_size, table

    sizes = [parse_size(s, "--sizes") for s in args.sizes.split(",")]
    print(machine(), flush=True)
    check = in_subprocess({"framework": "parity"})
    print(f"parity (eval logits, 64x96): max |attnzoo - PyTorch| / max |PyTorch| = "
          f"{check.get('error', check.get('failed'))}", flush=True)
    n = args.matmul_size
    rates = in_subprocess({"framework": "matmul", "n": n, "repeats": 5, "device": args.device},
                          args.cell_timeout)
    print(f"{n}x{n} matmul GFLOP/s: " + ("; ".join(f"{k} {v:.3g}" for k, v in rates.items())
                                          if "failed" not in rates else rates["failed"]),
          flush=True)
    rows = []
    for mode in args.modes.split(","):
        for size in sizes:
            for batch in (int(b) for b in args.batches.split(",")):
                base = dict(mode=mode, size=size, batch=batch, dtype=args.dtype,
                            repeats=args.repeats, device=args.device)
                pt = in_subprocess({**base, "framework": "torch"}, args.cell_timeout)
                for flags in args.xla_flags or [""]:
                    jx = in_subprocess({**base, "framework": "jax"}, args.cell_timeout, flags)
                    cells = [mode, f"{size[0]}x{size[1]}", batch, f"`{flags}`" if flags else "-"]
                    for r in (jx, pt):
                        cells.append(r["failed"] if "failed" in r else f"{r['seconds']:.3f}")
                    if "failed" in jx or "failed" in pt:
                        cells += ["-", "-"]
                    else:
                        cells += [f"{jx['seconds'] / pt['seconds']:.2f}", f"{jx['first']:.1f}"]
                    rows.append(cells)
                    print(" | ".join(str(c) for c in cells), flush=True)
    threads = f"; PyTorch threads {pt.get('threads', '?')}" if args.device == "cpu" else ""
    print(f"\nDANet-R50-D8, 19 classes, {args.dtype} compute, median of {args.repeats}"
          f"{threads}")
    print(table(["mode", "size", "batch", "XLA_FLAGS", "attnzoo s", "PyTorch s",
                 "attnzoo / PyTorch", "attnzoo first call s (compile)"], rows))


if __name__ == "__main__":
    main()
