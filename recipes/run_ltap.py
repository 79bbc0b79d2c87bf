"""Train and prune an image classifier on a long-tailed dataset with LTAP, or evaluate one.

    python recipes/run_ltap.py --output_dir runs/demo                       # digits-LT demo recipe
    python recipes/run_ltap.py recipes/cifar10_lt/resnet32_ir100.yaml --output_dir runs/c10
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml \\
        recipes/run_ltap.py recipes/cifar100_lt/resnet32_ir100.yaml
    python recipes/run_ltap.py --model_name_or_path runs/demo --do_train False --do_predict --output_dir runs/demo-eval

A recipe is a YAML file of `ModelArguments`, `DataArguments`, `LTAPConfig` and `RunArguments` fields; flags
after it override it. Without a YAML file the digits-LT demo recipe is used.

Training is on unless `--do_train False`. With `--do_train False` and `--do_eval` or `--do_predict`, the
model of `--model_name_or_path` (ours, a sparse or slimmed checkpoint of this project, any transformers
image classifier) is evaluated on the long-tailed test split with nothing trained or pruned, and the
same report and model card as a training run are written to `--output_dir` (`--do_eval` adds the
validation split's `eval_*` metrics).

`--calibrate` then fits a per-class logit bias on the validation split and folds it into the classifier head
(`ltap_hf.calibration`); the test split is reported before and after.

A backbone of `--model_name_or_path` with an image processor (a Hub ViT, ConvNeXt, ResNet ...) trains and is
evaluated at that processor's size and with its normalisation, and the output folder carries the processor;
the dataset's own augmentation is kept, scaled to that size. `--image_size N` and `--use_dataset_normalization`
override it; without a processor (our ResNets) the dataset's size and statistics are used, as they always were.

A training run refuses an `--output_dir` that holds another run, unless it resumes it
(`--resume_from_checkpoint [PATH]`; without a path, the last checkpoint there) or replaces it
(`--overwrite_output_dir`).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser, Trainer, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import CONFIG_NAME, cached_file, logging

from ltap_hf import LTResNetConfig, LTResNetForImageClassification, model_cost
from ltap_hf.calibration import calibrate_classifier, find_classifier_head
from ltap_hf.data import (
    DATASET_STATS,
    LT_BUILDERS,
    DatasetStats,
    EvalTransform,
    TrainTransform,
    collate_fn,
    load_lt_dataset,
    model_input_stats,
    read_lt_metadata,
)
from ltap_hf.dense_reference import DenseReferenceCallback
from ltap_hf.evaluation import evaluate_long_tail, load_image_classifier
from ltap_hf.hub import SPARSE_WEIGHTS_NAME, PruningReport, render_model_card, save_sparse_pretrained
from ltap_hf.hub.model_card import rank_worst_classes
from ltap_hf.metrics import COMPUTE_METRICS_KEYS, make_compute_metrics
from ltap_hf.models.image_processing import image_processor_for_stats, load_image_processor
from ltap_hf.models.sparse_safetensors import read_sparse_record
from ltap_hf.trainer import LTAPConfig, LTAPTrainer, class_balanced_probe, end_distributed


logger = logging.get_logger("run_ltap")
DEFAULT_RECIPE = Path(__file__).resolve().parent / "digits_lt" / "resnet_demo.yaml"
# What a run (training, or an evaluation) leaves in its output folder, and a re-run would overwrite.
RUN_FILES = ("trainer_state.json", "config.json", "model.safetensors", "model.safetensors.index.json",
             SPARSE_WEIGHTS_NAME, "pytorch_model.bin", "README.md", "all_results.json", "test_results.json")
CHECKPOINT_FOLDER = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-\d+$")
# The printed per-class table lists every class up to this many; beyond, the worst-hit ones.
PRINTED_CLASSES = 100


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A Hub id or folder of any image classifier; overrides model_preset."}
    )
    model_preset: str = field(default="resnet32", metadata={"help": "LTResNet preset (resnet20..110, resnet18..152)."})
    shortcut_type: str | None = field(default=None, metadata={"help": "Override the preset's shortcut: 'A' or 'B'."})


@dataclass
class RunArguments:
    dense_reference: str | None = field(
        default=None,
        metadata={"help": "A saved dense model (folder or Hub id) to compare against on the same test split. "
                          "Default: a training run records its own network at the end of its dense phase."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the run already in output_dir: its checkpoint-* folders are deleted and its "
                          "model, card and results overwritten."},
    )
    calibrate: bool = field(
        default=False,
        metadata={"help": "After training (or in evaluation mode), fit a per-class logit bias on the validation "
                          "split (logit adjustment tau*log prior, or a fitted bias; the better on validation) and "
                          "fold it into the classifier head's bias; the test split is evaluated before and after. "
                          "An evaluation then saves the calibrated model to output_dir."},
    )


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
    image_size: int | None = field(
        default=None,
        metadata={"help": "Train and evaluate on image_size x image_size inputs. Default: the size of the image "
                          "processor saved with --model_name_or_path (a pretrained ViT's 224), else the dataset's "
                          "(CIFAR 32, digits 8). With a processor, its resize and centre crop are scaled to this size; "
                          "the output folder then carries a processor built for it."},
    )
    use_dataset_normalization: bool = field(
        default=False,
        metadata={"help": "Normalise with the dataset's mean and std instead of those of the model's image processor "
                          "(without a processor the dataset's are used anyway); the output folder then carries a "
                          "processor built with them."},
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


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, LTAPConfig, RunArguments]:
    """`[RECIPE.yaml] [--flag value ...]`: the recipe (default: the digits-LT demo), then overrides.

    `do_train` is True unless given as false; `--resume_from_checkpoint` without a value reads as "True".
    """
    has_recipe = bool(argv) and argv[0].endswith((".yaml", ".yml"))
    recipe, flags = (Path(argv[0]), argv[1:]) if has_recipe else (DEFAULT_RECIPE, argv)
    with open(recipe) as file:
        options = yaml.safe_load(file) or {}
    parser = HfArgumentParser((ModelArguments, DataArguments, LTAPConfig, RunArguments))
    for action in parser._actions:
        if action.dest == "resume_from_checkpoint":
            # As Trainer users write it: `--resume_from_checkpoint` alone resumes the last checkpoint.
            action.nargs, action.const = "?", "True"
    # None tells "not given" (train, as always) from an explicit `--do_train False` (evaluate only).
    parser.set_defaults(do_train=None)
    model_args, data_args, training_args, run_args = parser.parse_args_into_dataclasses(args=_as_flags(options) + flags)
    training_args.do_train = training_args.do_train is not False
    return model_args, data_args, training_args, run_args


def build_model(model_args: ModelArguments, num_channels: int, class_names: list[str]):
    labels = {"id2label": dict(enumerate(class_names)), "label2id": {n: i for i, n in enumerate(class_names)}}
    if model_args.model_name_or_path:
        # Sparse checkpoints of any backbone decode here; a plain Auto from_pretrained would re-initialise them.
        return load_image_classifier(
            model_args.model_name_or_path, num_labels=len(class_names), ignore_mismatched_sizes=True, **labels
        )
    overrides = {"shortcut_type": model_args.shortcut_type} if model_args.shortcut_type else {}
    config = LTResNetConfig.from_preset(model_args.model_preset, num_channels=num_channels, **labels, **overrides)
    return LTResNetForImageClassification(config)


def resolve_resume_checkpoint(value: str | None, output_dir: str) -> str | None:
    """The checkpoint to resume from: a path as given, or for "True" (`--resume_from_checkpoint` without a
    path) the last `checkpoint-*` folder in `output_dir`, as `Trainer.train(resume_from_checkpoint=True)`."""
    if value is None or value.strip().lower() in ("", "false", "none"):
        return None
    if value.strip().lower() == "true":
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise ValueError(
                f"--resume_from_checkpoint: there is no checkpoint-* folder in --output_dir {output_dir} to resume "
                "from; pass a checkpoint's path, or leave the flag out to start a new run"
            )
        return last
    if not os.path.isdir(value):
        raise ValueError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    return value


def previous_run(output_dir: str) -> list[str]:
    """What an earlier run left in `output_dir` (checkpoint folders, a saved model, trainer state, card)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.name in RUN_FILES or (p.is_dir() and CHECKPOINT_FOLDER.match(p.name)))


