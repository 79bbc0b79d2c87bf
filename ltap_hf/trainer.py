"""`LTAPConfig` and `LTAPTrainer`: LTAP inside the `transformers.Trainer` step loop.

The trainer is glue. The arithmetic lives in `ltap_hf.pruning`; here we only call it at the right
moments of the step loop (see FIELD_NOTES.md for the order of Trainer's hooks):

- `on_pre_optimizer_step` (gradients synchronised and clipped): accumulate the criteria;
- `on_optimizer_step`: re-apply the masks, so pruned weights stay exactly zero;
- `on_step_end` at a stage step: per-class validation accuracy (gathered over processes), vote, prune;
- checkpoints carry the pruning state (`ltap_state.safetensors` + `ltap_state.json`).
"""

from __future__ import annotations

import bisect
import gc
import json
import os
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import broadcast
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.amp.grad_scaler import OptState
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging

from .backbones import backbone_for
from .hub import render_model_card, save_sparse_pretrained
from .losses import LOSS_NAMES, LongTailLoss, build_loss
from .metrics import long_tail_accuracy, make_compute_metrics
from .pruning.class_importance import CLASS_IMPORTANCE_WEIGHTINGS, class_importance_weights
from .pruning.criteria import ALL_CRITERIA, CRITERIA, PROBE_CRITERIA, criterion_indices
from .pruning.pruner import GRANULARITIES, LTAPPruner
from .pruning.schedule import cubic_density_at, stage_steps
from .pruning.selection import CHANNEL_ALLOCATIONS
from .pruning.vote import CLASS_WEIGHTINGS, ClassVote
from .rng import forked_rng, rng_states, set_rng_states
from .weight_decay import coupled_weight_decay


logger = logging.get_logger(__name__)

STATE_WEIGHTS_NAME = "ltap_state.safetensors"
STATE_CONFIG_NAME = "ltap_state.json"
STATE_FORMAT_VERSION = 1

