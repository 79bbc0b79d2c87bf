"""The adapter of transformers' `ResNetModel` / `ResNetForImageClassification` (e.g. microsoft/resnet-50).

Groups are read from the structure. transformers' `ResNetConfig` holds one width per stage, so a slimmed
network cannot stay a transformers ResNet; it becomes this project's `LTResNet*` with per-layer widths,
which expresses the same network exactly (ImageNet stem, 1x1-conv shortcuts, the stride on the 3x3 conv
of a bottleneck), and loads with `from_pretrained` (as remote code without ltap_hf installed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import ResNetForImageClassification

from ..models.configuration_lt_resnet import LTResNetConfig
from ..models.modeling_lt_resnet import LTResNetForImageClassification, LTResNetModel
from ..pruning.groups import ChannelGroup
from .base import Backbone
from .lt_resnet import LTResNetBackbone
from .residual import ResidualLayout, groups_from_layout, join, layout_of


def hf_resnet_layout(model: nn.Module) -> ResidualLayout:
    base = model.resnet if isinstance(model, ResNetForImageClassification) else model
    prefix = "resnet" if base is not model else ""
    stages = [(join(prefix, f"encoder.stages.{s}"), stage) for s, stage in enumerate(base.encoder.stages)]
    head = None
    if base is not model and isinstance(model.classifier[-1], nn.Linear):
        head = f"classifier.{len(model.classifier) - 1}"
    return layout_of(join(prefix, "embedder.embedder"), stages, "convolution", "normalization",
                     lambda shortcut: None if isinstance(shortcut, nn.Identity) else "conv", head)


# transformers ResNet name -> LTResNet name, for every tensor of the network.
_RENAMES = (
    (r"encoder\.stages\.", "stages."),
    (r"\.convolution\.", ".conv."),
    (r"\.normalization\.", ".bn."),
    (r"^classifier\.1\.", "classifier."),
)


def to_lt_resnet(model: nn.Module) -> nn.Module:
    """The same network as an `LTResNetForImageClassification` (or `LTResNetModel`), weights copied."""
    config = model.config
    lt_config = LTResNetConfig(
        num_channels=config.num_channels, stem_type="imagenet", layer_type=config.layer_type, depths=list(config.depths),
        embedding_size=config.embedding_size, hidden_sizes=list(config.hidden_sizes), shortcut_type="B",
        hidden_act=config.hidden_act, id2label=dict(config.id2label), label2id=dict(config.label2id),
    )
    classifier = isinstance(model, ResNetForImageClassification)
    lt_model = (LTResNetForImageClassification if classifier else LTResNetModel)(lt_config)
    state = {}
    for name, tensor in model.state_dict().items():
        for pattern, replacement in _RENAMES:
            name = re.sub(pattern, replacement, name)
        state[name] = tensor
    lt_model.load_state_dict(state)
    parameter = next(model.parameters())
    return lt_model.to(device=parameter.device, dtype=parameter.dtype).train(model.training)


class HFResNetBackbone(Backbone):
    """transformers' ResNet: structural groups; slimmed into an `LTResNet*` with per-layer widths."""

    name = "hf_resnet"
    model_types = ("resnet",)

    def channel_groups(self, model: nn.Module, example_inputs: torch.Tensor | None = None) -> list[ChannelGroup]:
        return groups_from_layout(hf_resnet_layout(model), model)

    def slim_refusal(self, model: nn.Module) -> str | None:
        config = model.config
        if config.downsample_in_first_stage or config.downsample_in_bottleneck:
            return ("ltap_hf cannot slim a transformers ResNet with downsample_in_first_stage or "
                    "downsample_in_bottleneck: LTResNet puts the stride where torchvision's ResNet v1.5 does")
        if config.embedding_size <= 0 or len(config.hidden_sizes) != len(config.depths):
            return f"ltap_hf cannot slim this transformers ResNet config ({config.to_dict()})"
        return None

    def slim(self, model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]) -> nn.Module:
        self.check_slimmable(model)
        lt_model = to_lt_resnet(model)
        lt_backbone = LTResNetBackbone()
        lt_groups = lt_backbone.channel_groups(lt_model)
        # Both layouts walk the same network in the same order: group i is the same channels in both.
        lt_alive = {lt.name: group_alive[hf.name] for hf, lt in zip(groups, lt_groups, strict=True)}
        return lt_backbone.slim(lt_model, lt_groups, lt_alive)  # slimming zeroes the pruned channels of its copy
