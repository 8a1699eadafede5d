"""Synthetic image classification data, generated locally (no downloads): 10 classes of 16x16 patterns.

Each class is a fixed random pattern (from the seed); a sample is its class pattern, shifted by up to one
pixel, plus noise. Partitions draw different samples and favour different classes (mildly non-IID).
"""

from __future__ import annotations

import numpy as np

CLASSES = 10
SIDE = 16


def _patterns(seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 7])
    smooth = rng.normal(0.0, 1.0, (CLASSES, SIDE + 2, SIDE + 2))
    # a 3x3 box blur makes the patterns blob-like, which small convolutions pick up quickly
    blurred = sum(smooth[:, dy : dy + SIDE, dx : dx + SIDE] for dy in range(3) for dx in range(3)) / 3.0
    return blurred.astype(np.float32)


def draw(seed: int, partition_id: int, num_partitions: int, stream: int, count: int) -> tuple:
    """``count`` samples as (images float32 [n, 16, 16, 1], labels int64 [n])."""
    patterns = _patterns(seed)
    rng = np.random.default_rng([seed, partition_id, stream])
    preference = np.ones(CLASSES)
    preference[partition_id % CLASSES] += 1.0  # each partition sees one class more often
    labels = rng.choice(CLASSES, size=count, p=preference / preference.sum())
    shifts = rng.integers(-1, 2, size=(count, 2))
    images = np.empty((count, SIDE, SIDE), dtype=np.float32)
    for index, (label, (dy, dx)) in enumerate(zip(labels, shifts, strict=True)):
        images[index] = np.roll(patterns[label], (int(dy), int(dx)), axis=(0, 1))
    images += rng.normal(0.0, 0.8, images.shape).astype(np.float32)
    return images[..., None], labels.astype(np.int64)


def load_data(partition_id: int, num_partitions: int, config: dict) -> tuple[tuple, tuple]:
    count = int(config["samples-per-node"])
    seed = int(config["seed"])
    return (
        draw(seed, partition_id, num_partitions, 0, count),
        draw(seed, partition_id, num_partitions, 1, max(count // 4, 32)),
    )