# LTAP settings that act only from the first scoring window on: runs that differ in them alone share
# everything before it, so one may start from the other's branch point (`LTAPConfig.branch_from`).
BRANCH_SETTINGS = frozenset({
    "granularity", "target_density", "prune_schedule_unit", "prune_start", "prune_end", "prune_interval", "criteria",
    "vote", "vote_temperature", "vote_class_weighting", "min_layer_density", "prune_classifier", "channel_round_to",
    "channel_allocation", "save_branch_point", "branch_from", "class_importance_weighting", "probe_per_class",
    "pruning_loss",
})


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class LTAPConfig(TrainingArguments):
    r"""
    `TrainingArguments` plus every knob of LTAP (see ALGORITHM.md), with the paper's values as defaults.

    The pruning schedule is given as fractions of training (`prune_schedule_unit="fraction"`, the
    default: start at 50%, end at 80%, as epochs 100 and 160 of 200) or in epochs.
    """

    granularity: str = field(default="weight", metadata=_help("Unit of pruning: 'weight' or 'channel'."))
    target_density: float = field(default=0.3, metadata=_help("Fraction of prunable parameters kept at the end."))
    prune_schedule_unit: str = field(
        default="fraction", metadata=_help("Unit of prune_start/prune_end/drw_start: 'fraction' of training or 'epoch'.")
    )
    prune_start: float = field(default=0.5, metadata=_help("First pruning stage (density 1.0, first vote)."))
    prune_end: float = field(default=0.8, metadata=_help("Last pruning stage (density = target_density)."))
    prune_interval: float = field(default=1.0, metadata=_help("Epochs between pruning stages (0.5: twice per epoch)."))
    criteria: list[str] = field(
        default_factory=lambda: list(CRITERIA),
        metadata=_help(f"Criteria in use, a subset of {', '.join(ALL_CRITERIA)}; the default is the paper's five. "
                       "class_taylor is ltap-hf's class-conditional criterion (not the paper's): it needs a probe_dataset."),
    )
    class_importance_weighting: str = field(
        default="uniform",
        metadata=_help(f"class_taylor only: class weights of the class-conditional importance: "
                       f"{', '.join(CLASS_IMPORTANCE_WEIGHTINGS)} (worst_class: the validation error at each stage)."),
    )
    probe_per_class: int = field(
        default=16,
        metadata=_help("class_taylor only: training images per class in the class-balanced probe set "
                       "(recipes/run_ltap.py draws it; a class with fewer gives what it has)."),
    )
    vote: bool = field(default=True, metadata=_help("Class-aware vote; False keeps every alpha at 1/K."))
    vote_temperature: float = field(default=0.5, metadata=_help("Temperature of the vote's softmaxes ('pau' in the paper)."))
    vote_class_weighting: str = field(
        default="inverse_frequency", metadata=_help(f"Class weights of the vote: {', '.join(CLASS_WEIGHTINGS)}.")
    )
    min_layer_density: float = field(default=0.02, metadata=_help("No prunable tensor keeps fewer than this fraction."))
    prune_classifier: bool = field(default=False, metadata=_help("Also prune the classifier head."))
    channel_round_to: int = field(
        default=1, metadata=_help("Channel pruning: keep every width a multiple of this (8 runs faster on CPU).")
    )
    channel_allocation: str = field(
        default="global",
        metadata=_help("Channel pruning: 'global' ranks all channels together; 'uniform' keeps the same fraction "
                       "of every group (FLOPs and latency then fall with the parameters)."),
    )
    save_branch_point: bool = field(
        default=False,
        metadata=_help("Save a checkpoint at the last step before the first stage's scoring window opens: the "
                       "point where runs that differ only in how they prune part ways (see branch_from)."),
    )
    branch_from: str | None = field(
        default=None,
        metadata=_help("A branch-point checkpoint (save_branch_point) of a run with the same data, model, loss and "
                       "training arguments: this run starts there with its own pruning settings (granularity, "
                       "target_density, criteria, vote, schedule from prune_start on ...), as if it had run from "
                       "the start. Halves the cost of a grid of pruning arms."),
    )
    loss: str = field(default="balanced_softmax", metadata=_help(f"Training loss: {', '.join(LOSS_NAMES)}."))
    pruning_loss: str | None = field(
        default=None,
        metadata=_help("Training loss from the first scoring window on (the branch point), while the network is "
                       "pruned and fine-tuned; None keeps `loss`. ltap-hf's lever, not the paper's: e.g. a "
                       "cross-entropy run that switches to logit_adjusted re-balances the classes as it is pruned."),
    )
    logit_adjustment_tau: float = field(default=1.0, metadata=_help("tau of the logit-adjusted loss."))
    ldam_max_margin: float = field(default=0.5, metadata=_help("Largest LDAM margin."))
    ldam_scale: float = field(default=30.0, metadata=_help("LDAM logit scale s."))
    drw_start: float = field(default=0.8, metadata=_help("Start of LDAM's deferred re-weighting, as a fraction of training."))
    lr_milestones: list[float] = field(
        default_factory=list,
        metadata=_help("Epochs at which the learning rate steps down (the CIFAR-LT recipe: 160 180); replaces lr_scheduler_type."),
    )
    lr_milestone_factors: list[float] = field(
        default_factory=list, metadata=_help("Learning-rate multiplier from each milestone on (0.01 1e-4).")
    )
    max_grad_norm: float = field(
        default=0.0, metadata=_help("Gradient clipping; off, as in the long-tail reference recipes (Trainer's default is 1.0).")
    )
    remove_unused_columns: bool = field(
        default=False, metadata=_help("Kept False: LT datasets build `pixel_values` on the fly with `with_transform`.")
    )

    def __post_init__(self):
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
            # Launched as several processes on a host without GPUs: without `use_cpu`, TrainingArguments
            # sets up no distributed state and every process would silently train alone.
            self.use_cpu = True
        super().__post_init__()
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if not 0 < self.target_density <= 1:
            raise ValueError(f"target_density must be in (0, 1], got {self.target_density}")
        if self.prune_schedule_unit not in ("fraction", "epoch"):
            raise ValueError(f"prune_schedule_unit must be 'fraction' or 'epoch', got {self.prune_schedule_unit!r}")
        if not 0 <= self.prune_start <= self.prune_end:
            raise ValueError(f"need 0 <= prune_start <= prune_end, got prune_start={self.prune_start}, prune_end={self.prune_end}")
        if self.prune_schedule_unit == "fraction" and self.prune_end > 1:
            raise ValueError(
                f"with prune_schedule_unit='fraction', prune_end must be <= 1, got {self.prune_end} "
                "(use prune_schedule_unit='epoch' for epochs)"
            )
        if not 0 <= self.drw_start <= 1:
            raise ValueError(f"drw_start is a fraction of training in [0, 1], got {self.drw_start}")
        if self.load_best_model_at_end:
            raise ValueError(
                "load_best_model_at_end would reload an earlier, denser checkpoint behind the pruning state's back; "
                "LTAP keeps the model it ends with"
            )
        if not self.prune_interval > 0:
            raise ValueError(f"prune_interval must be > 0 epochs, got {self.prune_interval}")
        try:
            criterion_indices(self.criteria)
        except ValueError as error:
            raise ValueError(f"criteria: {error}") from None
        if self.class_importance_weighting not in CLASS_IMPORTANCE_WEIGHTINGS:
            raise ValueError(f"class_importance_weighting must be one of {CLASS_IMPORTANCE_WEIGHTINGS}, got "
                             f"{self.class_importance_weighting!r}")
        if self.probe_per_class < 1:
            raise ValueError(f"probe_per_class must be >= 1, got {self.probe_per_class}")
        if not self.vote_temperature > 0:
            raise ValueError(f"vote_temperature must be > 0, got {self.vote_temperature}")
        if self.vote_class_weighting not in CLASS_WEIGHTINGS:
            raise ValueError(f"vote_class_weighting must be one of {CLASS_WEIGHTINGS}, got {self.vote_class_weighting!r}")
        if not 0 <= self.min_layer_density <= 1:
            raise ValueError(f"min_layer_density must be in [0, 1], got {self.min_layer_density}")
        if self.channel_round_to < 1 or (self.channel_round_to > 1 and self.granularity != "channel"):
            raise ValueError(f"channel_round_to must be >= 1, and > 1 only with granularity='channel', got {self.channel_round_to}")
        if self.channel_allocation not in CHANNEL_ALLOCATIONS or (self.channel_allocation != "global" and self.granularity != "channel"):
            raise ValueError(
                f"channel_allocation must be one of {CHANNEL_ALLOCATIONS}, and not 'global' only with "
                f"granularity='channel', got {self.channel_allocation!r}"
            )
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {LOSS_NAMES}, got {self.loss!r}")
        if self.pruning_loss is not None and self.pruning_loss not in LOSS_NAMES:
            raise ValueError(f"pruning_loss must be None or one of {LOSS_NAMES}, got {self.pruning_loss!r}")
        if len(self.lr_milestones) != len(self.lr_milestone_factors) or sorted(self.lr_milestones) != self.lr_milestones:
            raise ValueError(
                f"lr_milestones must be increasing and match lr_milestone_factors one to one, got "
                f"{self.lr_milestones} and {self.lr_milestone_factors}"
            )
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = False

    @property
    def needs_probe(self) -> bool:
        """Whether a criterion in use (class_taylor) reads a class-balanced probe set at every stage."""
        return any(name in PROBE_CRITERIA for name in self.criteria)

    def schedule_in_steps(self, max_steps: int, steps_per_epoch: int) -> tuple[list[int], int]:
        """Optimizer steps of the pruning stages, and the steps between two stages."""
        to_steps = (lambda x: x * max_steps) if self.prune_schedule_unit == "fraction" else (lambda x: x * steps_per_epoch)
        start, end = max(1, round(to_steps(self.prune_start))), round(to_steps(self.prune_end))
        if end > max_steps:
            raise ValueError(
                f"prune_end={self.prune_end} {self.prune_schedule_unit}(s) is past the end of training "
                f"({max_steps} optimizer steps, {max_steps / steps_per_epoch:g} epochs)"
            )
        interval = max(1, round(self.prune_interval * steps_per_epoch))
        return stage_steps(start, max(start, end), interval), interval

    def ltap_settings(self) -> dict:
        """The LTAP fields (not the generic training ones), for logs, checkpoints and model cards."""
        names = [f.name for f in self.__dataclass_fields__.values() if f.name not in TrainingArguments.__dataclass_fields__]
        return {name: getattr(self, name) for name in names if name != "remove_unused_columns"}


