"""Train and prune an image classifier on a long-tailed dataset with LTAP.

    python recipes/run_ltap.py --output_dir runs/demo                       # digits-LT demo recipe
    python recipes/run_ltap.py recipes/cifar10_lt/resnet32_ir100.yaml --output_dir runs/c10
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml \\
        recipes/run_ltap.py recipes/cifar100_lt/resnet32_ir100.yaml

A recipe is a YAML file of `ModelArguments`, `DataArguments` and `LTAPConfig` fields; flags after it
override it. Without a YAML file the digits-LT demo recipe is used.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import AutoModelForImageClassification, HfArgumentParser, set_seed
from transformers.utils import logging

from ltap_hf import LTResNetConfig, LTResNetForImageClassification, model_cost
from ltap_hf.hub import PruningReport
from ltap_hf.data import DATASET_STATS, EvalTransform, TrainTransform, collate_fn, load_lt_dataset, read_lt_metadata
from ltap_hf.metrics import long_tail_accuracy
from ltap_hf.models.image_processing import make_image_processor
from ltap_hf.trainer import LTAPConfig, LTAPTrainer, end_distributed


logger = logging.get_logger("run_ltap")
DEFAULT_RECIPE = Path(__file__).resolve().parent / "digits_lt" / "resnet_demo.yaml"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A Hub id or folder of any image classifier; overrides model_preset."}
    )
    model_preset: str = field(default="resnet32", metadata={"help": "LTResNet preset (resnet20..110, resnet18..152)."})
    shortcut_type: str | None = field(default=None, metadata={"help": "Override the preset's shortcut: 'A' or 'B'."})


@dataclass
class DataArguments:
    dataset_name: str = field(default="digits_lt", metadata={"help": "cifar10_lt, cifar100_lt, imagenet_lt, inaturalist2018, digits_lt."})
    imbalance_ratio: float | None = field(default=None, metadata={"help": "Imbalance ratio (CIFAR-LT, digits-LT)."})
    data_dir: str | None = field(default=None, metadata={"help": "Local source: Parquet folder or image root."})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "Where the built dataset is cached."})
    dataset_seed: int = field(default=0, metadata={"help": "Seed of the long-tailed selection (Cao et al.: 0)."})
    val_per_class: int | None = field(
        default=None,
        metadata={"help": "Validation images per class (default: the dataset's, 20 for CIFAR-LT); drawn from the "
                          "training images the long-tailed selection left out. Not for imagenet_lt (official split)."},
    )
    val_shortfall: str | None = field(
        default=None,
        metadata={"help": "A class with too few left-out images: 'from_train' (default: the rest from its own "
                          "training images) or 'leave_short' (Cao et al.'s exact training set; it gets what there is)."},
    )


def _as_flags(options: dict) -> list[str]:
    """YAML values as command-line flags, so that flags given after the YAML file override it."""
    flags = []
    for key, value in options.items():
        if value is None or value == []:
            continue  # the field's default
        values = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(json.dumps(v) if isinstance(v, dict) else str(v) for v in values)]
    return flags


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, LTAPConfig]:
    """`[RECIPE.yaml] [--flag value ...]`: the recipe (default: the digits-LT demo), then overrides."""
    has_recipe = bool(argv) and argv[0].endswith((".yaml", ".yml"))
    recipe, flags = (Path(argv[0]), argv[1:]) if has_recipe else (DEFAULT_RECIPE, argv)
    with open(recipe) as file:
        options = yaml.safe_load(file) or {}
    parser = HfArgumentParser((ModelArguments, DataArguments, LTAPConfig))
    return parser.parse_args_into_dataclasses(args=_as_flags(options) + flags)


def build_model(model_args: ModelArguments, num_channels: int, class_names: list[str]):
    labels = {"id2label": dict(enumerate(class_names)), "label2id": {n: i for i, n in enumerate(class_names)}}
    if model_args.model_name_or_path:
        return AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path, num_labels=len(class_names), ignore_mismatched_sizes=True, **labels
        )
    overrides = {"shortcut_type": model_args.shortcut_type} if model_args.shortcut_type else {}
    config = LTResNetConfig.from_preset(model_args.model_preset, num_channels=num_channels, **labels, **overrides)
    return LTResNetForImageClassification(config)


def _percent(value: float) -> str:
    return "  n/a" if value != value else f"{100 * value:5.1f}"


def report(test: dict, density: dict, cost, base_cost) -> str:
    """The closing table: test accuracy by group, density, parameters and MACs."""
    rows = [
        "| overall | many | medium | few | worst class | tail-3 |",
        "|---|---|---|---|---|---|",
        "| " + " | ".join(_percent(test[f"test_{k}"]) for k in
                         ("accuracy", "many_accuracy", "medium_accuracy", "few_accuracy", "worst_class_accuracy", "tail3_accuracy")) + " |",
        "",
        f"density of prunable weights: {density['prunable_density']:.4f}   of all parameters: {density['overall_density']:.4f}",
        f"parameters: {cost.parameters_nonzero:,} nonzero of {cost.parameters:,} (dense model: {base_cost.parameters:,})",
        f"MACs per image: {cost.macs_nonzero:,} nonzero of {cost.macs:,} (dense model: {base_cost.macs:,})",
    ]
    return "\n".join(rows)


def main(argv: list[str]) -> dict:
    model_args, data_args, training_args = parse_args(argv)
    set_seed(training_args.seed)
    dataset = load_lt_dataset(data_args.dataset_name, imbalance_ratio=data_args.imbalance_ratio, data_dir=data_args.data_dir,
                              cache_dir=data_args.dataset_cache_dir, seed=data_args.dataset_seed,
                              val_per_class=data_args.val_per_class, val_shortfall=data_args.val_shortfall)
    metadata = read_lt_metadata(dataset)
    class_counts = metadata["class_counts"]["train"]
    class_names = dataset["train"].features["label"].names
    stats = DATASET_STATS[data_args.dataset_name]
    train = dataset["train"].with_transform(TrainTransform(stats))
    validation, test = (dataset[split].with_transform(EvalTransform(stats)) for split in ("validation", "test"))

    model = build_model(model_args, stats.num_channels, class_names)
    input_size = (stats.num_channels, stats.image_size, stats.image_size)
    base_cost = model_cost(model, input_size)
    trainer = LTAPTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=validation,
                          class_counts=class_counts, data_collator=collate_fn,
                          processing_class=make_image_processor(stats.image_size, stats.mean, stats.std))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    prediction = trainer.predict(test, metric_key_prefix="test")
    test_metrics = prediction.metrics
    trainer.log_metrics("test", test_metrics)
    trainer.save_metrics("test", test_metrics)
    accuracy = long_tail_accuracy(prediction.predictions, prediction.label_ids, class_counts)

    density = trainer.pruner.density_report(trainer.accelerator.unwrap_model(trainer.model))
    model = trainer.final_model()
    cost = model_cost(model, input_size)
    trainer.card_report = PruningReport(
        model_name=Path(training_args.output_dir).name,
        architecture=model_args.model_name_or_path or f"an LTResNet ({model_args.model_preset})",
        model_type=model.config.model_type,
        dataset_id=data_args.dataset_name,
        dataset_name=f"{data_args.dataset_name} (imbalance ratio {metadata.get('imbalance_ratio', 'official split')})",
        class_names=class_names,
        train_class_counts=class_counts,
        pruned_accuracy=accuracy,
        density=density,
        cost=cost,
        ltap_settings=training_args.ltap_settings(),
        final_alpha=trainer.final_alpha(),
    )
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card()
    if training_args.push_to_hub:
        trainer.push_to_hub()
    if trainer.is_world_process_zero():
        print(report(test_metrics, density, cost, base_cost))
    return {"test": test_metrics, "per_class_accuracy": accuracy["per_class_accuracy"], "class_counts": class_counts,
            "class_names": class_names, "density": density, "cost": cost, "base_cost": base_cost}


if __name__ == "__main__":
    main(sys.argv[1:])
    end_distributed()
