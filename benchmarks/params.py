"""Parameter counts of every registered model, from the code (no weights needed).

    python benchmarks/params.py [--num-classes 19]

Counts trainable parameters (``params``; BatchNorm statistics excluded) of
the model as built for inference plus its training-only branches (the
auxiliary head, DANet's branch classifiers), by tracing ``init`` with
``jax.eval_shape`` (nothing is computed).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402

from attnzoo import models  # noqa: E402


def count(name: str, num_classes: int) -> tuple[float, float]:
    model = models.create(name, num_classes=num_classes)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    total = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    training_only = sum(
        math.prod(p.shape) for key in ("aux_head",) if key in params
        for p in jax.tree.leaves(params[key]))
    head = params.get("head", {})
    training_only += sum(math.prod(p.shape) for key in ("pam_cls", "cam_cls") if key in head
                         for p in jax.tree.leaves(head[key]))
    return total / 1e6, (total - training_only) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-classes", type=int, default=19)
    args = parser.parse_args()
    rows = []
    for name in models.list_models():
        train_m, test_m = count(name, args.num_classes)
        rows.append([name, f"{train_m:.2f}", f"{test_m:.2f}"])
    print(f"num_classes={args.num_classes}")
    print(table(["model", "params (M, training)", "params (M, inference)"], rows))


if __name__ == "__main__":
    main()
