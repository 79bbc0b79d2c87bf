"""Long-tail evaluation of any image classifier, without training it.

    model = load_image_classifier("runs/demo")               # ours, sparse, slimmed, or any transformers classifier
    result = evaluate_long_tail(model, test, class_counts)   # per class, many/medium/few, density, cost

Density is always measured from the weights (`weight != 0` over the prunable tensors), so a model that
arrives already pruned reports what it keeps, whatever a pruning schedule believes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoModelForImageClassification, PreTrainedModel

from .cost import ModelCost, model_cost
from .data.transforms import collate_fn
from .hub.sparse import load_sparse_pretrained
from .metrics import COMPUTE_METRICS_KEYS, long_tail_accuracy
from .pruning import density_report, prunable_parameters
from .rng import forked_rng


def weight_density(model: nn.Module, prune_classifier: bool = False) -> dict:
    """`ltap_hf.pruning.density_report` of `model` with `{name: weight != 0}` masks over its prunable
    tensors: what the weights keep, whatever pruned them (this run, an earlier one, or nothing)."""
    masks = {name: weight.detach() != 0 for name, weight in prunable_parameters(model, prune_classifier).items()}
    if not masks:
        raise ValueError(f"{type(model).__name__} has no prunable tensors (Conv2d / Linear weights) to measure")
    return density_report(model, masks)


def load_image_classifier(
    pretrained_model_name_or_path: str | os.PathLike,
    auto_class: type = AutoModelForImageClassification,
    **kwargs,
) -> PreTrainedModel:
    """Loads an image classifier from a folder or a Hub repo, whatever its kind: our LTResNet (dense,
    sparse, slimmed), a sparse checkpoint of another backbone written by `save_sparse_pretrained`, or
    any transformers classifier.

    Every checkpoint goes through `ltap_hf.hub.load_sparse_pretrained`, which decodes a sparse file (and
    refuses one that does not fit the model rather than re-initialising weights at random) and loads
    a dense one exactly as `auto_class.from_pretrained`. A plain `AutoModelForImageClassification.
    from_pretrained` of a foreign sparse checkpoint would silently return random weights.

    Args:
        kwargs: as for `from_pretrained` (`revision`, `cache_dir`, `num_labels`, `ignore_mismatched_sizes` ...).
    """
    return load_sparse_pretrained(pretrained_model_name_or_path, auto_class=auto_class, **kwargs)


def infer_input_size(dataset) -> tuple[int, int, int]:
    """(channels, height, width) of the first example's `pixel_values` (after the dataset's transform)."""
    pixels = dataset[0]["pixel_values"]
    shape = tuple(torch.as_tensor(pixels).shape)
    if len(shape) != 3:
        raise ValueError(f"expected pixel_values of shape [C, H, W], got {shape}; pass input_size")
    return shape


def predict_labels(
    model: nn.Module,
    dataset,
    *,
    trainer=None,
    batch_size: int = 256,
    data_collator: Callable[[list[dict]], dict] = collate_fn,
    metric_key_prefix: str = "test",
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Predicted and true class ids `([N], [N])` of `model` on `dataset`, and the trainer's metrics.

    With a `Trainer`, `trainer.predict` runs (its device, batch size, precision and processes; `model`
    must be the trainer's model) and its metrics (loss, runtime ...) come back; otherwise a plain loop
    on the model's device, with no metrics. Either way in eval mode, the model's training mode restored
    afterwards, and the global RNGs (torch's, NumPy's, Python's) left as they were: creating a data loader
    draws from torch's, a transform may draw from any, and an evaluation inside a training run must not
    change what the run does next.
    """
    return _predict(model, dataset, trainer, batch_size, data_collator, metric_key_prefix, keep_logits=False)


