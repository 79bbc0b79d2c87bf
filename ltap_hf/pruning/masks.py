"""Which tensors are prunable, and how masks are applied and reported.

`density` is unit-agnostic: a mask entry is one unit, whatever a unit is. `prunable_parameters`,
`full_masks`, `apply_masks` and `density_report` are weight-granularity: their masks have the shape of
the weight they cover.
"""

from __future__ import annotations

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
