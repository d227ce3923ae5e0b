"""Compose attention blocks into a small segmentation net and train it on CPU.

The task needs long-range context: every image holds a yellow square and a
cyan disc on noise, and a marker in the top-left corner; the marker's colour
decides whether squares are class 1 and discs class 2, or the other way
round. A pixel of a shape far from the marker can only be labelled right by
a network that carries the marker's information across the image, which is
what DANet's position and channel attention do (a local network stays at
chance, 0.5, on shape pixels).

    python examples/demo.py                # ~20 seconds on 2 CPU cores
    python examples/demo.py --steps 50     # quicker

The training engine (``train.py``) replaces this script as the main job.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnzoo import blocks

SIZE = 32
NUM_CLASSES = 3


def make_batch(rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(B, 32, 32, 3)`` and labels ``(B, 32, 32)`` of the context task."""
    images = rng.normal(0.0, 0.3, (batch, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.zeros((batch, SIZE, SIZE), np.int32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(batch):
        swap = rng.integers(2)
        images[i, :8, :8] = (1.5, -1.0, -1.0) if swap else (-1.0, -1.0, 1.5)  # the marker
        for shape in (0, 1):
            r = rng.integers(3, 6)
            cy, cx = rng.integers(r + 9, SIZE - r, size=2)
            if shape == 0:
                mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
            else:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            images[i][mask] = (0.8, 0.8, -0.5) if shape == 0 else (-0.5, 0.8, 0.8)
            labels[i][mask] = 1 + (shape ^ swap)
    return images, labels


class TinyDANet(nn.Module):
    """conv stem (stride 4) -> CBAM -> PAM + CAM (summed) -> classifier -> upsample."""

    width: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for stride in (2, 2):
            x = blocks.ConvNormAct(self.width, 3, stride=stride)(x, train=train)
        x = blocks.ConvNormAct(self.width, 3)(x, train=train)
        x = blocks.create("cbam", channels=self.width, rd_ratio=0.25)(x, train=train)
        pam = blocks.create("pam", channels=self.width, name="pam")(x)
        cam = blocks.create("cam", channels=self.width, name="cam")(x)
        x = blocks.ConvNormAct(self.width, 3)(pam + cam, train=train)
        logits = nn.Conv(NUM_CLASSES, (1, 1))(x)
        b, h, w, c = logits.shape
        return jax.image.resize(logits, (b, h * 4, w * 4, c), "bilinear")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    model = TinyDANet()
    images, _ = make_batch(rng, args.batch)
    variables = model.init(jax.random.key(args.seed), images)
    params, batch_stats = variables["params"], variables["batch_stats"]
    tx = optax.adam(optax.cosine_decay_schedule(3e-3, args.steps))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, batch_stats, opt_state, images, labels):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                          train=True, mutable=["batch_stats"])
            # Shape pixels weigh 10x: they are few, and they are where context matters.
            weights = jnp.where(labels > 0, 10.0, 1.0)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            loss = (loss * weights).sum() / weights.sum()
            return loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    @jax.jit
    def predict(params, batch_stats, images):
        return model.apply({"params": params, "batch_stats": batch_stats}, images).argmax(-1)

    def shape_accuracy(params, batch_stats, eval_rng):
        images, labels = make_batch(eval_rng, 64)
        pred = np.asarray(predict(params, batch_stats, images))
        fg = labels > 0
        return float((pred[fg] == labels[fg]).mean())

    print(f"TinyDANet: {sum(p.size for p in jax.tree.leaves(params)):,} parameters; "
          f"{args.steps} steps of batch {args.batch} on {jax.devices()[0].platform}")
    t0 = time.perf_counter()
    for i in range(1, args.steps + 1):
        images, labels = make_batch(rng, args.batch)
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, images, labels)
        if i % 100 == 0 or i == args.steps:
            print(f"step {i:4d}  loss {float(loss):.4f}  ({time.perf_counter() - t0:.0f} s)")
    acc = shape_accuracy(params, batch_stats, np.random.default_rng(12345))
    print(f"accuracy on shape pixels of 64 new images: {acc:.3f} (chance: 0.5)")
    print(f"learned attention gammas: PAM {float(params['pam']['gamma'][0]):+.3f}, "
          f"CAM {float(params['cam']['gamma'][0]):+.3f} (both start at 0)")


if __name__ == "__main__":
    main()
