import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoModelForImageClassification, ResNetConfig, ResNetForImageClassification, pipeline

from ltap_hf.data import DATASET_STATS, EvalTransform, load_lt_dataset, read_lt_metadata
from ltap_hf.evaluation import evaluate_long_tail, load_image_classifier
from ltap_hf.hub import save_sparse_pretrained
from ltap_hf.pruning import apply_masks, full_masks, prunable_parameters, select_mask


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import run_ltap  # noqa: E402


# 2 epochs of 7 optimizer steps: pruning stages at steps 7 (density 1.0, a vote only) and 11 (to 30%);
# checkpoints at steps 7 (the dense network, after the vote-only stage) and 14 (the end).
SHORT_RUN = ["--num_train_epochs", "2", "--lr_milestones", "1", "2", "--disable_tqdm", "true"]
HUB_ID = "user/digits-lt-ltap"


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def _test_split(cache: Path):
    dataset = load_lt_dataset("digits_lt", cache_dir=str(cache))
    counts = read_lt_metadata(dataset)["class_counts"]["train"]
    return dataset["test"].with_transform(EvalTransform(DATASET_STATS["digits_lt"])), counts


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short demo run with checkpoints and a Hub id (not pushed), shared by the tests of this module."""
    root = tmp_path_factory.mktemp("trained")
    output_dir = root / "run"
    result = run_ltap.main(["--output_dir", str(output_dir), "--dataset_cache_dir", str(root / "data"), *SHORT_RUN,
                            "--save_strategy", "steps", "--save_steps", "7", "--hub_model_id", HUB_ID])
    return {"root": root, "output_dir": output_dir, "data": root / "data", "result": result}


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
    model_args, data_args, args, _ = run_ltap.parse_args([str(recipe), "--output_dir", str(tmp_path), "--target_density", "0.1"])
    assert (data_args.dataset_name, data_args.imbalance_ratio, model_args.model_preset) == ("cifar100_lt", 100, "resnet32")
    assert args.target_density == 0.1 and args.lr_milestones == [160, 180] and args.prune_start == 100
    # the CIFAR recipes evaluate every epoch, which sets do_eval: that must not turn training off
    assert args.do_eval and args.do_train
    assert not run_ltap.parse_args(["--output_dir", str(tmp_path), "--do_train", "False", "--do_eval"])[2].do_train
    assert run_ltap.parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint"])[2].resume_from_checkpoint == "True"


def test_saved_demo_model_classifies_a_pil_image_in_a_pipeline(trained):
    run = trained["output_dir"]
    classifier = pipeline("image-classification", model=str(run))
    digit = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8), mode="L")
    predictions = classifier(digit, top_k=10)
    assert sorted(p["label"] for p in predictions) == [str(d) for d in range(10)]
    assert (run / "README.md").is_file() and (run / "per_class_accuracy.png").stat().st_size > 0


def test_training_run_records_the_dense_network_and_names_the_card_by_its_hub_id(trained, capsys):
    run, result = trained["output_dir"], trained["result"]
    # The dense record is the network of step 7, the first stage's step: the checkpoint written there.
    checkpoint = load_image_classifier(run / "checkpoint-7")
    test, counts = _test_split(trained["data"])
    at_step_7 = evaluate_long_tail(checkpoint, test, counts)
    assert at_step_7["density"]["prunable_density"] == 1.0
    assert result["dense_accuracy"]["per_class_accuracy"] == at_step_7["accuracy"]["per_class_accuracy"]
    assert result["density"]["prunable_density"] == pytest.approx(0.30, abs=1e-3)

    card = ModelCard.load(run / "README.md")
    text = (run / "README.md").read_text()
    assert card.data.model_name == "digits-lt-ltap" and "\n# digits-lt-ltap\n" in text
    assert card.data.datasets is None and "datasets:" not in text  # digits-LT has no Hub id
    assert {r.dataset_type for r in card.data.eval_results} == {"digits_lt"}
    dense = {r.metric_config: r.metric_value for r in card.data.eval_results if r.metric_type == "dense_accuracy"}
    assert dense["all"] == pytest.approx(at_step_7["accuracy"]["accuracy"], abs=1e-4)
    assert "| Classes | Dense | Pruned | Change |" in text and "optimizer step 7" in text
    # not pushed: the snippet loads the folder, by its real path
    assert f'from_pretrained("{run.resolve()}", trust_remote_code=True)' in text


def test_evaluation_mode_reports_a_saved_model_without_training_it(trained, tmp_path, capsys):
    run, trained_result = trained["output_dir"], trained["result"]
    before = _files(run)
    result = run_ltap.main(["--model_name_or_path", str(run), "--do_train", "False", "--do_eval",
                            "--output_dir", str(tmp_path / "eval"), "--dataset_cache_dir", str(trained["data"]),
                            "--disable_tqdm", "true"])
    printed = capsys.readouterr().out
    assert result["mode"] == "evaluate"
    # the same numbers as the training run's own test evaluation: nothing was trained or pruned
    assert result["per_class_accuracy"] == trained_result["per_class_accuracy"]
    assert result["density"] == trained_result["density"]
    assert result["cost"] == trained_result["cost"]
    assert _files(run) == before
    written = set(_files(tmp_path / "eval"))
    assert {"README.md", "test_results.json", "eval_results.json", "per_class_accuracy.png", "layer_density.png"} <= written
    assert not written & {"config.json", "sparse_model.safetensors", "model.safetensors", "trainer_state.json"}
    assert "train_runtime" not in json.loads((tmp_path / "eval" / "all_results.json").read_text())
    assert "| model | " in printed and "density of prunable weights: 0.3000" in printed
    card = (tmp_path / "eval" / "README.md").read_text()
    assert "keeps **30.0%**" in card and "evaluated on the test split" in card
    assert f'from_pretrained("{run.resolve()}", trust_remote_code=True)' in card


def test_evaluation_against_a_named_dense_reference(trained, tmp_path, capsys):
    run = trained["output_dir"]
    result = run_ltap.main(["--model_name_or_path", str(run), "--do_train", "False", "--do_predict",
                            "--dense_reference", str(run / "checkpoint-7"), "--output_dir", str(tmp_path / "eval"),
                            "--dataset_cache_dir", str(trained["data"]), "--disable_tqdm", "true"])
    # checkpoint-7 is the network the training run recorded as its dense reference
    assert result["dense_accuracy"]["per_class_accuracy"] == trained["result"]["dense_accuracy"]["per_class_accuracy"]
    assert "| dense | " in capsys.readouterr().out
    assert "Dense is the dense reference model" in (tmp_path / "eval" / "README.md").read_text()


def test_density_of_an_already_sparse_model_is_measured_from_its_weights(trained, tmp_path, capsys):
    result = run_ltap.main(["--model_name_or_path", str(trained["output_dir"]), "--num_train_epochs", "0",
                            "--output_dir", str(tmp_path / "again"), "--dataset_cache_dir", str(trained["data"]),
                            "--disable_tqdm", "true"])
    assert result["density"]["prunable_density"] == pytest.approx(0.30, abs=1e-3)
    assert "density of prunable weights: 0.3000" in capsys.readouterr().out
    assert "keeps **30.0%** of its prunable weights" in (tmp_path / "again" / "README.md").read_text()


def test_evaluation_mode_loads_a_sparse_checkpoint_of_a_foreign_backbone(trained, tmp_path):
    names = [str(d) for d in range(10)]
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )).eval()
    parameters = prunable_parameters(model)
    apply_masks(parameters, select_mask({n: p.detach().abs() for n, p in parameters.items()}, full_masks(parameters), 0.3, 0.0))
    save_sparse_pretrained(model, tmp_path / "foreign")
    test, counts = _test_split(trained["data"])
    in_memory = evaluate_long_tail(model, test, counts)  # from Python, on the model as it was saved

    result = run_ltap.main(["--model_name_or_path", str(tmp_path / "foreign"), "--do_train", "False", "--do_predict",
                            "--output_dir", str(tmp_path / "eval"), "--dataset_cache_dir", str(trained["data"]),
                            "--disable_tqdm", "true"])
    assert result["per_class_accuracy"] == in_memory["accuracy"]["per_class_accuracy"]
    assert result["density"]["prunable_density"] == pytest.approx(0.30, abs=1e-3)
    assert result["cost"] == in_memory["cost"]
    card = (tmp_path / "eval" / "README.md").read_text()
    assert f'load_sparse_pretrained("{(tmp_path / "foreign").resolve()}")' in card


def test_evaluation_mode_needs_a_model_and_something_to_do(tmp_path):
    with pytest.raises(ValueError, match="--model_name_or_path"):
        run_ltap.main(["--do_train", "False", "--do_predict", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--do_predict"):
        run_ltap.main(["--model_name_or_path", str(tmp_path), "--do_train", "False", "--output_dir", str(tmp_path)])


def test_a_second_run_into_a_run_folder_is_refused(trained, tmp_path):
    run = trained["output_dir"]
    before = _files(run)
    with pytest.raises(ValueError, match=r"already holds a run \(README.md.*checkpoint-14.*--resume_from_checkpoint.*"
                                         r"--overwrite_output_dir"):
        run_ltap.main(["--output_dir", str(run), "--dataset_cache_dir", str(trained["data"]), *SHORT_RUN])
    with pytest.raises(ValueError, match="an evaluation would overwrite its card.*--overwrite_output_dir"):
        run_ltap.main(["--model_name_or_path", str(run), "--do_train", "False", "--do_predict", "--output_dir", str(run)])
    assert _files(run) == before


def test_resume_from_checkpoint_without_a_path_takes_the_last_checkpoint(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["output_dir"], run)
    result = run_ltap.main(["--output_dir", str(run), "--dataset_cache_dir", str(trained["data"]), *SHORT_RUN,
                            "--save_strategy", "steps", "--save_steps", "7", "--resume_from_checkpoint"])
    assert result["resumed_from"] == str(run / "checkpoint-14")
    # the dense phase (step 7) lies before that checkpoint: its record comes back from the checkpoint
    assert result["dense_accuracy"] == trained["result"]["dense_accuracy"]
    assert result["per_class_accuracy"] == trained["result"]["per_class_accuracy"]

    with pytest.raises(ValueError, match="no checkpoint-\\* folder in --output_dir"):
        run_ltap.main(["--output_dir", str(tmp_path / "empty"), "--resume_from_checkpoint", "True"])


def test_overwrite_output_dir_replaces_the_previous_run(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["output_dir"], run)
    result = run_ltap.main(["--output_dir", str(run), "--dataset_cache_dir", str(trained["data"]),
                            "--num_train_epochs", "0", "--overwrite_output_dir", "--disable_tqdm", "true"])
    assert result["mode"] == "train" and result["resumed_from"] is None
    assert not list(run.glob("checkpoint-*"))  # the old run's checkpoints are gone, not mixed with new ones
    # a fresh, untrained model replaced the pruned one
    assert result["density"]["prunable_density"] == 1.0
    assert "keeps **100.0%**" in (run / "README.md").read_text()


def test_report_prints_dense_and_pruned_per_group_and_per_class():
    from ltap_hf.cost import ModelCost

    cost = ModelCost(parameters=100, parameters_nonzero=30, macs=1000, macs_nonzero=300)
    pruned = {"accuracy": 0.5, "many_accuracy": 0.6, "medium_accuracy": 0.5, "few_accuracy": 0.1,
              "worst_class_accuracy": 0.1, "worst_class_index": 2, "tail3_accuracy": 0.4,
              "per_class_accuracy": [0.6, 0.5, 0.1]}
    dense = dict(pruned, accuracy=0.6, few_accuracy=0.4, per_class_accuracy=[0.7, 0.5, 0.4])
    density = {"prunable_density": 0.3, "overall_density": 0.31}
    printed = run_ltap.report(pruned, density, cost, cost, ["cat", "dog", "otter"], [200, 50, 10], dense)
    assert "| dense |  60.0 |  60.0 |  50.0 |  40.0 |" in printed
    assert "| pruned |  50.0 |  60.0 |  50.0 |  10.0 |" in printed
    assert "| change (points) | -10.0 |  +0.0 |  +0.0 | -30.0 |" in printed
    assert "| otter | 10 |  40.0 |  10.0 | -30.0 |" in printed
    assert "worst-hit classes (dropped most from dense): otter (10.0%, -30.0), cat (60.0%, -10.0)" in printed
    assert "density of prunable weights: 0.3000" in printed
