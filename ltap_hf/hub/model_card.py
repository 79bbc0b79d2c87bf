"""The model card of an LTAP-pruned model: Hub metadata (`model-index` results), tables, two plots.

    card, plots = render_model_card(report, "card")    # writes card/README.md and the PNGs
    push_pruned_to_hub(model, "user/repo", processor, card=card, plots=plots)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..cost import ModelCost
from .plots import plot_layer_density, plot_per_class_accuracy


# The template lives with the repository's other cards; pass `template_path` to use another.
DEFAULT_TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "model_cards" / "ltap_model_card.md"
ACCURACY_PLOT = "per_class_accuracy.png"
DENSITY_PLOT = "layer_density.png"
CARD_TAGS = ["image-classification", "pruning", "sparse", "long-tail", "ltap"]

# (label in the card, key of `long_tail_accuracy`'s output, `metric_config` in the metadata)
_GROUPS = (
    ("All classes", "accuracy", "all"),
    ("Many", "many_accuracy", "many"),
    ("Medium", "medium_accuracy", "medium"),
    ("Few", "few_accuracy", "few"),
)


@dataclass
class PruningReport:
    """What the card of a pruned model shows.

    Args:
        model_name: the card's title and `model-index` name.
        architecture: a phrase for the text, e.g. "a CIFAR ResNet-32".
        model_type: the config's `model_type`; `"lt_resnet"` models load with plain `from_pretrained`,
            others through `ltap_hf.hub.load_sparse_pretrained` (the card says which).
        dataset_id: the dataset's Hub id or name, for the `datasets` metadata.
        dataset_name: the dataset's readable name (e.g. "CIFAR-100-LT, imbalance ratio 100").
        class_names: C names, in class-index order.
        train_class_counts: C training-set sizes; they define Many/Medium/Few and the plot's x axis.
        pruned_accuracy: `ltap_hf.metrics.long_tail_accuracy` of the pruned model on the test split.
        density: `ltap_hf.pruning.density_report` of the pruned model (for a model whose masks are
            gone, pass `{name: weight != 0}` masks over `prunable_parameters(model)`).
        cost: `ltap_hf.model_cost` of the pruned model.
        ltap_settings: the LTAP settings to list (name -> value), e.g. from the LTAP config.
        final_alpha: criterion name -> its weight α at the last vote.
        dense_accuracy: `long_tail_accuracy` of the dense model on the test split, when known.
        base_model: Hub id of the dense model, if published.
        license: a Hub license identifier.
        num_worst_classes: how many worst-hit classes the card names.
    """

    model_name: str
    architecture: str
    model_type: str
    dataset_id: str
    dataset_name: str
    class_names: Sequence[str]
    train_class_counts: Sequence[int]
    pruned_accuracy: Mapping[str, Any]
    density: Mapping[str, Any]
    cost: ModelCost
    ltap_settings: Mapping[str, Any]
    final_alpha: Mapping[str, float]
    dense_accuracy: Mapping[str, Any] | None = None
    base_model: str | None = None
    license: str | None = None
    num_worst_classes: int = 5

    def __post_init__(self) -> None:
        num_classes = len(self.class_names)
        if len(self.train_class_counts) != num_classes:
            raise ValueError(
                f"train_class_counts has {len(self.train_class_counts)} entries but class_names names {num_classes} classes"
            )
        for field in ("pruned_accuracy", "dense_accuracy"):
            accuracy = getattr(self, field)
            if accuracy is not None and len(accuracy["per_class_accuracy"]) != num_classes:
                raise ValueError(
                    f"{field}['per_class_accuracy'] has {len(accuracy['per_class_accuracy'])} entries but "
                    f"class_names names {num_classes} classes"
                )


def _percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.2f}"


def _change(dense: float, pruned: float) -> str:
    return "–" if math.isnan(dense) or math.isnan(pruned) else f"{100 * (pruned - dense):+.2f}"


def _count(value: int) -> str:
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= threshold:
            return f"{value / threshold:.2f}{suffix}"
    return str(value)


def worst_hit_classes(report: PruningReport) -> list[int]:
    """Class indices, worst first: the largest accuracy drop from dense to pruned, or without the dense
    model the lowest pruned accuracy. Classes without test images are left out; ties go to the
    smaller training set (the tail)."""
    pruned = report.pruned_accuracy["per_class_accuracy"]
    dense = report.dense_accuracy["per_class_accuracy"] if report.dense_accuracy is not None else None
    keys = {}
    for index, accuracy in enumerate(pruned):
        score = accuracy - dense[index] if dense is not None else accuracy
        if not math.isnan(score):
            keys[index] = (score, report.train_class_counts[index], index)
    return sorted(keys, key=keys.__getitem__)[: report.num_worst_classes]


def _eval_results(report: PruningReport) -> list[EvalResult]:
    """The pruned model's test accuracies as `model-index` entries (fractions; empty groups left out)."""
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=report.dataset_id,
            dataset_name=report.dataset_name,
            dataset_split="test",
            metric_type="accuracy",
            metric_name=f"Top-1 accuracy ({label.lower()})",
            metric_config=config,
            metric_value=round(float(report.pruned_accuracy[key]), 4),
        )
        for label, key, config in _GROUPS
        if not math.isnan(report.pruned_accuracy[key])
    ]


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _loading_code(report: PruningReport, repo_id: str) -> str:
    if report.model_type == "lt_resnet":
        return (
            "from transformers import AutoModelForImageClassification\n\n"
            f'model = AutoModelForImageClassification.from_pretrained("{repo_id}", trust_remote_code=True)'
        )
    return f'from ltap_hf.hub import load_sparse_pretrained\n\nmodel = load_sparse_pretrained("{repo_id}")'


