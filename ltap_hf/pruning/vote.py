"""The class-aware vote that sets the criterion weights α at every pruning stage (ALGORITHM.md, steps 1-4).

All arithmetic is float64 on the CPU, and the suppression draw uses its own generator seeded from
(training seed, stage): every process that feeds the same gathered accuracies gets the same α and
suppresses the same criterion, without any communication.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .criteria import criterion_names


CLASS_WEIGHTINGS: tuple[str, ...] = ("inverse_frequency", "uniform")

NO_SUPPRESSION = -1


@dataclass(frozen=True)
class VoteResult:
    """What one vote decided. Tensors are float64 [K] over the vote's criteria, in its order.

    Attributes:
        stage: the stage index t this vote was taken at.
        alpha: criterion weights to score with (after suppression); sums to 1.
        alpha_before_suppression: softmax(u / τ).
        suppressed_index: position m of the suppressed criterion in the vote's criteria, or -1.
        suppressed_name: its name, or None.
        weighted_votes: D·w, the class-weighted vote count of each criterion.
        u: (D·w) / (1 + t), in (0, 1].
        class_weights: w, float64 [C], the class weights used (0 for classes without validation).
    """

    stage: int
    alpha: torch.Tensor
    alpha_before_suppression: torch.Tensor
    suppressed_index: int
    suppressed_name: str | None
    weighted_votes: torch.Tensor
    u: torch.Tensor
    class_weights: torch.Tensor

    def to_log_dict(self, criteria: Sequence[str], prefix: str = "ltap") -> dict[str, float]:
        """Flat floats for Trainer logging: α and D·w per criterion, and the suppressed index (-1: none)."""
        logs = {f"{prefix}/alpha/{name}": float(a) for name, a in zip(criteria, self.alpha)}
        logs.update({f"{prefix}/weighted_votes/{name}": float(v) for name, v in zip(criteria, self.weighted_votes)})
        logs[f"{prefix}/suppressed_index"] = float(self.suppressed_index)
        return logs


def stage_generator(seed: int, stage: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, stage), well mixed so neighbouring stages differ."""
    mixed = np.random.SeedSequence([seed, stage]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed))


