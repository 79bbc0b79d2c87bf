"""The adapter of transformers' ConvNeXt (`ConvNextModel`, `ConvNextForImageClassification`) and of its
slimmed form (`LTAPConvNext*`).

The channels pruned are each block's MLP hidden channels (`pwconv1` outputs with their bias, `pwconv2`
inputs): two thirds of a ConvNeXt's weights. The residual stream's channels are left whole, because every
block normalises them with a LayerNorm over the channels: removing one changes the mean and variance of
the others, so a zeroed stream channel is not a removed one and a slimmed network would compute another
function. A slimmed ConvNeXt is an `LTAPConvNextForImageClassification` whose config holds every block's
MLP width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..models.configuration_ltap_convnext import LTAPConvNextConfig
from ..models.modeling_ltap_convnext import LTAPConvNextForImageClassification, LTAPConvNextModel
from ..pruning.groups import ChannelGroup, GroupSlice
from .base import Backbone, rebuild, sliced_state


def _encoder_prefix(model: nn.Module) -> str:
    return "convnext.encoder" if hasattr(model, "convnext") else "encoder"


def _layers(model: nn.Module):
    base = model.convnext if hasattr(model, "convnext") else model
    for s, stage in enumerate(base.encoder.stages):
        for b, layer in enumerate(stage.layers):
            yield s, b, f"{_encoder_prefix(model)}.stages.{s}.layers.{b}", layer


class ConvNextBackbone(Backbone):
    """ConvNeXt: one group per block, its MLP's hidden channels; slimmed into `LTAPConvNext*`."""

    name = "convnext"
    model_types = ("convnext", "ltap_convnext")

    def channel_groups(self, model: nn.Module, example_inputs: torch.Tensor | None = None) -> list[ChannelGroup]:
        groups = []
        for _, _, name, layer in _layers(model):
            index = tuple(range(layer.pwconv1.out_features))
            slices = [GroupSlice(f"{name}.pwconv1.weight", 0, index), GroupSlice(f"{name}.pwconv1.bias", 0, index),
                      GroupSlice(f"{name}.pwconv2.weight", 1, index)]
            groups.append(ChannelGroup(f"{name}.mlp", tuple(slices)))
        return groups

    def slim_refusal(self, model: nn.Module) -> str | None:
        return None

    @torch.no_grad()
    def slim(self, model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]) -> nn.Module:
        state = sliced_state(model, groups, group_alive, group_alive)
        sizes = [[] for _ in model.config.depths]
        for s, _, name, _ in _layers(model):
            sizes[s].append(state[f"{name}.pwconv1.weight"].shape[0])
        config = LTAPConvNextConfig.from_dict({**model.config.to_dict(), "model_type": "ltap_convnext",
                                               "intermediate_sizes": sizes})
        slim_class = LTAPConvNextForImageClassification if hasattr(model, "convnext") else LTAPConvNextModel
        return rebuild(slim_class, config, state, like=model)
