import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

from ltap_hf.pruning import prunable_parameters


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import run_ltap  # noqa: E402


def test_demo_recipe_prunes_to_target_and_saves_exact_zeros(tmp_path, capsys):
    output_dir = tmp_path / "run"
    result = run_ltap.main([
        "--output_dir", str(output_dir), "--dataset_cache_dir", str(tmp_path / "data"),
        "--num_train_epochs", "10", "--lr_milestones", "8", "9", "--disable_tqdm", "true",
    ])
    printed = capsys.readouterr().out
    assert "| overall | many | medium | few | worst class | tail-3 |" in printed
    assert "density of prunable weights: 0.3000" in printed
    assert result["density"]["prunable_density"] == pytest.approx(0.30, abs=0.01)
    assert 0 <= result["test"]["test_accuracy"] <= 1

    loaded = AutoModelForImageClassification.from_pretrained(output_dir)
    weights = prunable_parameters(loaded)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    assert zeros / total == pytest.approx(0.70, abs=0.01)
    assert (output_dir / "preprocessor_config.json").is_file()


def test_recipe_flags_override_the_yaml(tmp_path):
    recipe = Path(run_ltap.__file__).parent / "cifar100_lt" / "resnet32_ir100.yaml"
    model_args, data_args, args = run_ltap.parse_args([str(recipe), "--output_dir", str(tmp_path), "--target_density", "0.1"])
    assert (data_args.dataset_name, data_args.imbalance_ratio, model_args.model_preset) == ("cifar100_lt", 100, "resnet32")
    assert args.target_density == 0.1 and args.lr_milestones == [160, 180] and args.prune_start == 100


def test_saved_demo_model_classifies_a_pil_image_in_a_pipeline(tmp_path):
    run_ltap.main(["--output_dir", str(tmp_path / "run"), "--dataset_cache_dir", str(tmp_path / "data"),
                   "--num_train_epochs", "2", "--lr_milestones", "1", "2", "--disable_tqdm", "true"])
    classifier = pipeline("image-classification", model=str(tmp_path / "run"))
    digit = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8), mode="L")
    predictions = classifier(digit, top_k=10)
    assert sorted(p["label"] for p in predictions) == [str(d) for d in range(10)]
    assert (tmp_path / "run" / "README.md").is_file() and (tmp_path / "run" / "per_class_accuracy.png").stat().st_size > 0
