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
        model_name: the card's title and `model-index` name (the Hub repo's name when published).
        architecture: a phrase for the text, e.g. "a CIFAR ResNet-32".
        model_type: the config's `model_type`; `"lt_resnet"` models load with plain `from_pretrained`,
            others through `ltap_hf.hub.load_sparse_pretrained` when sparse (the card says which).
        dataset_id: the dataset's Hub id (e.g. "uoft-cs/cifar10") for the `datasets` metadata, or None to
            leave that metadata out (it takes Hub ids only).
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
        dataset_type: the `model-index` dataset type when `dataset_id` is None (e.g. the builder's name,
            "digits_lt"); defaults to `dataset_id`.
        dense_source: what the dense numbers are, for the card's text (e.g. "the same network at the end
            of its dense phase").
        trained_with_ltap: False for a card of a model only evaluated here (no LTAP settings or vote).
        checkpoint_format: "sparse" (the sparse-bitmask files) or "dense" (an ordinary checkpoint, e.g.
            a slimmed network); the usage section says how it loads.
        model_location: the Hub repo or folder the usage snippet loads from; `render_model_card`'s
            `repo_id` takes precedence, and without either the output folder is used.
        max_table_classes: the card's per-class table lists every class up to this many classes.
        calibration: for a model calibrated post hoc (`ltap_hf.calibration`), its record
            (`model.config.ltap_calibration`: method, tau, bias, validation balanced accuracy before and
            after ...) with `"test_accuracy_before"`, the `long_tail_accuracy` before calibration;
            `pruned_accuracy` is then the calibrated model's.
    """

    model_name: str
    architecture: str
    model_type: str
    dataset_id: str | None
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
    dataset_type: str | None = None
    dense_source: str | None = None
    trained_with_ltap: bool = True
    checkpoint_format: str = "sparse"
    model_location: str | None = None
    max_table_classes: int = 200
    calibration: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_format not in ("sparse", "dense"):
            raise ValueError(f"checkpoint_format must be 'sparse' or 'dense', got {self.checkpoint_format!r}")
        if not (self.dataset_id or self.dataset_type):
            raise ValueError("name the dataset: its Hub id (dataset_id) or, without one, a dataset_type")
        num_classes = len(self.class_names)
        if len(self.train_class_counts) != num_classes:
            raise ValueError(
                f"train_class_counts has {len(self.train_class_counts)} entries but class_names names {num_classes} classes"
            )
        if self.calibration is not None:
            missing = {"method", "tau", "bias", "validation_balanced_accuracy", "test_accuracy_before"} - set(self.calibration)
            if missing:
                raise ValueError(f"calibration lacks {sorted(missing)}: pass model.config.ltap_calibration with "
                                 "'test_accuracy_before' (the long_tail_accuracy before calibration)")
            if len(self.calibration["bias"]) != num_classes:
                raise ValueError(f"calibration['bias'] has {len(self.calibration['bias'])} entries but class_names "
                                 f"names {num_classes} classes")
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


def rank_worst_classes(
    pruned: Sequence[float], dense: Sequence[float] | None, train_class_counts: Sequence[int]
) -> list[int]:
    """Class indices, worst first: the largest accuracy drop from `dense` to `pruned` (per-class accuracies),
    or without `dense` the lowest pruned accuracy. Classes without test images (NaN) are left out; ties
    go to the smaller training set (the tail)."""
    keys = {}
    for index, accuracy in enumerate(pruned):
        score = accuracy - dense[index] if dense is not None else accuracy
        if not math.isnan(score):
            keys[index] = (score, train_class_counts[index], index)
    return sorted(keys, key=keys.__getitem__)


def worst_hit_classes(report: PruningReport) -> list[int]:
    """The card's worst-hit classes (`report.num_worst_classes` of them), ranked by `rank_worst_classes`."""
    dense = report.dense_accuracy["per_class_accuracy"] if report.dense_accuracy is not None else None
    ranked = rank_worst_classes(report.pruned_accuracy["per_class_accuracy"], dense, report.train_class_counts)
    return ranked[: report.num_worst_classes]


def _eval_results(report: PruningReport) -> list[EvalResult]:
    """The test accuracies as `model-index` entries (fractions; empty groups left out): the model's own as
    `accuracy`, and, when known, the dense network's as `dense_accuracy`, a type of its own so that
    nothing reading `accuracy` mistakes them for this model's."""
    models = [("accuracy", "Top-1 accuracy ({group})", report.pruned_accuracy)]
    if report.dense_accuracy is not None:
        models.append(("dense_accuracy", "Top-1 accuracy of the dense network ({group})", report.dense_accuracy))
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=report.dataset_id or report.dataset_type,
            dataset_name=report.dataset_name,
            dataset_split="test",
            metric_type=metric_type,
            metric_name=name.format(group=label.lower()),
            metric_config=config,
            metric_value=round(float(accuracy[key]), 4),
        )
        for metric_type, name, accuracy in models
        for label, key, config in _GROUPS
        if not math.isnan(accuracy[key])
    ]


