"""The adapter of this project's `LTResNet*` models (CIFAR and ImageNet ResNets, both shortcut types).

Groups are read from the structure. Parameter-free "option A" shortcuts (`LTResNetPaddingShortcut`)
copy the channels of one residual stream into chosen channels of the next. They are not a coupling: both
streams are separate groups, and a channel copy is recorded on the receiving group (`ChannelCopy`).
Pruning a stream channel removes it entirely, including the value the shortcut copies into it; masking
therefore also drops those copies from the shortcut (and from `config.shortcut_channels`, so a saved
masked model stays consistent), which is exactly what the slimmed network computes.

A slimmed network is an ordinary, smaller `LTResNet*`: its widths live in its `LTResNetConfig`
(`embedding_size`, `hidden_sizes`, `block_widths` and, for padding shortcuts, `shortcut_channels`), so
`save_pretrained` writes a plain dense checkpoint and `from_pretrained` loads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..models.configuration_lt_resnet import LTResNetConfig
from ..models.modeling_lt_resnet import (
    LTResNetConvLayer,
    LTResNetForImageClassification,
    LTResNetPaddingShortcut,
)
from ..pruning.groups import ChannelGroup, apply_group_masks
from .base import Backbone, rebuild, sliced_state
from .residual import ResidualLayout, groups_from_layout, join, layout_of


def lt_resnet_layout(model: nn.Module) -> ResidualLayout:
    base = model.resnet if isinstance(model, LTResNetForImageClassification) else model
    prefix = "resnet" if base is not model else ""

    def shortcut_kind(shortcut: nn.Module) -> str | None:
        if isinstance(shortcut, LTResNetConvLayer):
            return "conv"
        return "copy" if isinstance(shortcut, LTResNetPaddingShortcut) else None

    stages = [(join(prefix, f"stages.{s}"), stage) for s, stage in enumerate(base.stages)]
    head = "classifier" if base is not model else None
    return layout_of(join(prefix, "embedder.embedder"), stages, "conv", "bn", shortcut_kind, head)


def padding_channel_map(
    shortcut: LTResNetPaddingShortcut, num_inputs: int, source_alive: torch.Tensor, target_alive: torch.Tensor
) -> list[int]:
    """The shortcut's channel map (input channel -> output channel, -1 = dropped) restricted to copies
    whose source and target channels are both alive."""
    channel_map = [-1] * num_inputs
    for source, target in zip(shortcut.source, shortcut.target):
        if bool(source_alive[source]) and bool(target_alive[target]):
            channel_map[source] = target
    return channel_map


def _drop_dead_copies(
    model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]
) -> None:
    """Stops padding shortcuts from copying into or out of pruned channels, in the modules and in the
    config (`shortcut_channels`), so that a saved masked model reloads with the same function."""
    copies = {c.module: (c.source, g.name) for g in groups for c in g.copies}
    if not copies:
        return
    base = model.resnet if isinstance(model, LTResNetForImageClassification) else model
    prefix = "resnet." if base is not model else ""
    shortcut_channels = list(base.config.shortcut_channels or [None] * len(base.stages))
    for s, stage in enumerate(base.stages):
        name = f"{prefix}stages.{s}.layers.0.shortcut"
        if name not in copies:
            continue
        shortcut, source = stage.layers[0].shortcut, copies[name][0]
        channel_map = padding_channel_map(
            shortcut, stage.layers[0].layer[0].conv.in_channels, group_alive[source], group_alive[copies[name][1]]
        )
        shortcut.source = [i for i, j in enumerate(channel_map) if j >= 0]
        shortcut.target = [j for j in channel_map if j >= 0]
        shortcut_channels[s] = channel_map
    # The base model shares the config object of the classification model that holds it.
    base.config.shortcut_channels = shortcut_channels


def _group_of(groups: Sequence[ChannelGroup], tensor: str, dim: int) -> str:
    return next(g.name for g in groups for s in g.slices if s.tensor == tensor and s.dim == dim)


def _keep_conv_shortcuts(
    model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The channels to keep physically: the alive ones, plus one pruned (all-zero) channel wherever a
    stride-1 conv shortcut would otherwise join two streams of equal width, because `LTResNetConfig`
    builds an identity shortcut there. A zero channel stays zero, so the function is unchanged."""
    kept = {name: mask.clone() for name, mask in group_alive.items()}
    for name, module in model.named_modules():
        if not (isinstance(module, LTResNetConvLayer) and name.endswith(".shortcut") and module.conv.stride == (1, 1)):
            continue
        weight = f"{name}.conv.weight"
        source, target = _group_of(groups, weight, 1), _group_of(groups, weight, 0)
        if int(kept[source].sum()) != int(kept[target].sum()):
            continue
        for group in (target, source):
            dead = (~kept[group]).nonzero().squeeze(1)
            if dead.numel() > 0:
                kept[group][dead[0]] = True
                break
    return kept


