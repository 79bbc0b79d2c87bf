"""Configuration of a channel-slimmed ConvNeXt: transformers' `ConvNextConfig` plus the width of every
block's MLP, so that a network whose blocks kept different numbers of hidden channels is an ordinary config."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import ConvNextConfig


@strict
class LTAPConvNextConfig(ConvNextConfig):
    r"""
    [`ConvNextConfig`] with per-block MLP widths.

    Args:
        intermediate_sizes (`list[list[int]]`, *optional*): `intermediate_sizes[stage][block]`, the hidden
            width of that block's MLP (`pwconv1` outputs, `pwconv2` inputs). None: 4 x the stage width,
            as in ConvNeXt.
    """

    model_type = "ltap_convnext"

    intermediate_sizes: list[list[int]] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        sizes = self.intermediate_sizes
        if sizes is not None and (
            [len(stage) for stage in sizes] != list(self.depths)
            or any(not isinstance(w, int) or w < 1 for stage in sizes for w in stage)
        ):
            raise ValueError(f"`intermediate_sizes` needs one positive width per block, depths {list(self.depths)}, got {sizes}")


__all__ = ["LTAPConvNextConfig"]
