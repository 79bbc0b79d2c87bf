"""Small long-tailed image data made on the fly: class c has a brightness offset, so a net can learn it."""

import datasets
import numpy as np
import torch

from ltap_hf.data.transforms import random_crop_with_padding, random_horizontal_flip


TOY_COUNTS = [64, 32, 16, 8]


def toy_split(counts: list[int], seed: int, size: int = 8) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([[c] * n for c, n in enumerate(counts)])
    pixels = rng.normal(size=(len(labels), 3, size, size)).astype(np.float32) + 0.5 * labels[:, None, None, None]
    return datasets.Dataset.from_dict({"pixel_values": pixels, "labels": labels}).with_format("torch")


def toy_splits() -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train with TOY_COUNTS images per class, balanced validation with 6 per class)."""
    return toy_split(TOY_COUNTS, seed=0), toy_split([6] * len(TOY_COUNTS), seed=1)


class ToyAugmentation:
    """Random crop and flip of the toy images with ltap_hf's own training augmentation, which draws from
    torch's global RNG like `TrainTransform` does; for `Dataset.with_transform`."""

    def __call__(self, batch: dict) -> dict:
        images = torch.stack([torch.as_tensor(p) for p in batch["pixel_values"]]).permute(0, 2, 3, 1)
        images = random_horizontal_flip(random_crop_with_padding(images, padding=1))
        return {"pixel_values": images.permute(0, 3, 1, 2).contiguous(), "labels": torch.as_tensor(batch["labels"])}


def augmented_toy_splits() -> tuple[datasets.Dataset, datasets.Dataset]:
    """`toy_splits` with `ToyAugmentation` on the training split."""
    train, validation = toy_splits()
    return train.with_format(None).with_transform(ToyAugmentation()), validation
