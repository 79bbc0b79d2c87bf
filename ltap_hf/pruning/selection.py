"""Which units survive a pruning stage: the global ranking with its floors, for weights and channel groups.

`select_mask` ranks any units (a mask entry is one unit); `select_channel_groups` ranks channels by the
parameters they remove, with per-tensor floors, optional width rounding and a uniform allocation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch

from .groups import ChannelGroup, parameter_density


def _layer_floor(numel: int, min_layer_density: float) -> int:
    return max(1, math.ceil(min_layer_density * numel))


def select_mask(
    scores: Mapping[str, torch.Tensor],
    alive: Mapping[str, torch.Tensor],
    density: float,
    min_layer_density: float = 0.02,
) -> dict[str, torch.Tensor]:
    """Prune the lowest-scored alive units, ranked globally, until round(density · total) stay alive.

    Masks only shrink: dead units stay dead, and a density above the current one prunes nothing.
    Per-tensor floor: a tensor keeps at least max(1, ceil(min_layer_density · numel)) units, its
    best-scored alive ones (or all its alive units if it already has fewer). When the floors make
    the target unreachable the floors win, and the result is denser than asked; callers read the
    achieved density with `density`.

    Ties are broken deterministically: by ascending score with a stable sort over the tensors in
    `alive`'s order, each flattened in index order (the earlier unit goes first).

    Args:
        scores: name -> float scores [*U] (e.g. from `combine_scores`); low is pruned first.
        alive: name -> bool [*U], the current mask.
        density: target fraction of all units (over every tensor) to keep, in (0, 1].
        min_layer_density: per-tensor floor as a fraction of the tensor's units, in [0, 1].

    Returns:
        name -> new bool mask [*U] (the inputs are not modified).
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if not 0 <= min_layer_density <= 1:
        raise ValueError(f"min_layer_density must be in [0, 1], got {min_layer_density}")
    if set(scores) != set(alive):
        raise ValueError(f"scores and alive must name the same tensors, got {sorted(scores)} and {sorted(alive)}")

    total = sum(mask.numel() for mask in alive.values())
    num_alive = sum(int(mask.sum()) for mask in alive.values())
    num_to_drop = num_alive - round(density * total)
    if num_to_drop <= 0:
        return {name: mask.clone() for name, mask in alive.items()}

    # Rank on one device over the masks flattened end to end; `offset` maps a tensor's units there.
    device = next(iter(alive.values())).device
    candidate_scores, candidate_positions = [], []
    offset = 0
    for name, mask in alive.items():
        score = scores[name]
        if score.shape != mask.shape:
            raise ValueError(f"scores[{name!r}] has shape {tuple(score.shape)}, but its mask has {tuple(mask.shape)}")
        alive_positions = mask.reshape(-1).to(device).nonzero().squeeze(1)
        alive_scores = score.reshape(-1).to(device)[alive_positions].float()
        if torch.isnan(alive_scores).any():
            raise ValueError(f"scores[{name!r}] has NaN for alive units; check the gradients and criteria")
        num_protected = min(_layer_floor(mask.numel(), min_layer_density), alive_positions.numel())
        # The protected units are the last `num_protected` of the stable ascending order; sorting the
        # rest back into index order makes the global stable sort break ties by (tensor, index).
        ascending = torch.sort(alive_scores, stable=True).indices
        droppable = ascending[: alive_positions.numel() - num_protected].sort().values
        candidate_scores.append(alive_scores[droppable])
        candidate_positions.append(alive_positions[droppable] + offset)
        offset += mask.numel()

    all_positions = torch.cat(candidate_positions)
    dropped = all_positions[torch.sort(torch.cat(candidate_scores), stable=True).indices[:num_to_drop]]
    flat = torch.cat([mask.reshape(-1).to(device) for mask in alive.values()])
    flat[dropped] = False
    # clone(): views of one buffer would share storage, which safetensors refuses to save.
    pieces = flat.split([mask.numel() for mask in alive.values()])
    return {
        name: piece.reshape(mask.shape).to(mask.device).clone() for (name, mask), piece in zip(alive.items(), pieces)
    }


