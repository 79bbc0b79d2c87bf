import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from torch import nn
from transformers import AutoModelForImageClassification, ResNetConfig, ResNetForImageClassification, pipeline

import ltap_hf.calibration as calibration
from ltap_hf.calibration import (
    apply_logit_bias,
    balanced_accuracy,
    calibrate_classifier,
    find_classifier_head,
    fit_balanced_bias,
    fit_logit_bias,
    logit_adjustment_bias,
    remove_logit_bias,
)
from ltap_hf.data import DATASET_STATS, EvalTransform, load_lt_dataset, read_lt_metadata
from ltap_hf.evaluation import evaluate_long_tail, load_image_classifier
from ltap_hf.models import LTResNetConfig, LTResNetForImageClassification
from ltap_hf.models.image_processing import make_image_processor
from ltap_hf.pruning import apply_masks, full_masks, prunable_parameters, select_mask


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import run_ltap  # noqa: E402


NUM_CLASSES = 10
COUNTS = [int(round(500 * 0.6 ** c)) for c in range(NUM_CLASSES)]  # 500 ... 5: long-tailed


def _scores(per_class: int, seed: int = 0, signal: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced "true" class scores: Gaussian noise plus `signal` on the right class; labels [N]."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    scores = torch.randn(labels.numel(), NUM_CLASSES, generator=generator, dtype=torch.float64)
    return scores + signal * nn.functional.one_hot(labels, NUM_CLASSES), labels


def _log_prior() -> torch.Tensor:
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    return torch.log(counts / counts.sum())


# --- fitting, on tensors --------------------------------------------------------------------------------


def test_balanced_accuracy_is_the_mean_over_present_classes():
    logits = torch.eye(3)[[0, 0, 0, 1, 0]]  # predictions 0, 0, 0, 1, 0
    labels = torch.tensor([0, 0, 0, 0, 1])  # class 0: 3 of 4 right, class 1: 0 of 1, class 2 absent
    assert balanced_accuracy(logits, labels) == pytest.approx((0.75 + 0.0) / 2)


def test_fitted_bias_recovers_a_known_per_class_offset():
    scores, labels = _scores(per_class=400)
    offset = torch.linspace(-2.0, 2.0, NUM_CLASSES, dtype=torch.float64)
    bias, _ = fit_balanced_bias(scores - offset, labels)
    assert abs(float(bias.mean())) < 1e-12  # the mean is fixed to 0
    # up to the constant that no softmax sees (removed by comparing centred vectors)
    torch.testing.assert_close(bias, offset - offset.mean(), atol=0.12, rtol=0)
    assert balanced_accuracy(scores - offset + bias, labels) > balanced_accuracy(scores - offset, labels) + 0.05


def test_logit_adjustment_with_tau_one_undoes_a_log_prior_shift():
    scores, labels = _scores(per_class=200)
    logits = scores + _log_prior()  # a classifier biased towards the head classes by the training prior
    adjusted = logits + logit_adjustment_bias(COUNTS, 1.0)
    torch.testing.assert_close(adjusted - adjusted.mean(1, keepdim=True), scores - scores.mean(1, keepdim=True))
    assert balanced_accuracy(adjusted, labels) == balanced_accuracy(scores, labels)

    result = fit_logit_bias(logits, labels, COUNTS)
    assert result.balanced_accuracy_before < balanced_accuracy(scores, labels) - 0.1
    assert result.candidates["logit_adjustment"]["tau"] == pytest.approx(1.0, abs=0.2)
    assert result.balanced_accuracy_after >= balanced_accuracy(scores, labels) - 0.01
    assert result.balanced_accuracy_after == max(c["validation_balanced_accuracy"] for c in result.candidates.values())
    if result.method == "logit_adjustment":
        torch.testing.assert_close(result.bias.double(), logit_adjustment_bias(COUNTS, result.tau), atol=1e-6, rtol=0)


def test_ties_go_to_no_change_and_to_logit_adjustment():
    scores, labels = _scores(per_class=20, signal=50.0)  # every image right by a wide margin
    result = fit_logit_bias(scores, labels, COUNTS)
    assert result.balanced_accuracy_before == 1.0
    assert result.candidates["fitted_bias"]["validation_balanced_accuracy"] == 1.0  # a tie, not a win
    assert (result.method, result.tau) == ("logit_adjustment", 0.0)
    assert torch.count_nonzero(result.bias) == 0

    fitted_only = fit_logit_bias(scores, labels, COUNTS, methods=["fitted_bias"])
    assert fitted_only.method == "fitted_bias" and fitted_only.tau is None


def test_the_fitted_bias_wins_when_the_offset_is_not_the_prior():
    scores, labels = _scores(per_class=200)
    offset = torch.tensor([0, 3, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.float64)  # class 1 inflated, not the prior
    result = fit_logit_bias(scores + offset, labels, COUNTS)
    assert result.method == "fitted_bias" and result.tau is None
    assert result.balanced_accuracy_after > result.candidates["logit_adjustment"]["validation_balanced_accuracy"]
    assert int(result.bias.argmin()) == 1
    record = result.to_record()
    assert record["validation_balanced_accuracy"] == {"before": result.balanced_accuracy_before,
                                                      "after": result.balanced_accuracy_after}
    json.dumps(record)  # what goes into config.json


def test_fit_is_deterministic_and_leaves_classes_without_validation_images_at_the_mean():
    scores, labels = _scores(per_class=50)
    keep = labels != 7
    logits, labels = scores[keep] - torch.linspace(-1, 1, NUM_CLASSES, dtype=torch.float64), labels[keep]
    first = fit_logit_bias(logits, labels, COUNTS, methods=["fitted_bias"])
    second = fit_logit_bias(logits.numpy(), labels.numpy(), COUNTS, methods=["fitted_bias"])
    assert torch.equal(first.bias, second.bias)
    assert first.unfitted_classes == [7] and abs(float(first.bias[7])) < 1e-6
    assert torch.isfinite(first.bias).all() and abs(float(first.bias.double().mean())) < 1e-6


def test_fit_refuses_what_it_cannot_use():
    scores, labels = _scores(per_class=5)
    with pytest.raises(ValueError, match="positive training count for every class"):
        fit_logit_bias(scores, labels, [10] * 9 + [0])
    with pytest.raises(ValueError, match="class_counts has 9 entries but the logits 10"):
        fit_logit_bias(scores, labels, COUNTS[:9])
    with pytest.raises(ValueError, match="no validation images"):
        fit_logit_bias(scores[:0], labels[:0], COUNTS)


# --- folding into the head -------------------------------------------------------------------------------


def _lt_resnet() -> nn.Module:
    torch.manual_seed(0)
    config = LTResNetConfig.from_preset("resnet20", num_channels=3, num_labels=NUM_CLASSES,
                                        id2label={i: str(i) for i in range(NUM_CLASSES)},
                                        label2id={str(i): i for i in range(NUM_CLASSES)})
    model = LTResNetForImageClassification(config).eval()
    parameters = prunable_parameters(model)
    apply_masks(parameters, select_mask({n: p.detach().abs() for n, p in parameters.items()}, full_masks(parameters), 0.3, 0.0))
    return model


def _hf_resnet() -> nn.Module:
    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        id2label={i: str(i) for i in range(NUM_CLASSES)}, label2id={str(i): i for i in range(NUM_CLASSES)},
    )).eval()