def prepare_output_dir(training_args: LTAPConfig, resume: str | None, overwrite: bool) -> None:
    """Refuses an output folder that holds another run, unless this run resumes it or `overwrite` says to
    replace it; then a training run deletes the old checkpoint folders (they would otherwise mix with
    the new ones in the rotation of `save_total_limit` and in `--resume_from_checkpoint`)."""
    output_dir = training_args.output_dir
    if resume is not None and Path(resume).resolve().parent == Path(output_dir).resolve():
        return
    found = previous_run(output_dir)
    checkpoints = [name for name in found if CHECKPOINT_FOLDER.match(name)]
    if found and not overwrite:
        listed = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
        if training_args.do_train:
            harm = "rotate away its checkpoints and overwrite" if checkpoints else "overwrite"
            resume_hint = ("Pass --resume_from_checkpoint (its last checkpoint) or --resume_from_checkpoint PATH to "
                           "continue that run, --overwrite_output_dir to replace it" if checkpoints else
                           "Pass --overwrite_output_dir to replace it")
            raise ValueError(
                f"--output_dir {output_dir} already holds a run ({listed}); training into it would {harm} its "
                f"model and card. {resume_hint}, or another --output_dir"
            )
        raise ValueError(
            f"--output_dir {output_dir} already holds a run ({listed}); an evaluation would overwrite its card "
            "and results. Pass --overwrite_output_dir to overwrite them, or another --output_dir"
        )
    if training_args.do_train and overwrite:
        # Every process enters (a barrier), whatever it saw: the main one may have deleted already.
        with training_args.main_process_first(local=False, desc="removing the previous run's checkpoints"):
            if training_args.process_index == 0 and checkpoints:
                logger.warning(f"--overwrite_output_dir: deleting {', '.join(checkpoints)} from {output_dir}")
                for name in checkpoints:
                    shutil.rmtree(Path(output_dir) / name, ignore_errors=True)