def _round_up_widths(
    selected: Mapping[str, torch.Tensor],
    previous: Mapping[str, torch.Tensor],
    scores: Mapping[str, torch.Tensor],
    multiple: int,
) -> dict[str, torch.Tensor]:
    """Keeps, in each group, the best-scored channels this stage dropped until its width is a multiple
    of `multiple` (or all previously alive channels): masks still only shrink."""
    rounded = {}
    for name, mask in selected.items():
        kept, before = int(mask.sum()), int(previous[name].sum())
        extra = min(before, math.ceil(kept / multiple) * multiple) - kept
        mask = mask.clone()
        if extra > 0:
            dropped = (previous[name] & ~mask).nonzero().squeeze(1)
            best = torch.sort(scores[name][dropped].float(), descending=True, stable=True).indices[:extra]
            mask[dropped[best]] = True
        rounded[name] = mask
    return rounded


def _restore_tensor_floors(
    groups: Sequence[ChannelGroup],
    selected: Mapping[str, torch.Tensor],
    previous: Mapping[str, torch.Tensor],
    scores: Mapping[str, torch.Tensor],
    parameters: Mapping[str, torch.Tensor],
    min_tensor_density: float,
) -> dict[str, torch.Tensor]:
    """Tensor by tensor, in order, gives back channels this stage dropped until the tensor keeps its floor
    (or none of its groups has a dropped channel left): each time the best-scored dropped channel of the
    group that keeps the smallest fraction of the tensor's dim, which raises the tensor's count the most
    per channel given back. Masks still only shrink against `previous`, and a tensor that meets its floor
    keeps meeting it, since channels are only given back."""
    shapes = {n: p.shape for n, p in parameters.items()}
    masks = {name: mask.clone() for name, mask in selected.items()}
    # tensor -> dim -> [(group, its slice's positions along that dim)], for the counted tensors' parameter slices
    slices: dict[str, dict[int, list[tuple[str, torch.Tensor]]]] = defaultdict(lambda: defaultdict(list))
    for group in groups:
        for s in group.slices:
            if s.tensor in shapes and s.is_parameter:
                slices[s.tensor][s.dim].append((group.name, torch.tensor(s.index)))

    def kept_along(tensor: str, dim: int) -> int:
        dead = sum(int((~masks[name].cpu()).sum()) for name, _ in slices[tensor][dim])
        return shapes[tensor][dim] - dead

    for tensor, dims in slices.items():
        floor = _layer_floor(math.prod(shapes[tensor]), min_tensor_density)
        while True:
            kept = {dim: kept_along(tensor, dim) for dim in dims}
            if math.prod(kept.get(d, size) for d, size in enumerate(shapes[tensor])) >= floor:
                break
            candidates = [(kept[dim] / shapes[tensor][dim], name) for dim, members in dims.items() for name, _ in members
                          if (previous[name] & ~masks[name]).any()]
            if not candidates:
                break
            name = min(candidates)[1]
            dropped = (previous[name] & ~masks[name]).nonzero().squeeze(1)
            masks[name][dropped[scores[name][dropped].float().argmax()]] = True
    return masks


CHANNEL_ALLOCATIONS = ("global", "uniform")


