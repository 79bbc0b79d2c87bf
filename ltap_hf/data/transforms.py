"""Image transforms and collation for `transformers.Trainer`, in torch alone (no torchvision).

Usage::

    train = ds["train"].with_transform(TrainTransform.from_dataset("cifar10_lt"))
    evaluation = ds["validation"].with_transform(EvalTransform.from_dataset("cifar10_lt"))
    Trainer(..., train_dataset=train, eval_dataset=evaluation, data_collator=collate_fn,
            args=TrainingArguments(..., remove_unused_columns=False))

A transform receives a whole batch of decoded images (`datasets` fetches a batch per
``__getitems__`` call) and works on it as one ``uint8`` tensor: crop offsets, flips and
normalisation are vectorised over the batch. Random draws use torch's global generator, so
Trainer's RNG checkpoints (and DataLoader worker seeding) make resumed runs reproducible.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DatasetStats:
    """Normalisation constants and augmentation defaults of one dataset.

    Args:
        mean: per-channel mean of pixel values in [0, 1] (its length is the number of channels).
        std: per-channel standard deviation.
        image_size: side of the (square) model input.
        crop_padding: zero padding of the training random crop (CIFAR: 4); 0 disables it.
        horizontal_flip: flip training images left-right with probability 0.5.
        resized_crop: ImageNet-style geometry: random resized crop (scale 0.08-1, aspect 3/4-4/3)
            for training; resize of the shorter side to ``image_size / 0.875`` and centre crop
            for evaluation. When ``False``, images are used at their stored size.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    crop_padding: int = 4
    horizontal_flip: bool = True
    resized_crop: bool = False

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            raise ValueError(f"mean and std must both have 1 or 3 entries, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")

    @property
    def num_channels(self) -> int:
        return len(self.mean)


# CIFAR-10: the constants of Cao et al.'s LDAM-DRW code (its "std" is the widely copied
# 0.2023/0.1994/0.2010). CIFAR-100: its own statistics. ImageNet: the torchvision constants.
# iNaturalist: Kang et al. (2020). digits: measured on all 1,797 images scaled to [0, 1].
DATASET_STATS: dict[str, DatasetStats] = {
    "cifar10_lt": DatasetStats((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), image_size=32),
    "cifar100_lt": DatasetStats((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), image_size=32),
    "imagenet_lt": DatasetStats(
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), image_size=224, crop_padding=0, resized_crop=True
    ),
    "inaturalist2018": DatasetStats(
        (0.466, 0.471, 0.380), (0.195, 0.194, 0.192), image_size=224, crop_padding=0, resized_crop=True
    ),
    # 8x8 digits: a 1-pixel shift is already strong, and a mirrored digit is another symbol. The
    # grayscale images are read as RGB, since image-classification pipelines hand models RGB images.
    "digits_lt": DatasetStats((0.3053,) * 3, (0.3759,) * 3, image_size=8, crop_padding=1, horizontal_flip=False),
}

EVAL_CROP_FRACTION = 0.875  # ImageNet convention: resize to 256, centre crop 224


def stack_images(images: Sequence[Any], num_channels: int) -> torch.Tensor:
    """Decoded images (PIL or arrays) of one size -> ``uint8`` tensor ``[B, H, W, C]``."""
    mode = "L" if num_channels == 1 else "RGB"
    arrays = [
        np.asarray(image.convert(mode) if isinstance(image, PIL.Image.Image) and image.mode != mode else image)
        for image in images
    ]
    batch = torch.from_numpy(np.stack(arrays))
    return batch.unsqueeze(-1) if batch.ndim == 3 else batch