def _percent(value: float) -> str:
    return "  n/a" if value != value else f"{100 * value:5.1f}"


def _points(dense: float, pruned: float) -> str:
    return "  n/a" if dense != dense or pruned != pruned else f"{100 * (pruned - dense):+5.1f}"


_GROUP_KEYS = ("accuracy", "many_accuracy", "medium_accuracy", "few_accuracy", "worst_class_accuracy", "tail3_accuracy")


def report(accuracy: dict, density: dict, cost, base_cost, class_names=None, class_counts=None,
           dense: dict | None = None, label: str = "pruned", input_size=None) -> str:
    """The closing report: test accuracy by group and per class (beside the dense network's, when known),
    the worst-hit classes, density measured from the weights, parameters and MACs.

    Args:
        accuracy, dense: `long_tail_accuracy` of the model and of the dense network (or None).
        class_names, class_counts: the classes' names and training images, for the per-class rows.
        label: the model's row name ("pruned" after training, "model" for an evaluation).
        input_size: (channels, height, width) the MACs were counted for, named in their line.
    """
    models = [("dense", dense), (label, accuracy)] if dense is not None else [(label, accuracy)]
    rows = ["| model | overall | many | medium | few | worst class | tail-3 |", "|---|---|---|---|---|---|---|"]
    rows += [f"| {name} | " + " | ".join(_percent(result[k]) for k in _GROUP_KEYS) + " |" for name, result in models]
    if dense is not None:
        rows.append("| change (points) | " + " | ".join(_points(dense[k], accuracy[k]) for k in _GROUP_KEYS) + " |")
    if class_names is not None and class_counts is not None:
        per_class = accuracy["per_class_accuracy"]
        dense_per_class = dense["per_class_accuracy"] if dense is not None else None
        worst = rank_worst_classes(per_class, dense_per_class, class_counts)
        indices, title = list(range(len(class_names))), "per class (test top-1 %):"
        if len(indices) > PRINTED_CLASSES:
            indices, title = worst[:20], f"the 20 worst-hit of {len(class_names)} classes (test top-1 %):"
        columns = (f"| class | training images | dense | {label} | change |" if dense is not None
                   else f"| class | training images | {label} |")
        rows += ["", title, columns, "|" + "---|" * (columns.count("|") - 1)]
        for c in indices:
            cells = [str(class_names[c]), str(class_counts[c])]
            if dense is not None:
                cells += [_percent(dense_per_class[c]), _percent(per_class[c]), _points(dense_per_class[c], per_class[c])]
            else:
                cells.append(_percent(per_class[c]))
            rows.append("| " + " | ".join(cells) + " |")
        hit = "dropped most from dense" if dense is not None else "lowest accuracy"
        rows += ["", f"worst-hit classes ({hit}): " + ", ".join(
            f"{class_names[c]} ({_percent(per_class[c]).strip()}%"
            + (f", {_points(dense_per_class[c], per_class[c]).strip()})" if dense is not None else ")")
            for c in worst[:5])]
    rows += [
        "",
        f"density of prunable weights: {density['prunable_density']:.4f}   of all parameters: {density['overall_density']:.4f}",
        f"parameters: {cost.parameters_nonzero:,} nonzero of {cost.parameters:,} (dense model: {base_cost.parameters:,})",
        f"MACs per image{f' ({input_size[1]}x{input_size[2]} input)' if input_size else ''}: {cost.macs_nonzero:,} "
        f"nonzero of {cost.macs:,} (dense model: {base_cost.macs:,})",
    ]
    return "\n".join(rows)


