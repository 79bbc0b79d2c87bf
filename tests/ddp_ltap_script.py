"""Run by tests/test_trainer_distributed.py under `accelerate launch` (and once in-process for reference).

Trains the toy problem with LTAP and writes, per process, at every stage: the hash of the accumulated
statistics the stage ranks, the masks' hash, α, the vote counts D and the density.

    python ddp_ltap_script.py OUTPUT PER_DEVICE_BATCH_SIZE [GRANULARITY [GRADIENT_ACCUMULATION_STEPS [class_taylor]]]

With "class_taylor", the five criteria and ltap-hf's class_taylor vote together, on a probe set of 4 training
images per class; the per-unit class importance of every stage is hashed too.
"""

import hashlib
import json
import sys

import torch
from transformers import TrainerCallback

from ltap_hf import LTResNetConfig, LTResNetForImageClassification
from ltap_hf.pruning.criteria import CRITERIA
from ltap_hf.trainer import LTAPConfig, LTAPTrainer, class_balanced_probe, end_distributed
from toy_data import TOY_COUNTS, toy_splits


class RecordStages(TrainerCallback):
    """Runs after LTAPTrainer's own callback, so a stage's masks and α are final when it looks."""

    def __init__(self, trainer: LTAPTrainer):
        self.trainer, self.stages, self.scores = trainer, [], []

    def on_optimizer_step(self, args, state, control, **kwargs):
        # The accumulated statistics a stage is about to rank, before any broadcast of masks.
        if state.global_step + 1 in self.trainer.stage_steps:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.trainer.pruner.accumulator.state_dict().items()):
                digest.update(tensor.cpu().numpy().tobytes())
            self.scores.append(digest.hexdigest())

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.trainer.stage_steps:
            pruner = self.trainer.pruner
            digest = hashlib.sha256()
            for name in sorted(pruner.masks):
                digest.update(pruner.masks[name].cpu().numpy().tobytes())
            alpha = [log for log in state.log_history if "ltap/density" in log][-1]
            self.stages.append({
                "step": state.global_step,
                "masks_sha256": digest.hexdigest(),
                "alpha": [alpha[f"ltap/alpha/{c}"] for c in pruner.vote.criteria],
                "votes": pruner.vote.votes.tolist(),
                "density": pruner.density,
            })


def record_class_importance(trainer: LTAPTrainer, digests: list) -> None:
    compute = trainer._class_importance

    def recording(*args):
        importance = compute(*args)
        digest = hashlib.sha256()
        for name in sorted(importance):
            digest.update(importance[name].cpu().numpy().tobytes())
        digests.append(digest.hexdigest())
        return importance

    trainer._class_importance = recording


def main(output_file: str, per_device_batch_size: int, granularity: str, gradient_accumulation_steps: int,
         class_taylor: bool = False) -> None:
    train, validation = toy_splits()
    torch.manual_seed(0)
    model = LTResNetForImageClassification(LTResNetConfig.from_preset("resnet20", num_labels=len(TOY_COUNTS)))
    args = LTAPConfig(output_dir=output_file + ".out", num_train_epochs=6, per_device_train_batch_size=per_device_batch_size,
                      per_device_eval_batch_size=5, learning_rate=0.05, optim="sgd", weight_decay=2e-4, report_to=[],
                      save_strategy="no", disable_tqdm=True, prune_start=0.3, prune_end=0.8, target_density=0.3, seed=0,
                      granularity=granularity, gradient_accumulation_steps=gradient_accumulation_steps,
                      criteria=[*CRITERIA, "class_taylor"] if class_taylor else list(CRITERIA),
                      class_importance_weighting="worst_class")
    probe = class_balanced_probe(train, 4, seed=0) if class_taylor else None
    trainer = LTAPTrainer(model=model, args=args, train_dataset=train, eval_dataset=validation, class_counts=TOY_COUNTS,
                          probe_dataset=probe)
    importance = []
    if class_taylor:
        record_class_importance(trainer, importance)
    recorder = RecordStages(trainer)
    trainer.add_callback(recorder)
    trainer.train()
    result = {"process_index": trainer.args.process_index, "world_size": trainer.args.world_size,
              "stages": recorder.stages, "scores_sha256": recorder.scores, "class_importance_sha256": importance}
    with open(f"{output_file}.rank{trainer.args.process_index}.json", "w") as file:
        json.dump(result, file)


if __name__ == "__main__":
    options = sys.argv[3:]
    main(sys.argv[1], int(sys.argv[2]), options[0] if options else "weight", int(options[1]) if len(options) > 1 else 1,
         len(options) > 2 and options[2] == "class_taylor")
    end_distributed()
