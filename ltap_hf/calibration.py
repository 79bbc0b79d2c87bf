"""Post-hoc calibration: a per-class logit bias fitted on the validation split, folded into the head.

    result = fit_logit_bias(val_logits, val_labels, class_counts)   # tensors only: nothing else is read
    apply_logit_bias(model, result)                                 # head bias += b; recorded in the config
    calibrate_classifier(model, validation_split, class_counts)     # the two, from a split, checked

Two biases b in R^C are fitted on validation logits and the one with the higher validation balanced
accuracy (mean per-class accuracy) is kept, ties going to the simpler (a):

(a) logit adjustment (Menon et al., ICLR 2021): b = -tau * log(prior), prior = training class frequencies,
    tau on a grid chosen by validation balanced accuracy (tau = 0, no change, is on the grid);
(b) a fitted bias: the C-vector minimising the class-balanced cross-entropy of (logits + b), by LBFGS in
    float64 from b = 0 (deterministic), with mean(b) = 0.

A model whose last layer is an `nn.Linear` with a bias then applies b by itself: `head.bias += b` makes
its logits `logits + b`, so plain `from_pretrained` and `pipeline` serve the calibrated model with no
code. `config.ltap_calibration` records what was added (and to which layer), and `remove_logit_bias`
takes it out again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.transforms import collate_fn
from .evaluation import predict_logits


LOGIT_ADJUSTMENT = "logit_adjustment"
FITTED_BIAS = "fitted_bias"
METHODS = (LOGIT_ADJUSTMENT, FITTED_BIAS)
# Menon et al. report tau = 1 as the Bayes-optimal choice for balanced error; the grid spans 0 (no change)
# to twice that.
DEFAULT_TAUS = tuple(round(0.1 * i, 1) for i in range(21))
DEFAULT_FIT_STEPS = 300
CONFIG_KEY = "ltap_calibration"
# Equal balanced accuracies reached through different per-class hits can differ in the last bits of
# their mean; they are a tie (the smaller tau, the simpler method), not a win.
TIE_TOLERANCE = 1e-9


@dataclass
class CalibrationResult:
    """The chosen per-class logit bias and how the candidates did on validation.

    Attributes:
        method: `"logit_adjustment"` or `"fitted_bias"`, the one applied.
        bias: `[C]` float32, to be added to the logits.
        tau: the logit-adjustment temperature when `method == "logit_adjustment"`, else None.
        balanced_accuracy_before, balanced_accuracy_after: validation balanced accuracy of the logits
            and of the logits + `bias`.
        candidates: per method, `{"bias": [C] tensor, "validation_balanced_accuracy": float}` plus `"tau"`
            for logit adjustment and `"loss"` (balanced cross-entropy at the optimum) for the fitted bias.
        num_validation_images: how many validation logits the fit saw.
        unfitted_classes: classes without a validation image; the fitted bias leaves them at 0 (the mean).
    """

    method: str
    bias: torch.Tensor
    tau: float | None
    balanced_accuracy_before: float
    balanced_accuracy_after: float
    candidates: dict[str, dict[str, Any]]
    num_validation_images: int
    unfitted_classes: list[int] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        """JSON-ready summary for `config.ltap_calibration` (and the model card)."""
        candidates = {}
        for method, candidate in self.candidates.items():
            entry = {"validation_balanced_accuracy": candidate["validation_balanced_accuracy"]}
            if "tau" in candidate:
                entry["tau"] = candidate["tau"]
            candidates[method] = entry
        return {
            "method": self.method,
            "tau": self.tau,
            "bias": [float(v) for v in self.bias.tolist()],
            "validation_balanced_accuracy": {"before": self.balanced_accuracy_before,
                                             "after": self.balanced_accuracy_after},
            "candidates": candidates,
            "validation_images": self.num_validation_images,
            "unfitted_classes": list(self.unfitted_classes),
        }


def _as_logits_and_labels(logits, labels) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.as_tensor(np.asarray(logits) if not torch.is_tensor(logits) else logits).detach().cpu()
    labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).detach().cpu()
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("no validation images: a logit bias is fitted on the validation split's logits")
    if labels.dtype.is_floating_point or labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be integer class ids in [0, {logits.shape[1]})")
    if not torch.isfinite(logits).all():
        raise ValueError("the validation logits hold NaN or infinite values")
    return logits.to(torch.float64), labels.to(torch.int64)


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean per-class top-1 accuracy over the classes present in `labels`.

    Args:
        logits: `[N, C]`; labels: `[N]` class ids.
    """
    logits, labels = _as_logits_and_labels(logits, labels)
    num_classes = logits.shape[1]
    correct = (logits.argmax(-1) == labels).to(torch.float64)
    totals = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    hits = torch.bincount(labels, weights=correct, minlength=num_classes)
    present = totals > 0
    return float((hits[present] / totals[present]).mean())


