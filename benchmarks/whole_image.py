"""Whole-image DANet inference: dense vs memory-bounded position attention, end to end.

DANet-R50-D8 (19 classes) predicts a whole Cityscapes-sized image in one call, as
mmsegmentation's ``mode="whole"`` test does. At 1024x2048 the position-attention map has
``(1024/8 * 2048/8)^2 = 32768^2`` entries (4 GiB in float32, and the softmax needs the scores
and the weights). ``memory_efficient=True`` computes the same attention in query x key chunks
with an online softmax (``attnzoo.ops.chunked_dot_product_attention``).

Both paths share one set of random weights (attention gammas set to 0.5 so the attention
matters). Each (size, path) runs in a fresh process that compiles, then measures the resident
memory one call adds (Linux high-water mark) and the call's time; the logits of the two paths
are compared (max abs difference) where both ran.

    python benchmarks/whole_image.py                        # 512x1024 and 1024x2048
    python benchmarks/whole_image.py --sizes 256x512 --model danet_r18_d8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

OUT = Path("/tmp/attnzoo_whole_image")


def worker(model_name: str, size: tuple[int, int], path: str, out_file: str) -> dict:
    import flax
    import jax
    import jax.numpy as jnp
    import numpy as np

    from attnzoo import models
    from common import execution_peak_bytes

    model = models.create(model_name, num_classes=19, memory_efficient=path == "bounded")
    init_model = models.create(model_name, num_classes=19)
    variables = flax.core.unfreeze(jax.jit(init_model.init)(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32)))
    for branch in ("pam", "cam"):
        variables["params"]["head"][branch]["gamma"] = jnp.full((1,), 0.5, jnp.float32)
    images = jnp.asarray(np.random.default_rng(0).standard_normal((1, *size, 3)), jnp.float32)
    t0 = time.perf_counter()
    compiled = jax.jit(lambda v, x: model.apply(v, x)["out"]).lower(variables, images).compile()
    compile_s = time.perf_counter() - t0
    peak = execution_peak_bytes(compiled, variables, images)
    t0 = time.perf_counter()
    logits = jax.block_until_ready(compiled(variables, images))
    seconds = time.perf_counter() - t0
    np.save(out_file, np.asarray(logits))
    return {"peak": peak, "seconds": seconds, "compile": compile_s}


def in_subprocess(model_name: str, size: tuple[int, int], path: str) -> dict:
    out_file = OUT / f"{path}_{size[0]}x{size[1]}.npy"
    spec = json.dumps([model_name, size, path, str(out_file)])
    done = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True,
                          text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
        why = "killed: out of memory?" if done.returncode < 0 else tail[:80]
        return {"failed": f"exit {done.returncode} ({why})"}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "file": out_file}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512x1024,1024x2048")
    parser.add_argument("--model", default="danet_r50_d8")
    parser.add_argument("--paths", default="dense,bounded")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, size, path, out_file = json.loads(args.worker)
        print(json.dumps(worker(name, tuple(size), path, out_file)))
        return
    import numpy as np

    from common import machine, parse_size, table

    from attnzoo.inference import available_memory_bytes

    paths = args.paths.split(",")
    if not set(paths) <= {"dense", "bounded"}:
        raise SystemExit(f"--paths: expected dense and/or bounded, got {args.paths!r}")
    print(machine(), flush=True)
    OUT.mkdir(exist_ok=True)
    rows = []
    for text in args.sizes.split(","):
        size = parse_size(text, "--sizes")
        n = (size[0] // 8) * (size[1] // 8)
        results = {}
        for path in paths:
            need = 2 * n * n * 4  # the dense path's N x N scores and softmax weights
            if path == "dense" and need > available_memory_bytes() // 2:
                results[path] = {"failed": f"skipped: its N x N maps need {need / 2**30:.0f} GiB"}
            else:
                results[path] = in_subprocess(args.model, size, path)
        ran = [r for r in results.values() if "failed" not in r]
        diff = "-"
        if len(ran) == 2:
            a, b = (np.load(r["file"]) for r in ran)
            diff = f"{np.abs(a - b).max():.1e} (max abs logit {np.abs(a).max():.2f})"
        for path, r in results.items():
            if "failed" in r:
                rows.append([text, n, path, r["failed"], "-", "-", diff])
            else:
                rows.append([text, n, path, f"{r['peak'] / 2**30:.2f}", f"{r['seconds']:.1f}",
                             f"{r['compile']:.0f}", diff])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print(f"\n{args.model}, batch 1, float32, whole-image inference")
    print(table(["image", "positions N", "attention", "peak GiB (one call)", "s / image",
                 "compile s", "max abs diff dense vs bounded"], rows))


if __name__ == "__main__":
    main()
