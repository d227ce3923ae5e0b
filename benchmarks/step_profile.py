"""Where one DANet-R50-D8 train step (or inference call) spends its time on XLA:CPU, by kind of
operation.

Runs ``compare_torch.py``'s attnzoo function (the engine's train step with the DANet recipe, or
the jitted forward pass) under ``jax.profiler.trace``, reads the trace's per-operation events
(XLA:CPU names each executed operation after its HLO instruction) and sorts each instruction
of the compiled program into a kind: convolutions, matrix products, fusions that reduce (the
BatchNorm statistics and their gradients, softmax sums, the loss), other fusions (elementwise:
normalisation, activations, optimizer updates), copies and transposes, and the rest. Prints
milliseconds per kind summed over the traced calls' events and divided by their number, and
each kind's share of the sum (operations may overlap on two threads, so shares are of busy
time, not of wall time).

    python benchmarks/step_profile.py [--mode train] [--size 512x512] [--batch 1] [--calls 2] [--top 40]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

KINDS = ("convolution", "matrix product", "reducing fusion", "elementwise fusion",
         "copy / transpose", "other")
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\((.*)$")
CALLS = re.compile(r"calls=%?([\w.\-]+)")


def instruction_kinds(hlo: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (kind, instruction line), for every instruction of the optimized
    module's text (a fusion takes the kind of the heaviest operation its computation holds)."""
    computations: dict[str, list[str]] = collections.defaultdict(list)
    current = ""
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and "{" in line:
            current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
        match = INSTRUCTION.match(line)
        if match:
            computations[current].append(line)

    def opcodes(name: str, seen: set[str]) -> set[str]:
        found = set()
        for line in computations.get(name, []):
            match = INSTRUCTION.match(line)
            found.add(match.group(2))
            for callee in CALLS.findall(line):
                if callee not in seen:
                    seen.add(callee)
                    found |= opcodes(callee, seen)
        return found

    kinds = {}
    for lines in computations.values():
        for line in lines:
            name, opcode, _ = INSTRUCTION.match(line).groups()
            ops = {opcode}
            for callee in CALLS.findall(line):
                ops |= opcodes(callee, {callee})
            if "convolution" in ops:
                kind = "convolution"
            elif "dot" in ops:
                kind = "matrix product"
            elif opcode == "fusion" and ops & {"reduce", "reduce-window", "scatter"}:
                kind = "reducing fusion"
            elif opcode == "fusion":
                kind = "elementwise fusion"
            elif opcode in ("copy", "transpose"):
                kind = "copy / transpose"
            else:
                kind = "other"
            kinds[name] = (kind, line.strip())
    return kinds


def event_times(trace_dir: Path) -> collections.Counter:
    """Total microseconds per event name in the profile's perfetto trace."""
    (path,) = trace_dir.rglob("perfetto_trace.json.gz")
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    totals: collections.Counter = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            totals[event["name"]] += event.get("dur", 0.0)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--calls", type=int, default=2, help="traced calls after a warm-up")
    parser.add_argument("--top", type=int, default=0,
                        help="also list this many of the heaviest instructions, with their HLO")
    args = parser.parse_args()

    import jax

    from common import machine, parse_size, table
    from compare_torch import jax_setup

    print(machine(), flush=True)
    size = parse_size(args.size, "--size")
    fn, (first, data) = jax_setup(args.mode, size, args.batch, args.dtype)
    kinds = instruction_kinds(fn.lower(first, data).compile().as_text())

    def call(first):
        out = fn(first, data)
        jax.block_until_ready(out)
        return out[0] if args.mode == "train" else first

    first = call(first)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(args.calls):
                first = call(first)
        times = event_times(Path(tmp))
    per_kind: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    heaviest = []
    for name, micros in times.items():
        if name in kinds:
            kind, line = kinds[name]
            per_kind[kind] += micros / 1e3 / args.calls
            count[kind] += 1
            heaviest.append((micros / 1e3 / args.calls, kind, line))
    busy = sum(per_kind.values())
    if not busy:
        raise SystemExit("the trace holds no events named after the program's instructions")
    rows = [[kind, f"{per_kind[kind]:.0f}", f"{per_kind[kind] / busy:.0%}", count[kind]]
            for kind in KINDS]
    rows.append(["all", f"{busy:.0f}", "100%", sum(count.values())])
    print(f"\nDANet-R50-D8 {args.mode} at {args.size}, batch {args.batch}, {args.dtype}: "
          f"ms per call by kind (mean of {args.calls} traced calls)")
    print(table(["kind", "ms", "share of busy time", "instructions"], rows))
    if args.top:
        print(f"\nThe {args.top} heaviest instructions (ms per call, kind, HLO):")
        for ms, kind, line in sorted(heaviest, reverse=True)[:args.top]:
            print(f"{ms:8.1f}  {kind:18s}  {line[:300]}")


if __name__ == "__main__":
    main()
