"""How fast DANet-R50-D8's train step (or inference) could be on XLA:CPU: its matrix products
and convolutions, each run alone, against the whole step and PyTorch's.

Traces the engine's train step or the jitted forward pass (``compare_torch.py``'s attnzoo
function: the DANet recipe, one device) to its jaxpr, collects every ``dot_general`` and
``conv_general_dilated`` it holds (forward, both gradients; inside nested calls, custom
gradients and loops), and times each distinct one alone on random inputs of its shapes and
dtypes (jitted, median of ``--repeats``). Their sum, each counted as often as the step runs
it, is the time XLA:CPU's own kernels need for the step's arithmetic at the rate they reach
alone on all cores: whatever else (BatchNorm, activations, copies, the optimizer) is fused
away, a step of the same products is not faster than that unless the kernels are (the
compiled step may run two products side by side, each on fewer threads). The same run times the whole
step in attnzoo and in PyTorch eager (fresh processes, ``compare_torch.py``'s cells) and
prints the target's time: 0.67x PyTorch's for float32, PyTorch's own for bfloat16 (#19).

    python benchmarks/product_bound.py [--mode train] [--size 512x512] [--batch 1]
        [--dtype float32] [--top 10]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

PRODUCTS = ("dot_general", "conv_general_dilated")
# the targets: attnzoo's step time as a fraction of PyTorch eager's
TARGETS = {"float32": 0.67, "bfloat16": 1.0}


def _subjaxprs(value: Any) -> Iterator[Any]:
    """The jaxprs an equation's parameter holds (a Jaxpr, a ClosedJaxpr, or sequences of them)."""
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _subjaxprs(item)


def products(jaxpr: Any, times: int = 1,
             found: dict[str, list] | None = None) -> dict[str, list]:
    """Every matrix product and convolution a jaxpr runs, by a key of its primitive, operand
    types and parameters: ``{key: [equation, how many times it runs]}``.

    Nested jaxprs (jitted calls, custom gradients, ``cond`` branches) count once each, a
    ``scan`` body ``length`` times; a ``while`` loop's count is unknown, so one is an error.
    """
    found = {} if found is None else found
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "while":
            raise ValueError("the program holds a while loop: its products' count is unknown")
        if name in PRODUCTS:
            key = repr((name, [str(v.aval) for v in eqn.invars], sorted(
                (k, repr(v)) for k, v in eqn.params.items())))
            found.setdefault(key, [eqn, 0])[1] += times
            continue
        inner = times * (eqn.params["length"] if name == "scan" else 1)
        for sub in (s for value in eqn.params.values() for s in _subjaxprs(value)):
            products(sub, inner, found)
    return found


def time_alone(eqn: Any, repeats: int) -> tuple[float, float]:
    """(seconds, FLOPs) of one product equation run alone, jitted, on random operands."""
    import jax
    import jax.numpy as jnp

    from common import time_fn

    keys = jax.random.split(jax.random.key(0), len(eqn.invars))
    operands = [jax.random.normal(k, v.aval.shape, jnp.float32).astype(v.aval.dtype)
                for k, v in zip(keys, eqn.invars)]
    fn = jax.jit(lambda *ops: eqn.primitive.bind(*ops, **eqn.params))
    flops = float(fn.lower(*operands).compile().cost_analysis()["flops"])
    return time_fn(lambda: fn(*operands), repeats=repeats), flops


def describe(eqn: Any) -> str:
    """A short name of a product: primitive, operand shapes and dtypes."""
    shapes = " x ".join(f"{v.aval.dtype}{list(v.aval.shape)}" for v in eqn.invars)
    return f"{'conv' if eqn.primitive.name.startswith('conv') else 'dot'} {shapes}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=tuple(TARGETS), default="float32",
                        help="compute dtype (parameters stay float32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=10,
                        help="also list this many of the products that take longest in all")
    parser.add_argument("--no-steps", action="store_true",
                        help="skip timing the whole steps (attnzoo and PyTorch)")
    args = parser.parse_args()
    os.environ["JAX_PLATFORMS"] = "cpu"  # the compare_torch workers inherit it

    import jax

    from common import machine, parse_size, table
    from compare_torch import in_subprocess, jax_setup

    print(machine(), flush=True)
    size = parse_size(args.size, "--size")
    step, (first, data) = jax_setup(args.mode, size, args.batch, args.dtype)
    found = products(jax.make_jaxpr(step)(first, data).jaxpr)
    del first, data
    rows, total_s, total_flops = [], 0.0, 0.0
    for eqn, count in found.values():
        seconds, flops = time_alone(eqn, args.repeats)
        total_s += count * seconds
        total_flops += count * flops
        rows.append((count * seconds, count, seconds, flops, describe(eqn)))
    what = "train step" if args.mode == "train" else "inference call"
    print(f"\n{sum(r[1] for r in rows)} products ({len(rows)} distinct) in the {what}: "
          f"{total_flops / 1e9:.0f} GFLOP, {total_s:.3f} s run alone "
          f"({total_flops / total_s / 1e9:.0f} GFLOP/s)", flush=True)
    if args.top:
        print(table(["s in all", "count", "ms each", "GFLOP/s", "product"],
                    [[f"{t:.3f}", n, f"{s * 1e3:.1f}", f"{f / s / 1e9:.0f}", d]
                     for t, n, s, f, d in sorted(rows, reverse=True)[:args.top]]))
    if args.no_steps:
        return
    base = dict(mode=args.mode, size=size, batch=args.batch, dtype=args.dtype,
                repeats=args.repeats, device="cpu")
    cells = {fw: in_subprocess({**base, "framework": fw}) for fw in ("jax", "torch")}
    failed = [f"{fw}: {r['failed']}" for fw, r in cells.items() if "failed" in r]
    if failed:
        raise SystemExit(f"a {what} failed: " + "; ".join(failed))
    torch_s, jax_s = cells["torch"]["seconds"], cells["jax"]["seconds"]
    target = TARGETS[args.dtype] * torch_s
    print(f"\nDANet-R50-D8 {what}, {args.size}, batch {args.batch}, {args.dtype} compute, "
          f"median of {args.repeats}")
    print(table(["", "seconds", "/ PyTorch"], [
        ["PyTorch eager", f"{torch_s:.3f}", "1.00"],
        ["attnzoo", f"{jax_s:.3f}", f"{jax_s / torch_s:.2f}"],
        ["attnzoo's products alone", f"{total_s:.3f}", f"{total_s / torch_s:.2f}"],
        [f"target ({TARGETS[args.dtype]}x PyTorch)", f"{target:.3f}",
         f"{TARGETS[args.dtype]:.2f}"]]))
    verdict = ("above the target: XLA:CPU's products alone take longer than the target allows"
               if total_s > target else "under the target: the products leave "
               f"{target - total_s:.3f} s for everything else")
    print(f"\nproducts alone {total_s:.3f} s vs target {target:.3f} s: {verdict}")


if __name__ == "__main__":
    main()
