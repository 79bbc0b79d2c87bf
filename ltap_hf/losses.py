"""Training losses for long-tailed classification.

Every loss here is an `nn.Module` with the same call signature,
``loss_fn(logits, labels, epoch=state.epoch)``, so a trainer can switch between them by name
through `build_loss` and never needs to know which one it holds. The adjustments act on the
training loss only: predictions are always the argmax of the model's raw logits.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _validate_class_counts(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    counts = torch.as_tensor(class_counts)
    if counts.ndim != 1 or counts.numel() < 2:
        raise ValueError(
            f"class_counts must be a 1-D sequence with one training count per class (at least 2), "
            f"got shape {tuple(counts.shape)}"
        )
    if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool:
        raise ValueError(f"class_counts must hold integers, got dtype {counts.dtype}")
    empty = (counts <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"class_counts must be >= 1 for every class (the log prior of an empty class is undefined), "
            f"got {counts[empty].tolist()} at class indices {empty}; drop classes without training images"
        )
    return counts.to(torch.int64)


class LongTailLoss(nn.Module):
    """Base class: holds the training class counts and checks the logits against them.

    Subclasses implement `forward(logits, labels, epoch)` returning the mean loss over the batch.

    Args:
        class_counts: number of training images per class, length C, every entry >= 1.
    """

    def __init__(self, class_counts: Sequence[int] | torch.Tensor) -> None:
        super().__init__()
        counts = _validate_class_counts(class_counts)
        self.num_classes = counts.numel()
        self.register_buffer("class_counts", counts, persistent=False)
        prior = counts.to(torch.float64) / counts.sum()
        self.register_buffer("log_prior", prior.log().to(torch.float32), persistent=False)

    def _check_logits(self, logits: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"logits must have shape [batch_size, {self.num_classes}] to match class_counts, "
                f"got {tuple(logits.shape)}"
            )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, epoch: float = 0.0) -> torch.Tensor:
        """
        Args:
            logits: `[N, C]` raw class scores.
            labels: `[N]` class indices.
            epoch: current (fractional) training epoch, e.g. the Trainer's `state.epoch`; only losses
                with a schedule (LDAM-DRW) read it.

        Returns:
            Scalar mean loss.
        """
        raise NotImplementedError


class CrossEntropyLoss(LongTailLoss):
    """Plain cross-entropy; `class_counts` is only used to check the number of classes."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, epoch: float = 0.0) -> torch.Tensor:
        self._check_logits(logits)
        return F.cross_entropy(logits, labels)


class LogitAdjustedLoss(LongTailLoss):
    """Logit-adjusted cross-entropy (Menon et al., 2021): CE(logits + tau * log(prior), labels).

    The prior is `class_counts / sum(class_counts)`. With `tau=1` this is Balanced Softmax
    (Ren et al., 2020), which is why `build_loss("balanced_softmax", ...)` returns this class.

    Args:
        class_counts: training images per class, length C, every entry >= 1.
        tau: scale of the log-prior offset; 0 gives plain cross-entropy.
    """

    def __init__(self, class_counts: Sequence[int] | torch.Tensor, *, tau: float = 1.0) -> None:
        super().__init__(class_counts)
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        self.tau = float(tau)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, epoch: float = 0.0) -> torch.Tensor:
        self._check_logits(logits)
        # The prior stays float32 even under bf16 logits: log(prior) of rare classes needs the precision.
        return F.cross_entropy(logits + self.tau * self.log_prior.to(logits.device), labels)