class ClassVote:
    """D ∈ ℝ^{K×C} votes, class weights, α and the suppression draw of LTAP.

    Args:
        criteria: the criteria in use (names from `ALL_CRITERIA`), K of them; α follows this order.
        class_counts: training images per class, length C (all >= 1).
        weighting: "inverse_frequency" (w_c ∝ 1/n_c, tail classes weigh most) or "uniform".
        temperature: τ of both softmaxes, > 0.
        seed: training seed (>= 0); with the stage it seeds the suppression draw.
        enabled: False turns the vote off: α stays 1/K, nothing is suppressed, D is never updated.
    """

    def __init__(
        self,
        criteria: Sequence[str],
        class_counts: Sequence[int],
        weighting: str = "inverse_frequency",
        temperature: float = 0.5,
        seed: int = 0,
        enabled: bool = True,
    ) -> None:
        self.criteria: tuple[str, ...] = criterion_names(criteria)
        counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
        if counts.dim() != 1 or counts.numel() == 0:
            raise ValueError(f"class_counts must list at least one class, got {list(class_counts)}")
        if (counts < 1).any():
            raise ValueError(f"class_counts must all be >= 1, got {counts.int().tolist()}")
        if weighting not in CLASS_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(CLASS_WEIGHTINGS)}, got {weighting!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.weighting = weighting
        self.temperature = float(temperature)
        self.seed = seed
        self.enabled = enabled
        self.base_class_weights = 1.0 / counts if weighting == "inverse_frequency" else torch.ones_like(counts)
        num_criteria, num_classes = len(self.criteria), counts.numel()
        self.votes = torch.ones(num_criteria, num_classes, dtype=torch.float64)
        self.stage = 0
        self.previous_accuracy = torch.zeros(num_classes, dtype=torch.float64)
        self.previous_has_validation = torch.zeros(num_classes, dtype=torch.bool)
        self.last_suppressed = NO_SUPPRESSION

    @property
    def num_classes(self) -> int:
        return self.votes.shape[1]

    def class_weights(self, has_validation: torch.Tensor) -> torch.Tensor:
        """w: float64 [C], base weights with classes lacking validation images set to 0, summing to 1."""
        weights = self.base_class_weights * has_validation.to(torch.float64)
        total = weights.sum()
        if total <= 0:
            raise ValueError("has_validation is False for every class; the vote needs at least one validated class")
        return weights / total

    def step(self, class_accuracy: torch.Tensor, has_validation: torch.Tensor) -> VoteResult:
        """Take the vote of the current stage and advance to the next one.

        Args:
            class_accuracy: A^t, float [C], per-class top-1 accuracy on the validation split,
                gathered across processes.
            has_validation: bool [C], False for classes with no validation image (left out).
        """
        class_accuracy = class_accuracy.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        has_validation = has_validation.detach().to(device="cpu", dtype=torch.bool).reshape(-1)
        if class_accuracy.numel() != self.num_classes or has_validation.numel() != self.num_classes:
            raise ValueError(
                f"class_accuracy and has_validation must have one entry per class ({self.num_classes}), got "
                f"{class_accuracy.numel()} and {has_validation.numel()}"
            )
        stage = self.stage
        weights = self.class_weights(has_validation)
        num_criteria = len(self.criteria)

        if self.enabled and stage > 0:
            improved = (class_accuracy > self.previous_accuracy) & has_validation & self.previous_has_validation
            active = torch.ones(num_criteria, dtype=torch.bool)
            if self.last_suppressed != NO_SUPPRESSION:
                active[self.last_suppressed] = False
            self.votes += (active[:, None] & improved[None, :]).to(torch.float64)

        weighted_votes = self.votes @ weights
        u = weighted_votes / (1 + stage)
        if self.enabled:
            alpha_before = torch.softmax(u / self.temperature, dim=0)
        else:
            alpha_before = torch.full((num_criteria,), 1.0 / num_criteria, dtype=torch.float64)
        suppressed = self._draw_suppressed(alpha_before, stage) if self.enabled and num_criteria > 1 else NO_SUPPRESSION
        alpha = alpha_before.clone()
        if suppressed != NO_SUPPRESSION:
            share = alpha[suppressed] / (num_criteria - 1)
            alpha += share
            alpha[suppressed] = 0.0

        self.previous_accuracy = class_accuracy.clone()
        self.previous_has_validation = has_validation.clone()
        self.last_suppressed = suppressed
        self.stage = stage + 1
        return VoteResult(
            stage=stage,
            alpha=alpha,
            alpha_before_suppression=alpha_before,
            suppressed_index=suppressed,
            suppressed_name=None if suppressed == NO_SUPPRESSION else self.criteria[suppressed],
            weighted_votes=weighted_votes,
            u=u,
            class_weights=weights,
        )

    def _draw_suppressed(self, alpha: torch.Tensor, stage: int) -> int:
        """m ~ Categorical(softmax((1 − α) / τ)) by inverse CDF: weak criteria are dropped more often."""
        probabilities = torch.softmax((1.0 - alpha) / self.temperature, dim=0)
        draw = torch.rand((), generator=stage_generator(self.seed, stage), dtype=torch.float64)
        index = int(torch.searchsorted(torch.cumsum(probabilities, dim=0), draw, right=True))
        # Rounding can leave the cumulative sum a hair under 1; a draw above it belongs to the last bin.
        return min(index, len(probabilities) - 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-ready): votes D, stage, previous accuracies and validation mask, last m,
        and the seed of the suppression draws."""
        return {
            "seed": torch.tensor(self.seed, dtype=torch.int64),
            "votes": self.votes.clone(),
            "stage": torch.tensor(self.stage, dtype=torch.int64),
            "previous_accuracy": self.previous_accuracy.clone(),
            "previous_has_validation": self.previous_has_validation.clone(),
            "last_suppressed": torch.tensor(self.last_suppressed, dtype=torch.int64),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` wrote; the vote then continues exactly as the saved one would.

        A state saved under another seed is refused: the seed draws every later suppression, so the
        resumed vote would silently differ from the saved run's. (A state written before the seed was
        saved has no "seed" and is taken as it is.)
        """
        expected = set(self.state_dict())
        if set(state) not in (expected, expected - {"seed"}):
            raise ValueError(f"vote state must have keys {sorted(expected)}, got {sorted(state)}")
        if state["votes"].shape != self.votes.shape:
            raise ValueError(
                f"votes has shape {tuple(state['votes'].shape)}, expected {tuple(self.votes.shape)} "
                f"({len(self.criteria)} criteria x {self.num_classes} classes)"
            )
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(
                f"the vote state was saved with seed {int(state['seed'])}, this vote has seed {self.seed}: its "
                f"suppression draws would differ from the saved run's; resume with seed {int(state['seed'])}"
            )
        last_suppressed = int(state["last_suppressed"])
        if not (last_suppressed == NO_SUPPRESSION or 0 <= last_suppressed < len(self.criteria)):
            raise ValueError(f"last_suppressed must be -1 or a criterion index, got {last_suppressed}")
        self.votes = state["votes"].to(torch.float64).clone()
        self.stage = int(state["stage"])
        self.previous_accuracy = state["previous_accuracy"].to(torch.float64).clone()
        self.previous_has_validation = state["previous_has_validation"].to(torch.bool).clone()
        self.last_suppressed = last_suppressed
