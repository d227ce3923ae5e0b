"""Memory and compile time of the big models' train step, plain, rematerialised, scanned.

For each model (mmseg's recipe at 512x512) and each variant (``config.model.remat``,
``config.model.scan_layers``), a fresh process builds the engine's train step on one device
(the recipe's optimizer and its state), lowers it on abstract arguments and compiles it, at 1
and at 2 images per device. From the compiled program's ``memory_analysis()``:

    peak = arguments + outputs - donated (aliased) + temporaries

per device, the memory one step needs: parameters, optimizer state and batch in, the new state
out (donated: it reuses the input's buffers), and the activations kept for the backward pass
among the temporaries. Nothing runs. The largest batch per device that fits a device of
``--capacities`` GB is extrapolated linearly from the two batches (the step's memory is affine
in the batch: the state is fixed, the activations per image).

XLA:CPU's default scheduler orders the program for concurrency and hoists rematerialised
computation next to the forward pass, which would hide what remat saves; the rows compile with
its memory-minimising scheduler (``--xla_cpu_enable_concurrency_optimized_scheduler=false``),
as accelerators schedule under a memory limit.

    python benchmarks/big_models.py                      # Swin-L UPerNet, ViT-L SETR-PUP
    python benchmarks/big_models.py --models upernet_swin_t --variants "plain;transformer=dots"
    python benchmarks/big_models.py --models segmenter_vit_b_mask,setr_vit_l_pup \
        --variants "plain;scan;transformer=nothing;scan,transformer=nothing"   # compile times
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = ("upernet_swin_l", "setr_vit_l_pup")
VARIANTS = ("plain", "transformer=dots", "transformer=nothing",
            "transformer=nothing,head=nothing")
MEMORY_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def parse_variant(text: str) -> dict[str, object]:
    """The config fields of a variant: ``"plain"`` -> ``{}``; ``"scan,transformer=dots"`` ->
    ``{"model.scan_layers": True, "model.remat.transformer": "dots"}``."""
    if text == "plain":
        return {}
    fields: dict[str, object] = {}
    for part in text.split(","):
        kind, _, policy = part.partition("=")
        if part == "scan":
            fields["model.scan_layers"] = True
        elif kind and policy:
            fields[f"model.remat.{kind}"] = policy
        else:
            raise SystemExit(f"--variants: {text!r} is not 'plain' or 'scan' / 'kind=policy' "
                             "items joined by commas")
    return fields


def measure(model_name: str, variant: str, batch: int, size: int) -> dict[str, float]:
    """Compile the train step of ``model_name``'s ADE20K recipe with remat ``variant`` for
    ``batch`` images of ``size`` x ``size`` on one device: its memory and compile time."""
    import jax
    import jax.numpy as jnp

    from attnzoo import engine
    from attnzoo.engine.config import load_config_file
    from attnzoo.engine.state import abstract_state
    from attnzoo.sharding import batch_sharding, make_mesh

    config = load_config_file(f"{ROOT / 'configs' / 'mmseg.py'}:{model_name},ade20k")
    config.dataset.crop_size = (size, size)
    config.batch_size = batch
    config.update_from_flattened_dict(parse_variant(variant))
    engine.config.check_domains(config)
    model = engine.build_model(config)
    tx, schedule = engine.make_optimizer(config.optimizer, config.num_steps)
    mesh = make_mesh(jax.devices()[:1])
    step = engine.make_train_step(model, tx, schedule, config, mesh)
    state = abstract_state(model, tx, config, mesh)
    sharding = batch_sharding(mesh)
    data = {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32, sharding=sharding),
            "label": jax.ShapeDtypeStruct((batch, size, size), jnp.int32, sharding=sharding)}
    start = time.perf_counter()
    compiled = step.lower(state, data).compile()
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))
    return {"compile_s": seconds, "params": params, "arguments": m.argument_size_in_bytes,
            "outputs": m.output_size_in_bytes, "alias": m.alias_size_in_bytes,
            "temp": m.temp_size_in_bytes,
            "peak": m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes}


def in_fresh_process(model_name: str, variant: str, batch: int, size: int) -> dict[str, float]:
    """:func:`measure` in a child process with XLA:CPU's memory-minimising scheduler."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": " ".join([os.environ.get("XLA_FLAGS", ""), MEMORY_SCHEDULER]).strip()}
    out = subprocess.run([sys.executable, __file__, "--worker", model_name, variant, str(batch),
                          str(size)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{model_name} {variant} batch {batch} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def largest_batch(one: float, two: float, capacity: float) -> int:
    """The largest batch ``b`` with ``one + (b - 1) (two - one) <= capacity`` (0 if none)."""
    per_image = two - one
    if one > capacity:
        return 0
    return 1 + int((capacity - one) // per_image) if per_image > 0 else 10**6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--variants", default=";".join(VARIANTS),
                        help="';'-separated: 'plain', or 'scan' (config.model.scan_layers) and "
                             "'kind=policy' (config.model.remat) items joined by commas")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--capacities", default="16,80", help="device memory, GB (1e9 bytes)")
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
    for name in args.models.split(","):
        for variant in variants:
            one, two = (in_fresh_process(name, variant, b, args.size) for b in (1, 2))
            gib = 2.0**30
            rows.append([name, variant, f"{two['params'] / gib:.2f}", f"{one['peak'] / gib:.2f}",
                         f"{two['peak'] / gib:.2f}", f"{two['temp'] / gib:.2f}",
                         *(largest_batch(one["peak"], two["peak"], c * 1e9)
                           for c in capacities),
                         f"{two['compile_s']:.0f}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    print(f"\n{machine()}; train step at {args.size}x{args.size}, one device, AdamW; "
          f"XLA_FLAGS {MEMORY_SCHEDULER}")
    print(table(["model", "remat", "params GiB", "peak GiB, 1 image", "peak GiB, 2 images",
                 "temporaries GiB, 2 images",
                 *(f"largest batch, {c:g} GB" for c in capacities), "compile s, 2 images"],
                rows))


if __name__ == "__main__":
    main()
