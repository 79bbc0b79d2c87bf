"""LTAP's pruning algorithm as plain tensor code: criteria, class-aware vote, schedule and masks."""

from .criteria import CRITERIA, ScoreAccumulator, combine_scores, criterion_indices, weight_criteria
from .masks import apply_masks, density, density_report, full_masks, prunable_parameters, select_mask
from .pruner import LTAPPruner, StageResult
from .schedule import cubic_density, stage_steps
from .vote import CLASS_WEIGHTINGS, ClassVote, VoteResult, stage_generator


__all__ = [
    "CLASS_WEIGHTINGS",
    "CRITERIA",
    "ClassVote",
    "LTAPPruner",
    "ScoreAccumulator",
    "StageResult",
    "VoteResult",
    "apply_masks",
    "combine_scores",
    "criterion_indices",
    "cubic_density",
    "density",
    "density_report",
    "full_masks",
    "prunable_parameters",
    "select_mask",
    "stage_generator",
    "stage_steps",
    "weight_criteria",
]
