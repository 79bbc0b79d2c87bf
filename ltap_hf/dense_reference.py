"""The dense network's per-class accuracy, recorded during an LTAP run for the dense-versus-pruned card.

    reference = DenseReferenceCallback(trainer, test_split)
    trainer.add_callback(reference)
    trainer.train()
    PruningReport(..., dense_accuracy=reference.accuracy)

The dense phase of LTAP ends at the first pruning stage (`trainer.stage_steps[0]`). The network is
evaluated right after that step's optimizer update, before the trainer's own callback runs the stage at
`on_step_end`: with several stages the first one only votes (density 1.0), but a one-stage schedule
prunes straight to the target there, and a callback added after the trainer's runs after it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

from .evaluation import predict_labels, weight_density
from .metrics import long_tail_accuracy


logger = logging.get_logger(__name__)

# Bound callbacks, for a callback that transformers rebuilt from a checkpoint to find the one it replaced.
_BOUND: weakref.WeakSet[DenseReferenceCallback] = weakref.WeakSet()


class DenseReferenceCallback(TrainerCallback, ExportableState):
    """Evaluates the dense network on `dataset` (the test split) at the end of the dense phase.

    The record survives a checkpoint resume: it is written into `trainer_state.json` as a stateful callback
    (`TrainerState.stateful_callbacks`) and read back at `on_train_begin`. With
    `restore_callback_states_from_checkpoint=True`, transformers replaces this callback by a new instance
    built from that record; the new instance takes over this one's trainer and dataset, and both share
    the record, so `reference.accuracy` is the same through either.

    Args:
        trainer: an `LTAPTrainer` (its `stage_steps` and `pruner` are read once training has begun).
        dataset: the split to evaluate on, with the trainer's transform and collator in mind.
        class_counts: training images per class; defaults to `trainer.class_counts`.

    Attributes:
        accuracy: `ltap_hf.metrics.long_tail_accuracy` of the dense network, or None before it is recorded.
        step: the optimizer step it was recorded at (`trainer.stage_steps[0]`), or None.
        prunable_density: the density of its prunable weights, measured from the weights (1.0 unless the
            run started from an already sparse model).
    """

    def __init__(self, trainer=None, dataset=None, class_counts: Sequence[int] | None = None):
        self.trainer = trainer
        self.dataset = dataset
        self.class_counts = list(class_counts) if class_counts is not None else None
        self.record: dict[str, Any] = {"accuracy": None, "step": None, "prunable_density": None}
        if trainer is not None:
            if dataset is None:
                raise ValueError("DenseReferenceCallback needs the dataset to evaluate the dense network on")
            _BOUND.add(self)

    @property
    def accuracy(self) -> dict | None:
        return self.record["accuracy"]

    @property
    def step(self) -> int | None:
        return self.record["step"]

    @property
    def prunable_density(self) -> float | None:
        return self.record["prunable_density"]

    def state(self) -> dict:
        # JSON only: the trainer and the dataset are this process's; the record is what must survive.
        return {"args": {}, "attributes": {"record": dict(self.record)}}

    def _take_over(self) -> None:
        """This instance was built by transformers from a checkpoint: adopt the bound instance it replaced."""
        for origin in list(_BOUND):
            callbacks = origin.trainer.callback_handler.callbacks
            if origin is not self and self in callbacks and origin not in callbacks:
                self.trainer, self.dataset, self.class_counts = origin.trainer, origin.dataset, origin.class_counts
                origin.record.update(self.record)
                self.record = origin.record
                _BOUND.discard(origin)
                _BOUND.add(self)
                return
        raise ValueError(
            "DenseReferenceCallback was rebuilt from a checkpoint but finds no trainer: add it with "
            "trainer.add_callback(DenseReferenceCallback(trainer, dataset)) before trainer.train()"
        )

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is None:
            self._take_over()
        saved = state.stateful_callbacks.get(type(self).__name__)
        if isinstance(saved, list):
            saved = saved[0] if saved else None
        if state.global_step > 0 and saved and (saved.get("attributes") or {}).get("record"):
            # Resuming: the dense phase may lie before the checkpoint, never to be run again.
            self.record.update(saved["attributes"]["record"])

    def on_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        # global_step is incremented after this hook: this is the update of step global_step + 1.
        if not trainer.stage_steps or state.global_step + 1 != trainer.stage_steps[0] or self.accuracy is not None:
            return
        if trainer.pruner is None or trainer.pruner.vote.stage != 0:
            logger.warning("DenseReferenceCallback: a pruning stage already ran; the dense network is not recorded")
            return
        model = trainer.accelerator.unwrap_model(trainer.model)
        counts = self.class_counts if self.class_counts is not None else trainer.class_counts
        density = weight_density(model, prune_classifier=getattr(args, "prune_classifier", False))["prunable_density"]
        predictions, references, _ = predict_labels(model, self.dataset, trainer=trainer, metric_key_prefix="dense_test")
        accuracy = long_tail_accuracy(predictions, references, counts)
        self.record.update(accuracy=accuracy, step=state.global_step + 1, prunable_density=density)
        logger.info(
            f"dense reference at step {state.global_step + 1} (density {density:.4f}): test accuracy "
            f"{accuracy['accuracy']:.4f}, many {accuracy['many_accuracy']:.4f}, medium {accuracy['medium_accuracy']:.4f}, "
            f"few {accuracy['few_accuracy']:.4f}"
        )


__all__ = ["DenseReferenceCallback"]
