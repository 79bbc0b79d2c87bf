"""A channel-slimmed ConvNeXt: transformers' ConvNeXt whose blocks' MLPs have the widths of its config."""

from __future__ import annotations

from torch import nn
from transformers import ConvNextForImageClassification, ConvNextModel

from .configuration_ltap_convnext import LTAPConvNextConfig


def _set_mlp_widths(model: ConvNextModel, config: LTAPConvNextConfig) -> None:
    if config.intermediate_sizes is None:
        return
    for stage, widths in zip(model.encoder.stages, config.intermediate_sizes):
        for layer, width in zip(stage.layers, widths):
            dim = layer.pwconv1.in_features
            layer.pwconv1, layer.pwconv2 = nn.Linear(dim, width), nn.Linear(width, dim)


class LTAPConvNextModel(ConvNextModel):
    config_class = LTAPConvNextConfig

    def __init__(self, config: LTAPConvNextConfig):
        super().__init__(config)
        _set_mlp_widths(self, config)
        self.post_init()


class LTAPConvNextForImageClassification(ConvNextForImageClassification):
    config_class = LTAPConvNextConfig

    def __init__(self, config: LTAPConvNextConfig):
        super().__init__(config)
        _set_mlp_widths(self.convnext, config)
        self.post_init()


__all__ = ["LTAPConvNextForImageClassification", "LTAPConvNextModel"]