def calibration_report(calibration: dict, after: dict) -> str:
    """--calibrate: what was fitted on the validation split and applied, and the test split before and after."""
    validation = calibration["validation_balanced_accuracy"]
    candidates = calibration["candidates"]
    lines = [f"post-hoc calibration, fitted on the validation split ({calibration['validation_images']} images); "
             "validation balanced accuracy (mean per-class %):"]
    for method, candidate in candidates.items():
        name = f"logit adjustment (tau {candidate['tau']:g})" if "tau" in candidate else method.replace("_", " ")
        lines.append(f"  {name}: {_percent(validation['before']).strip()} -> "
                     f"{_percent(candidate['validation_balanced_accuracy']).strip()}")
    tau = f", tau {calibration['tau']:g}" if calibration["tau"] is not None else ""
    lines += [f"  applied: {calibration['method'].replace('_', ' ')}{tau}, folded into `{calibration['head']}` "
              "(recorded as config.ltap_calibration)",
              "", "| test | overall | many | medium | few | worst class | tail-3 |", "|---|---|---|---|---|---|---|"]
    before = calibration["test_accuracy_before"]
    lines += [f"| {name} | " + " | ".join(_percent(result[k]) for k in _GROUP_KEYS) + " |"
              for name, result in (("before calibration", before), ("after calibration", after))]
    lines.append("| change (points) | " + " | ".join(_points(before[k], after[k]) for k in _GROUP_KEYS) + " |")
    return "\n".join(lines)


