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
    """

    weight: torch.Tensor
    grad_mean: torch.Tensor
    taylor2_mean: torch.Tensor


@dataclass(frozen=True)
class ChannelStatistics:
    """One channel group, for scores per channel (all float32 [C_g]); x is a channel's concatenated slices.

    Attributes:
        norm: ‖x‖₂.
        grad_norm: ‖ḡ‖₂ over the same slices of the mean gradient.
        dot: ⟨x, ḡ⟩.
        size: size(x), every entry of the slices counted (pruned zeros included).
        taylor2_mean: the mean over steps of ½⟨x, g⟩².
    """

    norm: torch.Tensor
    grad_norm: torch.Tensor
    dot: torch.Tensor
    size: int
    taylor2_mean: torch.Tensor


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


REGISTRY: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("magnitude", weight=lambda s: s.weight.abs(), channel=lambda s: s.norm),
        Criterion("avg_magnitude", weight=_avg_magnitude, channel=lambda s: s.norm / s.size),
        Criterion("cosine", weight=_filter_cosine,
                  channel=lambda s: s.dot / (s.norm * s.grad_norm).clamp_min(_EPS) + 1.0),
        Criterion("taylor1", weight=lambda s: (s.weight * s.grad_mean).abs(), channel=lambda s: s.dot.abs()),
        Criterion("taylor2", weight=lambda s: s.taylor2_mean, channel=lambda s: s.taylor2_mean),
    )
}

CRITERIA: tuple[str, ...] = tuple(REGISTRY)


def criterion_indices(criteria: Sequence[str | int] | None) -> list[int]:
    """Map criterion names or indices to indices into `CRITERIA` (None means all five, in order).

    Raises a `ValueError` for unknown names, out-of-range indices, duplicates or an empty selection.
    """
    if criteria is None:
        return list(range(len(CRITERIA)))
    if isinstance(criteria, str):
        raise ValueError(f"criteria must be a sequence of names, got the string {criteria!r}; wrap it in a list")
    indices = []
    for criterion in criteria:
        if isinstance(criterion, str):
            if criterion not in CRITERIA:
                raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
            indices.append(CRITERIA.index(criterion))
        elif isinstance(criterion, int) and 0 <= criterion < len(CRITERIA):
            indices.append(criterion)
        else:
            raise ValueError(f"criterion index must be in [0, {len(CRITERIA)}), got {criterion!r}")
    if not indices:
        raise ValueError("criteria must name at least one criterion, got an empty sequence")
    if len(set(indices)) != len(indices):
        raise ValueError(f"criteria must not repeat, got {list(criteria)}")
    return indices


def weight_criteria(weight: torch.Tensor, grad_mean: torch.Tensor, taylor2_mean: torch.Tensor) -> torch.Tensor:
    """Every criterion for every scalar weight of one tensor (ALGORITHM.md, "single weight" column).

    Args:
        weight: W, shape [out, ...] (a conv's [out, in, kh, kw] or a linear's [out, in]).
        grad_mean: ḡ, the mean gradient since the last stage, shape of W.
        taylor2_mean: mean over steps of ½(w·g)², shape of W.

    Returns:
        float32 tensor [len(CRITERIA), *W.shape] in `CRITERIA` order.
    """
    if not (weight.shape == grad_mean.shape == taylor2_mean.shape):
        raise ValueError(
            f"weight, grad_mean and taylor2_mean must share a shape, got {tuple(weight.shape)}, "
            f"{tuple(grad_mean.shape)} and {tuple(taylor2_mean.shape)}"
        )
    statistics = WeightStatistics(weight.detach().float(), grad_mean.float(), taylor2_mean.float())
    return torch.stack([criterion.weight(statistics) for criterion in REGISTRY.values()])


def group_criteria(
    groups: Sequence[ChannelGroup],
    weights: Mapping[str, torch.Tensor],
    grad_mean: Mapping[str, torch.Tensor],
    taylor2_mean: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Every criterion for every group channel (ALGORITHM.md, "channel group" column).

    Args:
        groups: the channel groups.
        weights: tensor name -> current weight, every tensor the groups slice as parameters.
        grad_mean: tensor name -> ḡ (`ScoreAccumulator.mean_grad()`).
        taylor2_mean: group name -> [C_g] (`ScoreAccumulator.taylor2_mean()` with groups).

    Returns:
        group name -> float32 [len(CRITERIA), C_g], rows in `CRITERIA` order: the per-unit scores that
        `combine_scores` takes.
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
    scores = {}
    for group in groups:
        norm = norm_sq[group.name].sqrt()
        statistics = ChannelStatistics(norm, grad_norm_sq[group.name].sqrt(), dot[group.name], sizes[group.name],
                                       taylor2_mean[group.name].float().to(norm.device))
        scores[group.name] = torch.stack([criterion.channel(statistics) for criterion in REGISTRY.values()])
    return scores


def combine_scores(
    per_tensor_criteria: Mapping[str, torch.Tensor],
    alive: Mapping[str, torch.Tensor],
    alpha: torch.Tensor,
    criteria: Sequence[str | int] | None = None,
) -> dict[str, torch.Tensor]:
    """Globally L2-normalise each criterion over the alive units, then weight them: S = Σ_k α_k ŝ_k.

    Unit-agnostic: a "unit" is one entry of the per-unit shape U (a weight tensor's shape for weight
    granularity, the number of channels of a group for channel granularity).

    Args:
        per_tensor_criteria: name -> float tensor [len(CRITERIA), *U], rows in `CRITERIA` order.
        alive: name -> bool tensor [*U], True for units not pruned yet. Only these enter the norms.
        alpha: [K] criterion weights, one per criterion in use, in the order of `criteria`.
        criteria: names or `CRITERIA` indices of the criteria in use (a subset, K <= 5);
            None uses all five.

    Returns:
        name -> float32 combined score [*U]. Entries of dead units are computed the same way but
        carry no meaning; `select_mask` ignores them.
    """
    indices = criterion_indices(criteria)
    if alpha.dim() != 1 or alpha.numel() != len(indices):
        raise ValueError(
            f"alpha must have one entry per criterion in use ({len(indices)}), got shape {tuple(alpha.shape)}"
        )
    if set(per_tensor_criteria) != set(alive):
        raise ValueError(
            f"per_tensor_criteria and alive must name the same tensors, got {sorted(per_tensor_criteria)} "
            f"and {sorted(alive)}"
        )
    selected = {}
    for name, scores in per_tensor_criteria.items():
        if scores.shape[0] != len(CRITERIA) or scores.shape[1:] != alive[name].shape:
            raise ValueError(
                f"per_tensor_criteria[{name!r}] must have shape [{len(CRITERIA)}, *alive.shape] = "
                f"[{len(CRITERIA)}, {', '.join(map(str, alive[name].shape))}], got {list(scores.shape)}"
            )
        selected[name] = scores[indices].float()

    # float64 for the global sums of squares: millions of terms at ResNet-50 scale.
    sum_squares = torch.zeros(len(indices), dtype=torch.float64)
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