def _labels(dataset, what: str) -> np.ndarray:
    """The dataset's `label` (or `labels`) column as an integer array."""
    column_names = getattr(dataset, "column_names", None) or []
    column = next((c for c in ("label", "labels") if c in column_names), None)
    if column is None:
        raise ValueError(f"the {what} has no 'label'/'labels' column to read the classes from")
    return np.asarray(dataset.with_format(None)[column], dtype=np.int64)


def _class_counts(dataset, num_classes: int) -> list[int]:
    """Training images per class, read from the dataset's `label` (or `labels`) column."""
    try:
        labels = _labels(dataset, "train dataset")
    except ValueError:
        raise ValueError("class_counts was not given and the train dataset has no 'label'/'labels' column to count") from None
    return np.bincount(labels, minlength=num_classes).tolist()


def class_balanced_probe(dataset, per_class: int, seed: int):
    """The probe set of class_taylor: up to `per_class` images of every class of `dataset` (the training
    split, which holds no validation or test image), drawn without replacement by a generator seeded with
    `seed`; a class with fewer images gives all it has. Ordered by class, then by draw.

    Returns `dataset.select(indices)` (a `datasets.Dataset` keeps its transform)."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = _labels(dataset, "probe source")
    rng = np.random.default_rng(seed)
    indices = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        indices.extend(rng.permutation(members)[:per_class].tolist())
    return dataset.select(indices)


class _LTAPCallback(TrainerCallback):
    """Calls the trainer's pruning glue at the Trainer's hook points."""

    def __init__(self, trainer: "LTAPTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._begin_pruning()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer._accumulating(state.global_step + 1):
            self.trainer._accumulate()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.pruner.vote.stage > 0:
            self.trainer.pruner.apply_masks()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.trainer.stage_steps:
            self.trainer._pruning_stage()
        if args.save_branch_point and state.global_step == self.trainer._accumulate_from:
            control.should_save = True


class LTAPTrainer(Trainer):
    """A `Trainer` that prunes with LTAP while it trains.

    Args:
        model: any image-classification `PreTrainedModel` (called with `pixel_values`, returning `logits`).
        args: an `LTAPConfig`.
        train_dataset, eval_dataset: as for `Trainer`; batches must hold `pixel_values` and `labels`.
        vote_dataset: the split whose per-class accuracy drives the vote (the validation split, never
            the test split). Defaults to `eval_dataset`.
        probe_dataset: the class-balanced probe set of "class_taylor" (ltap-hf's class-conditional criterion),
            drawn from the training split with the eval transform (`class_balanced_probe`); required when
            `args.criteria` names class_taylor, never read otherwise.
        class_counts: training images per class; read from the train dataset's label column if None.
        compute_metrics: defaults to the long-tail metrics (overall, many/medium/few, worst class, tail-3).
        **kwargs: the other `Trainer` arguments.
    """

    def __init__(self, model=None, args: LTAPConfig | None = None, train_dataset=None, eval_dataset=None,
                 vote_dataset=None, class_counts: Sequence[int] | None = None, compute_metrics=None,
                 probe_dataset=None, **kwargs):
        if not isinstance(args, LTAPConfig):
            raise ValueError(f"LTAPTrainer needs an LTAPConfig as args, got {type(args).__name__}")
        if vote_dataset is None and eval_dataset is None:
            raise ValueError("LTAPTrainer needs a vote_dataset (the validation split) or an eval_dataset")
        num_classes = model.config.num_labels
        class_counts = list(class_counts) if class_counts is not None else _class_counts(train_dataset, num_classes)
        if len(class_counts) != num_classes:
            raise ValueError(f"class_counts has {len(class_counts)} classes, the model {num_classes}")
        if args.granularity == "channel":
            backbone_for(model).check_slimmable(model)  # before Trainer creates or writes anything
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         compute_metrics=compute_metrics or make_compute_metrics(class_counts), **kwargs)
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            # Masks and score buffers address whole parameters and their gradients, which FSDP and ZeRO shard.
            raise ValueError("LTAPTrainer needs unsharded parameters and gradients: use DDP (multi_gpu), not FSDP or DeepSpeed")
        self.class_counts = class_counts
        self.vote_dataset = vote_dataset if vote_dataset is not None else eval_dataset
        self.probe_dataset = probe_dataset
        # Our losses are means over the micro-batch: Trainer must divide them for gradient accumulation.
        self.loss_is_scaled_for_ga = False
        self.pruner: LTAPPruner | None = None
        self.stage_steps: list[int] = []
        self._accumulate_from = 0
        self._steps_per_epoch: int | None = None
        self._vote_dataloader = None
        self._probe_dataloaders: dict[int, torch.utils.data.DataLoader] | None = None
        self._loss_fns: tuple[LongTailLoss, LongTailLoss] | None = None  # (loss, pruning_loss)
        self._resumed_state: tuple[dict, dict] | None = None
        self._branching = False
        self._rng_checkpoint: str | None = None
        self._rng_restored_early = False
        self._rng_before_fetch: dict | None = None
        self.card_report = None
        self.add_callback(_LTAPCallback(self))

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`; with `args.branch_from` and no checkpoint to resume, starts at that branch point."""
        if self.args.needs_probe and self.probe_dataset is None:
            raise ValueError(
                f"criteria {self.args.criteria} name class_taylor, which scores units on a class-balanced probe set: "
                "pass probe_dataset=class_balanced_probe(train_split, args.probe_per_class, seed) (with the eval "
                "transform) to LTAPTrainer, or drop class_taylor"
            )
        self._branching = resume_from_checkpoint is None and self.args.branch_from is not None
        if self._branching:
            resume_from_checkpoint = self.args.branch_from
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The configured long-tail loss while training; plain cross-entropy on the raw logits in evaluation."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if model.training and self._loss_fns is not None:
            pruning = self.state.global_step >= self._accumulate_from  # this step is in or past the first scoring window
            loss = self._loss_fns[pruning](logits, labels, epoch=self.state.epoch or 0.0)
            self._check_finite(loss)
        else:
            loss = F.cross_entropy(logits, labels)
        return (loss, outputs) if return_outputs else loss

    def _check_finite(self, loss: torch.Tensor) -> None:
        """Stops a diverging run at the step where its loss stops being finite, before the backward pass
        spreads NaN into the weights (and, later, into the pruning scores). With fp16 loss scaling an
        overflow is the scaler's business: it skips that step. Costs one device sync per micro-batch, as
        Trainer's own NaN filter of the logged loss does."""
        if self.accelerator.scaler is None and not torch.isfinite(loss):
            step, rate = self.state.global_step + 1, self._get_learning_rate()
            raise FloatingPointError(
                f"the training loss is {loss.item()} at optimizer step {step} (epoch {self.state.epoch or 0:.2f}): "
                f"training diverged. Lower the learning rate (it is {rate:g}), lengthen the warm-up, or turn on "
                "gradient clipping (max_grad_norm)"
            )

    def set_initial_training_values(self, args, dataloader):
        # Trainer's own count of optimizer steps per epoch: the schedule's epochs must be Trainer's epochs.
        values = super().set_initial_training_values(args, dataloader)
        self._steps_per_epoch = values[1]
        return values

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Linear warm-up then step decays at `lr_milestones` when they are set; Trainer's scheduler otherwise."""
        if not self.args.lr_milestones or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        milestones = [round(epoch * self._steps_per_epoch) for epoch in self.args.lr_milestones]
        warmup = self.args.get_warmup_steps(num_training_steps)
        factors = [1.0, *self.args.lr_milestone_factors]

        def multiplier(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return factors[bisect.bisect_right(milestones, step)]

        self.lr_scheduler = LambdaLR(optimizer or self.optimizer, multiplier)
        return self.lr_scheduler

    def _begin_pruning(self) -> None:
        args, state = self.args, self.state
        self.stage_steps, interval = args.schedule_in_steps(state.max_steps, self._steps_per_epoch)
        # Its own key: with persistent workers Trainer caches eval loaders by key, and "eval" is the eval split's.
        self._vote_dataloader = self._get_dataloader(self.vote_dataset, "LTAP vote", args.eval_batch_size,
                                                     self._get_eval_sampler, dataloader_key="ltap_vote")
        if args.needs_probe:  # the paper's criteria never build (nor read) a probe set
            self._probe_dataloaders = self._build_probe_dataloaders()
        self._accumulate_from = self.stage_steps[0] - interval
        if args.save_branch_point and self._accumulate_from < 1:
            raise ValueError(
                f"save_branch_point needs an optimizer step before the first scoring window, which opens at step "
                f"{self._accumulate_from + 1}: start pruning later"
            )
        epochs = state.max_steps / self._steps_per_epoch
        self._loss_fns = tuple(build_loss(name, self.class_counts, **self._loss_params(name, epochs))
                               for name in (args.loss, args.pruning_loss or args.loss))
        model = self.accelerator.unwrap_model(self.model)
        vote = ClassVote(args.criteria, self.class_counts, weighting=args.vote_class_weighting,
                         temperature=args.vote_temperature, seed=args.seed, enabled=args.vote)
        decay = coupled_weight_decay(self._inner_optimizer())
        weight_decay = {name: decay.get(id(p), 0.0) for name, p in model.named_parameters()}
        structure = backbone_for(model) if args.granularity == "channel" else None
        self.pruner = LTAPPruner(model, vote, granularity=args.granularity, weight_decay=weight_decay,
                                 min_layer_density=args.min_layer_density, prune_classifier=args.prune_classifier,
                                 round_to=args.channel_round_to, channel_allocation=args.channel_allocation,
                                 channel_structure=structure)
        if self._resumed_state is not None:
            tensors, meta = self._resumed_state
            if self._branching:
                self._check_branch_point(tensors, meta)  # nothing pruned or scored yet: this run's own fresh state
            else:
                self._check_resumed_state(meta)
                self.pruner.load_state_dict(tensors)
            self._resumed_state = None
        logger.info(f"LTAP: {len(self.stage_steps)} pruning stages at optimizer steps {self.stage_steps}")

    def _loss_params(self, name: str, num_train_epochs: float) -> dict:
        args = self.args
        if name == "logit_adjusted":
            return {"tau": args.logit_adjustment_tau}
        if name == "ldam_drw":
            return {"max_margin": args.ldam_max_margin, "scale": args.ldam_scale,
                    "drw_start_epoch": args.drw_start * num_train_epochs}
        return {}

    def _accumulate(self) -> None:
        if self._scaler_skips_step():
            logger.warning(f"LTAP: the loss scaler skips step {self.state.global_step + 1} (inf/nan gradients); "
                           "it is left out of the scores")
            return
        self.pruner.accumulate()

    def _inner_optimizer(self) -> torch.optim.Optimizer:
        optimizer = self.optimizer
        while isinstance(optimizer, AcceleratedOptimizer):
            optimizer = optimizer.optimizer
        return optimizer

    def _scaler_skips_step(self) -> bool:
        """fp16 with a loss scaler: makes sure the gradients are unscaled and returns whether the scaler will
        skip this optimizer step, by its own inf/nan verdict.

        Trainer unscales at every optimizer step, clipping or not: its gradient norm goes through
        `accelerator.clip_grad_norm_` (with an infinite norm when clipping is off), which unscales first.
        The gradients are all-reduced by then, so every process reads the same verdict. GradScaler keeps
        both facts in its per-optimizer state only; reading it there is what keeps a second `unscale_`
        (an error) from being called, and the scores in step with the steps the optimizer really takes.
        """
        scaler = self.accelerator.scaler
        if scaler is None:
            return False
        state = scaler._per_optimizer_states[id(self._inner_optimizer())]
        if state["stage"] is not OptState.UNSCALED:
            self.accelerator.unscale_gradients()
        return any(bool(found_inf) for found_inf in state["found_inf_per_device"].values())

    def _accumulating(self, step: int) -> bool:
        """Whether optimizer step `step` (1-based) feeds a coming stage's scores."""
        return self._accumulate_from < step <= self.stage_steps[-1]

    @torch.no_grad()
    def _validation_accuracy(self) -> dict:
        """Long-tail accuracy of the current model on the vote split, gathered over all processes."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        predictions, references = [], []
        # Gathered while the vote's loader is the one being iterated: `gather_for_metrics` trims the padding
        # of the last batch by the loader Accelerate sees as active, which after the loop is the training one.
        with forked_rng():
            for batch in self._vote_dataloader:
                batch = self._prepare_inputs(batch)
                labels = batch.pop("labels")
                with self.autocast_smart_context_manager():
                    logits = model(**batch).logits
                gathered = self.accelerator.gather_for_metrics((logits.argmax(-1), labels))
                predictions.append(gathered[0].cpu())
                references.append(gathered[1].cpu())
        model.train(was_training)
        return long_tail_accuracy(torch.cat(predictions).numpy(), torch.cat(references).numpy(), self.class_counts)

    def _build_probe_dataloaders(self) -> dict[int, torch.utils.data.DataLoader]:
        """class -> a plain, unsharded loader over that class's probe images, in the probe set's order: every
        process computes the same gradients from the same images (no sampler shards or shuffles them)."""
        labels = _labels(self.probe_dataset, "probe_dataset")
        loaders = {}
        for c in range(len(self.class_counts)):
            indices = np.flatnonzero(labels == c).tolist()
            if indices:
                loaders[c] = torch.utils.data.DataLoader(
                    torch.utils.data.Subset(self.probe_dataset, indices), batch_size=self.args.eval_batch_size,
                    shuffle=False, collate_fn=self.data_collator, num_workers=0)
        if not loaders:
            raise ValueError("probe_dataset holds no image of any class: class_taylor has nothing to measure")
        return loaders

    def _probe_class_gradients(self):
        """Yields (c, tensor name -> g_c) per class with probe images: g_c, float32, the gradient of the mean
        cross-entropy over class c's probe images w.r.t. the pruner's tensors. `torch.autograd.grad` on the
        unwrapped model: no `.grad` of training is touched, no optimizer step, no DDP communication. The
        caller puts the model in eval mode (BatchNorm statistics untouched) and forks the RNGs."""
        model = self.accelerator.unwrap_model(self.model)
        names, tensors = list(self.pruner.parameters), list(self.pruner.parameters.values())
        for c, loader in self._probe_dataloaders.items():
            count = len(loader.dataset)
            total = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in tensors]
            for batch in loader:
                batch = self._prepare_inputs(batch)
                labels = batch.pop("labels")
                with torch.enable_grad(), self.autocast_smart_context_manager():
                    logits = model(**batch).logits
                    loss = F.cross_entropy(logits.float(), labels, reduction="sum") / count
                    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
                for buffer, grad in zip(total, grads):
                    if grad is not None:
                        buffer.add_(grad)
            yield c, dict(zip(names, total))

    def _class_importance(self, per_class: torch.Tensor, has_validation: torch.Tensor) -> dict[str, torch.Tensor]:
        """class_taylor's per-unit importance on the probe set at this stage (README, "ltap-hf's
        class-conditional criterion"). Nothing of it is saved: it is recomputed from the model at every
        stage, so a resumed run recomputes exactly what the uninterrupted one did."""
        has_probe = torch.zeros(len(self.class_counts), dtype=torch.bool)
        has_probe[list(self._probe_dataloaders)] = True
        weights = class_importance_weights(self.args.class_importance_weighting, self.class_counts, per_class,
                                           has_validation, has_probe)
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            with forked_rng():  # a loader iterator draws its base seed from the global RNG
                importance = self.pruner.class_importance(self._probe_class_gradients(), weights)
        finally:
            model.train(was_training)
        if self.accelerator.num_processes > 1:
            # Every process computed it from the same weights and images; the main process's copy is made
            # authoritative, as for the masks, so no floating-point accident can split the ranking.
            importance = broadcast({n: t.contiguous() for n, t in importance.items()}, from_process=0)
        return importance

    def _pruning_stage(self) -> None:
        stage = self.pruner.vote.stage
        metrics = self._validation_accuracy()
        per_class = torch.tensor(metrics["per_class_accuracy"], dtype=torch.float64)
        has_validation = ~per_class.isnan()
        first, last = self.stage_steps[0], self.stage_steps[-1]
        progress = (self.state.global_step - first) / (last - first) if last > first else 1.0
        target = cubic_density_at(progress, self.args.target_density)
        # Just before scoring, from the model as it is now; only when class_taylor is in use.
        importance = self._class_importance(per_class, has_validation) if self.pruner.needs_probe else None
        result = self.pruner.prune_stage(per_class.nan_to_num(0.0), has_validation, target, class_importance=importance)
        if self.accelerator.num_processes > 1:
            # Every process computed the same masks from the same all-reduced gradients; the main
            # process's copy is made authoritative so no floating-point accident can split them.
            masks = {n: m.to(torch.uint8) for n, m in self.pruner.alive.items()}
            self.pruner.set_masks(broadcast(masks, from_process=0))
        logs = {"ltap/stage": stage, "ltap/target_density": target, "ltap/density": self.pruner.density}
        logs.update(result.vote.to_log_dict(self.pruner.vote.criteria))
        logs.update({f"ltap/val_{k}": metrics[k] for k in ("accuracy", "many_accuracy", "medium_accuracy", "few_accuracy")})
        logger.info(f"LTAP stage {stage}: density {self.pruner.density:.4f}, suppressed {result.vote.suppressed_name}")
        self.log(logs)

    def final_alpha(self) -> dict[str, float]:
        """Criterion name -> α of the last vote, read from the logs (equal weights before any vote)."""
        criteria = self.pruner.vote.criteria
        votes = [log for log in self.state.log_history if "ltap/density" in log]
        if not votes:
            return dict.fromkeys(criteria, 1 / len(criteria))
        return {name: votes[-1][f"ltap/alpha/{name}"] for name in criteria}

    def final_model(self):
        """The trained model as it is published: slimmed for channel granularity (a new, smaller model of
        its family's adapter), otherwise the model with its pruned weights at zero."""
        model = self.accelerator.unwrap_model(self.model)
        return self.pruner.slimmed_model() if self.args.granularity == "channel" else model

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Checkpoints written during training stay dense (Trainer's resume reads `model.safetensors`); the
        final model (and what `push_to_hub` uploads) is compact: a slimmed model, or the sparse format."""
        if self.pruner is None or (_internal_call and output_dir is not None):
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        model = self.final_model()
        if self.args.granularity == "channel":
            model.save_pretrained(output_dir)
        else:
            save_sparse_pretrained(model, output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save")

    def create_model_card(self, *args, **kwargs):
        """With `card_report` set (a `ltap_hf.hub.PruningReport`), the LTAP card with per-class results and
        its plots; otherwise Trainer's card."""
        if self.card_report is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            render_model_card(self.card_report, self.args.output_dir, repo_id=self.hub_model_id)

    def _save_checkpoint(self, model, trial):
        # Written before Trainer's own files: a checkpoint whose trainer_state.json exists is complete.
        if self.pruner is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
            self.save_pruning_state(folder)
        super()._save_checkpoint(model, trial)

    def save_pruning_state(self, folder: str) -> None:
        """Writes the pruning state to `folder` as safetensors + JSON, each atomically (temp file + rename)."""
        os.makedirs(folder, exist_ok=True)
        meta = {"format_version": STATE_FORMAT_VERSION, "stage_steps": self.stage_steps, "stage": self.pruner.vote.stage,
                "criteria": list(self.pruner.vote.criteria), "settings": self.args.ltap_settings()}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.pruner.state_dict().items()}
        _atomic_write(os.path.join(folder, STATE_WEIGHTS_NAME), lambda path: save_file(tensors, path))
        _atomic_write(os.path.join(folder, STATE_CONFIG_NAME),
                      lambda path: Path(path).write_text(json.dumps(meta, indent=2, default=str)))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        self._resumed_state = load_pruning_state(resume_from_checkpoint)
        self._rng_checkpoint = resume_from_checkpoint

    # Exact resumes inside an epoch. Accelerate's data loader fetches one batch ahead, so when a checkpoint
    # is written the random augmentation of the next batch (`with_transform` draws from the global RNGs)
    # has already been drawn, and Trainer's RNG file holds the states after it; Trainer also restores them
    # only after fetching the first resumed batch. Both are moved: the checkpoint keeps the states from
    # just before that look-ahead fetch, and a resume restores them before its first fetch. Nothing else
    # may draw from the global RNGs in between: the epoch's data-loader iterator draws its base seed from
    # a generator of its own, and evaluation (Trainer's and the vote's) runs on forked RNGs.

    def get_train_dataloader(self):
        dataloader = super().get_train_dataloader()
        getattr(dataloader, "base_dataloader", dataloader).generator = torch.Generator().manual_seed(self.args.seed)
        return dataloader

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        if self._rng_checkpoint is not None and not self.args.ignore_data_skip:
            super()._load_rng_state(self._rng_checkpoint)
            self._rng_checkpoint, self._rng_restored_early = None, True
        return super().get_batch_samples(self._recording_rng_states(epoch_iterator), num_batches, device)

    def _recording_rng_states(self, iterator):
        while True:
            self._rng_before_fetch = rng_states()
            try:
                yield next(iterator)
            except StopIteration:
                return

    def _save_rng_state(self, output_dir):
        if self._rng_before_fetch is None or self.state.global_step % self._steps_per_epoch == 0:
            # At an epoch boundary nothing was fetched ahead: the next epoch draws from the states now.
            return super()._save_rng_state(output_dir)
        now = rng_states()
        set_rng_states(self._rng_before_fetch)
        try:
            super()._save_rng_state(output_dir)
        finally:
            set_rng_states(now)

    def _load_rng_state(self, checkpoint):
        if self._rng_restored_early:
            self._rng_restored_early = False
            return
        # At an epoch boundary Trainer restores before the epoch's first fetch, as it should.
        self._rng_checkpoint = None
        super()._load_rng_state(checkpoint)

    def evaluate(self, *args, **kwargs):
        with forked_rng():
            return super().evaluate(*args, **kwargs)

    def _check_branch_point(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        untouched = (meta["stage"] == 0 and int(tensors["scores.num_steps"]) == 0
                     and all(bool(t.all()) for k, t in tensors.items() if k.startswith("mask.")))
        if not untouched or self.state.global_step > self._accumulate_from:
            raise ValueError(
                f"{self.args.branch_from} is not a branch point of this run: it was saved at step {self.state.global_step}"
                f"{'' if untouched else ', after pruning or scoring had started'}, and this run scores from step "
                f"{self._accumulate_from + 1} on; branch from a checkpoint saved with save_branch_point"
            )
        if "vote.seed" in tensors and int(tensors["vote.seed"]) != self.args.seed:
            raise ValueError(f"{self.args.branch_from} was trained with seed {int(tensors['vote.seed'])}, this run has "
                             f"seed {self.args.seed}: branch with the same seed")
        self._check_settings(meta, ignore=BRANCH_SETTINGS, what="branch from it with the same loss and schedule")

    def _check_resumed_state(self, meta: dict) -> None:
        if meta["stage_steps"] != self.stage_steps:
            raise ValueError(
                f"the checkpoint was made with other LTAP settings (stages at {meta['stage_steps']}, here "
                f"{self.stage_steps}): resume with the settings the checkpoint was made with"
            )
        self._check_settings(meta, ignore=frozenset(), what="resume with the settings the checkpoint was made with")

    def _check_settings(self, meta: dict, ignore: frozenset[str], what: str) -> None:
        settings = json.loads(json.dumps(self.args.ltap_settings(), default=str))
        # A field added after the checkpoint was written had its default's behaviour then.
        defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                    for f in fields(self.args) if f.name in settings}
        saved = {**json.loads(json.dumps(defaults, default=str)), **meta["settings"]}
        changed = sorted(k for k in settings.keys() | saved.keys() if k not in ignore and settings.get(k) != saved.get(k))
        if changed:
            raise ValueError(f"the checkpoint was made with other LTAP settings (differing fields: {changed}): {what}")


def load_pruning_state(folder: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Reads `ltap_state.safetensors` + `ltap_state.json` from a checkpoint folder, with clear errors."""
    weights, config = os.path.join(folder, STATE_WEIGHTS_NAME), os.path.join(folder, STATE_CONFIG_NAME)
    if not (os.path.isfile(weights) and os.path.isfile(config)):
        raise ValueError(
            f"checkpoint {folder} has no LTAP pruning state ({STATE_WEIGHTS_NAME}, {STATE_CONFIG_NAME}): it was not "
            "written by LTAPTrainer, or its save was interrupted; resume from an earlier checkpoint"
        )
    try:
        tensors = load_file(weights)
        with open(config) as file:
            meta = json.load(file)
    except (SafetensorError, json.JSONDecodeError, OSError) as error:
        raise ValueError(f"the LTAP pruning state in {folder} is corrupt ({error}); resume from an earlier checkpoint") from None
    if meta.get("format_version") != STATE_FORMAT_VERSION:
        raise ValueError(f"{config} has format_version {meta.get('format_version')}, this library reads {STATE_FORMAT_VERSION}")
    return tensors, meta


def _atomic_write(path: str, write) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def end_distributed() -> None:
    """Ends a script launched on several processes: call it once the trainer is gone (after the function
    that held it returns). Frees what still holds the process group (the DDP wrapper sits in reference
    cycles that only the garbage collector breaks), waits for every process, then destroys the group.
    Otherwise gloo's threads outlive the group and a process can abort at exit ("terminate called
    without an active exception") after all its work is done."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


__all__ = ["LTAPConfig", "LTAPTrainer", "class_balanced_probe", "end_distributed", "load_pruning_state"]