def logit_adjustment_bias(class_counts: Sequence[int], tau: float) -> torch.Tensor:
    """`-tau * log(prior)`, `[C]` float64, prior the training class frequencies (every count must be > 0)."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0 or not (counts > 0).all():
        raise ValueError(
            f"logit adjustment needs a positive training count for every class, got {list(class_counts)}"
        )
    if tau < 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    return -tau * torch.log(counts / counts.sum())


def fit_balanced_bias(logits: torch.Tensor, labels: torch.Tensor, steps: int = DEFAULT_FIT_STEPS) -> tuple[torch.Tensor, float]:
    """The C-vector b with mean 0 minimising the class-balanced cross-entropy of `logits + b`.

    Each class present in `labels` weighs the same (its images share 1/K of the loss, K present classes),
    so the fit does not favour the classes with more validation images. Classes absent from `labels`
    keep b = 0 (the mean): nothing on validation speaks for or against them. The loss is convex in b;
    LBFGS in float64 from b = 0 with a strong-Wolfe line search gives the same vector on every run.

    Args:
        logits: `[N, C]`; labels: `[N]` class ids.
        steps: LBFGS iterations at most.

    Returns:
        `([C] float64 bias, balanced cross-entropy at that bias)`.
    """
    logits, labels = _as_logits_and_labels(logits, labels)
    num_classes = logits.shape[1]
    totals = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    present = (totals > 0).nonzero().squeeze(1)
    weights = 1.0 / (totals[labels] * present.numel())  # sums to 1, each present class 1/K

    def bias_of(free: torch.Tensor) -> torch.Tensor:
        # the mean-0 constraint built in: a shift common to all classes changes no softmax
        bias = torch.zeros(num_classes, dtype=torch.float64)
        return bias.index_put((present,), free - free.mean())

    def loss_of(free: torch.Tensor) -> torch.Tensor:
        log_probabilities = torch.log_softmax(logits + bias_of(free), dim=-1)
        return -(weights * log_probabilities.gather(1, labels[:, None]).squeeze(1)).sum()

    free = torch.zeros(present.numel(), dtype=torch.float64, requires_grad=True)
    if present.numel() > 1:
        optimizer = torch.optim.LBFGS([free], lr=1.0, max_iter=steps, history_size=20, tolerance_grad=1e-10,
                                      tolerance_change=1e-14, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = loss_of(free)
            loss.backward()
            return loss

        optimizer.step(closure)
    with torch.no_grad():
        bias = bias_of(free.detach())
        return bias - bias.mean(), float(loss_of(free.detach()))


def fit_logit_bias(
    val_logits,
    val_labels,
    class_counts: Sequence[int],
    *,
    taus: Sequence[float] = DEFAULT_TAUS,
    steps: int = DEFAULT_FIT_STEPS,
    methods: Sequence[str] = METHODS,
) -> CalibrationResult:
    """Fits both per-class logit biases on validation logits and keeps the better one.

    Only what is passed is read: give it the validation split's logits, never the test split's (the
    test split is for reporting what the chosen bias does).

    Args:
        val_logits: `[N, C]` logits of the validation images (tensor or array).
        val_labels: `[N]` their class ids.
        class_counts: `[C]` training images per class (the prior of logit adjustment).
        taus: the logit-adjustment grid; the smallest tau wins a tie (the least change).
        steps: LBFGS iterations of the fitted bias.
        methods: the candidates, a subset of `("logit_adjustment", "fitted_bias")`.

    Returns:
        `CalibrationResult`: the candidate with the higher validation balanced accuracy, logit
        adjustment on a tie.
    """
    logits, labels = _as_logits_and_labels(val_logits, val_labels)
    num_classes = logits.shape[1]
    if len(class_counts) != num_classes:
        raise ValueError(f"class_counts has {len(class_counts)} entries but the logits {num_classes} classes")
    unknown = set(methods) - set(METHODS)
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {list(methods)}")
    before = balanced_accuracy(logits, labels)
    candidates: dict[str, dict[str, Any]] = {}
    if LOGIT_ADJUSTMENT in methods:
        if not taus:
            raise ValueError("taus is empty: give the logit-adjustment grid (0 included to allow no change)")
        best = None
        for tau in sorted(float(t) for t in taus):
            bias = logit_adjustment_bias(class_counts, tau)
            score = balanced_accuracy(logits + bias, labels)
            if best is None or score > best["validation_balanced_accuracy"] + TIE_TOLERANCE:
                best = {"bias": bias, "tau": tau, "validation_balanced_accuracy": score}
        candidates[LOGIT_ADJUSTMENT] = best
    if FITTED_BIAS in methods:
        bias, loss = fit_balanced_bias(logits, labels, steps)
        candidates[FITTED_BIAS] = {"bias": bias, "loss": loss,
                                   "validation_balanced_accuracy": balanced_accuracy(logits + bias, labels)}
    # METHODS lists the simpler method first: a later one must beat it, not merely equal it.
    method = None
    for name in METHODS:
        if name in candidates and (method is None or candidates[name]["validation_balanced_accuracy"]
                                   > candidates[method]["validation_balanced_accuracy"] + TIE_TOLERANCE):
            method = name
    chosen = candidates[method]
    totals = torch.bincount(labels, minlength=num_classes)
    return CalibrationResult(
        method=method,
        bias=chosen["bias"].to(torch.float32),
        tau=chosen.get("tau"),
        balanced_accuracy_before=before,
        balanced_accuracy_after=chosen["validation_balanced_accuracy"],
        candidates=candidates,
        num_validation_images=int(labels.numel()),
        unfitted_classes=(totals == 0).nonzero().squeeze(1).tolist(),
    )


def find_classifier_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """`(name, layer)` of the classifier head: the last `nn.Linear` with a name part ending in
    "classifier" (`classifier` of LTResNet and ConvNeXt, `classifier.1` of transformers' ResNet), or
    without one the last `nn.Linear` (as `ltap_hf.pruning.prunable_parameters` decides what the head is).

    Raises `ValueError` when there is none, when it has no bias, or when its outputs are not the
    config's `num_labels`.
    """
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    named = [(name, module) for name, module in linears if any(p.endswith("classifier") for p in name.split("."))]
    found = named or linears
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear classifier head to fold a logit bias into; a logit bias "
            "can still be added to its logits by hand (`fit_logit_bias(...).bias`)"
        )
    name, head = found[-1]
    if head.bias is None:
        raise ValueError(
            f"the classifier head `{name}` of {type(model).__name__} is an nn.Linear without a bias: there is no "
            "bias to fold a logit bias into; add `fit_logit_bias(...).bias` to its logits instead"
        )
    num_labels = getattr(getattr(model, "config", None), "num_labels", head.out_features)
    if head.out_features != num_labels:
        raise ValueError(
            f"the last linear layer `{name}` of {type(model).__name__} has {head.out_features} outputs but the "
            f"model {num_labels} labels: it is not the classifier head, and a logit bias cannot be folded into it"
        )
    return name, head


def _refuse_calibrated(model: nn.Module) -> None:
    # Adding a second bias on top of a recorded one would leave a record that no longer undoes the head.
    if getattr(getattr(model, "config", None), CONFIG_KEY, None):
        raise ValueError(
            f"{type(model).__name__} is already calibrated (config.{CONFIG_KEY}); call "
            "ltap_hf.calibration.remove_logit_bias(model) first to fit again from its raw logits"
        )


@torch.no_grad()
def apply_logit_bias(model: nn.Module, bias: torch.Tensor | CalibrationResult) -> dict[str, Any]:
    """Adds `bias` to the classifier head's bias in place, so that the model's logits become `logits + bias`
    (up to float rounding), and records it as `model.config.ltap_calibration`.

    Args:
        model: an image classifier whose head `find_classifier_head` finds (with a bias).
        bias: `[C]`, or a `CalibrationResult` (its bias, with its method and scores in the record).

    Returns:
        The record written to the config: method, tau, bias, validation scores and the head's name.

    Raises `ValueError` for a model already calibrated (`remove_logit_bias` first), a head that is not
    found or has no bias, or a bias of the wrong length.
    """
    _refuse_calibrated(model)
    name, head = find_classifier_head(model)
    config = getattr(model, "config", None)
    if isinstance(bias, CalibrationResult):
        record, values = bias.to_record(), bias.bias
    else:
        values = torch.as_tensor(bias)
        record = {"method": "custom", "tau": None, "bias": [float(v) for v in values.flatten().tolist()]}
    if values.shape != (head.out_features,):
        raise ValueError(f"the bias must have shape [{head.out_features}] (one per class), got {tuple(values.shape)}")
    head.bias.add_(values.to(device=head.bias.device, dtype=head.bias.dtype))
    record["head"] = f"{name}.bias"
    if config is not None:
        setattr(config, CONFIG_KEY, record)
    return record


@torch.no_grad()
def remove_logit_bias(model: nn.Module) -> dict[str, Any]:
    """Undoes `apply_logit_bias` (also on a model saved and loaded again): subtracts the recorded bias
    from the head (the original bias up to float rounding) and deletes `config.ltap_calibration`.
    Returns the record that was removed."""
    record = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    if not record:
        raise ValueError(f"{type(model).__name__} has no config.{CONFIG_KEY}: there is no logit bias to remove")
    parameter = model.get_parameter(record["head"])
    parameter.sub_(torch.tensor(record["bias"], dtype=parameter.dtype, device=parameter.device))
    delattr(model.config, CONFIG_KEY)
    return record


def calibrate_classifier(
    model: nn.Module,
    validation,
    class_counts: Sequence[int],
    *,
    trainer=None,
    batch_size: int = 256,
    data_collator: Callable[[list[dict]], dict] = collate_fn,
    **fit_kwargs,
) -> CalibrationResult:
    """Fits a logit bias on the validation split's logits and folds it into `model`'s head.

    The logits are computed once (`ltap_hf.evaluation.predict_logits`, with `trainer.predict` when a
    trainer is given: `model` must be its model), `fit_logit_bias` chooses the bias, `apply_logit_bias`
    folds it in; then the validation logits are computed again and must equal the first ones plus the
    bias (a head followed by another operation would break that: the fold is then undone and refused).

    Args:
        validation: the validation split (rows with `pixel_values` and `labels`); never the test split.
        class_counts: training images per class.
        fit_kwargs: `taus`, `steps`, `methods` of `fit_logit_bias`.
    """
    # refused before a pass over the data is spent
    _refuse_calibrated(model)
    name, head = find_classifier_head(model)
    options = dict(trainer=trainer, batch_size=batch_size, data_collator=data_collator, metric_key_prefix="validation")
    logits, labels, _ = predict_logits(model, validation, **options)
    result = fit_logit_bias(logits, labels, class_counts, **fit_kwargs)
    original = head.bias.detach().clone()
    apply_logit_bias(model, result)
    after, _, _ = predict_logits(model, validation, **options)
    expected = torch.as_tensor(logits, dtype=torch.float32) + result.bias
    if not torch.allclose(torch.as_tensor(after, dtype=torch.float32), expected, rtol=1e-4, atol=1e-4):
        with torch.no_grad():
            head.bias.copy_(original)
        if hasattr(getattr(model, "config", None), CONFIG_KEY):
            delattr(model.config, CONFIG_KEY)
        raise ValueError(
            f"adding the bias to `{name}` did not shift {type(model).__name__}'s logits by it: its logits are not "
            "that layer's output; the model is left unchanged"
        )
    return result


__all__ = [
    "CalibrationResult",
    "apply_logit_bias",
    "balanced_accuracy",
    "calibrate_classifier",
    "find_classifier_head",
    "fit_balanced_bias",
    "fit_logit_bias",
    "logit_adjustment_bias",
    "remove_logit_bias",
]
