"""The importance criteria of LTAP, one registry with each criterion's weight and channel form side by side,
and their combination into one score per unit.

A criterion reads statistics of its units (`WeightStatistics` of one tensor, `ChannelStatistics` of one
channel group) and returns one score per unit. Adding a criterion is one `Criterion(...)` in `REGISTRY`.
`combine_scores` only sees per-unit score tensors and alive masks of matching shape, so it serves any
granularity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .groups import ChannelGroup, GroupSums


_EPS = 1e-12


@dataclass(frozen=True)
class WeightStatistics:
    """One prunable tensor W, for scores per scalar weight (all float32, shape of W = [out, ...]).

    Attributes:
        weight: W.
        grad_mean: ḡ, the mean gradient since the last stage.
        taylor2_mean: the mean over those steps of ½(w·g)².
        class_importance: ltap-hf's class-conditional importance of each weight (`class_importance.py`),
            shape of W; None unless "class_taylor" is in use (only it reads it).
    """

    weight: torch.Tensor
    grad_mean: torch.Tensor
    taylor2_mean: torch.Tensor
    class_importance: torch.Tensor | None = None


@dataclass(frozen=True)
class ChannelStatistics:
    """One channel group, for scores per channel (all float32 [C_g]); x is a channel's concatenated slices.

    Attributes:
        norm: ‖x‖₂.
        grad_norm: ‖ḡ‖₂ over the same slices of the mean gradient.
        dot: ⟨x, ḡ⟩.
        size: size(x), every entry of the slices counted (pruned zeros included).
        taylor2_mean: the mean over steps of ½⟨x, g⟩².
        class_importance: ltap-hf's class-conditional importance of each channel, [C_g]; None unless
            "class_taylor" is in use.
    """

    norm: torch.Tensor
    grad_norm: torch.Tensor
    dot: torch.Tensor
    size: int
    taylor2_mean: torch.Tensor
    class_importance: torch.Tensor | None = None


@dataclass(frozen=True)
class Criterion:
    """A named criterion: its score per scalar weight, and per channel of a group (ALGORITHM.md's table)."""

    name: str
    weight: Callable[[WeightStatistics], torch.Tensor]
    channel: Callable[[ChannelStatistics], torch.Tensor]


def _avg_magnitude(s: WeightStatistics) -> torch.Tensor:
    # The mean over the whole tensor, pruned zeros included, as the channel form divides by the fixed size(x).
    magnitude = s.weight.abs()
    return magnitude / magnitude.mean().clamp_min(_EPS)


def _filter_cosine(s: WeightStatistics) -> torch.Tensor:
    """The cosine of each output filter (row of W over dims 1..) with its row of ḡ, plus 1, shared by
    the filter's weights."""
    rows_w, rows_g = s.weight.reshape(s.weight.shape[0], -1), s.grad_mean.reshape(s.grad_mean.shape[0], -1)
    dot = (rows_w * rows_g).sum(dim=1)
    cosine = dot / (rows_w.norm(dim=1) * rows_g.norm(dim=1)).clamp_min(_EPS) + 1.0
    return cosine.reshape((-1,) + (1,) * (s.weight.dim() - 1)).expand_as(s.weight)


def _class_importance(s: WeightStatistics | ChannelStatistics) -> torch.Tensor:
    if s.class_importance is None:
        raise ValueError('criterion "class_taylor" needs the class-conditional importance of the units: compute it '
                         "on the probe set (LTAPPruner.class_importance) and pass it to prune_stage")
    return s.class_importance.float()


REGISTRY: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("magnitude", weight=lambda s: s.weight.abs(), channel=lambda s: s.norm),
        Criterion("avg_magnitude", weight=_avg_magnitude, channel=lambda s: s.norm / s.size),
        Criterion("cosine", weight=_filter_cosine,
                  channel=lambda s: s.dot / (s.norm * s.grad_norm).clamp_min(_EPS) + 1.0),
        Criterion("taylor1", weight=lambda s: (s.weight * s.grad_mean).abs(), channel=lambda s: s.dot.abs()),
        Criterion("taylor2", weight=lambda s: s.taylor2_mean, channel=lambda s: s.taylor2_mean),
        # ltap-hf's own, not the paper's (README, "ltap-hf's class-conditional criterion"): the per-class,
        # per-class-normalised (x·g_c)² on a class-balanced probe set, combined over classes.
        Criterion("class_taylor", weight=_class_importance, channel=_class_importance),
    )
}

