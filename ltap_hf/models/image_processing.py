"""The image processor saved beside a model, so that `pipeline("image-classification", model=folder)` works.

    processor = load_image_processor("facebook/convnext-tiny-224")   # the backbone's own, or None
    stats = model_input_stats(DATASET_STATS["cifar10_lt"], processor)  # its size and normalisation
    processor = processor or image_processor_for_stats(stats)          # what the output folder carries
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from transformers import AutoImageProcessor, ViTImageProcessorPil
from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils import IMAGE_PROCESSOR_NAME, cached_file

from ..data.transforms import EVAL_CROP_FRACTION, DatasetStats


def make_image_processor(image_size: int, mean: Sequence[float], std: Sequence[float]) -> ViTImageProcessorPil:
    """A resize + rescale + normalise processor with the training normalisation.

    The PIL-backed class works without torchvision; its saved config names the ViT processor, so that an
    environment with torchvision loads the fast variant of the same transform.
    """
    if len(mean) != len(std):
        raise ValueError(f"mean and std must have one value per channel, got {len(mean)} and {len(std)}")
    return ViTImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=list(mean), image_std=list(std)
    )


def image_processor_for_stats(stats: DatasetStats) -> ViTImageProcessorPil:
    """The processor that evaluates as `EvalTransform(stats)` does: its resize (``resize_size``: the shorter
    side, or to (height, width)), centre crop to ``image_size`` and normalisation.

    Without ``resize_size``: a stored-size dataset's images are resized to ``image_size`` (they already are
    that size; other images are brought to it), an ImageNet-style one's shorter side to
    ``image_size / 0.875`` before the centre crop.
    """
    side = stats.image_size
    resize = stats.resize_size
    if resize is None:
        resize = round(side / EVAL_CROP_FRACTION) if stats.resized_crop else (side, side)
    if isinstance(resize, int):
        size, crop = {"shortest_edge": resize}, True
    else:
        size, crop = {"height": resize[0], "width": resize[1]}, tuple(resize) != (side, side)
    center_crop = {"do_center_crop": True, "crop_size": {"height": side, "width": side}} if crop else {}
    return ViTImageProcessorPil(size=size, resample=stats.resample, image_mean=list(stats.mean),
                                image_std=list(stats.std), **center_crop)


def load_image_processor(pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> BaseImageProcessor | None:
    """The image processor saved with a model (a folder or a Hub repo), or None when it has none.

    Args:
        kwargs: as for `AutoImageProcessor.from_pretrained` (`revision`, `cache_dir`, `token`, ...).
    """
    download = {key: kwargs[key] for key in ("revision", "cache_dir", "token", "local_files_only") if key in kwargs}
    found = cached_file(str(pretrained_model_name_or_path), IMAGE_PROCESSOR_NAME,
                        _raise_exceptions_for_missing_entries=False, **download)
    if found is None:
        return None
    return AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
