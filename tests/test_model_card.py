import math

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from ltap_hf import model_cost
from ltap_hf.hub import PruningReport, render_model_card, worst_hit_classes
from ltap_hf.metrics import long_tail_accuracy
from ltap_hf.models import LTResNetConfig, LTResNetForImageClassification
from ltap_hf.pruning import density_report, prunable_parameters


CLASS_NAMES = ["airplane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "otter"]
TRAIN_COUNTS = [500, 320, 200, 120, 90, 60, 35, 19, 10, 5]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _accuracy(per_class_hits: list[int]) -> dict:
    """`long_tail_accuracy` of predictions that get `per_class_hits[c]` of 10 test images of class c right."""
    references = np.repeat(np.arange(10), 10)
    predictions = references.copy()
    for c, hits in enumerate(per_class_hits):
        predictions[10 * c + hits: 10 * (c + 1)] = (c + 1) % 10
    return long_tail_accuracy(predictions, references, TRAIN_COUNTS)


@pytest.fixture(scope="module")
def report_parts() -> dict:
    torch.manual_seed(0)
    model = LTResNetForImageClassification(LTResNetConfig.from_preset("resnet20", num_labels=10)).eval()
    with torch.no_grad():
        for weight in prunable_parameters(model).values():
            weight.masked_fill_(torch.rand_like(weight) > 0.3, 0.0)
    # the masks of a model whose pruning state is gone: its zeros
    masks = {name: weight != 0 for name, weight in prunable_parameters(model).items()}
    return dict(
        model_name="lt-resnet20-cifar10-lt-ltap30",
        architecture="a CIFAR ResNet-20",
        model_type="lt_resnet",
        dataset_id="tomas-gajarsky/cifar10-lt",
        dataset_name="CIFAR-10-LT (imbalance ratio 100)",
        class_names=CLASS_NAMES,
        train_class_counts=TRAIN_COUNTS,
        density=density_report(model, masks),
        cost=model_cost(model, (3, 32, 32)),
        ltap_settings={"target_density": 0.3, "criteria": ["magnitude", "taylor1"], "vote_temperature": 0.5},
        final_alpha={"magnitude": 0.25, "taylor1": 0.75},
    )


def test_card_metadata_parses_with_huggingface_hub(report_parts, tmp_path):
    pruned, dense = _accuracy([10, 9, 9, 8, 8, 7, 6, 5, 1, 4]), _accuracy([10] * 8 + [9, 8])
    report = PruningReport(pruned_accuracy=pruned, dense_accuracy=dense, **report_parts)
    card, _ = render_model_card(report, tmp_path, repo_id="user/lt-resnet20")

    loaded = ModelCard.load(tmp_path / "README.md")  # parses the model-index into EvalResults, strictly
    assert loaded.data.library_name == "transformers"
    assert loaded.data.pipeline_tag == "image-classification"
    assert {"pruning", "long-tail", "ltap"} <= set(loaded.data.tags)
    assert loaded.data.datasets == ["tomas-gajarsky/cifar10-lt"]
    results = {(r.metric_type, r.metric_config): r for r in loaded.data.eval_results}
    groups = ("all", "many", "medium", "few")
    # the model's own accuracy, and the dense network's under a type of its own
    assert set(results) == {(kind, config) for kind in ("accuracy", "dense_accuracy") for config in groups}
    for config in groups:
        key = "accuracy" if config == "all" else f"{config}_accuracy"
        assert results["accuracy", config].metric_value == pytest.approx(pruned[key], abs=1e-4)
        assert results["dense_accuracy", config].metric_value == pytest.approx(dense[key], abs=1e-4)
        assert results["accuracy", config].dataset_split == "test"
        assert results["accuracy", config].dataset_type == "tomas-gajarsky/cifar10-lt"
    assert loaded.data.eval_results == card.data.eval_results


def test_card_shows_groups_density_settings_and_worst_hit_classes(report_parts, tmp_path):
    # the ship class (10 training images) drops from 90% to 10%: the worst hit
    report = PruningReport(
        pruned_accuracy=_accuracy([10, 9, 9, 8, 8, 7, 6, 5, 1, 4]),
        dense_accuracy=_accuracy([10] * 8 + [9, 8]),
        **report_parts,
    )
    assert [CLASS_NAMES[i] for i in worst_hit_classes(report)] == ["ship", "horse", "otter", "frog", "dog"]
    text = render_model_card(report, tmp_path)[0].text
    assert "# lt-resnet20-cifar10-lt-ltap30\n\nlt-resnet20-cifar10-lt-ltap30 is a CIFAR ResNet-20 trained on" in text
    assert "| Few | 90.00 | 33.33 | -56.67 |" in text  # classes of 19, 10, 5 images: (10+9+8)/3 vs (5+1+4)/3 of 10
    worst_table = text[text.index("### Worst-hit classes"):text.index("## Sparsity")]
    assert worst_table.index("| ship | 10 | 90.00 | 10.00 | -80.00 |") < worst_table.index("| horse |")
    density = report_parts["density"]
    assert f"| {100 * density['prunable_density']:.1f}% |" in text
    assert f"{report_parts['cost'].parameters_nonzero:,} / {report_parts['cost'].parameters:,}" in text
    assert '| `criteria` | ["magnitude", "taylor1"] |' in text
    assert "| taylor1 | 0.7500 |" in text
    # every class, dense beside pruned
    every_class = text[text.index("<summary>Every class (10)</summary>"):text.index("</details>")]
    assert "| airplane | 500 | 100.00 | 100.00 | +0.00 |" in every_class
    assert "| otter | 5 | 80.00 | 40.00 | -40.00 |" in every_class
    # the snippet loads the folder the card (and the model beside it) was written to
    assert f'from_pretrained("{tmp_path.resolve()}", trust_remote_code=True)' in text


def test_plots_are_written_as_non_empty_pngs(report_parts, tmp_path):
    report = PruningReport(pruned_accuracy=_accuracy([9] * 10), dense_accuracy=_accuracy([10] * 10), **report_parts)
    card, plots = render_model_card(report, tmp_path)
    assert [p.name for p in plots] == ["per_class_accuracy.png", "layer_density.png"]
    for plot in plots:
        data = plot.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
        assert f"]({plot.name})" in card.text  # the card links the file by its name in the repo


def test_card_without_dense_run_ranks_by_pruned_accuracy_and_skips_empty_groups(report_parts, tmp_path):
    counts = [500, 320, 200, 120, 101, 90, 60, 35, 30, 20]  # no class under 20 images: the Few group is empty
    parts = dict(report_parts, train_class_counts=counts)
    references = np.repeat(np.arange(10), 10)
    predictions = np.where(references == 7, 0, references)  # every image of class 7 (horse) is wrong
    pruned = long_tail_accuracy(predictions, references, counts)
    assert math.isnan(pruned["few_accuracy"])
    report = PruningReport(pruned_accuracy=pruned, **parts)
    card, _ = render_model_card(report, tmp_path)
    assert {r.metric_config for r in ModelCard.load(tmp_path / "README.md").data.eval_results} == {"all", "many", "medium"}
    assert "| Few | – |" in card.text
    assert "Dense" not in card.text
    assert worst_hit_classes(report)[0] == CLASS_NAMES.index("horse")
    assert "| horse | 35 | 0.00 |" in card.text


def test_report_rejects_per_class_lists_of_the_wrong_length(report_parts):
    with pytest.raises(ValueError, match="pruned_accuracy"):
        PruningReport(pruned_accuracy={"per_class_accuracy": [0.5] * 9}, **report_parts)


def test_datasets_metadata_is_a_hub_id_or_left_out(report_parts, tmp_path):
    pruned = _accuracy([9] * 10)
    parts = dict(report_parts, dataset_id=None, dataset_type="digits_lt")
    render_model_card(PruningReport(pruned_accuracy=pruned, **parts), tmp_path)
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.datasets is None and "datasets:" not in (tmp_path / "README.md").read_text()
    assert {r.dataset_type for r in loaded.data.eval_results} == {"digits_lt"}
    with pytest.raises(ValueError, match="dataset_type"):
        PruningReport(pruned_accuracy=pruned, **dict(report_parts, dataset_id=None))


def test_usage_snippet_loads_from_the_repo_or_the_model_location(report_parts, tmp_path):
    pruned = _accuracy([9] * 10)
    text = render_model_card(PruningReport(pruned_accuracy=pruned, **report_parts), tmp_path, repo_id="user/x")[0].text
    assert 'from_pretrained("user/x", trust_remote_code=True)' in text
    foreign = dict(report_parts, model_type="resnet", model_location="/models/resnet-18-pruned")
    text = render_model_card(PruningReport(pruned_accuracy=pruned, **foreign), tmp_path)[0].text
    assert 'load_sparse_pretrained("/models/resnet-18-pruned")' in text and "sparse-bitmask format" in text
    dense_file = dict(foreign, checkpoint_format="dense")
    text = render_model_card(PruningReport(pruned_accuracy=pruned, **dense_file), tmp_path)[0].text
    assert 'AutoModelForImageClassification.from_pretrained("/models/resnet-18-pruned")' in text
    assert "sparse-bitmask" not in text


def test_card_of_an_evaluated_model_claims_no_ltap_training(report_parts, tmp_path):
    parts = dict(report_parts, ltap_settings={}, final_alpha={}, trained_with_ltap=False)
    text = render_model_card(PruningReport(pruned_accuracy=_accuracy([9] * 10), **parts), tmp_path)[0].text
    assert "evaluated on the test split of **CIFAR-10-LT (imbalance ratio 100)**" in text
    assert "pruned with\nLTAP" not in text and "## LTAP settings" not in text and "criterion weights" not in text
    assert "| Classes | Model |" in text
    assert "ltap" not in ModelCard.load(tmp_path / "README.md").data.tags


def test_accuracy_plot_draws_an_arrow_per_changed_class_and_names_the_groups(tmp_path):
    from ltap_hf.hub.plots import plot_per_class_accuracy

    dense = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, float("nan")]
    pruned = [1.0, 0.8, 0.8, 0.5, 0.7, 0.5, 0.1, 0.3, 0.0, float("nan")]
    figure = plot_per_class_accuracy(tmp_path / "plot.png", TRAIN_COUNTS, pruned, dense)
    axes = figure.axes[0]
    arrows = [child for child in axes.texts if getattr(child, "arrow_patch", None) is not None]
    assert len(arrows) == 5  # classes 1, 3, 4, 6, 8 changed; class 9 has no test images
    assert {t.get_text() for t in axes.texts if t.get_text()} == {"Few (< 20 images)", "Medium (20–100)", "Many (> 100)"}
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels[:2] == ["dense", "pruned"] and "group boundary (20, 100)" in labels
    ticks = {label.get_text() for label in axes.get_xticklabels()}
    assert {"10", "20", "50", "100", "200"} <= ticks and not any("^" in tick for tick in ticks)  # numbers, not 10^n


def test_density_plot_names_layers_legibly_and_labels_the_overall_line(report_parts, tmp_path):
    from ltap_hf.hub.plots import plot_layer_density

    per_tensor = report_parts["density"]["per_tensor"]
    figure = plot_layer_density(tmp_path / "density.png", per_tensor, 0.3)
    axes = figure.axes[0]
    ticks = axes.get_yticklabels()
    assert len(ticks) == len(per_tensor) and min(t.get_fontsize() for t in ticks) >= 8
    # the shared module path and ".weight" are dropped, the layer path is kept
    assert ticks[0].get_text() == "embedder.embedder.conv" and not any(t.get_text().endswith(".weight") for t in ticks)
    assert "30.0% overall" in [t.get_text() for t in axes.texts]
    assert figure.legends[0].get_texts()[0].get_text() == "all prunable weights: 30.0%"
    height_per_layer = figure.get_figheight() / len(per_tensor)
    assert height_per_layer >= 0.2  # room for every name, whatever the depth
