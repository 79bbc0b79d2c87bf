"""The model card's two figures, written as PNG files with matplotlib's Agg canvas (no display needed)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from ..data.imbalance import FEW_SHOT_MAX, MANY_SHOT_MIN


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the model card plots need matplotlib: pip install matplotlib") from error
    # A bare Figure draws on the Agg canvas and touches no global pyplot state.
    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def plot_per_class_accuracy(
    path: str | os.PathLike,
    train_class_counts: Sequence[int],
    pruned_accuracy: Sequence[float],
    dense_accuracy: Sequence[float] | None = None,
) -> None:
    """Per-class test accuracy (%) against the class's training-set size (log scale), pruned and dense.

    Each class is a point; with the dense model given, a segment joins its dense and pruned accuracy,
    so the classes that pruning hurt stand out. Classes without test images (NaN) are left out.
    """
    figure = _figure(6.4, 4.0)
    axes = figure.add_subplot()
    counts = list(train_class_counts)
    series = [("pruned", pruned_accuracy, dict(color="tab:red", marker="o", s=18, zorder=3))]
    if dense_accuracy is not None:
        dense_style = dict(facecolors="none", edgecolors="tab:blue", marker="o", s=22, zorder=2)
        series.insert(0, ("dense", dense_accuracy, dense_style))
        for count, dense, pruned in zip(counts, dense_accuracy, pruned_accuracy):
            if not (math.isnan(dense) or math.isnan(pruned)):
                axes.plot([count, count], [100 * dense, 100 * pruned], color="0.75", linewidth=0.8, zorder=1)
    for label, accuracy, style in series:
        points = [(c, 100 * a) for c, a in zip(counts, accuracy) if not math.isnan(a)]
        axes.scatter([c for c, _ in points], [a for _, a in points], label=label, **style)
    # Group boundaries: few <= FEW_SHOT_MAX < medium < MANY_SHOT_MIN <= many.
    for boundary in (FEW_SHOT_MAX + 0.5, MANY_SHOT_MIN - 0.5):
        if min(counts) < boundary < max(counts):
            axes.axvline(boundary, color="0.5", linestyle="--", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_xlabel("training images in the class (log scale)")
    axes.set_ylabel("test top-1 accuracy (%)")
    axes.set_ylim(-2, 102)
    axes.set_title("Per-class accuracy against class size")
    axes.legend(loc="lower right")
    figure.savefig(path)


def plot_layer_density(path: str | os.PathLike, layer_density: Mapping[str, float], prunable_density: float) -> None:
    """One bar per prunable tensor (in model order): the fraction of its weights kept, with the
    density over all prunable weights as a dashed line."""
    names = list(layer_density)
    figure = _figure(max(6.4, 0.16 * len(names) + 2), 4.0)
    axes = figure.add_subplot()
    axes.bar(range(len(names)), [100 * layer_density[name] for name in names], color="tab:green")
    axes.axhline(
        100 * prunable_density, color="0.3", linestyle="--", linewidth=1, label=f"overall {100 * prunable_density:.1f}%"
    )
    axes.set_xticks(range(len(names)))
    # Drop the shared ".weight" suffix; the module path is what tells layers apart.
    axes.set_xticklabels([name.removesuffix(".weight") for name in names], rotation=90, fontsize=5)
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.set_ylim(0, 100)
    axes.set_ylabel("weights kept (%)")
    axes.set_title("Density per layer")
    axes.legend(loc="upper right")
    figure.savefig(path)
