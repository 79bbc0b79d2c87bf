"""Accuracy metrics for long-tailed classification.

Overall top-1 hides what long-tail methods are about, so every evaluation also reports accuracy
per class, per Many / Medium / Few group (by *training* class count, see
`ltap_hf.data.imbalance.split_groups`), on the worst class and on the three rarest classes.

Conventions:
- A class with no evaluation examples has per-class accuracy NaN and is left out of every mean.
- A group with no evaluated classes (e.g. Few on CIFAR-10-LT, where no class has < 20 training
  images) has accuracy NaN. The key is still reported, so logs and tables keep the same columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from transformers import EvalPrediction

from .data.imbalance import split_groups


def _mean_over(per_class: np.ndarray, classes: Sequence[int]) -> float:
    """Mean of `per_class[classes]` ignoring NaN entries; NaN when nothing is left."""
    values = per_class[np.asarray(classes, dtype=np.int64)]
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _rarest_classes(class_counts: np.ndarray, k: int) -> np.ndarray:
    # Ties go to the higher class index: LT profiles list classes from head to tail, so among
    # equally rare classes the last ones are the tail (CIFAR-100-LT IR100 has four classes of 5).
    order = np.lexsort((-np.arange(class_counts.size), class_counts))
    return order[:k]


def long_tail_accuracy(
    predictions: np.ndarray,
    references: np.ndarray,
    class_counts: Sequence[int],
    num_classes: int | None = None,
) -> dict[str, float | int | list[float]]:
    """Top-1 accuracy overall, per class, per Many/Medium/Few group, worst class and tail.

    Args:
        predictions: `[N]` predicted class ids, or `[N, C]` logits/scores (argmax is taken).
        references: `[N]` true class ids.
        class_counts: training images per class, length C; defines the groups and the tail.
        num_classes: C, if given it must equal `len(class_counts)` (a consistency check).

    Returns:
        A dict with
        - `"accuracy"`: fraction of correct predictions over all N examples.
        - `"per_class_accuracy"`: list of C floats, NaN for classes absent from `references`.
        - `"many_accuracy"`, `"medium_accuracy"`, `"few_accuracy"`: mean per-class accuracy over
          the group's classes that have examples (> 100, 20..100, < 20 training images); NaN if none.
        - `"worst_class_accuracy"` and `"worst_class_index"`: the lowest per-class accuracy and its
          class (the lowest index on ties).
        - `"tail3_accuracy"`: mean per-class accuracy of the three classes with the fewest training
          images (ties broken towards the higher index), over those that have examples.
    """
    counts = np.asarray(class_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    if num_classes is not None and num_classes != counts.size:
        raise ValueError(
            f"num_classes ({num_classes}) must equal len(class_counts) ({counts.size}); "
            "pass one training count per class"
        )
    num_classes = counts.size

    predictions = np.asarray(predictions)
    references = np.asarray(references)
    if predictions.ndim == 2:
        if predictions.shape[1] != num_classes:
            raise ValueError(
                f"predictions given as logits must have shape [N, {num_classes}], got {predictions.shape}"
            )
        predictions = predictions.argmax(axis=-1)
    if predictions.ndim != 1 or references.ndim != 1 or predictions.shape != references.shape:
        raise ValueError(
            f"predictions ([N] ids or [N, C] logits) and references ([N]) must describe the same N examples, "
            f"got predictions {predictions.shape} and references {references.shape}"
        )
    if references.size == 0:
        raise ValueError("references is empty: there is nothing to evaluate")
    for name, ids in (("predictions", predictions), ("references", references)):
        if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= num_classes:
            raise ValueError(
                f"{name} must be integer class ids in [0, {num_classes}), got dtype {ids.dtype} "
                f"with range [{ids.min()}, {ids.max()}]"
            )

    correct = predictions == references
    totals = np.bincount(references, minlength=num_classes)
    hits = np.bincount(references[correct], minlength=num_classes)
    per_class = np.full(num_classes, np.nan)
    np.divide(hits, totals, out=per_class, where=totals > 0)

    groups = split_groups(counts.tolist())
    worst = int(np.nanargmin(per_class))
    return {
        "accuracy": float(correct.mean()),
        "per_class_accuracy": per_class.tolist(),
        "many_accuracy": _mean_over(per_class, groups["many"]),
        "medium_accuracy": _mean_over(per_class, groups["medium"]),
        "few_accuracy": _mean_over(per_class, groups["few"]),
        "worst_class_accuracy": float(per_class[worst]),
        "worst_class_index": worst,
        "tail3_accuracy": _mean_over(per_class, _rarest_classes(counts, 3)),
    }


COMPUTE_METRICS_KEYS = (
    "accuracy",
    "many_accuracy",
    "medium_accuracy",
    "few_accuracy",
    "worst_class_accuracy",
    "tail3_accuracy",
)


def make_compute_metrics(class_counts: Sequence[int]) -> Callable[[EvalPrediction], dict[str, float]]:
    """Build a `compute_metrics` function for `transformers.Trainer`.

    Args:
        class_counts: training images per class, length C.

    Returns:
        A function of an `EvalPrediction` (predictions: `[N, C]` logits, `[N]` ids, or a tuple whose
        first element is one of those; label_ids: `[N]`) returning the flat float metrics
        `COMPUTE_METRICS_KEYS`. Empty groups are reported as NaN (see the module docstring).
    """
    class_counts = list(class_counts)

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        predictions, references = eval_pred.predictions, eval_pred.label_ids
        # Models that return extra outputs (hidden states, ...) give a tuple; logits come first.
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        if isinstance(references, tuple):
            references = references[0]
        result = long_tail_accuracy(predictions, references, class_counts)
        return {key: float(result[key]) for key in COMPUTE_METRICS_KEYS}

    return compute_metrics
