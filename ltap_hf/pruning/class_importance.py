"""ltap-hf's class-conditional importance, the score of the "class_taylor" criterion (not the paper's).

For every class c with probe images, g_c is the gradient of the mean loss over that class's probe images.
A unit's per-class importance is F_c = (w·g_c)² for one weight, or F_c = ⟨x, g_c⟩² over the slices x of
one channel. Each class's F_c is divided by its L2 norm over the alive units (all tensors or groups
together), so every class speaks with the same loudness, and the classes are combined with weights λ_c
(summing to 1): I = Σ_c λ_c F_c / ‖F_c‖. README, "ltap-hf's class-conditional criterion (not the paper's)".

Tensor code only: the caller (the trainer) runs the model on the probe set and hands over the gradients,
one class at a time, so only one class's gradient and F_c are held at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from .groups import GroupSums


CLASS_IMPORTANCE_WEIGHTINGS: tuple[str, ...] = ("uniform", "inverse_frequency", "worst_class")

_EPS = 1e-12


def weight_class_taylor(weights: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """F_c per weight: name -> float32 (w·g_c)², shape of W."""
    return {n: (w.detach().float() * grads[n].float()).square() for n, w in weights.items()}


def channel_class_taylor(sums: GroupSums, weights: Mapping[str, torch.Tensor],
                         grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """F_c per channel: group -> float32 [C_g], ⟨x, g_c⟩² over the channel's parameter slices."""
    return {g: dot.square() for g, dot in sums({n: weights[n].detach().float() * grads[n].float() for n in weights}).items()}


def class_importance_weights(
    weighting: str,
    class_counts: Sequence[int],
    class_accuracy: torch.Tensor | None = None,
    has_validation: torch.Tensor | None = None,
    has_probe: torch.Tensor | None = None,
) -> torch.Tensor:
    """λ: float64 [C] summing to 1, the weight of each class in the class-conditional importance.

    Args:
        weighting: "uniform" (λ_c = 1), "inverse_frequency" (λ_c ∝ 1/n_c, n_c the training count) or
            "worst_class" (λ_c ∝ 1 − A_c, the class's validation error at this stage; a class without
            validation images gets 0, and if no validated class has any error the weights fall back to uniform
            over the validated classes).
        class_counts: training images per class, length C.
        class_accuracy: A, float [C], per-class validation accuracy ("worst_class" only).
        has_validation: bool [C] ("worst_class" only).
        has_probe: bool [C], False for classes without probe images: they get 0 (they have no gradient).
    """
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if weighting == "uniform":
        weights = torch.ones_like(counts)
    elif weighting == "inverse_frequency":
        if (counts < 1).any():
            raise ValueError(f"inverse_frequency class weights need every class count >= 1, got {counts.int().tolist()}")
        weights = 1.0 / counts
    elif weighting == "worst_class":
        if class_accuracy is None or has_validation is None:
            raise ValueError("worst_class weighting needs the per-class validation accuracy and has_validation")
        validated = has_validation.detach().cpu().to(torch.bool).reshape(-1)
        accuracy = class_accuracy.detach().cpu().to(torch.float64).reshape(-1).nan_to_num(1.0)
        weights = (1.0 - accuracy).clamp_min(0.0) * validated
        if weights.sum() <= 0:
            weights = validated.to(torch.float64)
    else:
        raise ValueError(f"weighting must be one of {', '.join(CLASS_IMPORTANCE_WEIGHTINGS)}, got {weighting!r}")
    if has_probe is not None:
        weights = weights * has_probe.detach().cpu().to(torch.float64).reshape(-1)
    total = weights.sum()
    if total <= 0:
        raise ValueError("no class has both probe images and a positive weight: the class-conditional importance "
                         "has nothing to measure (check the probe set and, with worst_class, the validation split)")
    return weights / total


def combine_class_scores(
    per_class_scores: Iterable[tuple[int, Mapping[str, torch.Tensor]]],
    alive: Mapping[str, torch.Tensor],
    class_weights: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """I = Σ_c λ_c F_c / (‖F_c‖ + 1e-12), the norm over the alive units of all tensors or groups together.

    Args:
        per_class_scores: (class index c, unit name -> F_c [*U]) per class, consumed one at a time; a class
            of weight 0 is skipped (its F_c is never normalised).
        alive: unit name -> bool [*U].
        class_weights: λ, [C].

    Returns:
        unit name -> float32 [*U].
    """
    combined = {n: torch.zeros(m.shape, dtype=torch.float32, device=m.device) for n, m in alive.items()}
    weights = class_weights.detach().cpu().to(torch.float64)
    for c, scores in per_class_scores:
        weight = float(weights[c])
        if weight == 0.0:
            continue
        # float64 for the global sum of squares, as combine_rows does.
        sum_squares = sum(float(scores[n][alive[n].to(scores[n].device)].double().square().sum()) for n in alive)
        scale = weight / (sum_squares ** 0.5 + _EPS)
        for n in alive:
            combined[n].add_(scores[n].to(combined[n].device), alpha=scale)
    return combined