def _calibrate(model, trainer, splits, class_counts, before: dict, training_args: LTAPConfig, input_size) -> tuple[dict, dict]:
    """--calibrate: the logit bias fitted on the validation split and folded into `model`, then the test split
    again. Returns the evaluation after (its metrics also hold the `test_uncalibrated_*` ones before) and the
    calibration record with the test accuracy before."""
    calibrate_classifier(model, splits["validation"], class_counts, trainer=trainer)  # records model.config.ltap_calibration
    after = evaluate_long_tail(model, splits["test"], class_counts, trainer=trainer, input_size=input_size,
                               prune_classifier=training_args.prune_classifier)
    after["metrics"].update({f"test_uncalibrated_{key}": before["metrics"][f"test_{key}"] for key in COMPUTE_METRICS_KEYS})
    return after, {**model.config.ltap_calibration, "test_accuracy_before": before["accuracy"]}


def _hub_dataset_id(dataset_name: str) -> str | None:
    """The Hub id of the dataset the builder draws from (CIFAR: `uoft-cs/cifar10`), or None (digits-LT,
    ImageNet-LT and iNaturalist come from elsewhere): the card's `datasets:` metadata takes Hub ids only."""
    configs = getattr(LT_BUILDERS.get(dataset_name), "BUILDER_CONFIGS", None) or []
    return next((c.hub_id for c in configs if getattr(c, "hub_id", "")), None)


def _is_sparse_checkpoint(name_or_path: str) -> bool:
    config_file = cached_file(name_or_path, CONFIG_NAME, _raise_exceptions_for_missing_entries=False)
    return read_sparse_record(config_file) is not None


def _model_location(name_or_path: str) -> str:
    """A local folder as its absolute path (what a usage snippet can load from anywhere), a Hub id as is."""
    return str(Path(name_or_path).resolve()) if os.path.isdir(name_or_path) else name_or_path


def _card_name(training_args: LTAPConfig, fallback: str) -> str:
    # As transformers' own cards: the repo's name when the model is published, else the folder's.
    return training_args.hub_model_id.split("/")[-1] if training_args.hub_model_id else Path(fallback).resolve().name


def _evaluate_dense_reference(name_or_path: str, test, class_counts, training_args: LTAPConfig, input_size) -> dict:
    """A user-named dense model, evaluated on the same test split as the model it is compared with."""
    model = load_image_classifier(name_or_path)
    args = copy.copy(training_args)
    args.push_to_hub = False  # a prediction-only Trainer must not create a Hub repo
    trainer = Trainer(model=model, args=args, data_collator=collate_fn)
    return evaluate_long_tail(model, test, class_counts, trainer=trainer, input_size=input_size,
                              prune_classifier=training_args.prune_classifier, metric_key_prefix="dense_test")


def _load_data(data_args: DataArguments):
    dataset = load_lt_dataset(data_args.dataset_name, imbalance_ratio=data_args.imbalance_ratio, data_dir=data_args.data_dir,
                              cache_dir=data_args.dataset_cache_dir, seed=data_args.dataset_seed,
                              val_per_class=data_args.val_per_class, val_shortfall=data_args.val_shortfall)
    metadata = read_lt_metadata(dataset)
    stats = DATASET_STATS[data_args.dataset_name]
    return dataset, metadata, stats


def model_input(model_args: ModelArguments, data_args: DataArguments, dataset_stats: DatasetStats):
    """The transform settings of the model's input and the image processor the output folder carries.

    The image processor of `--model_name_or_path`, if it has one, sets the size and normalisation; then
    the run saves that processor as it is. `--image_size` / `--use_dataset_normalization` override it, and
    the run saves a processor built from the result. Without a processor: the dataset's settings.
    """
    own = load_image_processor(model_args.model_name_or_path) if model_args.model_name_or_path else None
    overridden = data_args.image_size is not None or data_args.use_dataset_normalization
    try:
        stats = model_input_stats(dataset_stats, own, image_size=data_args.image_size,
                                  use_dataset_normalization=data_args.use_dataset_normalization)
    except ValueError as error:
        raise ValueError(f"the image processor of {model_args.model_name_or_path}: {error}; on the command line: --image_size N") from error
    if own is not None and not overridden:
        return stats, own
    return stats, image_processor_for_stats(stats)