def render_model_card(
    report: PruningReport,
    output_dir: str | Path,
    repo_id: str | None = None,
    template_path: str | Path = DEFAULT_TEMPLATE_PATH,
) -> tuple[ModelCard, list[Path]]:
    """Renders the card of a pruned model and its plots into `output_dir`.

    Writes `README.md`, `per_class_accuracy.png` (per-class test accuracy against training-set class
    size, dense and pruned) and `layer_density.png` (fraction of weights kept per prunable layer).

    Args:
        report: the numbers to show.
        output_dir: created if needed.
        repo_id: the Hub repo the card's usage snippet loads from (defaults to `report.model_name`).
        template_path: a Jinja markdown template (`model_cards/ltap_model_card.md` by default).

    Returns:
        The card (its metadata in `card.data`) and the paths of the two PNG files it references.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dense = report.dense_accuracy
    plots = [output_dir / ACCURACY_PLOT, output_dir / DENSITY_PLOT]
    plot_per_class_accuracy(
        plots[0], report.train_class_counts, report.pruned_accuracy["per_class_accuracy"],
        dense["per_class_accuracy"] if dense is not None else None,
    )
    plot_layer_density(plots[1], report.density["per_tensor"], report.density["prunable_density"])

    accuracy_rows = [
        {
            "group": label,
            "pruned": _percent(report.pruned_accuracy[key]),
            "dense": _percent(dense[key]) if dense is not None else None,
            "change": _change(dense[key], report.pruned_accuracy[key]) if dense is not None else None,
        }
        for label, key, _ in _GROUPS
    ]
    pruned_per_class = report.pruned_accuracy["per_class_accuracy"]
    worst_rows = [
        {
            "name": report.class_names[index],
            "count": report.train_class_counts[index],
            "pruned": _percent(pruned_per_class[index]),
            "dense": _percent(dense["per_class_accuracy"][index]) if dense is not None else None,
            "change": _change(dense["per_class_accuracy"][index], pruned_per_class[index]) if dense is not None else None,
        }
        for index in worst_hit_classes(report)
    ]
    card_data = ModelCardData(
        model_name=report.model_name,
        base_model=report.base_model,
        license=report.license,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=list(CARD_TAGS),
        datasets=[report.dataset_id],
        metrics=["accuracy"],
        eval_results=_eval_results(report),
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=report.model_name,  # ModelCardData folds it into `model-index`, out of the template's reach
        architecture=report.architecture,
        dataset_name=report.dataset_name,
        has_dense=dense is not None,
        accuracy_rows=accuracy_rows,
        worst_rows=worst_rows,
        accuracy_plot=ACCURACY_PLOT,
        density_plot=DENSITY_PLOT,
        prunable_density=f"{100 * report.density['prunable_density']:.1f}%",
        overall_density=f"{100 * report.density['overall_density']:.1f}%",
        parameters=f"{report.cost.parameters_nonzero:,} / {report.cost.parameters:,}",
        macs=_count(report.cost.macs),
        macs_nonzero=_count(report.cost.macs_nonzero),
        settings=[(name, _setting(value)) for name, value in report.ltap_settings.items()],
        alpha=[(name, f"{value:.4f}") for name, value in report.final_alpha.items()],
        loading_code=_loading_code(report, repo_id or report.model_name),
    )
    card.save(output_dir / "README.md")
    return card, plots
