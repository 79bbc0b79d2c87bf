"""Physical removal of pruned channels: a channel-masked LTResNet becomes an ordinary, smaller one.

The slimmed network's widths live in its `LTResNetConfig` (`embedding_size`, `hidden_sizes`,
`block_widths` and, for padding shortcuts, `shortcut_channels`), so `save_pretrained` writes a plain
dense checkpoint and `from_pretrained` loads it with no custom code path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..models.configuration_lt_resnet import LTResNetConfig
from ..models.modeling_lt_resnet import LTResNetConvLayer, LTResNetForImageClassification, LTResNetModel
from .groups import ChannelGroup, apply_group_masks, group_tensor_masks, kept_per_dim, padding_channel_map


logger = logging.getLogger(__name__)


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
def slim_model(model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]) -> nn.Module:
    """Remove the pruned channels physically.

    For `LTResNetForImageClassification` / `LTResNetModel` returns a new model of the same class whose
    config holds the per-layer widths and whose weights are the kept slices; its outputs equal those
    of `model` after `apply_group_masks(model, groups, group_alive)`. `model` itself is not modified.
    Any other model cannot express per-layer widths in its config: it is returned masked
    (`apply_group_masks`, in place) at full size, and a warning says so.

    Args:
        model: the channel-masked model.
        groups: its channel groups (`find_channel_groups`).
        group_alive: group -> bool [C_g], True for kept channels.
    """
    if not isinstance(model, (LTResNetForImageClassification, LTResNetModel)):
        apply_group_masks(model, groups, group_alive)
        logger.warning(
            f"{type(model).__name__}'s config cannot express per-layer widths: it is kept at full size with its "
            "pruned channels zeroed, and is saved masked, not slimmed"
        )
        return model
    kept = _keep_conv_shortcuts(model, groups, group_alive)
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    for name, mask in group_tensor_masks(model, groups, group_alive).items():
        state[name].masked_fill_(~mask, 0.0)
    for name, dims in kept_per_dim(groups, kept, {n: t.shape for n, t in state.items()}, include_buffers=True).items():
        for dim, keep in dims.items():
            state[name] = state[name].index_select(dim, keep.nonzero().squeeze(1).to(state[name].device))
    config = _slim_config(model, state, groups, group_alive, kept)
    parameter = next(model.parameters())
    slim = type(model)(config).to(device=parameter.device, dtype=parameter.dtype)
    slim.load_state_dict(state)
    return slim.train(model.training)
