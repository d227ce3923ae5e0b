"""Peak memory and time of dense vs memory-bounded (exact) attention.

For N positions (an H x W map), compares the dense ``N x N`` path with the
online-softmax path of :mod:`attnzoo.ops` for DANet position attention
(q/k width 64, value width 512: a 512-channel PAM), embedded-Gaussian
non-local attention (inter width 256) and 8-head self-attention (512
channels, head width 64), batch 1, float32.

Peak memory: each (case, N, path) runs in a fresh process that compiles
the function, then measures the resident memory one call adds (Linux
high-water mark, see ``common.execution_peak_bytes``). Time: median of
repeated calls after warm-up. The memory-bounded output is compared with
the dense one (max abs error) on the same inputs.

    python benchmarks/attention_memory.py                 # N = 1k .. 32k
    python benchmarks/attention_memory.py --sizes 1024,4096 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import execution_peak_bytes, machine, table, time_fn  # noqa: E402

from attnzoo import ops  # noqa: E402
from attnzoo.inference import available_memory_bytes  # noqa: E402

CASES = {
    "position (PAM)": (
        (64, 64, 512),
        lambda q, k, v: ops.position_attention(q, k, v),
        lambda q, k, v: ops.position_attention(q, k, v, memory_efficient=True),
    ),
    "non-local (emb. Gaussian)": (
        (256, 256, 256),
        lambda t, p, g: ops.non_local_attention(t, p, g),
        lambda t, p, g: ops.non_local_attention(t, p, g, memory_efficient=True),
    ),
    "multi-head (8 heads)": (
        None,
        lambda q, k, v: ops.dot_product_attention(q, k, v),
        lambda q, k, v: ops.chunked_dot_product_attention(q, k, v),
    ),
}


def inputs(case: str, n: int):
    rng = np.random.default_rng(n)
    widths = CASES[case][0]
    if widths is None:
        return [jnp.asarray(rng.standard_normal((1, 8, n, 64)), jnp.float32) for _ in range(3)]
    h = 2 ** (int(math.log2(n)) // 2)
    scale = (widths[0] ** -0.25, widths[0] ** -0.25, 1.0)
    return [jnp.asarray(rng.standard_normal((1, h, n // h, c)) * s, jnp.float32)
            for c, s in zip(widths, scale)]


def worker(case: str, n: int, path: str, repeats: int) -> dict:
    """Runs in its own process: memory of one call, then timing, then the output checksum file."""
    fn = CASES[case][1 if path == "dense" else 2]
    args = inputs(case, n)
    compiled = jax.jit(fn).lower(*args).compile()
    peak = execution_peak_bytes(compiled, *args)
    seconds = time_fn(lambda: compiled(*args), repeats, warmup=0)
    out = np.asarray(compiled(*args))
    return {"peak": peak, "seconds": seconds, "out": out}


def dense_map_bytes(case: str, n: int) -> int:
    """Size of the dense path's score and weight maps (two N x N float32 maps per head)."""
    heads = 8 if CASES[case][0] is None else 1
    return 2 * heads * n * n * 4


def run_in_subprocess(case: str, n: int, path: str, repeats: int, out_file: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps([case, n, path, repeats, str(out_file)])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096,16384,32768")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        case, n, path, repeats, out_file = json.loads(args.worker)
        result = worker(case, n, path, repeats)
        np.save(out_file, result.pop("out"))
        print(json.dumps(result))
        return
    print(machine(), flush=True)
    rows = []
    tmp = Path("/tmp/attnzoo_bench")
    tmp.mkdir(exist_ok=True)
    for n in (int(s) for s in args.sizes.split(",")):
        for case in CASES:
            need = dense_map_bytes(case, n)
            if need > available_memory_bytes() // 2:
                d = {"error": f"skipped: its N x N maps need {need / 2**30:.0f} GiB"}
            else:
                d = run_in_subprocess(case, n, "dense", args.repeats, tmp / "dense.npy")
            b = run_in_subprocess(case, n, "bounded", args.repeats, tmp / "bounded.npy")
            if "error" in d:
                mem_d, t_d, ratio, err = d["error"][:60], "-", "-", "-"
            else:
                diff = np.abs(np.load(tmp / "dense.npy") - np.load(tmp / "bounded.npy")).max()
                mem_d, t_d = f"{d['peak'] / 2**20:.0f}", f"{d['seconds']:.3f}"
                ratio, err = f"{b['peak'] / max(d['peak'], 1):.3f}", f"{diff:.1e}"
            rows.append([n, case, mem_d, f"{b['peak'] / 2**20:.0f}", ratio, t_d,
                         f"{b['seconds']:.3f}", err])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print(table(["N", "attention", "dense peak MiB", "bounded peak MiB", "bounded/dense",
                 "dense s", "bounded s", "max abs diff"], rows))


if __name__ == "__main__":
    main()
