"""Coupled channel groups, as data: what `granularity="channel"` prunes, and its masks and densities.

A `ChannelGroup` is a set of channels that must be removed together: the output channels of the
convolutions that produce them (their weight rows, bias and normalisation entries) and the input columns
of every layer that consumes them. Channels added together by a residual connection form one group per
residual stream. Channel j of a group is one pruning *unit*; its parameters x are the j-th slice of every
tensor in the group, concatenated.

Which channels of a model couple, and how to remove them, is the business of its backbone adapter
(`ltap_hf.backbones`), which this package only sees through the `ChannelStructure` protocol: here is
tensor code over groups that knows no model class.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..cost import model_cost
from .masks import apply_masks, prunable_parameters


@dataclass(frozen=True)
class GroupSlice:
    """One tensor's share of a group: channel j of the group is entry `index[j]` of `tensor` along `dim`.

    Attributes:
        tensor: key in `model.state_dict()` (e.g. `resnet.stages.1.layers.0.layer.0.conv.weight`).
        dim: 0 for a producer's output rows and per-channel vectors, 1 for a consumer's input columns.
        index: position along `dim` of each channel of the group.
        is_parameter: False for BatchNorm running statistics: sliced when slimming, never scored or zeroed.
    """

    tensor: str
    dim: int
    index: tuple[int, ...]
    is_parameter: bool = True


@dataclass(frozen=True)
class ChannelCopy:
    """A parameter-free shortcut (`module`) that copies channels of group `source` into this group."""

    module: str
    source: str


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are pruned together, with every tensor slice tied to them.

    Attributes:
        name: unique key. A residual stream is named after the stage module where it starts (or the
            stem, for the stream the stem starts), a block-internal group after its producing conv.
        slices: the tied tensor slices, all of length `num_channels`.
        copies: channel copies into this group by parameter-free shortcuts (see the module docstring).
    """

    name: str
    slices: tuple[GroupSlice, ...]
    copies: tuple[ChannelCopy, ...] = ()

    def __post_init__(self) -> None:
        lengths = {len(s.index) for s in self.slices}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(f"group {self.name!r} needs non-empty slices of one length, got lengths {sorted(lengths)}")

    @property
    def num_channels(self) -> int:
        return len(self.slices[0].index)