def predict_logits(
    model: nn.Module,
    dataset,
    *,
    trainer=None,
    batch_size: int = 256,
    data_collator: Callable[[list[dict]], dict] = collate_fn,
    metric_key_prefix: str = "test",
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Logits `[N, C]` (float32) and true class ids `[N]` of `model` on `dataset`, and the trainer's
    metrics: `predict_labels` (same devices, modes and untouched RNGs) before the argmax."""
    return _predict(model, dataset, trainer, batch_size, data_collator, metric_key_prefix, keep_logits=True)


def _predict(model, dataset, trainer, batch_size, data_collator, metric_key_prefix, keep_logits: bool):
    was_training = model.training
    device = trainer.args.device if trainer is not None else next(model.parameters()).device
    try:
        with forked_rng():
            if trainer is not None:
                if trainer.accelerator.unwrap_model(trainer.model) is not model:
                    raise ValueError("predicting with a trainer needs the trainer's own model")
                output = trainer.predict(dataset, metric_key_prefix=metric_key_prefix)
                logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
                labels = output.label_ids[0] if isinstance(output.label_ids, tuple) else output.label_ids
                logits = np.asarray(logits)
                return (logits.astype(np.float32) if keep_logits else logits.argmax(-1)), np.asarray(labels), output.metrics
            return (*_predict_in_a_loop(model, dataset, device, batch_size, data_collator, keep_logits), {})
    finally:
        model.train(was_training)


@torch.no_grad()
def _predict_in_a_loop(model, dataset, device, batch_size, data_collator, keep_logits=False) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    predictions, references = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=data_collator):
        labels = batch.pop("labels")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        predictions.append(logits.float().cpu() if keep_logits else logits.argmax(-1).cpu())
        references.append(labels.cpu())
    return torch.cat(predictions).numpy(), torch.cat(references).numpy()


def evaluate_long_tail(
    model: nn.Module,
    dataset,
    class_counts: Sequence[int],
    *,
    trainer=None,
    batch_size: int = 256,
    data_collator: Callable[[list[dict]], dict] = collate_fn,
    input_size: tuple[int, int, int] | None = None,
    prune_classifier: bool = False,
    metric_key_prefix: str = "test",
) -> dict[str, Any]:
    """Long-tail accuracy, density (from the weights) and cost of an image classifier on one split.

    Nothing is trained or pruned. The predictions come from `trainer.predict` when a `Trainer` is given
    (its device, batch size, precision and processes; `model` must be the trainer's model), otherwise
    from a plain loop on the model's device.

    Args:
        model: any image classifier called with `pixel_values` and returning `logits` `[B, C]`.
        dataset: rows with `pixel_values` `[C, H, W]` and `labels` (e.g. a split `with_transform(EvalTransform)`).
        class_counts: training images per class, length C: they define Many/Medium/Few and the tail.
        input_size: (channels, height, width) for the MAC count; read from the first example if None.
        prune_classifier: count the classifier head among the prunable tensors (as `LTAPConfig` does).
        metric_key_prefix: prefix of the flat `metrics` keys.

    Returns:
        dict with
        - `"accuracy"`: `ltap_hf.metrics.long_tail_accuracy` (per class, many/medium/few, worst class, tail-3);
        - `"metrics"`: the flat float metrics `{prefix}_accuracy`, `{prefix}_many_accuracy` ... (plus the
          trainer's loss and runtime when a trainer predicted);
        - `"density"`: `weight_density(model)` (per tensor, prunable and overall);
        - `"cost"`: `ltap_hf.model_cost` of the model (parameters and MACs, all and non-zero).
    """
    num_classes = len(class_counts)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "num_labels", num_classes) != num_classes:
        raise ValueError(
            f"the model has {config.num_labels} labels but the dataset {num_classes} classes: evaluate a model "
            "trained (or fine-tuned) on this dataset"
        )
    predictions, references, trainer_metrics = predict_labels(
        model, dataset, trainer=trainer, batch_size=batch_size, data_collator=data_collator,
        metric_key_prefix=metric_key_prefix,
    )
    accuracy = long_tail_accuracy(predictions, references, class_counts)
    metrics = {**trainer_metrics, **{f"{metric_key_prefix}_{key}": float(accuracy[key]) for key in COMPUTE_METRICS_KEYS}}
    cost: ModelCost = model_cost(model, input_size or infer_input_size(dataset))
    return {
        "accuracy": accuracy,
        "metrics": metrics,
        "density": weight_density(model, prune_classifier),
        "cost": cost,
    }


__all__ = ["evaluate_long_tail", "infer_input_size", "load_image_classifier", "predict_labels", "predict_logits",
           "weight_density"]
