"""`LTAPPruner`: the pruning state of one model and the three things done with it during training.

It ties the pieces of this package together, still with no Trainer, no Accelerate and no I/O:
- `accumulate()` once per optimizer step, while the synchronised gradients are on the parameters;
- `apply_masks()` after every optimizer step, so pruned weights stay exactly zero;
- `prune_stage(...)` at every pruning stage: vote, score, rank, shrink the masks.
Its whole state is a flat dict of tensors (`state_dict`), ready for safetensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .criteria import ScoreAccumulator, combine_scores, weight_criteria
from .masks import apply_masks, density, full_masks, prunable_parameters, select_mask
from .vote import ClassVote, VoteResult


@dataclass(frozen=True)
class StageResult:
    """What one pruning stage did: the vote, the density asked for and the density reached."""

    vote: VoteResult
    target_density: float
    density: float


class LTAPPruner:
    """Weight-granularity LTAP state of a model: masks, score accumulator and class vote.

    Args:
        model: the (unwrapped) model; its prunable tensors are found with `prunable_parameters`.
        vote: the class vote (its criteria are the criteria in use).
        weight_decay: coupled weight decay applied by the optimizer, per prunable tensor name or one
            value for all; ALGORITHM.md counts its term `λw` as part of the gradient.
        min_layer_density: per-tensor floor of `select_mask`.
        prune_classifier: whether the classifier head is prunable.
    """

    def __init__(
        self,
        model: nn.Module,
        vote: ClassVote,
        weight_decay: float | Mapping[str, float] = 0.0,
        min_layer_density: float = 0.02,
        prune_classifier: bool = False,
    ) -> None:
        self.parameters = prunable_parameters(model, prune_classifier=prune_classifier)
        if not self.parameters:
            raise ValueError(f"{type(model).__name__} has no prunable Conv2d/Linear weight")
        self.vote = vote
        self.min_layer_density = min_layer_density
        if isinstance(weight_decay, Mapping):
            self.weight_decay = {name: float(weight_decay.get(name, 0.0)) for name in self.parameters}
        else:
            self.weight_decay = dict.fromkeys(self.parameters, float(weight_decay))
        self.masks = full_masks(self.parameters)
        self.accumulator = ScoreAccumulator(self.parameters)

    @property
    def density(self) -> float:
        """Fraction of prunable weights alive."""
        return density(self.masks)

    @torch.no_grad()
    def accumulate(self) -> None:
        """Adds this optimizer step's gradients (weight-decay term included) to the score statistics.

        Call while `.grad` holds the synchronised gradient of the step, before the optimizer moves the
        weights. A tensor without a gradient this step (unused in the forward pass) counts as zero.
        """
        grads = {}
        for name, weight in self.parameters.items():
            grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
            decay = self.weight_decay[name]
            grads[name] = grad.add(weight, alpha=decay) if decay else grad
        self.accumulator.update(self.parameters, grads)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Sets every pruned weight back to exactly +0.0."""
        apply_masks(self.parameters, self.masks)

    @torch.no_grad()
    def prune_stage(self, class_accuracy: torch.Tensor, has_validation: torch.Tensor, target_density: float) -> StageResult:
        """One LTAP stage: vote on the criteria from per-class validation accuracy, then prune the
        lowest combined scores until `target_density` of the prunable weights are alive.

        Args:
            class_accuracy: float [C], per-class validation accuracy gathered over all processes.
            has_validation: bool [C], False for classes without validation images.
            target_density: density to reach (from the schedule).
        """
        vote = self.vote.step(class_accuracy, has_validation)
        mean_grad, taylor2 = self.accumulator.mean_grad(), self.accumulator.taylor2_mean()
        criteria = {n: weight_criteria(w, mean_grad[n], taylor2[n]) for n, w in self.parameters.items()}
        scores = combine_scores(criteria, self.masks, vote.alpha, criteria=self.vote.criteria)
        self.masks = select_mask(scores, self.masks, target_density, self.min_layer_density)
        self.apply_masks()
        self.accumulator.reset()
        return StageResult(vote=vote, target_density=target_density, density=self.density)

    def set_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Replaces the masks (e.g. by the main process's copy) and applies them."""
        if set(masks) != set(self.parameters):
            raise ValueError(f"masks must cover exactly the prunable tensors {sorted(self.parameters)}")
        self.masks = {n: masks[n].to(dtype=torch.bool, device=p.device) for n, p in self.parameters.items()}
        self.apply_masks()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Masks (as uint8), vote and accumulator state, with `mask.`, `vote.`, `scores.` prefixes."""
        state = {f"mask.{n}": m.to(torch.uint8) for n, m in self.masks.items()}
        state.update({f"vote.{k}": v for k, v in self.vote.state_dict().items()})
        state.update({f"scores.{k}": v for k, v in self.accumulator.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restores what `state_dict` wrote; a state of another model raises a `ValueError`."""
        parts: dict[str, dict[str, torch.Tensor]] = {"mask": {}, "vote": {}, "scores": {}}
        for key, value in state.items():
            prefix, _, rest = key.partition(".")
            if prefix not in parts:
                raise ValueError(f"unexpected key {key!r} in the pruning state")
            parts[prefix][rest] = value
        if set(parts["mask"]) != set(self.parameters):
            raise ValueError(
                f"the pruning state's masks name {sorted(parts['mask'])}, the model's prunable tensors are "
                f"{sorted(self.parameters)}: the state belongs to another model"
            )
        for name, mask in parts["mask"].items():
            if mask.shape != self.parameters[name].shape:
                raise ValueError(
                    f"pruning state mask {name!r} has shape {tuple(mask.shape)}, the model's tensor "
                    f"{tuple(self.parameters[name].shape)}: the state belongs to another model"
                )
        self.vote.load_state_dict(parts["vote"])
        self.accumulator.load_state_dict(parts["scores"])
        self.set_masks(parts["mask"])
