"""LTAP's pruning algorithm as plain tensor code: criteria, class-aware vote, schedule and masks."""

from .criteria import CRITERIA, ScoreAccumulator, combine_scores, criterion_indices, weight_criteria
from .masks import apply_masks, density, density_report, full_masks, prunable_parameters, select_mask
from .groups import ChannelGroup, find_channel_groups, group_density_report
from .pruner import GRANULARITIES, LTAPPruner, StageResult
from .slimming import slim_model
from .schedule import cubic_density, cubic_density_at, stage_steps
from .vote import CLASS_WEIGHTINGS, ClassVote, VoteResult, stage_generator


__all__ = [
    "CLASS_WEIGHTINGS",
    "GRANULARITIES",
    "ChannelGroup",
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
    "cubic_density_at",
    "density",
    "density_report",
    "find_channel_groups",
    "group_density_report",
    "full_masks",
    "prunable_parameters",
    "select_mask",
    "slim_model",
    "stage_generator",
    "stage_steps",
    "weight_criteria",
]