def _dense_cost(model, input_size):
    """`model_cost` of the model before training: its first forward pass, where a model that cannot take
    inputs of this size says so."""
    try:
        return model_cost(model, input_size)
    except (RuntimeError, ValueError) as error:
        raise ValueError(
            f"{type(model).__name__} does not take {'x'.join(map(str, input_size))} inputs ({error}). The input size "
            "is that of the model's image processor, else the dataset's: set it with --image_size N"
        ) from error


def main(argv: list[str]) -> dict:
    model_args, data_args, training_args, run_args = parse_args(argv)
    training = training_args.do_train
    if training:
        resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
        training_args.resume_from_checkpoint = resume
    else:
        _check_evaluation_flags(model_args, training_args)
        resume = None
    prepare_output_dir(training_args, resume, run_args.overwrite_output_dir)
    set_seed(training_args.seed)
    dataset, metadata, stats = _load_data(data_args)
    stats, image_processor = model_input(model_args, data_args, stats)
    class_counts = metadata["class_counts"]["train"]
    class_names = dataset["train"].features["label"].names
    splits = {split: dataset[split].with_transform(EvalTransform(stats)) for split in ("validation", "test") if split in dataset}
    if run_args.calibrate and "validation" not in splits:
        raise ValueError(f"--calibrate fits on the validation split, and {data_args.dataset_name} has none here: "
                         "give it validation images (--val_per_class N) or drop --calibrate")
    input_size = (stats.num_channels, stats.image_size, stats.image_size)
    card = dict(
        model_type=None,
        dataset_id=_hub_dataset_id(data_args.dataset_name),
        dataset_type=data_args.dataset_name,
        dataset_name=f"{data_args.dataset_name} (imbalance ratio {metadata.get('imbalance_ratio', 'official split')})",
        class_names=class_names,
        train_class_counts=class_counts,
    )
    if training:
        return _train(model_args, training_args, run_args, dataset, splits, stats, input_size, card, resume, image_processor)
    return _evaluate(model_args, data_args, training_args, run_args, splits, input_size, card, image_processor)


def _check_evaluation_flags(model_args: ModelArguments, training_args: LTAPConfig) -> None:
    if not (training_args.do_eval or training_args.do_predict):
        raise ValueError("--do_train False leaves nothing to do: add --do_predict (or --do_eval) to evaluate a model")
    if not model_args.model_name_or_path:
        raise ValueError("--do_train False evaluates a trained model: pass --model_name_or_path FOLDER_OR_HUB_ID")
    if training_args.resume_from_checkpoint:
        raise ValueError("--resume_from_checkpoint continues training; it cannot be combined with --do_train False")
    if training_args.push_to_hub:
        raise ValueError(
            "--do_train False only evaluates; it publishes nothing: drop --push_to_hub (the card it writes to "
            "--output_dir can be pushed with ltap_hf.hub.push_pruned_to_hub)"
        )