# The paper's five, in its order: the default criteria and what `criteria=None` means everywhere.
CRITERIA: tuple[str, ...] = ("magnitude", "avg_magnitude", "cosine", "taylor1", "taylor2")
# Every registered criterion (the paper's five first); indices of `criterion_indices` point into this.
ALL_CRITERIA: tuple[str, ...] = tuple(REGISTRY)
# Criteria that read a class-balanced probe set at every stage.
PROBE_CRITERIA: frozenset[str] = frozenset({"class_taylor"})
assert ALL_CRITERIA[: len(CRITERIA)] == CRITERIA


def criterion_indices(criteria: Sequence[str | int] | None) -> list[int]:
    """Map criterion names or indices to indices into `ALL_CRITERIA` (None means the paper's five, in order).

    Raises a `ValueError` for unknown names, out-of-range indices, duplicates or an empty selection.
    """
    if criteria is None:
        return list(range(len(CRITERIA)))
    if isinstance(criteria, str):
        raise ValueError(f"criteria must be a sequence of names, got the string {criteria!r}; wrap it in a list")
    indices = []
    for criterion in criteria:
        if isinstance(criterion, str):
            if criterion not in ALL_CRITERIA:
                raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(ALL_CRITERIA)}")
            indices.append(ALL_CRITERIA.index(criterion))
        elif isinstance(criterion, int) and 0 <= criterion < len(ALL_CRITERIA):
            indices.append(criterion)
        else:
            raise ValueError(f"criterion index must be in [0, {len(ALL_CRITERIA)}), got {criterion!r}")
    if not indices:
        raise ValueError("criteria must name at least one criterion, got an empty sequence")
    if len(set(indices)) != len(indices):
        raise ValueError(f"criteria must not repeat, got {list(criteria)}")
    return indices


def criterion_names(criteria: Sequence[str | int] | None) -> tuple[str, ...]:
    """The names of `criteria` (names or indices; None: the paper's five), validated, in the given order."""
    return tuple(ALL_CRITERIA[i] for i in criterion_indices(criteria))


def weight_criteria(
    weight: torch.Tensor,
    grad_mean: torch.Tensor,
    taylor2_mean: torch.Tensor,
    criteria: Sequence[str | int] | None = None,
    class_importance: torch.Tensor | None = None,
) -> torch.Tensor:
    """The criteria in use for every scalar weight of one tensor (ALGORITHM.md, "single weight" column).

    Args:
        weight: W, shape [out, ...] (a conv's [out, in, kh, kw] or a linear's [out, in]).
        grad_mean: ḡ, the mean gradient since the last stage, shape of W.
        taylor2_mean: mean over steps of ½(w·g)², shape of W.
        criteria: the criteria to compute, in this order (None: the paper's five, in `CRITERIA` order).
            Only these are computed.
        class_importance: shape of W; needed by "class_taylor" only.

    Returns:
        float32 tensor [len(criteria), *W.shape], one row per criterion in the order of `criteria`.
    """
    if not (weight.shape == grad_mean.shape == taylor2_mean.shape):
        raise ValueError(
            f"weight, grad_mean and taylor2_mean must share a shape, got {tuple(weight.shape)}, "
            f"{tuple(grad_mean.shape)} and {tuple(taylor2_mean.shape)}"
        )
    statistics = WeightStatistics(weight.detach().float(), grad_mean.float(), taylor2_mean.float(), class_importance)
    return torch.stack([REGISTRY[name].weight(statistics) for name in criterion_names(criteria)])


