"""Memory and compile time of the big models' train step, plain, rematerialised, scanned,
sharded.

For each model (mmseg's recipe at 512x512) and each variant (``config.model.remat``,
``config.model.scan_layers``, ``config.mesh.fsdp``), a fresh process builds the engine's train
step on one device, or with ``fsdp=N`` on a 1 x N mesh of N simulated devices (the parameters
and the recipe's optimizer state split N ways), lowers it on abstract arguments and compiles it,
at 1, 2, 4, ... images per device. From the compiled program's ``memory_analysis()``:

    peak = arguments + outputs - donated (aliased) + temporaries

per device, the memory one step needs: parameters, optimizer state and batch in, the new state
out (donated: it reuses the input's buffers), and the activations kept for the backward pass
among the temporaries. Nothing runs. The largest batch per device that fits a device of
``--capacities`` GB: the step is compiled at 1, 2, 4, ... images until its peak passes the
largest capacity, and the batch is interpolated linearly between the measured sizes around it
(the peak is not affine in the batch from one image on: at small batches it is set elsewhere
in the step than where the activations peak).

XLA:CPU's default scheduler orders the program for concurrency and hoists rematerialised
computation next to the forward pass, which would hide what remat saves; the rows compile with
its memory-minimising scheduler (``--xla_cpu_enable_concurrency_optimized_scheduler=false``),
as accelerators schedule under a memory limit. On a GPU the rows are the GPU's own program
(``benchmarks/gpu.sh`` runs the script).

    python benchmarks/big_models.py                      # Swin-L UPerNet, ViT-L SETR-PUP
    python benchmarks/big_models.py --models upernet_swin_t --variants "plain;transformer=dots"
    python benchmarks/big_models.py --models segmenter_vit_b_mask,setr_vit_l_pup \
        --variants "plain;scan;transformer=nothing;scan,transformer=nothing"   # compile times
    python benchmarks/big_models.py --variants "fsdp=8;fsdp=8,transformer=nothing"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = ("upernet_swin_l", "setr_vit_l_pup")
VARIANTS = ("plain", "transformer=dots", "transformer=nothing",
            "transformer=nothing,head=nothing", "fsdp=8", "fsdp=8,transformer=nothing")
MEMORY_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def parse_variant(text: str) -> dict[str, object]:
    """The config fields of a variant: ``"plain"`` -> ``{}``; ``"scan,transformer=dots,fsdp=8"``
    -> ``{"model.scan_layers": True, "model.remat.transformer": "dots", "mesh.fsdp": 8}``."""
    if text == "plain":
        return {}
    fields: dict[str, object] = {}
    for part in text.split(","):
        kind, _, policy = part.partition("=")
        if part == "scan":
            fields["model.scan_layers"] = True
        elif kind == "fsdp" and policy.isdigit() and int(policy) > 0:
            fields["mesh.fsdp"] = int(policy)
        elif kind and policy and kind != "fsdp":
            fields[f"model.remat.{kind}"] = policy
        else:
            raise SystemExit(f"--variants: {text!r} is not 'plain' or 'scan' / 'kind=policy' / "
                             "'fsdp=N' items joined by commas")
    return fields


def measure(model_name: str, variant: str, batch: int, size: int) -> dict[str, float]:
    """Compile the train step of ``model_name``'s ADE20K recipe as ``variant`` says for
    ``batch`` images of ``size`` x ``size`` per device (on one device, or a 1 x N mesh for
    ``fsdp=N``): its memory per device and compile time."""
    import jax
    import jax.numpy as jnp

    from attnzoo import engine
    from attnzoo.engine.config import load_config_file
    from attnzoo.engine.state import abstract_state
    from attnzoo.sharding import batch_sharding, make_mesh

    config = load_config_file(f"{ROOT / 'configs' / 'mmseg.py'}:{model_name},ade20k")
    config.dataset.crop_size = (size, size)
    config.update_from_flattened_dict(parse_variant(variant))
    devices = config.mesh.fsdp
    config.batch_size = batch * devices
    engine.config.check_domains(config)
    model = engine.build_model(config)
    tx, schedule = engine.make_optimizer(config.optimizer, config.num_steps)
    mesh = make_mesh(jax.devices()[:devices], data=1, fsdp=devices)
    step = engine.make_train_step(model, tx, schedule, config, mesh)
    state = abstract_state(model, tx, config, mesh)
    sharding = batch_sharding(mesh)
    data = {"image": jax.ShapeDtypeStruct((batch * devices, size, size, 3), jnp.float32,
                                          sharding=sharding),
            "label": jax.ShapeDtypeStruct((batch * devices, size, size), jnp.int32,
                                          sharding=sharding)}
    start = time.perf_counter()
    compiled = step.lower(state, data).compile()
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    leaves = jax.tree.leaves(state.params)
    params = sum(x.size * x.dtype.itemsize for x in leaves)
    held = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)
    return {"compile_s": seconds, "params": params, "params_held": held,
            "arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes, "alias": m.alias_size_in_bytes,
            "temp": m.temp_size_in_bytes,
            "peak": m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes}


def in_fresh_process(model_name: str, variant: str, batch: int, size: int) -> dict[str, float]:
    """:func:`measure` in a child process with XLA:CPU's memory-minimising scheduler (and, for
    ``fsdp=N``, N simulated devices)."""
    devices = parse_variant(variant).get("mesh.fsdp", 1)
    flags = [os.environ.get("XLA_FLAGS", ""), MEMORY_SCHEDULER,
             f"--xla_force_host_platform_device_count={devices}"]
    env = {**os.environ, "XLA_FLAGS": " ".join(flags).strip()}
    out = subprocess.run([sys.executable, __file__, "--worker", model_name, variant, str(batch),
                          str(size)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{model_name} {variant} batch {batch} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def largest_batch(peaks: dict[int, float], capacity: float) -> int:
    """The largest batch whose peak fits ``capacity``, from the peaks measured at some batch
    sizes: the largest measured one that fits, or, between it and the next measured (which
    does not), linearly interpolated (0 if even the smallest does not fit)."""
    sizes = sorted(peaks)
    fits = [b for b in sizes if peaks[b] <= capacity]
    if not fits:
        return 0
    lo = fits[-1]
    above = [b for b in sizes if b > lo]
    if not above:
        return lo
    hi = above[0]
    per_image = (peaks[hi] - peaks[lo]) / (hi - lo)
    return lo + int((capacity - peaks[lo]) // per_image)


def batch_peaks(name: str, variant: str, size: int, capacity: float, max_batch: int
                ) -> dict[int, dict[str, float]]:
    """:func:`measure` at 1, 2, 4, ... images per device until the peak passes ``capacity``
    (or the batch ``max_batch``; 1 and 2 always): the step's memory is not affine in small batches (the
    peak is set elsewhere in the step there), so the largest batch is interpolated between
    measured neighbours, never extrapolated."""
    found: dict[int, dict[str, float]] = {}
    batch = 1
    while batch <= max_batch:
        found[batch] = in_fresh_process(name, variant, batch, size)
        if found[batch]["peak"] > capacity and batch >= 2:  # 1 and 2 always, for the table
            break
        batch *= 2
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--variants", default=";".join(VARIANTS),
                        help="';'-separated: 'plain', or 'scan' (config.model.scan_layers) and "
                             "'kind=policy' (config.model.remat) items joined by commas")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--capacities", default="16,80", help="device memory, GB (1e9 bytes)")
    parser.add_argument("--max-batch", type=int, default=512,
                        help="the largest batch per device measured")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, variant, batch, size = args.worker
        print(json.dumps(measure(name, variant, int(batch), int(size))))
        return

    from common import machine, table

    capacities = [float(c) for c in args.capacities.split(",")]
    variants = args.variants.split(";")
    for variant in variants:
        parse_variant(variant)
    rows = []
    gib = 2.0**30
    for name in args.models.split(","):
        for variant in variants:
            found = batch_peaks(name, variant, args.size, max(capacities) * 1e9, args.max_batch)
            peaks = {b: m["peak"] for b, m in found.items()}
            two = found[2] if 2 in found else found[1]  # max_batch 1
            rows.append([name, variant, f"{two['params'] / gib:.2f}",
                         f"{two['params_held'] / gib:.2f}",
                         *(f"{peaks[b] / gib:.2f}" if b in peaks else "" for b in (1, 2)),
                         *(largest_batch(peaks, c * 1e9) for c in capacities),
                         ", ".join(f"{b}: {p / gib:.1f}" for b, p in peaks.items()),
                         f"{two['compile_s']:.0f}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    print(f"\n{machine()}; train step at {args.size}x{args.size}, one device (fsdp=N: a 1 x N "
          f"mesh, per device), the recipe's optimizer; XLA_FLAGS {MEMORY_SCHEDULER}")
    print(table(["model", "variant", "params GiB", "params GiB per device", "peak GiB, 1 image",
                 "peak GiB, 2 images",
                 *(f"largest batch, {c:g} GB" for c in capacities),
                 "peak GiB by batch (measured)", "compile s, 2 images"], rows))


if __name__ == "__main__":
    main()
