"""The model card's two figures, written as PNG files with matplotlib's Agg canvas (no display needed)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from ..data.imbalance import FEW_SHOT_MAX, MANY_SHOT_MIN


DENSE_COLOR, PRUNED_COLOR, DROP_COLOR, GAIN_COLOR = "tab:blue", "tab:red", "0.45", "tab:green"
# Layer names stay legible at this size; the figure grows with the number of layers instead.
LAYER_NAME_FONTSIZE = 8


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the model card plots need matplotlib: pip install matplotlib") from error
    # A bare Figure draws on the Agg canvas and touches no global pyplot state.
    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _group_regions(axes, counts: Sequence[int]) -> None:
    """Dashed lines at the Many/Medium/Few boundaries and each group's name over its stretch of the x axis."""
    from matplotlib.transforms import blended_transform_factory

    low, high = min(counts) / 1.25, max(counts) * 1.25
    axes.set_xlim(low, high)
    boundaries = [b for b in (FEW_SHOT_MAX + 0.5, MANY_SHOT_MIN - 0.5) if low < b < high]
    for boundary in boundaries:
        axes.axvline(boundary, color="0.5", linestyle="--", linewidth=0.8, zorder=0)
    regions = (("Few (< 20 images)", 0, FEW_SHOT_MAX + 0.5), ("Medium (20–100)", FEW_SHOT_MAX + 0.5, MANY_SHOT_MIN - 0.5),
               ("Many (> 100)", MANY_SHOT_MIN - 0.5, math.inf))
    # x in data coordinates, y in axes coordinates: the names sit just above the plotting area.
    transform = blended_transform_factory(axes.transData, axes.transAxes)
    for name, start, end in regions:
        start, end = max(start, low), min(end, high)
        if start < end:
            axes.text(math.sqrt(start * end), 1.01, name, transform=transform, ha="center", va="bottom",
                      fontsize=8, color="0.3")


def plot_per_class_accuracy(
    path: str | os.PathLike,
    train_class_counts: Sequence[int],
    pruned_accuracy: Sequence[float],
    dense_accuracy: Sequence[float] | None = None,
):
    """Per-class test accuracy (%) against the class's training-set size (log scale), dense and pruned.

    Each class is a point; with the dense accuracies given, each class has a hollow dense point and an
    arrow from it to its pruned point (grey for a drop, green for a gain), so the classes that pruning
    hurt stand out. The Many/Medium/Few stretches of the x axis are marked and named. Classes without
    test images (NaN) are left out.

    Returns:
        The matplotlib `Figure` (already saved to `path`).
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure = _figure(7.0, 4.4)
    axes = figure.add_subplot()
    counts = list(train_class_counts)
    handles = []
    if dense_accuracy is not None:
        points = [(c, 100 * d) for c, d in zip(counts, dense_accuracy) if not math.isnan(d)]
        axes.scatter([c for c, _ in points], [a for _, a in points], facecolors="none", edgecolors=DENSE_COLOR,
                     marker="o", s=30, linewidths=1.2, zorder=2)
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none",
                              markeredgecolor=DENSE_COLOR, label="dense"))
        for count, dense, pruned in zip(counts, dense_accuracy, pruned_accuracy):
            if not (math.isnan(dense) or math.isnan(pruned)) and dense != pruned:
                color = DROP_COLOR if pruned < dense else GAIN_COLOR
                axes.annotate("", xy=(count, 100 * pruned), xytext=(count, 100 * dense), zorder=1,
                              arrowprops=dict(arrowstyle="-|>", color=color, linewidth=0.9, mutation_scale=8,
                                              shrinkA=3, shrinkB=3))
    points = [(c, 100 * a) for c, a in zip(counts, pruned_accuracy) if not math.isnan(a)]
    axes.scatter([c for c, _ in points], [a for _, a in points], color=PRUNED_COLOR, marker="o", s=18, zorder=3)
    handles.append(Line2D([], [], linestyle="none", marker="o", color=PRUNED_COLOR, label="pruned"))
    if dense_accuracy is not None:
        handles += [Line2D([], [], color=DROP_COLOR, marker=r"$\downarrow$", linestyle="none", markersize=9,
                           label="change with pruning"),
                    Line2D([], [], color="0.5", linestyle="--", linewidth=0.8, label="group boundary (20, 100)")]
    else:
        handles.append(Line2D([], [], color="0.5", linestyle="--", linewidth=0.8, label="group boundary (20, 100)"))
    _group_regions(axes, counts)
    axes.set_xscale("log")
    # Plain numbers of images (10, 20, 50, 100 ...), not powers of ten.
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("training images in the class (log scale)")
    axes.set_ylabel("test top-1 accuracy (%)")
    axes.set_ylim(-3, 103)
    axes.grid(axis="y", color="0.92", zorder=0)
    axes.set_title("Per-class test accuracy against class size", pad=16)
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    figure.savefig(path)
    return figure


def _short_names(names: Sequence[str]) -> list[str]:
    """Layer names without the module path every layer shares and without the ".weight" suffix."""
    parts = [name.removesuffix(".weight").split(".") for name in names]
    shared = 0
    while all(len(p) > shared + 1 for p in parts) and len({p[shared] for p in parts}) == 1:
        shared += 1
    return [".".join(p[shared:]) for p in parts]


def plot_layer_density(path: str | os.PathLike, layer_density: Mapping[str, float], prunable_density: float):
    """One horizontal bar per prunable tensor, in model order from the top: the fraction of its weights
    kept, with the density over all prunable weights as a labelled dashed line. Layer names are
    written at a legible size; the figure grows with the number of layers.

    Returns:
        The matplotlib `Figure` (already saved to `path`).
    """
    from matplotlib.transforms import blended_transform_factory

    names = list(layer_density)
    labels = _short_names(names)
    figure = _figure(7.0, max(3.0, 0.2 * len(names) + 1.3))
    axes = figure.add_subplot()
    positions = range(len(names))
    axes.barh(positions, [100 * layer_density[name] for name in names], color="tab:green", height=0.7)
    overall = 100 * prunable_density
    axes.axvline(overall, color="0.2", linestyle="--", linewidth=1, label=f"all prunable weights: {overall:.1f}%")
    # The line's value written at its top too, so the figure reads without the legend.
    axes.text(overall, 1.005, f"{overall:.1f}% overall", transform=blended_transform_factory(axes.transData, axes.transAxes),
              ha="center", va="bottom", fontsize=8, color="0.2")
    axes.set_yticks(list(positions), labels, fontsize=LAYER_NAME_FONTSIZE)
    axes.set_ylim(len(names) - 0.4, -0.6)  # the first layer at the top
    axes.set_xlim(0, 100)
    axes.set_xlabel("weights kept (%)")
    axes.grid(axis="x", color="0.92", zorder=0)
    axes.set_axisbelow(True)
    axes.set_title("Density per layer", pad=14)
    figure.legend(loc="outside lower center", fontsize=8, frameon=False)
    figure.savefig(path)
    return figure