def _train(model_args, training_args, run_args, dataset, splits, stats, input_size, card, resume, image_processor) -> dict:
    class_counts, class_names, test = card["train_class_counts"], card["class_names"], splits["test"]
    model = build_model(model_args, stats.num_channels, class_names)
    if run_args.calibrate:
        find_classifier_head(model)  # a head the bias cannot be folded into is refused before training
    base_cost = _dense_cost(model, input_size)
    probe = None
    if training_args.needs_probe:  # ltap-hf's class_taylor (not the paper's): a class-balanced probe set of training images
        probe = class_balanced_probe(dataset["train"], training_args.probe_per_class, training_args.seed)
        probe = probe.with_transform(EvalTransform(stats))
    trainer = LTAPTrainer(model=model, args=training_args, train_dataset=dataset["train"].with_transform(TrainTransform(stats)),
                          eval_dataset=splits.get("validation"), class_counts=class_counts, data_collator=collate_fn,
                          probe_dataset=probe,
                          processing_class=image_processor)
    reference = None
    if run_args.dense_reference is None:
        reference = DenseReferenceCallback(trainer, test, class_counts)
        trainer.add_callback(reference)
    trainer.train(resume_from_checkpoint=resume)

    # The trained network as it is (pruned weights at zero, channels masked, not yet slimmed): its
    # predictions and its density, measured from the weights.
    trained = trainer.accelerator.unwrap_model(trainer.model)
    evaluation = evaluate_long_tail(trained, test, class_counts, trainer=trainer, input_size=input_size,
                                    prune_classifier=training_args.prune_classifier)
    calibration = None
    if run_args.calibrate:
        # Before slimming: the slimmed copy takes the head's bias and the config's record with it.
        evaluation, calibration = _calibrate(trained, trainer, splits, class_counts, evaluation, training_args, input_size)
    test_metrics, accuracy, density = evaluation["metrics"], evaluation["accuracy"], evaluation["density"]
    trainer.log_metrics("test", test_metrics)
    trainer.save_metrics("test", test_metrics)
    if training_args.granularity == "channel":
        # The channel bookkeeping (per coupled group) is the pruner's; the densities stay the weights'.
        groups = trainer.pruner.density_report(trained)
        density.update({key: groups[key] for key in ("per_group", "channel_density") if key in groups})

    if run_args.dense_reference is not None:
        dense = _evaluate_dense_reference(run_args.dense_reference, test, class_counts, training_args, input_size)["accuracy"]
        dense_source = f"the dense reference model `{run_args.dense_reference}`"
    else:
        dense = reference.accuracy
        dense_source = (f"the same network at the end of its dense phase (optimizer step {reference.step}, before "
                        "the first pruning stage)") if dense is not None else None
    model = trainer.final_model()
    cost = evaluation["cost"] if model is trained else model_cost(model, input_size)
    if model is not trained:
        # Slimmed: it also sheds the BatchNorm and classifier slices of the removed channels, which the
        # zeros of the prunable weights do not count.
        kept = sum(p.numel() for p in model.parameters())
        density.update(overall_density=kept / density["total_parameters"], pruned_parameters=density["total_parameters"] - kept)
    trainer.card_report = PruningReport(
        **{**card, "model_type": model.config.model_type},
        model_name=_card_name(training_args, training_args.output_dir),
        architecture=(f"`{model_args.model_name_or_path}` ({type(model).__name__})" if model_args.model_name_or_path
                      else f"an LTResNet ({model_args.model_preset})"),
        pruned_accuracy=accuracy,
        density=density,
        cost=cost,
        ltap_settings=training_args.ltap_settings(),
        final_alpha=trainer.final_alpha(),
        dense_accuracy=dense,
        dense_source=dense_source,
        # save_model writes the weight-pruned network in the sparse format, a slimmed one as an ordinary model
        checkpoint_format="sparse" if model is trained else "dense",
        calibration=calibration,
    )
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card()
    if training_args.push_to_hub:
        trainer.push_to_hub()
    if trainer.is_world_process_zero():
        _print_report(accuracy, density, cost, base_cost, class_names, class_counts, dense, input_size, "pruned",
                      calibration)
    return _result("train", resume, test_metrics, accuracy, dense, class_counts, class_names, density, cost,
                   base_cost, input_size, calibration)


def _print_report(accuracy, density, cost, base_cost, class_names, class_counts, dense, input_size, label: str,
                  calibration) -> None:
    print(report(accuracy, density, cost, base_cost, class_names, class_counts, dense, input_size=input_size,
                 label=f"{label}, calibrated" if calibration else label))
    if calibration:
        print("\n" + calibration_report(calibration, accuracy))