def group_criteria(
    groups: Sequence[ChannelGroup],
    weights: Mapping[str, torch.Tensor],
    grad_mean: Mapping[str, torch.Tensor],
    taylor2_mean: Mapping[str, torch.Tensor],
    criteria: Sequence[str | int] | None = None,
    class_importance: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The criteria in use for every group channel (ALGORITHM.md, "channel group" column).

    Args:
        groups: the channel groups.
        weights: tensor name -> current weight, every tensor the groups slice as parameters.
        grad_mean: tensor name -> ḡ (`ScoreAccumulator.mean_grad()`).
        taylor2_mean: group name -> [C_g] (`ScoreAccumulator.taylor2_mean()` with groups).
        criteria: the criteria to compute, in this order (None: the paper's five, in `CRITERIA` order).
        class_importance: group name -> [C_g]; needed by "class_taylor" only.

    Returns:
        group name -> float32 [len(criteria), C_g], rows in the order of `criteria`: the per-unit scores
        that `combine_scores` (default order) or `combine_rows` take.
    """
    sums = GroupSums(groups, weights)
    missing = sorted({tensor for tensor, _ in sums.slices} - set(grad_mean))
    if missing:
        raise ValueError(f"grad_mean lacks tensors the groups slice: {missing}")
    w = {n: weights[n].detach().float() for n, _ in sums.slices}
    g = {n: grad_mean[n].float() for n, _ in sums.slices}
    norm_sq, grad_norm_sq = sums({n: t.square() for n, t in w.items()}), sums({n: t.square() for n, t in g.items()})
    dot = sums({n: w[n] * g[n] for n in w})
    sizes = sums.sizes({n: t.shape for n, t in w.items()})
    names = criterion_names(criteria)
    scores = {}
    for group in groups:
        norm = norm_sq[group.name].sqrt()
        importance = None if class_importance is None else class_importance[group.name].to(norm.device)
        statistics = ChannelStatistics(norm, grad_norm_sq[group.name].sqrt(), dot[group.name], sizes[group.name],
                                       taylor2_mean[group.name].float().to(norm.device), importance)
        scores[group.name] = torch.stack([REGISTRY[name].channel(statistics) for name in names])
    return scores


def combine_scores(
    per_tensor_criteria: Mapping[str, torch.Tensor],
    alive: Mapping[str, torch.Tensor],
    alpha: torch.Tensor,
    criteria: Sequence[str | int] | None = None,
) -> dict[str, torch.Tensor]:
    """`combine_rows` over the rows of `criteria` picked out of full per-unit score tensors.

    Args:
        per_tensor_criteria: name -> float tensor [R, *U] with rows in `ALL_CRITERIA` order: R = 5 (the
            paper's criteria, what `weight_criteria`/`group_criteria` return by default) or R = 6 (all).
        alive, alpha: as for `combine_rows`.
        criteria: names or indices of the criteria in use, a subset of the rows given; None: the five.
    """
    indices = criterion_indices(criteria)
    selected = {}
    for name, scores in per_tensor_criteria.items():
        rows = scores.shape[0]
        if rows not in (len(CRITERIA), len(ALL_CRITERIA)) or max(indices) >= rows or (
            name in alive and scores.shape[1:] != alive[name].shape
        ):
            raise ValueError(
                f"per_tensor_criteria[{name!r}] must have shape [{len(CRITERIA)} or {len(ALL_CRITERIA)}, *alive.shape] "
                f"with a row for every criterion in use ({', '.join(ALL_CRITERIA[i] for i in indices)}), got "
                f"{list(scores.shape)}"
            )
        selected[name] = scores[indices]
    return combine_rows(selected, alive, alpha)


def combine_rows(
    per_tensor_rows: Mapping[str, torch.Tensor],
    alive: Mapping[str, torch.Tensor],
    alpha: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Globally L2-normalise each criterion over the alive units, then weight them: S = Σ_k α_k ŝ_k.

    Unit-agnostic: a "unit" is one entry of the per-unit shape U (a weight tensor's shape for weight
    granularity, the number of channels of a group for channel granularity).

    Args:
        per_tensor_rows: name -> float tensor [K, *U], one row per criterion in use, in the order of α.
        alive: name -> bool tensor [*U], True for units not pruned yet. Only these enter the norms.
        alpha: [K] criterion weights.

    Returns:
        name -> float32 combined score [*U]. Entries of dead units are computed the same way but
        carry no meaning; `select_mask` ignores them.
    """
    if alpha.dim() != 1:
        raise ValueError(f"alpha must be a vector, one entry per criterion in use, got shape {tuple(alpha.shape)}")
    num_criteria = alpha.numel()
    if set(per_tensor_rows) != set(alive):
        raise ValueError(
            f"per_tensor_rows and alive must name the same tensors, got {sorted(per_tensor_rows)} "
            f"and {sorted(alive)}"
        )
    selected = {}
    for name, scores in per_tensor_rows.items():
        if scores.shape[0] != num_criteria or scores.shape[1:] != alive[name].shape:
            raise ValueError(
                f"alpha must have one entry per criterion in use: per_tensor_rows[{name!r}] has shape "
                f"{list(scores.shape)}, alive {list(alive[name].shape)} and alpha {list(alpha.shape)}"
            )
        selected[name] = scores.float()

    # float64 for the global sums of squares: millions of terms at ResNet-50 scale.
    sum_squares = torch.zeros(num_criteria, dtype=torch.float64)
    for name, scores in selected.items():
        mask = alive[name].to(scores.device)
        alive_scores = scores[:, mask].double()
        sum_squares += alive_scores.square().sum(dim=1).cpu()
    # Folding the normaliser into α gives S = Σ_k (α_k / (‖s_k‖ + eps)) s_k in one contraction per tensor.
    scaled_alpha = (alpha.double().cpu() / (sum_squares.sqrt() + _EPS)).float()
    combined = {}
    for name, scores in selected.items():
        weights = scaled_alpha.to(scores.device).reshape((-1,) + (1,) * (scores.dim() - 1))
        combined[name] = (weights * scores).sum(dim=0)
    return combined
