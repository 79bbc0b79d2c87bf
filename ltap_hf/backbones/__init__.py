"""Model families as adapters: how each one's channels couple, how it is slimmed and saved.

One module per family (`lt_resnet`, `hf_resnet`, `convnext`, and the Torch-Pruning `traced` fallback), and
a registry from a model's config `model_type` to its adapter. A new family is one module with a
`Backbone` subclass and one `register_backbone` call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..pruning.groups import ChannelGroup
from .base import Backbone, backbone_for, register_backbone
from .convnext import ConvNextBackbone
from .hf_resnet import HFResNetBackbone
from .lt_resnet import LTResNetBackbone
from .traced import TracedBackbone


for _backbone in (LTResNetBackbone(), HFResNetBackbone(), ConvNextBackbone()):
    register_backbone(_backbone)


def find_channel_groups(model: nn.Module, example_inputs: torch.Tensor | None = None) -> list[ChannelGroup]:
    """The coupled channel groups of `model`, each prunable output channel in exactly one group, from its
    family's adapter (`example_inputs`: the trace input of the Torch-Pruning fallback)."""
    return backbone_for(model).channel_groups(model, example_inputs)


def slim_model(model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]) -> nn.Module:
    """The channel-masked `model` with its pruned channels removed, as a new model (see `Backbone.slim`)."""
    return backbone_for(model).slim(model, groups, group_alive)


__all__ = [
    "Backbone",
    "ConvNextBackbone",
    "HFResNetBackbone",
    "LTResNetBackbone",
    "TracedBackbone",
    "backbone_for",
    "find_channel_groups",
    "register_backbone",
    "slim_model",
]