class ChannelStructure(Protocol):
    """How one model family's channels couple and how they are removed (`ltap_hf.backbones.Backbone`)."""

    def channel_groups(self, model: nn.Module) -> list[ChannelGroup]:
        """The coupled channel groups of `model`, every prunable output channel in exactly one."""

    def apply_channel_masks(
        self, model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Zeroes the pruned channels in place and returns the per-parameter masks that keep them at zero."""

    def slim(self, model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]) -> nn.Module:
        """A new, physically smaller model computing what the channel-masked `model` computes."""


def group_parameters(model: nn.Module, groups: Sequence[ChannelGroup]) -> dict[str, nn.Parameter]:
    """Every parameter a group slices (conv, normalisation and classifier weights ...), in the model's order:
    the tensors to accumulate gradients of, to score and to mask."""
    wanted = {s.tensor for g in groups for s in g.slices if s.is_parameter}
    return {n: p for n, p in model.named_parameters() if n in wanted}


def _sum_except(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """[tensor.shape[dim]]: `tensor` summed over every other dimension."""
    others = tuple(d for d in range(tensor.dim()) if d != dim)
    return tensor.sum(dim=others) if others else tensor


class GroupSums:
    """Per-channel sums over the parameter slices of every group: `GroupSums(groups, tensors)(values)`
    maps tensor name -> values of that tensor's shape to group -> float32 [C_g], channel j summing its
    slices' entries. Index tensors are built once, on each tensor's device."""

    def __init__(self, groups: Sequence[ChannelGroup], tensors: Mapping[str, torch.Tensor]) -> None:
        missing = sorted({s.tensor for g in groups for s in g.slices if s.is_parameter} - set(tensors))
        if missing:
            raise ValueError(
                f"the groups slice tensors that were not given: {missing}; pass every tensor of "
                "group_parameters(model, groups)"
            )
        self.groups = tuple(groups)
        self.slices: dict[tuple[str, int], list[tuple[str, torch.Tensor]]] = defaultdict(list)
        for group in groups:
            for s in group.slices:
                if s.is_parameter:
                    index = torch.tensor(s.index, dtype=torch.long, device=tensors[s.tensor].device)
                    self.slices[(s.tensor, s.dim)].append((group.name, index))

    def __call__(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sums = {g.name: None for g in self.groups}
        for (tensor, dim), targets in self.slices.items():
            reduced = _sum_except(values[tensor], dim)
            for group, index in targets:
                part = reduced.index_select(0, index).float()
                sums[group] = part if sums[group] is None else sums[group] + part.to(sums[group].device)
        return sums

    def sizes(self, shapes: Mapping[str, torch.Size]) -> dict[str, int]:
        """group -> number of entries in one channel's slices (size(x))."""
        sizes = dict.fromkeys((g.name for g in self.groups), 0)
        for (tensor, dim), targets in self.slices.items():
            for group, _ in targets:
                sizes[group] += math.prod(shapes[tensor]) // shapes[tensor][dim]
        return sizes


def full_group_masks(groups: Sequence[ChannelGroup], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """All-alive bool masks [C_g], one per group (the state before any pruning stage)."""
    return {g.name: torch.ones(g.num_channels, dtype=torch.bool, device=device) for g in groups}


def kept_per_dim(
    groups: Sequence[ChannelGroup],
    group_alive: Mapping[str, torch.Tensor],
    shapes: Mapping[str, torch.Size],
    include_buffers: bool = False,
) -> dict[str, dict[int, torch.Tensor]]:
    """tensor -> {dim: bool [shape[dim]]}: which entries along each sliced dim of the tensors in `shapes`
    survive (parameters, and with `include_buffers` the BatchNorm statistics too). A tensor entry
    survives when it survives along every dim, so its mask is the outer AND of these vectors."""
    kept: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    for group in groups:
        dead = ~group_alive[group.name].cpu()
        for s in group.slices:
            if s.tensor not in shapes or not (s.is_parameter or include_buffers):
                continue
            if s.dim not in kept[s.tensor]:
                kept[s.tensor][s.dim] = torch.ones(shapes[s.tensor][s.dim], dtype=torch.bool)
            kept[s.tensor][s.dim][torch.tensor(s.index)[dead]] = False
    return dict(kept)


def _alive_count(shape: torch.Size, kept: Mapping[int, torch.Tensor]) -> int:
    return math.prod(int(kept[d].sum()) if d in kept else size for d, size in enumerate(shape))


def parameter_density(
    groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor], parameters: Mapping[str, torch.Tensor]
) -> float:
    """Fraction of the entries of `parameters` (e.g. `prunable_parameters(model)`) that the alive
    channels keep: a pruned channel removes its rows, its consumers' columns and its BatchNorm entries."""
    shapes = {n: p.shape for n, p in parameters.items()}
    kept = kept_per_dim(groups, group_alive, shapes)
    total = sum(math.prod(shape) for shape in shapes.values())
    return sum(_alive_count(shape, kept.get(n, {})) for n, shape in shapes.items()) / total


def group_tensor_masks(
    model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per-parameter bool masks (shape and device of each sliced parameter, True = kept) for
    `masks.apply_masks`: a pruned channel clears its producers' rows, BatchNorm entries and
    consumers' columns."""
    parameters = group_parameters(model, groups)
    kept = kept_per_dim(groups, group_alive, {n: p.shape for n, p in parameters.items()})
    masks = {}
    for name, parameter in parameters.items():
        mask = torch.ones(parameter.shape, dtype=torch.bool)
        for dim, keep in kept[name].items():
            mask &= keep.reshape([-1 if d == dim else 1 for d in range(parameter.dim())])
        masks[name] = mask.to(parameter.device)
    return masks


@torch.no_grad()
def apply_group_masks(
    model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Zero every pruned channel's slices in place (+0.0) and return the per-parameter masks
    (`group_tensor_masks`): after every optimizer step, `masks.apply_masks(group_parameters(model,
    groups), returned_masks)` keeps the groups at zero."""
    masks = group_tensor_masks(model, groups, group_alive)
    apply_masks(group_parameters(model, groups), masks)
    return masks


def group_density_report(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    group_alive: Mapping[str, torch.Tensor],
    input_size: tuple[int, int, int] | None = None,
) -> dict:
    """Densities and cost of a channel-masked model, for logs and the model card.

    Returns:
        dict with `prunable_density` (kept / prunable weights, `prunable_parameters(model)`),
        `overall_density` (kept / all parameters, BatchNorm and classifier slices included),
        `prunable_parameters`, `total_parameters`, `pruned_parameters`, `channel_density` (kept /
        all group channels), `per_group`: group -> fraction of its channels kept; and with
        `input_size` = (channels, height, width), `macs` (dense) and `macs_kept` (multiply-adds of
        the kept weights, i.e. of the slimmed network; the masks must have been applied).
    """
    all_parameters = dict(model.named_parameters())
    prunable = prunable_parameters(model)
    kept = kept_per_dim(groups, group_alive, {n: p.shape for n, p in all_parameters.items()})
    total = sum(p.numel() for p in all_parameters.values())
    pruned = total - sum(_alive_count(p.shape, kept.get(n, {})) for n, p in all_parameters.items())
    report = {
        "prunable_density": parameter_density(groups, group_alive, prunable),
        "overall_density": 1.0 - pruned / total,
        "prunable_parameters": sum(p.numel() for p in prunable.values()),
        "total_parameters": total,
        "pruned_parameters": pruned,
        "channel_density": sum(int(m.sum()) for m in group_alive.values()) / sum(g.num_channels for g in groups),
        "per_group": {g.name: int(group_alive[g.name].sum()) / g.num_channels for g in groups},
    }
    if input_size is not None:
        cost = model_cost(model, input_size)
        report.update(macs=cost.macs, macs_kept=cost.macs_nonzero)
    return report
