"""Run logging: TensorBoard event files (tensorboardX, no TensorFlow), a JSON-lines metrics
file and a console progress line with step time and ETA. Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np


def _format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _scalar(v: Any) -> float:
    return float(np.asarray(v))


class RunLogger:
    """``WORKDIR/tensorboard/`` event files, ``WORKDIR/metrics.jsonl`` (one object a line:
    ``{"step", "split", ...}``) and a progress line on ``stream``.

    Evaluation metrics are in percent everywhere (console, ``metrics.jsonl``, TensorBoard), as
    mmsegmentation's logs; the losses, learning rate and norms as computed.
    """

    def __init__(self, workdir: str | Path, num_steps: int, *, start_step: int = 0,
                 stream: TextIO = sys.stdout, enabled: bool | None = None) -> None:
        """``start_step``: the step training goes on from. Rows of later steps (written by an
        attempt that stopped after its last checkpoint, and about to be trained again) move
        from ``metrics.jsonl`` to ``metrics.replayed.jsonl``, and TensorBoard is told to hide
        its events of those steps (``purge_step``), so both show one curve."""
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.rows: list[dict[str, Any]] = []  # metrics.jsonl's rows (process 0's only)
        self.num_steps, self.stream = num_steps, stream
        self._last: tuple[int, float] | None = None
        self._seconds_per_step = math.nan
        if self.enabled:
            from tensorboardX import SummaryWriter

            workdir = Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step + 1)
            path = workdir / "metrics.jsonl"
            rows = [json.loads(line) for line in path.read_text().splitlines()
                    if line.strip()] if path.is_file() else []
            self.rows = [r for r in rows if r.get("step", 0) <= start_step]
            if len(self.rows) < len(rows):
                _move_rows(path, self.rows, [r for r in rows if r.get("step", 0) > start_step])
            self.jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def logged(self, step: int, split: str) -> bool:
        """Whether ``metrics.jsonl`` already has a row of ``split`` at ``step`` (a rerun of a
        finished run does not write its evaluation again)."""
        return self.enabled and any(r.get("step") == step and r.get("split") == split
                                    for r in self.rows)

    def scalars(self, step: int, split: str, values: Mapping[str, Any], *,
                extra: Mapping[str, Any] | None = None) -> None:
        """Log scalar ``values`` under ``split/name`` in TensorBoard and one JSON line (with
        the JSON values ``extra``, e.g. per-class IoU)."""
        if not self.enabled:
            return
        row = {k: _scalar(v) for k, v in values.items()}
        for k, v in row.items():
            self.writer.add_scalar(f"{split}/{k}", v, step)
        self.record(step, split, {**row, **(extra or {})})

    def tensorboard(self, step: int, values: Mapping[str, Any]) -> None:
        """Scalars for TensorBoard only (``"tag": value``): timings, which would make two runs'
        ``metrics.jsonl`` differ."""
        if self.enabled:
            for tag, v in values.items():
                self.writer.add_scalar(tag, _scalar(v), step)

    def record(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        """One JSON line ``{"step", "split", **values}`` (``values`` JSON-serialisable)."""
        if self.enabled:
            row = {"step": step, "split": split, **values}
            self.jsonl.write(json.dumps(row) + "\n")
            self.jsonl.flush()
            self.rows.append(row)

    @property
    def seconds_per_step(self) -> float:
        """Seconds per step between the last two :meth:`progress` calls (NaN before two)."""
        return self._seconds_per_step

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """An ``(H, W, 3)`` uint8 picture in TensorBoard."""
        if self.enabled:
            self.writer.add_image(name, np.asarray(image), step, dataformats="HWC")

    def progress(self, step: int, values: Mapping[str, Any]) -> None:
        """Print ``step N/T [#####.....] loss ... s/step ETA``; step time is measured between
        calls (so it includes the input pipeline)."""
        now = time.perf_counter()
        if self._last is not None and step > self._last[0]:
            self._seconds_per_step = (now - self._last[1]) / (step - self._last[0])
        self._last = (step, now)
        if not self.enabled:
            return
        frac = step / self.num_steps
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        parts = " ".join(f"{k} {_scalar(v):.4g}" for k, v in values.items())
        timing = ""
        if math.isfinite(self._seconds_per_step):
            eta = self._seconds_per_step * (self.num_steps - step)
            timing = f"  {self._seconds_per_step:.3f} s/step  ETA {_format_seconds(eta)}"
        print(f"step {step}/{self.num_steps} [{bar}] {parts}{timing}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """Print ``text`` (process 0)."""
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()


def _move_rows(path: Path, keep: list[dict[str, Any]], replayed: list[dict[str, Any]]) -> None:
    """Append ``replayed`` to ``metrics.replayed.jsonl`` beside ``path``, then replace
    ``path`` with ``keep`` (written to a temporary file and renamed: a crash leaves the old
    or the new file, and the moved rows are in the replayed file before they leave)."""
    with open(path.with_name("metrics.replayed.jsonl"), "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in replayed)
        f.flush()
        os.fsync(f.fileno())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    os.replace(tmp, path)


def class_table(names: list[str], result: Mapping[str, Any]) -> str:
    """mmsegmentation's per-class table (IoU, Acc in percent) and the summary row."""
    width = max(len("Class"), *(len(n) for n in names))
    lines = [f"| {'Class':<{width}} |  IoU   |  Acc   |", f"|{'-' * (width + 2)}|--------|--------|"]
    for i, name in enumerate(names):
        iou, acc = (100 * float(result[k][i]) for k in ("IoU", "Acc"))
        lines.append(f"| {name:<{width}} | {iou:6.2f} | {acc:6.2f} |")
    lines.append("")
    lines.append("|  aAcc  |  mIoU  |  mAcc  | mDice  |")
    lines.append("|--------|--------|--------|--------|")
    lines.append("| " + " | ".join(f"{100 * result[k]:6.2f}" for k in ("aAcc", "mIoU", "mAcc", "mDice"))
                 + " |")
    return "\n".join(lines)