class LDAMDRWLoss(LongTailLoss):
    """LDAM loss with Deferred Re-Weighting (Cao et al., 2019).

    Class c gets the margin m_c = max_margin * (n_min / n_c)^(1/4), i.e. m_c ∝ n_c^(-1/4) with the
    rarest class at `max_margin`. The margin is subtracted from the target logit only, then all
    logits are multiplied by `scale` before cross-entropy. From `drw_start_epoch` on, the loss is
    weighted per class by the inverse effective number (1 - beta) / (1 - beta^n_c), normalised to
    sum to C; before it, it is unweighted.

    Cao et al. apply LDAM to a cosine classifier (normalised features and weights), where logits
    lie in [-1, 1] and `scale=30` restores a useful range. Here it acts on the model's logits as
    they are, so with an ordinary linear head consider a smaller `scale`.

    Args:
        class_counts: training images per class, length C, every entry >= 1.
        max_margin: margin of the rarest class.
        scale: factor applied to the margin-adjusted logits (s in the paper).
        drw_start_epoch: first (0-based, fractional) epoch of re-weighting; 160 in the 200-epoch
            CIFAR schedule.
        beta: effective-number hyper-parameter of the re-weighting.
    """

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        *,
        max_margin: float = 0.5,
        scale: float = 30.0,
        drw_start_epoch: float = 160.0,
        beta: float = 0.9999,
    ) -> None:
        super().__init__(class_counts)
        if max_margin <= 0:
            raise ValueError(f"max_margin must be > 0, got {max_margin}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if drw_start_epoch < 0:
            raise ValueError(f"drw_start_epoch must be >= 0, got {drw_start_epoch}")
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.scale = float(scale)
        self.drw_start_epoch = float(drw_start_epoch)
        counts = self.class_counts.to(torch.float64)
        margins = counts.pow(-0.25)
        self.register_buffer("margins", (margins * (max_margin / margins.max())).to(torch.float32), persistent=False)
        inverse_effective_number = (1.0 - beta) / (1.0 - torch.pow(beta, counts))
        weights = inverse_effective_number / inverse_effective_number.sum() * self.num_classes
        self.register_buffer("drw_weights", weights.to(torch.float32), persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, epoch: float = 0.0) -> torch.Tensor:
        """
        Args:
            logits: `[N, C]` raw class scores.
            labels: `[N]` class indices.
            epoch: current (fractional) training epoch, e.g. the Trainer's `state.epoch`; selects
                the unweighted or the re-weighted phase.

        Returns:
            Scalar (weighted) mean loss.
        """
        self._check_logits(logits)
        margins = self.margins.to(logits.device)
        target = F.one_hot(labels, self.num_classes).to(margins.dtype)
        adjusted = logits - target * margins[labels].unsqueeze(1)
        weight = self.drw_weights.to(logits.device) if epoch >= self.drw_start_epoch else None
        return F.cross_entropy(self.scale * adjusted, labels, weight=weight)


_LOSSES: dict[str, tuple[type[LongTailLoss], dict[str, float]]] = {
    "ce": (CrossEntropyLoss, {}),
    "balanced_softmax": (LogitAdjustedLoss, {"tau": 1.0}),
    "logit_adjusted": (LogitAdjustedLoss, {}),
    "ldam_drw": (LDAMDRWLoss, {}),
}
LOSS_NAMES = tuple(_LOSSES)


def build_loss(name: str, class_counts: Sequence[int] | torch.Tensor, **params: float) -> LongTailLoss:
    """Build a long-tail loss by name.

    Args:
        name: one of `"ce"`, `"balanced_softmax"`, `"logit_adjusted"` (takes `tau`), `"ldam_drw"`
            (takes `max_margin`, `scale`, `drw_start_epoch`, `beta`).
        class_counts: training images per class, length C, every entry >= 1.
        **params: hyper-parameters of that loss; anything it does not take is an error.

    Returns:
        A module called as `loss_fn(logits [N, C], labels [N], epoch=float)` -> scalar tensor.
        Move it to the logits' device or not: its constants follow the logits either way.
    """
    if name not in _LOSSES:
        raise ValueError(f"loss must be one of {list(LOSS_NAMES)}, got {name!r}")
    loss_class, fixed = _LOSSES[name]
    accepted = set(inspect.signature(loss_class.__init__).parameters) - {"self", "class_counts"} - set(fixed)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"loss={name!r} does not take the parameter(s) {unknown}; it accepts {sorted(accepted) or 'none'}"
        )
    return loss_class(class_counts, **fixed, **params)
