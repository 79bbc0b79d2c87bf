"""`Backbone`: what ltap_hf knows of one model family, and the registry that finds a model's adapter.

An adapter says how the family's channels couple (`channel_groups`), how a channel-masked network stays
consistent (`apply_channel_masks`), and how it is slimmed into a smaller network that `from_pretrained`
loads (`slim`). `ltap_hf.pruning` sees adapters only through its `ChannelStructure` protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..pruning.groups import ChannelGroup, apply_group_masks, group_tensor_masks, kept_per_dim


class Backbone:
    """Base adapter: generic masking, no slimming. Subclasses set `name` and `model_types` (the configs'
    `model_type` values they serve) and override what their family needs."""

    name: str = "backbone"
    model_types: tuple[str, ...] = ()

    def matches(self, model: nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in self.model_types

    def channel_groups(self, model: nn.Module, example_inputs: torch.Tensor | None = None) -> list[ChannelGroup]:
        """The coupled channel groups of `model`, in a deterministic order."""
        raise NotImplementedError

    def apply_channel_masks(
        self, model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Zeroes the pruned channels in place; returns the per-parameter masks that keep them at zero."""
        return apply_group_masks(model, groups, group_alive)

    def slim_refusal(self, model: nn.Module) -> str | None:
        """Why `model` cannot be slimmed, or None when `slim` can remove its channels."""
        return f"ltap_hf cannot slim {type(model).__name__} (adapter {self.name!r}): its config cannot hold per-layer widths"

    def check_slimmable(self, model: nn.Module) -> None:
        """Raises a `ValueError` saying why, for a model whose pruned channels cannot be removed: channel
        pruning without slimming saves no compute, so it is refused before training, not masked in silence."""
        refusal = self.slim_refusal(model)
        if refusal is not None:
            raise ValueError(f"{refusal}; prune it with granularity='weight' instead")

    def slim(self, model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]) -> nn.Module:
        """A new, physically smaller model that computes what the channel-masked `model` computes (same
        outputs); `model` is not modified. It saves with `save_pretrained` and loads with `from_pretrained`."""
        self.check_slimmable(model)
        raise NotImplementedError


@torch.no_grad()
def sliced_state(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    group_alive: Mapping[str, torch.Tensor],
    kept: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """`model`'s state dict with its pruned channels zeroed, then only the channels of `kept` (the alive
    ones, or a superset an adapter needs) left in every tensor the groups slice, statistics included."""
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    for name, mask in group_tensor_masks(model, groups, group_alive).items():
        state[name].masked_fill_(~mask, 0.0)
    for name, dims in kept_per_dim(groups, kept, {n: t.shape for n, t in state.items()}, include_buffers=True).items():
        for dim, keep in dims.items():
            state[name] = state[name].index_select(dim, keep.nonzero().squeeze(1).to(state[name].device))
    return state


def rebuild(model_class: type, config, state: Mapping[str, torch.Tensor], like: nn.Module) -> nn.Module:
    """A new `model_class(config)` holding `state`, on `like`'s device and dtype and in its training mode."""
    parameter = next(like.parameters())
    model = model_class(config).to(device=parameter.device, dtype=parameter.dtype)
    model.load_state_dict(state)
    return model.train(like.training)


_REGISTRY: list[Backbone] = []


def register_backbone(backbone: Backbone) -> Backbone:
    """Adds an adapter; later registrations are tried first, so a user's adapter overrides a built-in one."""
    _REGISTRY.insert(0, backbone)
    return backbone


def backbone_for(model: nn.Module) -> Backbone:
    """The adapter of `model`'s family: the first registered one that matches, else the Torch-Pruning
    traced adapter (any other CNN)."""
    from .traced import TracedBackbone

    return next((b for b in _REGISTRY if b.matches(model)), TracedBackbone())
