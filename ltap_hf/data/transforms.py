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

A pretrained backbone brings its own input geometry and normalisation in its image processor;
`model_input_stats` turns a dataset's `DatasetStats` into those of the model's input::

    stats = model_input_stats(DATASET_STATS["cifar10_lt"], AutoImageProcessor.from_pretrained(name))
    train = ds["train"].with_transform(TrainTransform(stats))   # processor's size and mean/std
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
            for evaluation. When ``False`` (and no ``resize_size``), images are used at their
            stored size.
        resize_size: a model's input geometry, as its image processor resizes: every image is
            resized (an int: its shorter side to that, the aspect kept, as a processor's
            ``{"shortest_edge": n}``; ``(height, width)``: to exactly that) and centre-cropped to
            ``image_size``. Evaluation does just that; training does it before the random crop and
            flip (with ``resized_crop``, training takes its random resized crop instead).
        resample: the PIL filter of the resizes (an image processor's ``resample``).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    crop_padding: int = 4
    horizontal_flip: bool = True
    resized_crop: bool = False
    resize_size: int | tuple[int, int] | None = None
    resample: int = int(PIL.Image.Resampling.BILINEAR)

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            raise ValueError(f"mean and std must both have 1 or 3 entries, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.resize_size is not None:
            sides = (self.resize_size,) if isinstance(self.resize_size, int) else tuple(self.resize_size)
            if len(sides) not in (1, 2) or min(sides) < self.image_size:
                raise ValueError(
                    f"resize_size must be an int or (height, width), none smaller than image_size={self.image_size} "
                    f"(the centre crop), got {self.resize_size}"
                )

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
    resample: int = PIL.Image.BILINEAR,
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
    return image.resize((size, size), resample, box=(left, top, left + crop_w, top + crop_h))


def resize_center_crop(
    image: PIL.Image.Image, size: int, crop_fraction: float = EVAL_CROP_FRACTION
) -> PIL.Image.Image:
    """Resize the shorter side to ``size / crop_fraction`` and take the centred ``size x size``
    square, in one resampling."""
    width, height = image.size
    side = min(width, height) * crop_fraction
    left, top = (width - side) / 2, (height - side) / 2
    return image.resize((size, size), PIL.Image.BILINEAR, box=(left, top, left + side, top + side))


def resize_then_center_crop(
    image: PIL.Image.Image, resize_size: int | tuple[int, int], crop_size: int, resample: int = PIL.Image.BILINEAR
) -> PIL.Image.Image:
    """An image processor's geometry, pixel for pixel: resize, then the centred ``crop_size x crop_size``.

    `resize_size` as an int resizes the shorter side to it and the longer one to
    ``int(resize_size * long / short)`` (transformers' ``get_resize_output_image_size``); as
    ``(height, width)`` to exactly that. The crop starts at ``((H - crop) // 2, (W - crop) // 2)``,
    as transformers' ``center_crop``; a resize already at ``crop_size`` needs no crop.
    """
    width, height = image.size
    if isinstance(resize_size, int):
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(resize_size * long / short)
        new_height, new_width = (new_long, resize_size) if width <= height else (resize_size, new_long)
    else:
        new_height, new_width = resize_size
    if (new_width, new_height) != image.size:
        image = image.resize((new_width, new_height), resample)
    if (new_width, new_height) != (crop_size, crop_size):
        top, left = (new_height - crop_size) // 2, (new_width - crop_size) // 2
        image = image.crop((left, top, left + crop_size, top + crop_size))
    return image


def _as_pil(image: Any, num_channels: int) -> PIL.Image.Image:
    # Resized in the mode the model sees (as a pipeline converts to RGB first); "P" images would
    # otherwise be resized as palette indices.
    mode = "L" if num_channels == 1 else "RGB"
    image = image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(image))
    return image if image.mode == mode else image.convert(mode)


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
        if stats.resized_crop and self.train:
            images = [random_resized_crop(image, stats.image_size, resample=stats.resample) for image in images]
        elif stats.resize_size is not None:
            images = [
                resize_then_center_crop(_as_pil(image, stats.num_channels), stats.resize_size, stats.image_size, stats.resample)
                for image in images
            ]
        elif stats.resized_crop:
            images = [resize_center_crop(image, stats.image_size) for image in images]
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
    """Training transform: random crop with zero padding (after the resize and centre crop of
    ``resize_size``, if set; or random resized crop), horizontal flip, normalisation."""

    train = True


class EvalTransform(ImageTransform):
    """Evaluation transform: normalisation (after the resize and centre crop of ``resize_size``, or
    ImageNet-style data's)."""


# Processors whose `resize` is transformers' generic one (size, then the optional centre crop). Others
# resize in their own way and are read only where this module knows that way (ConvNeXt's crop_pct).
_GENERIC_RESIZE_MODULES = ("transformers.image_processing_backends", "transformers.image_processing_utils",
                           "transformers.image_processing_utils_fast")
_CONVNEXT_WARP_FROM = 384  # ConvNextImageProcessor: from this shortest_edge on, it warps instead of crop_pct


def _size_field(size: Any, key: str) -> int | None:
    # A processor's `size` is a SizeDict (transformers 5) or a plain dict (older saved configs).
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def _resample_filter(resample: Any) -> int:
    if resample is None:
        return int(PIL.Image.Resampling.BILINEAR)
    name = getattr(resample, "name", None)  # PIL's Resampling, or torchvision's InterpolationMode
    if name is not None and name.upper() in PIL.Image.Resampling.__members__:
        return int(PIL.Image.Resampling[name.upper()])
    return int(resample)


def image_processor_geometry(image_processor: Any) -> tuple[int | tuple[int, int], int, int] | None:
    """``(resize_size, crop_size, resample)`` of an image processor's geometry (see `DatasetStats`), or
    None for a processor that does not resize (``do_resize=False``).

    Reads transformers' conventions: ``size={"height", "width"}`` (ViT, Swin, DeiT's resize),
    ``size={"shortest_edge"}`` with ConvNeXt's ``crop_pct`` (ConvNeXt, ResNet: below 384 the shorter
    side goes to ``int(shortest_edge / crop_pct)`` and the centre is cropped, from 384 on the image is
    warped to a square), or with ``do_center_crop`` and ``crop_size`` (CLIP, BiT, DeiT).

    Raises:
        ValueError: for a geometry these transforms cannot reproduce (non-square input, a resize of the
            processor's own, padding, channel flipping, an aspect-keeping resize without a crop); the
            message says to pass an explicit size.
    """
    name = type(image_processor).__name__
    if getattr(image_processor, "do_flip_channel_order", False) or getattr(image_processor, "do_pad", False):
        raise ValueError(f"{name} flips channels or pads images, which these transforms do not reproduce")
    center_crop = bool(getattr(image_processor, "do_center_crop", False))
    if not getattr(image_processor, "do_resize", True):
        if center_crop:
            raise ValueError(f"{name} centre-crops without resizing, which these transforms do not reproduce")
        return None
    size = getattr(image_processor, "size", None) or {}
    height, width, shortest = (_size_field(size, key) for key in ("height", "width", "shortest_edge"))
    others = [key for key in ("longest_edge", "max_height", "max_width") if _size_field(size, key)]
    # The class whose `resize` runs (None: not a transformers processor, read by its attributes alone).
    resize_owner = next((cls for cls in type(image_processor).__mro__ if "resize" in vars(cls)), None)
    convnext = resize_owner is not None and resize_owner.__name__.startswith("ConvNextImageProcessor")
    if resize_owner is not None and not convnext and resize_owner.__module__ not in _GENERIC_RESIZE_MODULES:
        raise ValueError(f"{name} resizes in its own way ({resize_owner.__name__}.resize), which these transforms do "
                         "not reproduce")
    if others:
        raise ValueError(f"{name} resizes to size={dict(size)}, which these transforms do not reproduce")
    if height and width:
        resize_size, output = (height, width), (height, width)
    elif shortest and convnext:
        if shortest < _CONVNEXT_WARP_FROM:
            resize_size, output = int(shortest / image_processor.crop_pct), (shortest, shortest)
        else:
            resize_size, output = (shortest, shortest), (shortest, shortest)
    elif shortest:
        resize_size, output = shortest, None  # the aspect kept: only a centre crop makes it square
    else:
        raise ValueError(f"{name} has no size to resize to (size={size})")
    if center_crop:
        crop = getattr(image_processor, "crop_size", None) or {}
        output = (_size_field(crop, "height"), _size_field(crop, "width"))
        if convnext and isinstance(resize_size, int):
            raise ValueError(f"{name} crops twice (crop_pct, then crop_size), which these transforms do not reproduce")
    if output is None or output[0] != output[1] or not output[0]:
        raise ValueError(f"{name} does not give square inputs (size={dict(size)}, centre crop: "
                         f"{getattr(image_processor, 'crop_size', None) if center_crop else 'none'})")
    sides = (resize_size,) if isinstance(resize_size, int) else resize_size
    if min(sides) < output[0]:
        raise ValueError(f"{name} crops {output[0]} pixels from a smaller resize ({resize_size}): it would pad")
    return resize_size, output[0], _resample_filter(getattr(image_processor, "resample", None))


def image_processor_normalization(image_processor: Any, num_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` for `normalize` (which divides by 255) that give what the processor gives:
    ``(x * rescale_factor - image_mean) / image_std`` (no rescale: factor 1; no normalisation: mean 0,
    std 1), one value per channel."""
    name = type(image_processor).__name__
    factor = float(image_processor.rescale_factor) if getattr(image_processor, "do_rescale", True) else 1.0
    if getattr(image_processor, "do_normalize", True):
        mean, std = image_processor.image_mean, image_processor.image_std
    else:
        mean, std = 0.0, 1.0
    values = []
    for value in (mean, std):
        value = [float(value)] * num_channels if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(value) != num_channels:
            raise ValueError(f"{name} normalises {len(value)} channels; the dataset's images have {num_channels}")
        values.append(value)
    # normalize() computes (x / 255 - m) / s: with m = mean / (255 * factor), s = std / (255 * factor)
    # that is (x * factor - mean) / std. The usual factor 1/255 is kept exact.
    scale = 255.0 * factor
    scale = 1.0 if math.isclose(scale, 1.0, rel_tol=1e-9) else scale
    return tuple(m / scale for m in values[0]), tuple(s / scale for s in values[1])


def model_input_stats(
    dataset_stats: DatasetStats,
    image_processor: Any | None = None,
    image_size: int | None = None,
    use_dataset_normalization: bool = False,
) -> DatasetStats:
    """The `DatasetStats` of a model's input: the dataset's augmentation, at the size and with the
    normalisation of the model's image processor unless overridden.

    - No processor, no override: `dataset_stats` itself (the dataset's size and statistics).
    - A processor: its geometry (`image_processor_geometry`) for evaluation, and for training the same
      resize and centre crop followed by the dataset's random crop, its zero padding scaled with the
      image (digits' 1 pixel at 8 pixels becomes 4 at 32), and flip; an ImageNet-style dataset
      (``resized_crop``) keeps its random resized crop, now to the processor's size. Its mean and std.
    - `image_size`: inputs of ``image_size x image_size``; the processor's geometry scaled to it (a
      ConvNeXt's 256-then-224 at 160: 182-then-160), or without a processor the stored images resized
      to it (an ImageNet-style dataset: its own resize and crop at that size).
    - `use_dataset_normalization`: the dataset's mean and std instead of the processor's.

    Args:
        dataset_stats: the dataset's (`DATASET_STATS[name]`), for its stored size and augmentation.
        image_processor: a transformers image processor (or anything with its attributes), or None.
    """
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    mean, std = dataset_stats.mean, dataset_stats.std
    geometry = None
    if image_processor is not None:
        if not use_dataset_normalization:
            mean, std = image_processor_normalization(image_processor, dataset_stats.num_channels)
        try:
            geometry = image_processor_geometry(image_processor)
        except ValueError as error:
            if image_size is None:
                raise ValueError(f"{error}: pass an explicit input size (image_size) to use its normalisation "
                                 "with the dataset's geometry") from error
    if geometry is None and image_size is None:
        return dataclasses.replace(dataset_stats, mean=tuple(mean), std=tuple(std))
    if geometry is None:
        if dataset_stats.resized_crop:
            return dataclasses.replace(dataset_stats, mean=tuple(mean), std=tuple(std), image_size=image_size)
        geometry = ((image_size, image_size), image_size, dataset_stats.resample)
    resize_size, crop_size, resample = geometry
    if image_size is not None and image_size != crop_size:
        scale = image_size / crop_size
        resize_size = (max(image_size, round(resize_size * scale)) if isinstance(resize_size, int)
                       else tuple(max(image_size, round(side * scale)) for side in resize_size))
        crop_size = image_size
    # The dataset's shift, in its own pixels, is as strong at the new scale.
    shorter_side = resize_size if isinstance(resize_size, int) else min(resize_size)
    crop_padding = dataset_stats.crop_padding
    if not dataset_stats.resized_crop:
        crop_padding = round(crop_padding * shorter_side / dataset_stats.image_size)
    return dataclasses.replace(dataset_stats, mean=tuple(mean), std=tuple(std), image_size=crop_size,
                               resize_size=resize_size, resample=resample, crop_padding=crop_padding)


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack transformed rows into ``{"pixel_values": [B, C, H, W], "labels": int64 [B]}``."""
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([int(example["labels"]) for example in examples], dtype=torch.long)
    return batch