def _result(mode: str, resumed_from, test_metrics, accuracy, dense, class_counts, class_names, density, cost,
            base_cost, input_size, calibration) -> dict:
    """What `main` returns, for a training run and an evaluation alike."""
    return {"mode": mode, "resumed_from": resumed_from, "test": test_metrics, "accuracy": accuracy,
            "per_class_accuracy": accuracy["per_class_accuracy"], "dense_accuracy": dense,
            "class_counts": class_counts, "class_names": class_names, "density": density, "cost": cost,
            "base_cost": base_cost, "input_size": input_size, "calibration": calibration}


def _evaluate(model_args, data_args, training_args, run_args, splits, input_size, card, image_processor) -> dict:
    """`--do_train False`: the model as it is, on the test split (and the validation split with --do_eval)."""
    class_counts, class_names, test = card["train_class_counts"], card["class_names"], splits["test"]
    source = model_args.model_name_or_path
    model = load_image_classifier(source)
    if model.config.num_labels != len(class_names):
        raise ValueError(
            f"{source} has {model.config.num_labels} labels but {data_args.dataset_name} has {len(class_names)} "
            "classes: evaluate a model trained (or fine-tuned) on this dataset"
        )
    trainer = Trainer(model=model, args=training_args, data_collator=collate_fn,
                      compute_metrics=make_compute_metrics(class_counts))
    if training_args.do_eval and "validation" in splits:
        validation_metrics = trainer.evaluate(splits["validation"])
        trainer.log_metrics("eval", validation_metrics)
        trainer.save_metrics("eval", validation_metrics)
    evaluation = evaluate_long_tail(model, test, class_counts, trainer=trainer, input_size=input_size,
                                    prune_classifier=training_args.prune_classifier)
    calibration, location = None, _model_location(source)
    checkpoint_format = "sparse" if _is_sparse_checkpoint(source) else "dense"
    if run_args.calibrate:
        evaluation, calibration = _calibrate(model, trainer, splits, class_counts, evaluation, training_args, input_size)
        if trainer.is_world_process_zero():
            _save_calibrated(model, training_args.output_dir, checkpoint_format == "sparse", image_processor)
        location = str(Path(training_args.output_dir).resolve())
    test_metrics, accuracy, density, cost = (evaluation[k] for k in ("metrics", "accuracy", "density", "cost"))
    trainer.log_metrics("test", test_metrics)
    trainer.save_metrics("test", test_metrics)
    dense, dense_source, base_cost = None, None, cost
    if run_args.dense_reference is not None:
        reference = _evaluate_dense_reference(run_args.dense_reference, test, class_counts, training_args, input_size)
        dense, base_cost = reference["accuracy"], reference["cost"]
        dense_source = f"the dense reference model `{run_args.dense_reference}`"
    if trainer.is_world_process_zero():
        card_report = PruningReport(
            **{**card, "model_type": model.config.model_type},
            model_name=_card_name(training_args, source),
            architecture=f"{type(model).__name__} loaded from `{source}`",
            pruned_accuracy=accuracy,
            density=density,
            cost=cost,
            ltap_settings={},
            final_alpha={},
            dense_accuracy=dense,
            dense_source=dense_source,
            trained_with_ltap=False,
            checkpoint_format=checkpoint_format,
            model_location=training_args.hub_model_id or location,
            calibration=calibration,
        )
        render_model_card(card_report, training_args.output_dir)
        _print_report(accuracy, density, cost, base_cost, class_names, class_counts, dense, input_size, "model",
                      calibration)
    return _result("evaluate", None, test_metrics, accuracy, dense, class_counts, class_names, density, cost,
                   base_cost, input_size, calibration)


def _save_calibrated(model, output_dir: str, sparse: bool, image_processor) -> None:
    """An evaluation with --calibrate changed the model: it is saved to output_dir in the format it came in,
    with the image processor the evaluation used, so that the card's snippet and `pipeline` load it and
    preprocess as it did."""
    if sparse:
        save_sparse_pretrained(model, output_dir)
    else:
        model.save_pretrained(output_dir)
    if image_processor is not None:
        image_processor.save_pretrained(output_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
    end_distributed()