def _calibration_section(report: PruningReport) -> dict | None:
    """What the card's calibration section shows: method, tau or the vector's range, validation balanced
    accuracy and test accuracy per group, before and after."""
    record = report.calibration
    if record is None:
        return None
    bias = record["bias"]
    low, high = min(range(len(bias)), key=bias.__getitem__), max(range(len(bias)), key=bias.__getitem__)
    validation = record["validation_balanced_accuracy"]
    before = record["test_accuracy_before"]
    candidates = [
        (f"logit adjustment, τ = {candidate['tau']:g}" if "tau" in candidate else method.replace("_", " "),
         _percent(candidate["validation_balanced_accuracy"]))
        for method, candidate in record.get("candidates", {}).items()
    ]
    return {
        "method": record["method"],
        "tau": None if record["tau"] is None else f"{record['tau']:g}",
        "head": record.get("head", "the classifier head's bias"),
        "lowest": f"{bias[low]:+.3f} ({report.class_names[low]})",
        "highest": f"{bias[high]:+.3f} ({report.class_names[high]})",
        "validation_images": record.get("validation_images"),
        "validation_before": _percent(validation["before"]),
        "validation_after": _percent(validation["after"]),
        "candidates": candidates,
        "rows": [{"group": label, "before": _percent(before[key]), "after": _percent(report.pruned_accuracy[key]),
                  "change": _change(before[key], report.pruned_accuracy[key])} for label, key, _ in _GROUPS],
    }


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _loading_code(report: PruningReport, location: str) -> str:
    if report.model_type == "lt_resnet":
        return (
            "from transformers import AutoModelForImageClassification\n\n"
            f'model = AutoModelForImageClassification.from_pretrained("{location}", trust_remote_code=True)'
        )
    if report.checkpoint_format == "sparse":
        return f'from ltap_hf.hub import load_sparse_pretrained\n\nmodel = load_sparse_pretrained("{location}")'
    return (
        "from transformers import AutoModelForImageClassification\n\n"
        f'model = AutoModelForImageClassification.from_pretrained("{location}")'
    )


def render_model_card(
    report: PruningReport,
    output_dir: str | Path,
    repo_id: str | None = None,
    template_path: str | Path = DEFAULT_TEMPLATE_PATH,
) -> tuple[ModelCard, list[Path]]:
    """Renders the card of a pruned model and its plots into `output_dir`.

    Writes `README.md`, `per_class_accuracy.png` (per-class test accuracy against training-set class
    size, an arrow from dense to pruned per class when the dense accuracies are known) and
    `layer_density.png` (fraction of weights kept per prunable layer).

    Args:
        report: the numbers to show.
        output_dir: created if needed.
        repo_id: the Hub repo the card's usage snippet loads from; defaults to `report.model_location`,
            else to `output_dir` (as an absolute path: where the model is saved beside its card).
        template_path: a Jinja markdown template (`model_cards/ltap_model_card.md` by default).

    Returns:
        The card (its metadata in `card.data`) and the paths of the two PNG files it references.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dense = report.dense_accuracy
    pruned_per_class = report.pruned_accuracy["per_class_accuracy"]
    dense_per_class = dense["per_class_accuracy"] if dense is not None else None
    plots = [output_dir / ACCURACY_PLOT, output_dir / DENSITY_PLOT]
    plot_per_class_accuracy(plots[0], report.train_class_counts, pruned_per_class, dense_per_class)
    plot_layer_density(plots[1], report.density["per_tensor"], report.density["prunable_density"])

    def row(cells: dict, dense_value: float | None, pruned_value: float) -> dict:
        if dense_value is not None:
            cells.update(dense=_percent(dense_value), change=_change(dense_value, pruned_value))
        return {**cells, "pruned": _percent(pruned_value)}

    accuracy_rows = [
        row({"group": label}, dense[key] if dense is not None else None, report.pruned_accuracy[key])
        for label, key, _ in _GROUPS
    ]

    def class_row(index: int) -> dict:
        cells = {"name": report.class_names[index], "count": report.train_class_counts[index]}
        return row(cells, dense_per_class[index] if dense is not None else None, pruned_per_class[index])

    worst_rows = [class_row(index) for index in worst_hit_classes(report)]
    num_classes = len(report.class_names)
    class_rows = [class_row(index) for index in range(num_classes)] if num_classes <= report.max_table_classes else []
    card_data = ModelCardData(
        model_name=report.model_name,
        base_model=report.base_model,
        license=report.license,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=list(CARD_TAGS) if report.trained_with_ltap else [tag for tag in CARD_TAGS if tag != "ltap"],
        datasets=[report.dataset_id] if report.dataset_id else None,
        metrics=["accuracy"],
        eval_results=_eval_results(report),
    )
    location = repo_id or report.model_location or str(output_dir.resolve())
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=report.model_name,  # ModelCardData folds it into `model-index`, out of the template's reach
        architecture=report.architecture,
        dataset_name=report.dataset_name,
        trained_with_ltap=report.trained_with_ltap,
        has_dense=dense is not None,
        dense_source=report.dense_source,
        accuracy_rows=accuracy_rows,
        worst_rows=worst_rows,
        class_rows=class_rows,
        num_classes=num_classes,
        accuracy_plot=ACCURACY_PLOT,
        density_plot=DENSITY_PLOT,
        prunable_density=f"{100 * report.density['prunable_density']:.1f}%",
        overall_density=f"{100 * report.density['overall_density']:.1f}%",
        parameters=f"{report.cost.parameters_nonzero:,} / {report.cost.parameters:,}",
        macs=_count(report.cost.macs),
        macs_nonzero=_count(report.cost.macs_nonzero),
        settings=[(name, _setting(value)) for name, value in report.ltap_settings.items()],
        alpha=[(name, f"{value:.4f}") for name, value in report.final_alpha.items()],
        loading_code=_loading_code(report, location),
        sparse_checkpoint=report.checkpoint_format == "sparse",
        model_column="Pruned" if report.trained_with_ltap else "Model",
        calibration=_calibration_section(report),
    )
    card.save(output_dir / "README.md")
    return card, plots
