"""Small long-tailed image data made on the fly: class c has a brightness offset, so a net can learn it."""

import datasets
import numpy as np


TOY_COUNTS = [64, 32, 16, 8]


def toy_split(counts: list[int], seed: int, size: int = 8) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([[c] * n for c, n in enumerate(counts)])
    pixels = rng.normal(size=(len(labels), 3, size, size)).astype(np.float32) + 0.5 * labels[:, None, None, None]
    return datasets.Dataset.from_dict({"pixel_values": pixels, "labels": labels}).with_format("torch")


def toy_splits() -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train with TOY_COUNTS images per class, balanced validation with 6 per class)."""
    return toy_split(TOY_COUNTS, seed=0), toy_split([6] * len(TOY_COUNTS), seed=1)
