"""The image processor saved beside a model, so that `pipeline("image-classification", model=folder)` works."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import ViTImageProcessorPil


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