def _keep_best_per_group(
    scores: Mapping[str, torch.Tensor], alive: Mapping[str, torch.Tensor], num_kept: int, total: int
) -> dict[str, torch.Tensor]:
    """Every group keeps its best-scored alive channels, ceil(num_kept / total · C_g) of them (at least
    one, at most what is alive); ties go as in `select_mask` (the earlier channel first)."""
    masks = {}
    for name, mask in alive.items():
        positions = mask.nonzero().squeeze(1)
        alive_scores = scores[name][positions].float()
        if torch.isnan(alive_scores).any():
            raise ValueError(f"scores[{name!r}] has NaN for alive channels; check the gradients and criteria")
        channels = mask.numel()
        keep = min(positions.numel(), max(1, -(-num_kept * channels // total)))
        ascending = torch.sort(alive_scores, stable=True).indices
        kept = torch.zeros_like(mask)
        kept[positions[ascending[positions.numel() - keep:]]] = True
        masks[name] = kept
    return masks


def select_channel_groups(
    groups: Sequence[ChannelGroup],
    scores: Mapping[str, torch.Tensor],
    alive: Mapping[str, torch.Tensor],
    density: float,
    parameters: Mapping[str, torch.Tensor],
    min_tensor_density: float = 0.02,
    round_to: int = 1,
    allocation: str = "global",
) -> dict[str, torch.Tensor]:
    """Prune the lowest-scored alive channels, ranked globally over all groups (or within each group,
    see `allocation`), until the density of `parameters` (counted in parameters, not channels) is at
    most `density`.

    The ranking and tie-breaking are `select_mask`'s, with one group as one "tensor". Floors: no group
    loses its last channel, and every tensor of `parameters` keeps at least max(1, ceil(min_tensor_density
    · numel)) of its entries (a conv between two groups keeps the product of their fractions, so a floor
    per group would not hold per tensor): a tensor under its floor gets back, one at a time, the
    best-scored channels this stage dropped from its groups. When the floors make the target unreachable
    the result is denser than asked.

    Args:
        groups: the channel groups.
        scores: group -> combined score [C_g] (`combine_scores` over `group_criteria`); low goes first.
        alive: group -> bool [C_g], the current masks (only shrink).
        density: target fraction of `parameters` entries to keep, in (0, 1].
        parameters: the tensors the density counts (`prunable_parameters(model)`); only shapes are read.
        min_tensor_density: per-tensor floor as a fraction of its entries, in [0, 1].
        round_to: keep each group's width a multiple of this (>= 1) by keeping the best-scored of the
            channels this stage would drop, counted in the density; widths that are multiples of 8 run
            faster on CPU than odd widths of similar cost.
        allocation: "global" ranks all alive channels together (ALGORITHM.md); "uniform" keeps the same
            fraction of channels in every group, the best-scored ones of each. A global ranking thins
            the layers whose scores are low as a whole, often the parameter-heavy last stage, which
            leaves most multiply-adds; a uniform one makes multiply-adds and latency fall with the
            parameters.

    Returns:
        group -> new bool mask [C_g].
    """
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
    if allocation not in CHANNEL_ALLOCATIONS:
        raise ValueError(f"allocation must be one of {CHANNEL_ALLOCATIONS}, got {allocation!r}")

    def select(num_kept: int) -> dict[str, torch.Tensor]:
        if allocation == "global":
            masks = select_mask(scores, alive, num_kept / total, min_layer_density=0.0)
        else:
            masks = _keep_best_per_group(scores, alive, num_kept, total)
        masks = _restore_tensor_floors(groups, masks, alive, scores, parameters, min_tensor_density)
        return _round_up_widths(masks, alive, scores, round_to) if round_to > 1 else masks

    def meets_target(masks: Mapping[str, torch.Tensor]) -> bool:
        return parameter_density(groups, masks, parameters) <= density

    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    total = sum(g.num_channels for g in groups)
    # Fewer kept channels (or a smaller share of every group) never raise the parameter density, so
    # bisect `num_kept` for the largest one that meets the target: the fewest channels pruned.
    # select(total) keeps everything alive, which does not meet it.
    low, high = 1, total
    if meets_target(alive):
        return {name: mask.clone() for name, mask in alive.items()}
    best = select(low)
    if not meets_target(best):
        return best
    while high - low > 1:
        middle = (low + high) // 2
        candidate = select(middle)
        if meets_target(candidate):
            low, best = middle, candidate
        else:
            high = middle
    return best
