"""Helpers shared by the benchmark scripts: machine description and timing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import jax


# x86 vector extensions, widest first: the kernels XLA and PyTorch pick (and so speed and rounding)
# differ between them, and bfloat16 runs at the matmul peak only with avx512_bf16.
VECTOR_EXTENSIONS = ("avx512_bf16", "avx512f", "avx2")


def cpu_description(cpuinfo: str) -> str:
    """The model name and the widest vector extension in ``/proc/cpuinfo``'s text.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo``.

    Returns:
        e.g. ``"AMD EPYC (avx2, no avx512f)"`` or ``"AMD EPYC (avx512_bf16)"``; ``"unknown CPU"`` when no model name is given.
    """
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    name = fields.get("model name", "unknown CPU")
    flags = set(fields.get("flags", "").split())
    have = [i for i, e in enumerate(VECTOR_EXTENSIONS) if e in flags]
    if not have:
        return name
    widest = have[0]
    lacks = f", no {VECTOR_EXTENSIONS[widest - 1]}" if widest else ""
    return f"{name} ({VECTOR_EXTENSIONS[widest]}{lacks})"


def machine() -> str:
    """One line naming the CPU (with its vector extensions), core count, JAX version and device."""
    try:
        cpu = cpu_description(Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = platform.processor() or "unknown CPU"
    dev = jax.devices()[0]
    return (f"{cpu}; {os.cpu_count()} cores; jax {jax.__version__}; "
            f"{len(jax.devices())} x {dev.platform}:{dev.device_kind}")


def time_fn(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn()`` (blocked until ready), after warm-up."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def execution_peak_bytes(compiled: Callable[..., Any], *args: Any) -> int:
    """Peak memory that one call of an already compiled ``compiled(*args)`` adds.

    CPU (Linux): resets the process's high-water mark (``/proc/self/clear_refs``
    <- 5), runs, and returns ``VmHWM`` minus the resident size before the call.
    (XLA:CPU's ``memory_analysis()`` reports no temporaries, so it cannot be used.)
    GPU/TPU: the allocator's ``peak_bytes_in_use`` after the call minus
    ``bytes_in_use`` before it (the peak cannot be reset, so nothing bigger may
    run before the call in that process).
    Run each measurement in a fresh process so freed memory is not reused.
    """
    jax.block_until_ready(args)
    device = jax.devices()[0]
    if device.platform != "cpu":
        before = device.memory_stats()["bytes_in_use"]
        jax.block_until_ready(compiled(*args))
        return device.memory_stats()["peak_bytes_in_use"] - before
    return host_peak_bytes(lambda: compiled(*args))


def host_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak resident memory (Linux) that ``fn()`` adds: resets the process's high-water mark
    (``/proc/self/clear_refs`` <- 5), runs, and returns ``VmHWM`` minus the resident size
    before the call."""
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    jax.block_until_ready(fn())
    return (_status_kib("VmHWM") - before) * 1024


def parse_size(text: str, flag: str) -> tuple[int, int]:
    """``"512x1024"`` -> ``(512, 1024)``; anything else exits naming ``flag``."""
    h, _, w = text.strip().partition("x")
    if not (h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise SystemExit(f"{flag}: expected HxW (e.g. 512x1024), got {text!r}")
    return int(h), int(w)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-markdown table."""
    cells = [[str(c) for c in r] for r in [headers] + rows]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in headers) + "|")
    return "\n".join(lines)
