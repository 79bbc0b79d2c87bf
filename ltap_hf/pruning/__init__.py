"""LTAP's pruning algorithm as plain tensor code: criteria, statistics, vote, schedule, units, selection
and masks. It imports no model class: model families live in `ltap_hf.backbones`."""

from .class_importance import CLASS_IMPORTANCE_WEIGHTINGS, class_importance_weights, combine_class_scores
from .criteria import (
    ALL_CRITERIA,
    CRITERIA,
    PROBE_CRITERIA,
    REGISTRY,
    Criterion,
    combine_rows,
    combine_scores,
    criterion_indices,
    group_criteria,
    weight_criteria,
)
from .groups import ChannelGroup, ChannelStructure, apply_group_masks, group_density_report, group_parameters
from .masks import apply_masks, density, density_report, full_masks, prunable_parameters
from .pruner import GRANULARITIES, LTAPPruner, StageResult
from .schedule import cubic_density, cubic_density_at, stage_steps
from .selection import CHANNEL_ALLOCATIONS, select_channel_groups, select_mask
from .statistics import ScoreAccumulator
from .vote import CLASS_WEIGHTINGS, ClassVote, VoteResult, stage_generator


__all__ = [
    "ALL_CRITERIA",
    "CLASS_IMPORTANCE_WEIGHTINGS",
    "PROBE_CRITERIA",
    "class_importance_weights",
    "combine_class_scores",
    "combine_rows",
    "CHANNEL_ALLOCATIONS",
    "CLASS_WEIGHTINGS",
    "CRITERIA",
    "GRANULARITIES",
    "REGISTRY",
    "ChannelGroup",
    "ChannelStructure",
    "ClassVote",
    "Criterion",
    "LTAPPruner",
    "ScoreAccumulator",
    "StageResult",
    "VoteResult",
    "apply_group_masks",
    "apply_masks",
    "combine_scores",
    "criterion_indices",
    "cubic_density",
    "cubic_density_at",
    "density",
    "density_report",
    "full_masks",
    "group_criteria",
    "group_density_report",
    "group_parameters",
    "prunable_parameters",
    "select_channel_groups",
    "select_mask",
    "stage_generator",
    "stage_steps",
    "weight_criteria",
]