def _save(model, folder: Path) -> None:
    if isinstance(model, LTResNetForImageClassification):
        model.save_pretrained(folder, sparse=True)  # our sparse-bitmask format
        assert (folder / "sparse_model.safetensors").is_file()
    else:
        model.save_pretrained(folder)
    stats = DATASET_STATS["digits_lt"]
    make_image_processor(stats.image_size, stats.mean, stats.std).save_pretrained(folder)


@pytest.mark.parametrize(("build", "head"), [(_lt_resnet, "classifier"), (_hf_resnet, "classifier.1")])
def test_folded_bias_shifts_the_logits_and_survives_saving_and_a_pipeline(build, head, tmp_path):
    model = build()
    assert find_classifier_head(model)[0] == head
    pixels = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw = model(pixel_values=pixels).logits
    bias = torch.linspace(-3.0, 3.0, NUM_CLASSES)
    record = apply_logit_bias(model, bias)
    with torch.no_grad():
        calibrated = model(pixel_values=pixels).logits
    torch.testing.assert_close(calibrated, raw + bias, atol=1e-5, rtol=0)
    assert record["head"] == f"{head}.bias" and model.config.ltap_calibration["bias"] == pytest.approx(bias.tolist())

    _save(model, tmp_path / "model")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixels).logits, calibrated)
    assert loaded.config.ltap_calibration == json.loads(json.dumps(model.config.ltap_calibration))

    # the pipeline (no ltap_hf code on its path) gives softmax(raw logits + bias) for a PIL image
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8), mode="RGB")
    processor = make_image_processor(8, DATASET_STATS["digits_lt"].mean, DATASET_STATS["digits_lt"].std)
    inputs = processor(image, return_tensors="pt")
    remove_logit_bias(loaded)
    assert not hasattr(loaded.config, "ltap_calibration")
    with torch.no_grad():
        uncalibrated = loaded(**inputs).logits[0]
    expected = torch.softmax(uncalibrated + bias, -1)
    predictions = pipeline("image-classification", model=str(tmp_path / "model"))(image, top_k=NUM_CLASSES)
    scores = torch.tensor([next(p["score"] for p in predictions if p["label"] == str(c)) for c in range(NUM_CLASSES)])
    torch.testing.assert_close(scores, expected.float(), atol=1e-5, rtol=0)
    assert not torch.allclose(scores, torch.softmax(uncalibrated, -1), atol=1e-3)


