"""What a pruning unit is: one scalar weight (`WeightUnits`) or one channel of a coupled group
(`ChannelUnits`). Each knows its tensors, its statistics, its criteria, its selection and its masks; the
pruner does the rest the same way for both.
"""

from __future__ import annotations

import torch
from torch import nn

from .class_importance import channel_class_taylor, weight_class_taylor
from .criteria import group_criteria, weight_criteria
from .groups import (
    ChannelStructure,
    GroupSums,
    full_group_masks,
    group_density_report,
    group_parameters,
    group_tensor_masks,
    parameter_density,
)
from .masks import apply_masks, density, density_report, full_masks, prunable_parameters
from .selection import select_channel_groups, select_mask
from .statistics import ScoreAccumulator


class WeightUnits:
    """One unit per scalar weight of the prunable tensors; a unit mask is the tensor's own mask."""

    def __init__(self, model: nn.Module, prune_classifier: bool):
        self.parameters = prunable_parameters(model, prune_classifier=prune_classifier)

    def full_masks(self) -> dict[str, torch.Tensor]:
        return full_masks(self.parameters)

    def accumulator(self) -> ScoreAccumulator:
        return ScoreAccumulator(self.parameters)

    def criteria(self, grad_mean: dict, taylor2_mean: dict, criteria=None, class_importance=None) -> dict[str, torch.Tensor]:
        return {n: weight_criteria(w, grad_mean[n], taylor2_mean[n], criteria,
                                   None if class_importance is None else class_importance[n])
                for n, w in self.parameters.items()}

    def class_scores(self, grads: dict) -> dict[str, torch.Tensor]:
        """F_c = (w·g_c)² per weight, from one class's probe gradient."""
        return weight_class_taylor(self.parameters, grads)

    def select(self, scores: dict, alive: dict, target_density: float, floor: float) -> dict[str, torch.Tensor]:
        return select_mask(scores, alive, target_density, floor)

    def tensor_masks(self, alive: dict) -> dict[str, torch.Tensor]:
        return alive

    def apply(self, alive: dict) -> dict[str, torch.Tensor]:
        apply_masks(self.parameters, alive)
        return alive

    def density(self, alive: dict) -> float:
        return density(alive)

    def report(self, model: nn.Module, alive: dict) -> dict:
        return density_report(model, alive)


class ChannelUnits:
    """One unit per channel of a coupled channel group (from the model's `ChannelStructure`); density
    counts parameters."""

    def __init__(self, model: nn.Module, structure: ChannelStructure, prune_classifier: bool, round_to: int,
                 allocation: str):
        self.model = model
        self.structure = structure
        self.groups = structure.channel_groups(model)
        self.parameters = group_parameters(model, self.groups)
        self.counted = prunable_parameters(model, prune_classifier=prune_classifier)
        self.round_to = round_to
        self.allocation = allocation
        self._sums: GroupSums | None = None

    def full_masks(self) -> dict[str, torch.Tensor]:
        return full_group_masks(self.groups, device=next(iter(self.parameters.values())).device)

    def accumulator(self) -> ScoreAccumulator:
        return ScoreAccumulator(self.parameters, self.groups)

    def criteria(self, grad_mean: dict, taylor2_mean: dict, criteria=None, class_importance=None) -> dict[str, torch.Tensor]:
        return group_criteria(self.groups, self.parameters, grad_mean, taylor2_mean, criteria, class_importance)

    def class_scores(self, grads: dict) -> dict[str, torch.Tensor]:
        """F_c = ⟨x, g_c⟩² per channel, from one class's probe gradient."""
        if self._sums is None:
            self._sums = GroupSums(self.groups, self.parameters)
        return channel_class_taylor(self._sums, self.parameters, grads)

    def select(self, scores: dict, alive: dict, target_density: float, floor: float) -> dict[str, torch.Tensor]:
        return select_channel_groups(self.groups, scores, alive, target_density, self.counted, floor, self.round_to,
                                     self.allocation)

    def tensor_masks(self, alive: dict) -> dict[str, torch.Tensor]:
        return group_tensor_masks(self.model, self.groups, alive)

    def apply(self, alive: dict) -> dict[str, torch.Tensor]:
        # The adapter also keeps what the masks imply consistent (e.g. padding shortcuts' channel copies).
        return self.structure.apply_channel_masks(self.model, self.groups, alive)

    def density(self, alive: dict) -> float:
        return parameter_density(self.groups, alive, self.counted)

    def report(self, model: nn.Module, alive: dict) -> dict:
        report = group_density_report(model, self.groups, alive)
        masks = group_tensor_masks(model, self.groups, alive)
        report["per_tensor"] = {n: float(masks[n].float().mean()) if n in masks else 1.0 for n in self.counted}
        return report

    def slim(self, alive: dict) -> nn.Module:
        return self.structure.slim(self.model, self.groups, alive)
