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
    pruned = _accuracy([10, 9, 9, 8, 8, 7, 6, 5, 1, 4])
    report = PruningReport(pruned_accuracy=pruned, dense_accuracy=_accuracy([10] * 8 + [9, 8]), **report_parts)
    card, _ = render_model_card(report, tmp_path, repo_id="user/lt-resnet20")

    loaded = ModelCard.load(tmp_path / "README.md")  # parses the model-index into EvalResults, strictly
    assert loaded.data.library_name == "transformers"
    assert loaded.data.pipeline_tag == "image-classification"
    assert {"pruning", "long-tail", "ltap"} <= set(loaded.data.tags)
    assert loaded.data.datasets == ["tomas-gajarsky/cifar10-lt"]
    results = {r.metric_config: r for r in loaded.data.eval_results}
    assert set(results) == {"all", "many", "medium", "few"}
    for config in ("all", "many", "medium", "few"):
        key = "accuracy" if config == "all" else f"{config}_accuracy"
        assert results[config].metric_value == pytest.approx(pruned[key], abs=1e-4)
        assert results[config].dataset_split == "test"
        assert results[config].metric_type == "accuracy"
        assert results[config].dataset_type == "tomas-gajarsky/cifar10-lt"
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
    assert 'from_pretrained("lt-resnet20-cifar10-lt-ltap30", trust_remote_code=True)' in text


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