def _slim_config(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    groups: Sequence[ChannelGroup],
    group_alive: Mapping[str, torch.Tensor],
    kept: Mapping[str, torch.Tensor],
) -> LTResNetConfig:
    """The config of the slimmed network: widths read from the sliced weights, padding maps renumbered."""
    config = model.config
    base = model.resnet if isinstance(model, LTResNetForImageClassification) else model
    prefix = "resnet." if base is not model else ""

    def width(layer: str) -> int:
        return state[f"{prefix}{layer}.conv.weight"].shape[0]

    hidden_sizes, block_widths = [], []
    for s, stage_widths in enumerate(config.block_widths):
        layers = [
            [width(f"stages.{s}.layers.{b}.layer.{i}") for i in range(len(widths) + 1)]
            for b, widths in enumerate(stage_widths)
        ]
        hidden_sizes.append(layers[-1][-1])
        block_widths.append([block[:-1] for block in layers])

    copies = {c.module: (c.source, g.name) for g in groups for c in g.copies}
    shortcut_channels = None
    if copies:
        shortcut_channels = []
        for s, stage in enumerate(base.stages):
            name = f"{prefix}stages.{s}.layers.0.shortcut"
            if name not in copies:
                shortcut_channels.append(None)
                continue
            source, target = copies[name]
            channel_map = padding_channel_map(
                stage.layers[0].shortcut,
                stage.layers[0].layer[0].conv.in_channels,
                group_alive[source],
                group_alive[target],
            )
            # Stream channel j is entry j of the stream's tensors, so new positions are ranks among kept channels.
            new_position = (kept[target].long().cumsum(0) - 1).tolist()
            kept_sources = kept[source].nonzero().squeeze(1).tolist()
            shortcut_channels.append([new_position[channel_map[i]] if channel_map[i] >= 0 else -1 for i in kept_sources])
    return LTResNetConfig.from_dict(
        {
            **config.to_dict(),
            "embedding_size": width("embedder.embedder"),
            "hidden_sizes": hidden_sizes,
            "block_widths": block_widths,
            "shortcut_channels": shortcut_channels,
        }
    )


@torch.no_grad()
def slim_lt_resnet(model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]) -> nn.Module:
    """Remove the pruned channels physically.

    Returns a new model of `model`'s class (`LTResNetForImageClassification` / `LTResNetModel`) whose
    config holds the per-layer widths and whose weights are the kept slices; its outputs equal those of
    the channel-masked `model`. `model` itself is not modified.

    Args:
        model: the channel-masked model.
        groups: its channel groups (`LTResNetBackbone().channel_groups(model)`).
        group_alive: group -> bool [C_g], True for kept channels.
    """
    kept = _keep_conv_shortcuts(model, groups, group_alive)
    state = sliced_state(model, groups, group_alive, kept)
    return rebuild(type(model), _slim_config(model, state, groups, group_alive, kept), state, like=model)


class LTResNetBackbone(Backbone):
    """`LTResNetForImageClassification` / `LTResNetModel`: structural groups, padding copies, slimming."""

    name = "lt_resnet"
    model_types = ("lt_resnet",)

    def channel_groups(self, model: nn.Module, example_inputs: torch.Tensor | None = None) -> list[ChannelGroup]:
        return groups_from_layout(lt_resnet_layout(model), model)

    def apply_channel_masks(
        self, model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        masks = apply_group_masks(model, groups, group_alive)
        _drop_dead_copies(model, groups, group_alive)
        return masks

    def slim_refusal(self, model: nn.Module) -> str | None:
        return None

    def slim(self, model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]) -> nn.Module:
        return slim_lt_resnet(model, groups, group_alive)
