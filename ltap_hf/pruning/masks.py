"""Which tensors are prunable, which units stay alive, and how masks are applied and reported.

`select_mask` and `density` are unit-agnostic: a mask entry is one unit, whatever a unit is.
`prunable_parameters`, `full_masks`, `apply_masks` and `density_report` are weight-granularity:
their masks have the shape of the weight they cover.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn


def prunable_parameters(model: nn.Module, prune_classifier: bool = False) -> dict[str, nn.Parameter]:
    """The `weight` of every `nn.Conv2d` and `nn.Linear`, named as in `model.named_parameters()`.

    The classifier head is left out unless `prune_classifier`: it is every such module whose
    qualified name has a part ending in "classifier" (transformers' convention: `classifier`,
    `classifier.1` in `ResNetForImageClassification`), or, when no module is named so, the last
    `nn.Linear` in registration order (e.g. timm's `fc`). A model with neither keeps all its layers
    prunable. Biases and normalisation layers are never prunable.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    head: set[str] = set()
    if not prune_classifier:
        head = {n for n, _ in layers if any(part.endswith("classifier") for part in n.split("."))}
        if not head:
            linears = [n for n, m in layers if isinstance(m, nn.Linear)]
            head = set(linears[-1:])
    return {names[id(m.weight)]: m.weight for n, m in layers if n not in head and id(m.weight) in names}


def full_masks(parameters: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """All-alive bool masks with the shape and device of each tensor (the state before any stage)."""
    return {n: torch.ones(p.shape, dtype=torch.bool, device=p.device) for n, p in parameters.items()}


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


@torch.no_grad()
def apply_masks(parameters: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place, writing +0.0 (`w * mask` would leave −0.0 for negative w).

    Args:
        parameters: name -> weight tensor, modified in place.
        masks: name -> bool [*W.shape], True for kept weights, on the weight's device.
    """
    for name, mask in masks.items():
        if name not in parameters:
            raise ValueError(f"mask {name!r} has no matching parameter; masks and parameters must share names")
        parameters[name].masked_fill_(~mask, 0.0)


def density(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of units alive over all the masks."""
    total = sum(mask.numel() for mask in masks.values())
    if total == 0:
        raise ValueError("density needs at least one non-empty mask")
    return sum(int(mask.sum()) for mask in masks.values()) / total


def density_report(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict:
    """Densities of a weight-masked model, for logs and the model card.

    Returns:
        dict with `prunable_density` (alive / prunable weights), `overall_density` (1 − pruned /
        all parameters of the model, shared parameters counted once), `prunable_parameters`,
        `total_parameters`, `pruned_parameters`, and `per_tensor`: name -> density of that tensor.
    """
    num_parameters = sum(p.numel() for p in model.parameters())
    per_tensor = {name: int(mask.sum()) / mask.numel() for name, mask in masks.items()}
    num_prunable = sum(mask.numel() for mask in masks.values())
    num_pruned = num_prunable - sum(int(mask.sum()) for mask in masks.values())
    return {
        "prunable_density": density(masks),
        "overall_density": 1.0 - num_pruned / num_parameters,
        "prunable_parameters": num_prunable,
        "total_parameters": num_parameters,
        "pruned_parameters": num_pruned,
        "per_tensor": per_tensor,
    }