def test_heads_that_cannot_take_the_bias_are_refused():
    class NoBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = nn.Linear(4, 3, bias=False)

    with pytest.raises(ValueError, match="`classifier` of NoBias is an nn.Linear without a bias"):
        apply_logit_bias(NoBias(), torch.zeros(3))
    with pytest.raises(ValueError, match="has no nn.Linear classifier head"):
        find_classifier_head(nn.Sequential(nn.Conv2d(1, 3, 1)))
    model = _hf_resnet()
    with pytest.raises(ValueError, match=r"shape \[10\]"):
        apply_logit_bias(model, torch.zeros(3))
    apply_logit_bias(model, torch.ones(NUM_CLASSES))
    with pytest.raises(ValueError, match="already calibrated.*remove_logit_bias"):
        apply_logit_bias(model, torch.ones(NUM_CLASSES))


class _Rows(torch.utils.data.Dataset):
    def __init__(self, pixels, labels):
        self.pixels, self.labels = pixels, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixels[index], "labels": int(self.labels[index])}


class _Scaled(nn.Module):
    """Logits = scale * classifier(pixels): unless scale is 1, the head is not the last operation."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.classifier = nn.Linear(NUM_CLASSES, NUM_CLASSES)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.eye(NUM_CLASSES))
            self.classifier.bias.zero_()

    def forward(self, pixel_values):
        return SimpleNamespace(logits=self.scale * self.classifier(pixel_values))


def test_calibrate_classifier_checks_the_fold_on_validation_and_undoes_a_wrong_one():
    scores, labels = _scores(per_class=30)
    logits = (scores + _log_prior()).float()
    doubled = _Scaled(2.0)
    with pytest.raises(ValueError, match="did not shift _Scaled's logits by it.*left unchanged"):
        calibrate_classifier(doubled, _Rows(logits / 2, labels), COUNTS)
    assert torch.count_nonzero(doubled.classifier.bias) == 0

    plain = _Scaled(1.0)
    result = calibrate_classifier(plain, _Rows(logits, labels), COUNTS)
    assert result.balanced_accuracy_after > result.balanced_accuracy_before
    torch.testing.assert_close(plain.classifier.bias.detach(), result.bias)


# --- run_ltap --calibrate ------------------------------------------------------------------------------


SHORT_RUN = ["--num_train_epochs", "2", "--lr_milestones", "1", "2", "--disable_tqdm", "true"]


def test_run_ltap_calibrates_on_validation_only_and_reports_test_before_and_after(tmp_path, capsys, monkeypatch):
    seen = []
    fit = calibration.fit_logit_bias

    def spy(logits, labels, class_counts, **kwargs):
        seen.append(np.asarray(labels).copy())
        return fit(logits, labels, class_counts, **kwargs)

    monkeypatch.setattr(calibration, "fit_logit_bias", spy)
    output_dir = tmp_path / "run"
    result = run_ltap.main(["--output_dir", str(output_dir), "--dataset_cache_dir", str(tmp_path / "data"),
                            *SHORT_RUN, "--calibrate"])
    printed = capsys.readouterr().out

    dataset = load_lt_dataset("digits_lt", cache_dir=str(tmp_path / "data"))
    counts = read_lt_metadata(dataset)["class_counts"]["train"]
    # one fit, on the validation split's labels in order: the test split never reached it
    assert len(seen) == 1 and seen[0].tolist() == dataset["validation"]["label"]
    assert len(dataset["validation"]) != len(dataset["test"])

    record = result["calibration"]
    assert "post-hoc calibration, fitted on the validation split (100 images)" in printed
    assert "| before calibration |" in printed and "| after calibration |" in printed
    assert "| pruned, calibrated |" in printed
    assert record["validation_balanced_accuracy"]["after"] >= record["validation_balanced_accuracy"]["before"]

    # the saved model is the calibrated one; taking the bias out gives the "before" numbers back
    test = dataset["test"].with_transform(EvalTransform(DATASET_STATS["digits_lt"]))
    saved = load_image_classifier(output_dir)
    assert saved.config.ltap_calibration["method"] == record["method"]
    assert evaluate_long_tail(saved, test, counts)["accuracy"]["per_class_accuracy"] == result["per_class_accuracy"]
    remove_logit_bias(saved)
    before = evaluate_long_tail(saved, test, counts)["accuracy"]
    assert before["per_class_accuracy"] == record["test_accuracy_before"]["per_class_accuracy"]

    metrics = json.loads((output_dir / "test_results.json").read_text())
    assert metrics["test_uncalibrated_accuracy"] == pytest.approx(before["accuracy"])
    assert metrics["test_accuracy"] == pytest.approx(result["accuracy"]["accuracy"])
    card = ModelCard.load(output_dir / "README.md")
    assert "## Post-hoc calibration" in card.text and "| Classes | Before | After | Change |" in card.text
    overall = next(r.metric_value for r in card.data.eval_results if r.metric_type == "accuracy" and r.metric_config == "all")
    assert overall == pytest.approx(result["accuracy"]["accuracy"], abs=1e-4)  # the published model's

    # an evaluation of the calibrated model would add a second bias: refused, nothing written
    with pytest.raises(ValueError, match="already calibrated"):
        run_ltap.main(["--model_name_or_path", str(output_dir), "--do_train", "False", "--do_predict", "--calibrate",
                       "--output_dir", str(tmp_path / "eval"), "--dataset_cache_dir", str(tmp_path / "data")])
    assert not (tmp_path / "eval" / "config.json").exists()


def test_run_ltap_evaluation_mode_calibrates_and_saves_a_foreign_model(tmp_path, capsys):
    source = tmp_path / "source"
    model = _hf_resnet()
    _save(model, source)
    result = run_ltap.main(["--model_name_or_path", str(source), "--do_train", "False", "--do_predict", "--calibrate",
                            "--output_dir", str(tmp_path / "eval"), "--dataset_cache_dir", str(tmp_path / "data"),
                            "--disable_tqdm", "true"])
    printed = capsys.readouterr().out
    assert "| model, calibrated |" in printed and "| before calibration |" in printed
    saved = AutoModelForImageClassification.from_pretrained(tmp_path / "eval").eval()
    bias = torch.tensor(result["calibration"]["bias"])
    pixels = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(saved(pixel_values=pixels).logits, model(pixel_values=pixels).logits + bias,
                                   atol=1e-5, rtol=0)
    assert (tmp_path / "eval" / "preprocessor_config.json").is_file()
    card = (tmp_path / "eval" / "README.md").read_text()
    assert f'from_pretrained("{(tmp_path / "eval").resolve()}")' in card and "## Post-hoc calibration" in card
    assert math.isfinite(result["calibration"]["validation_balanced_accuracy"]["after"])


def test_run_ltap_calibrate_needs_a_validation_split(tmp_path):
    with pytest.raises(ValueError, match="--calibrate fits on the validation split.*--val_per_class"):
        run_ltap.main(["--output_dir", str(tmp_path / "run"), "--dataset_cache_dir", str(tmp_path / "data"),
                       "--val_per_class", "0", *SHORT_RUN, "--calibrate"])


def test_card_names_tau_and_shows_validation_and_test_before_and_after(tmp_path):
    from ltap_hf import model_cost
    from ltap_hf.evaluation import weight_density
    from ltap_hf.hub import PruningReport, render_model_card
    from ltap_hf.metrics import long_tail_accuracy

    references = np.repeat(np.arange(NUM_CLASSES), 10)
    before = long_tail_accuracy(np.zeros_like(references), references, COUNTS)  # everything called class 0
    after = long_tail_accuracy(references, references, COUNTS)
    model = _hf_resnet()
    record = fit_logit_bias(*_scores(per_class=20, signal=50.0), COUNTS).to_record()
    record.update(method="logit_adjustment", tau=1.0, validation_balanced_accuracy={"before": 0.5, "after": 0.75})
    report = PruningReport(
        model_name="m", architecture="a ResNet", model_type="resnet", dataset_id=None, dataset_type="digits_lt",
        dataset_name="digits-LT", class_names=[str(c) for c in range(NUM_CLASSES)], train_class_counts=COUNTS,
        pruned_accuracy=after, density=weight_density(model), cost=model_cost(model, (3, 8, 8)), ltap_settings={},
        final_alpha={}, trained_with_ltap=False, checkpoint_format="dense",
        calibration={**record, "test_accuracy_before": before},
    )
    render_model_card(report, tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "**logit adjustment** (Menon et al., ICLR 2021)" in text and "**τ = 1**" in text
    assert "| Before | 50.00 |\n" in text and "| Applied (logit adjustment) | 75.00 |" in text
    assert "| All classes | 10.00 | 100.00 | +90.00 |" in text and "| Few | 0.00 | 100.00 | +100.00 |" in text
    with pytest.raises(ValueError, match="calibration lacks \\['test_accuracy_before'\\]"):
        PruningReport(**{**report.__dict__, "calibration": record})


def test_a_slimmed_network_is_saved_with_the_bias_and_its_record(tmp_path):
    output_dir = tmp_path / "run"
    result = run_ltap.main(["--output_dir", str(output_dir), "--dataset_cache_dir", str(tmp_path / "data"), *SHORT_RUN,
                            "--granularity", "channel", "--channel_allocation", "uniform", "--calibrate"])
    saved = load_image_classifier(output_dir)
    assert saved.config.ltap_calibration["bias"] == pytest.approx(result["calibration"]["bias"])
    assert saved.config.hidden_sizes != [16, 32, 64]  # slimmed
    dataset = load_lt_dataset("digits_lt", cache_dir=str(tmp_path / "data"))
    test = dataset["test"].with_transform(EvalTransform(DATASET_STATS["digits_lt"]))
    counts = read_lt_metadata(dataset)["class_counts"]["train"]
    assert evaluate_long_tail(saved, test, counts)["accuracy"]["per_class_accuracy"] == result["per_class_accuracy"]
