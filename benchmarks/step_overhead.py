"""Time of an LTAPTrainer optimizer step during pruning against a plain Trainer step, and score-buffer memory.

    python benchmarks/step_overhead.py [--steps 40] [--rounds 2] [--batch-size 128]

Both trainers train the same ResNet-32 (CIFAR-10 shape) on the same random 32x32 batches, in
alternating rounds so that drifts of the machine hit both. LTAP runs with its accumulation window
covering every step and masks re-applied after every step (pruning stages every quarter epoch); the
stage steps themselves (validation pass, vote, ranking) are timed apart. Per-step times are medians
over the steps after a warm-up of 5.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import datasets
import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ltap_hf import LTResNetConfig, LTResNetForImageClassification
from ltap_hf.trainer import LTAPConfig, LTAPTrainer


WARMUP_STEPS = 5


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: dict[int, float] = {}

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times[state.global_step] = time.perf_counter() - self._start


def random_images(num: int, seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    return datasets.Dataset.from_dict({
        "pixel_values": rng.normal(size=(num, 3, 32, 32)).astype(np.float32),
        "labels": rng.integers(0, 10, size=num),
    }).with_format("torch")


def run(ltap: bool, steps: int, batch_size: int, output_dir: str) -> tuple[dict[int, float], Trainer]:
    torch.manual_seed(0)
    model = LTResNetForImageClassification(LTResNetConfig.from_preset("resnet32", num_labels=10))
    train = random_images(steps * batch_size, seed=0)
    common = dict(output_dir=output_dir, max_steps=steps, num_train_epochs=1, per_device_train_batch_size=batch_size,
                  learning_rate=0.1, optim="sgd", weight_decay=2e-4, report_to=[], save_strategy="no", use_cpu=True,
                  disable_tqdm=True, logging_steps=10_000, dataloader_drop_last=True, seed=0)
    timer = StepTimer()
    if ltap:
        args = LTAPConfig(**common, prune_start=0.05, prune_end=1.0, prune_interval=0.25, target_density=0.3, loss="ce")
        trainer = LTAPTrainer(model=model, args=args, train_dataset=train, eval_dataset=random_images(256, seed=1),
                              class_counts=[steps * batch_size // 10] * 10)
    else:
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=train)
    # Added last, so that its on_step_end runs after LTAP's (which holds the stage work).
    trainer.add_callback(timer)
    trainer.train()
    return timer.times, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    options = parser.parse_args()

    plain_steps, ltap_steps, stage_steps = [], [], []
    with tempfile.TemporaryDirectory() as output_dir:
        for _ in range(options.rounds):
            times, _ = run(False, options.steps, options.batch_size, output_dir)
            plain_steps += [t for step, t in times.items() if step > WARMUP_STEPS]
            times, trainer = run(True, options.steps, options.batch_size, output_dir)
            stages = set(trainer.stage_steps)
            ltap_steps += [t for step, t in times.items() if step > WARMUP_STEPS and step not in stages]
            stage_steps += [t for step, t in times.items() if step in stages]

    pruner = trainer.pruner
    params = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    masks = sum(m.numel() * m.element_size() for m in pruner.masks.values())
    plain, ltap = statistics.median(plain_steps), statistics.median(ltap_steps)
    print(f"ResNet-32, batch {options.batch_size}, {torch.get_num_threads()} threads, "
          f"{options.rounds} rounds x {options.steps} steps, medians")
    print("| step | time (ms) | ratio to plain |")
    print("|---|---|---|")
    print(f"| plain Trainer | {1000 * plain:.1f} | 1.000 |")
    print(f"| LTAPTrainer during pruning (accumulate + re-mask) | {1000 * ltap:.1f} | {ltap / plain:.3f} |")
    print(f"| LTAPTrainer stage step (validation, vote, prune) | {1000 * statistics.median(stage_steps):.1f} | "
          f"{statistics.median(stage_steps) / plain:.3f} |")
    print()
    print("| memory | MiB | ratio to parameters |")
    print("|---|---|---|")
    print(f"| model parameters | {params / 2**20:.2f} | 1.00 |")
    print(f"| score buffers (grad sum, taylor2 sum, scratch) | {pruner.accumulator.nbytes() / 2**20:.2f} | "
          f"{pruner.accumulator.nbytes() / params:.2f} |")
    print(f"| masks | {masks / 2**20:.2f} | {masks / params:.2f} |")


if __name__ == "__main__":
    main()