def random_crop_with_padding(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by `padding` and crop back at a random offset per image.

    Args:
        images: ``[B, H, W, C]``.
        padding: pixels added on each side.

    Returns:
        ``[B, H, W, C]``: each image shifted by an independent offset in ``[-padding, padding]``.
    """
    if padding == 0:
        return images
    batch, height, width, _ = images.shape
    padded = F.pad(images, (0, 0, padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, batch))
    rows = offsets[0, :, None] + torch.arange(height)
    cols = offsets[1, :, None] + torch.arange(width)
    return padded[torch.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_horizontal_flip(images: torch.Tensor) -> torch.Tensor:
    """Mirror each image of ``[B, H, W, C]`` left-right with probability 0.5."""
    flip = torch.rand(images.shape[0]) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(2), images)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``uint8 [B, H, W, C]`` -> ``float32 [B, C, H, W]`` with ``(x / 255 - mean) / std``."""
    std_tensor = torch.tensor(std, dtype=torch.float32)[:, None, None]
    mean_tensor = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    pixels = images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    return pixels.mul_(1.0 / (255.0 * std_tensor)).sub_(mean_tensor / std_tensor)


def random_resized_crop(
    image: PIL.Image.Image,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> PIL.Image.Image:
    """A random region of `scale` of the area and `ratio` aspect, resized to ``size x size``
    (10 tries, then the largest centred region within `ratio`)."""
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        draws = torch.rand(2).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, ()).item())
            left = int(torch.randint(0, width - crop_w + 1, ()).item())
            break
    else:
        aspect = min(max(width / height, ratio[0]), ratio[1])
        if width / height < aspect:
            crop_w, crop_h = width, round(width / aspect)
        else:
            crop_w, crop_h = round(height * aspect), height
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return image.resize((size, size), PIL.Image.BILINEAR, box=(left, top, left + crop_w, top + crop_h))


def resize_center_crop(
    image: PIL.Image.Image, size: int, crop_fraction: float = EVAL_CROP_FRACTION
) -> PIL.Image.Image:
    """Resize the shorter side to ``size / crop_fraction`` and take the centred ``size x size``
    square, in one resampling."""
    width, height = image.size
    side = min(width, height) * crop_fraction
    left, top = (width - side) / 2, (height - side) / 2
    return image.resize((size, size), PIL.Image.BILINEAR, box=(left, top, left + side, top + side))


class ImageTransform:
    """Batch transform for `datasets.Dataset.with_transform`: ``{image_column: [images],
    label_column: [ints]}`` -> ``{"pixel_values": float32 [B, C, H, W], "labels": int64 [B]}``
    (``labels`` only when the batch has labels)."""

    train = False

    def __init__(self, stats: DatasetStats, image_column: str = "image", label_column: str = "label") -> None:
        self.stats = stats
        self.image_column = image_column
        self.label_column = label_column

    @classmethod
    def from_dataset(cls, name: str, **overrides: Any) -> ImageTransform:
        """The transform with `DATASET_STATS[name]`; `overrides` replace `DatasetStats` fields
        (e.g. ``crop_padding=0``) or set ``image_column`` / ``label_column``."""
        if name not in DATASET_STATS:
            raise ValueError(f"name must be one of {sorted(DATASET_STATS)}, got {name!r}")
        columns = {key: overrides.pop(key) for key in ("image_column", "label_column") if key in overrides}
        return cls(dataclasses.replace(DATASET_STATS[name], **overrides), **columns)

    def _geometry(self, images: list[Any]) -> torch.Tensor:
        stats = self.stats
        if stats.resized_crop:
            resize = random_resized_crop if self.train else resize_center_crop
            images = [resize(image, stats.image_size) for image in images]
        batch = stack_images(images, stats.num_channels)
        if self.train:
            batch = random_crop_with_padding(batch, stats.crop_padding)
            if stats.horizontal_flip:
                batch = random_horizontal_flip(batch)
        return batch

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        if self.image_column not in batch:
            raise ValueError(f"image_column={self.image_column!r} is not in the batch; columns: {list(batch)}")
        output = {"pixel_values": normalize(self._geometry(batch[self.image_column]), self.stats.mean, self.stats.std)}
        if self.label_column in batch:
            output["labels"] = torch.as_tensor(batch[self.label_column], dtype=torch.long)
        return output

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.stats})"


class TrainTransform(ImageTransform):
    """Training transform: random crop with zero padding (or random resized crop), horizontal
    flip, normalisation."""

    train = True


class EvalTransform(ImageTransform):
    """Evaluation transform: normalisation (after resize and centre crop for ImageNet-style data)."""


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack transformed rows into ``{"pixel_values": [B, C, H, W], "labels": int64 [B]}``."""
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([int(example["labels"]) for example in examples], dtype=torch.long)
    return batch
