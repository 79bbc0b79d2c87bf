"""`LTAPPruner`: the pruning state of one model and the three things done with it during training.

It ties the pieces of this package together, still with no Trainer, no Accelerate and no I/O:
- `accumulate()` once per optimizer step, while the synchronised gradients are on the parameters;
- `apply_masks()` after every optimizer step, so pruned weights stay exactly zero;
- `prune_stage(...)` at every pruning stage: vote, score, rank, shrink the masks.
Its whole state is a flat dict of tensors (`state_dict`), ready for safetensors.

What a unit is (a weight, or a channel of a coupled group) is the business of a small `units`
object; the vote, the normalisation and combination of the criteria, and the bookkeeping are shared.
Channel units need the model's `ChannelStructure` (its `ltap_hf.backbones` adapter): this package knows
no model class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .class_importance import combine_class_scores
from .criteria import PROBE_CRITERIA, combine_rows
from .groups import ChannelStructure
from .masks import apply_masks
from .selection import CHANNEL_ALLOCATIONS
from .units import ChannelUnits, WeightUnits
from .vote import ClassVote, VoteResult


GRANULARITIES = ("weight", "channel")


@dataclass(frozen=True)
class StageResult:
    """What one pruning stage did: the vote, the density asked for and the density reached."""

    vote: VoteResult
    target_density: float
    density: float


class LTAPPruner:
    """LTAP state of a model: unit masks, score accumulator and class vote.

    Args:
        model: the (unwrapped) model.
        vote: the class vote (its criteria are the criteria in use).
        granularity: "weight" (a unit is one weight of a prunable tensor) or "channel" (a unit is one
            channel of a coupled group; `target_density` then counts the parameters it removes).
        weight_decay: coupled weight decay applied by the optimizer, per parameter name or one value for
            all; ALGORITHM.md counts its term `λw` as part of the gradient.
        min_layer_density: no prunable tensor keeps fewer than this fraction of its weights (and, with
            channels, no group loses its last channel).
        prune_classifier: whether the classifier head is prunable.
        round_to: channel granularity only: keep every group's width a multiple of this.
        channel_allocation: channel granularity only: "global" ranking of all channels, or "uniform"
            (every group keeps the same fraction; see `select_channel_groups`).
        channel_structure: channel granularity only: how the model's channels couple and are removed,
            `ltap_hf.backbones.backbone_for(model)`.
    """

    def __init__(
        self,
        model: nn.Module,
        vote: ClassVote,
        granularity: str = "weight",
        weight_decay: float | Mapping[str, float] = 0.0,
        min_layer_density: float = 0.02,
        prune_classifier: bool = False,
        round_to: int = 1,
        channel_allocation: str = "global",
        channel_structure: ChannelStructure | None = None,
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if channel_allocation not in CHANNEL_ALLOCATIONS:
            raise ValueError(f"channel_allocation must be one of {CHANNEL_ALLOCATIONS}, got {channel_allocation!r}")
        self.granularity = granularity
        if granularity == "weight":
            if round_to != 1 or channel_allocation != "global":
                raise ValueError(
                    f"round_to and channel_allocation apply to channel pruning only, got round_to={round_to} and "
                    f"channel_allocation={channel_allocation!r} with weights"
                )
            self.units = WeightUnits(model, prune_classifier)
        else:
            if channel_structure is None:
                raise ValueError("granularity='channel' needs the model's channel structure: pass "
                                 "channel_structure=ltap_hf.backbones.backbone_for(model)")
            self.units = ChannelUnits(model, channel_structure, prune_classifier, round_to, channel_allocation)
        self.parameters = self.units.parameters
        if not self.parameters:
            raise ValueError(f"{type(model).__name__} has no prunable Conv2d/Linear weight")
        self.vote = vote
        self.min_layer_density = min_layer_density
        if isinstance(weight_decay, Mapping):
            self.weight_decay = {name: float(weight_decay.get(name, 0.0)) for name in self.parameters}
        else:
            self.weight_decay = dict.fromkeys(self.parameters, float(weight_decay))
        self.alive = self.units.full_masks()
        self.masks = self.units.tensor_masks(self.alive)
        self.accumulator = self.units.accumulator()

    @property
    def density(self) -> float:
        """Fraction of prunable parameters alive."""
        return self.units.density(self.alive)

    @torch.no_grad()
    def accumulate(self) -> None:
        """Adds this optimizer step's gradients (weight-decay term included) to the score statistics.

        Call while `.grad` holds the synchronised, unscaled gradient of a step the optimizer takes, before
        it moves the weights. A tensor without a gradient this step (unused in the forward pass) counts
        as zero.
        """
        grads = {}
        for name, weight in self.parameters.items():
            grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
            decay = self.weight_decay[name]
            grads[name] = grad.add(weight, alpha=decay) if decay else grad
        self.accumulator.update(self.parameters, grads)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Sets every pruned parameter back to exactly +0.0."""
        apply_masks(self.parameters, self.masks)

    @property
    def needs_probe(self) -> bool:
        """Whether a criterion in use reads the class-balanced probe set ("class_taylor")."""
        return any(name in PROBE_CRITERIA for name in self.vote.criteria)

    def class_importance(self, class_gradients: Iterable[tuple[int, Mapping[str, torch.Tensor]]],
                         class_weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """The class-conditional importance of every unit ("class_taylor", `class_importance.py`).

        Args:
            class_gradients: (class c, tensor name -> g_c) per class with probe images, g_c the gradient of
                the mean probe loss of class c w.r.t. every tensor of `parameters`; consumed one at a time.
            class_weights: λ, [C] (`class_importance_weights`).

        Returns:
            unit name -> float32 [*U], for `prune_stage(class_importance=...)`.
        """
        # Not under no_grad: the caller's generator may run the model's backward pass between two classes.
        scores = ((c, self.units.class_scores({n: g.detach() for n, g in grads.items()})) for c, grads in class_gradients)
        return combine_class_scores(scores, self.alive, class_weights)

    @torch.no_grad()
    def prune_stage(self, class_accuracy: torch.Tensor, has_validation: torch.Tensor, target_density: float,
                    class_importance: Mapping[str, torch.Tensor] | None = None) -> StageResult:
        """One LTAP stage: vote on the criteria from per-class validation accuracy, then prune the
        lowest combined scores until `target_density` of the prunable parameters are alive.

        Args:
            class_accuracy: float [C], per-class validation accuracy gathered over all processes.
            has_validation: bool [C], False for classes without validation images.
            target_density: density to reach (from the schedule).
            class_importance: unit name -> [*U] from `class_importance`; needed only when "class_taylor"
                is in use. Only the criteria in use are computed.
        """
        if self.needs_probe and class_importance is None:
            raise ValueError('"class_taylor" is in use: pass class_importance (LTAPPruner.class_importance on the '
                             "probe set) to prune_stage")
        vote = self.vote.step(class_accuracy, has_validation)
        criteria = self.units.criteria(self.accumulator.mean_grad(), self.accumulator.taylor2_mean(),
                                       self.vote.criteria, class_importance)
        scores = combine_rows(criteria, self.alive, vote.alpha)
        self.set_masks(self.units.select(scores, self.alive, target_density, self.min_layer_density))
        self.accumulator.reset()
        return StageResult(vote=vote, target_density=target_density, density=self.density)

    def set_masks(self, alive: Mapping[str, torch.Tensor]) -> None:
        """Replaces the unit masks (e.g. by the main process's copy) and applies them."""
        if set(alive) != set(self.alive):
            raise ValueError(f"masks must cover exactly the units {sorted(self.alive)}, got {sorted(alive)}")
        for name, mask in alive.items():
            if mask.shape != self.alive[name].shape:
                raise ValueError(
                    f"mask {name!r} has shape {tuple(mask.shape)}, expected {tuple(self.alive[name].shape)}: "
                    "the masks belong to another model"
                )
        self.alive = {n: alive[n].to(dtype=torch.bool, device=m.device) for n, m in self.alive.items()}
        self.masks = self.units.apply(self.alive)

    def density_report(self, model: nn.Module) -> dict:
        """Densities over prunable and over all parameters, and per tensor (weight) or group (channel)."""
        return self.units.report(model, self.alive)

    def slimmed_model(self) -> nn.Module:
        """Channel granularity: a new model with the pruned channels removed (its adapter's `slim`)."""
        if self.granularity != "channel":
            raise ValueError("slimming removes channels: it needs granularity='channel'")
        return self.units.slim(self.alive)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Unit masks (as uint8), vote and accumulator state, with `mask.`, `vote.`, `scores.` prefixes."""
        state = {f"mask.{n}": m.to(torch.uint8) for n, m in self.alive.items()}
        state.update({f"vote.{k}": v for k, v in self.vote.state_dict().items()})
        state.update({f"scores.{k}": v for k, v in self.accumulator.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restores what `state_dict` wrote; a state of another model raises a `ValueError` before
        anything is changed."""
        parts: dict[str, dict[str, torch.Tensor]] = {"mask": {}, "vote": {}, "scores": {}}
        for key, value in state.items():
            prefix, _, rest = key.partition(".")
            if prefix not in parts:
                raise ValueError(f"unexpected key {key!r} in the pruning state")
            parts[prefix][rest] = value
        if set(parts["mask"]) != set(self.alive) or any(
            m.shape != self.alive[n].shape for n, m in parts["mask"].items()
        ):
            raise ValueError(
                f"the pruning state's masks ({sorted(parts['mask'])}) do not fit this model's {self.granularity} "
                "units: the state belongs to another model or granularity"
            )
        self.vote.load_state_dict(parts["vote"])
        self.accumulator.load_state_dict(parts["scores"])
        self.set_masks(parts["mask"])
