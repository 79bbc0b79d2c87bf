"""The reference runs of `../shared/docs/REFERENCE_RUNS.md` rebuilt as a plain PyTorch loop, to calibrate
`benchmarks/accuracy.py`: when the project's dense and magnitude arms disagree with those figures, this
script tells a difference of the pipeline (Trainer, model, transforms, pruner) from one of the recipe.

Only the long-tailed selection is the project's (`load_lt_dataset`, checked against Cao et al.'s
counts); the model, augmentation, loss, schedule and pruning below are written from the recipe's text:

- ResNet-32 with zero-padding shortcuts, Kaiming-normal (fan-in) init of convolutions and classifier,
  as in Cao et al.'s code;
- Balanced Softmax, SGD lr 0.1 momentum 0.9, weight decay 2e-4 on every parameter, batch 128, no
  gradient clipping; linear warm-up over the first epoch, x0.01 at epoch 24, x1e-4 at 27;
- random crop (zero padding 4) and horizontal flip;
- magnitude arm: global unstructured magnitude over every convolution (not the classifier), cubic
  density schedule applied once per epoch from epoch 15 to 24, masks fixed afterwards.

    OMP_NUM_THREADS=1 python benchmarks/plain_loop.py --density 1.0 --seed 0
    OMP_NUM_THREADS=1 python benchmarks/plain_loop.py --density 0.05 --seed 0
    # the same loop with the project's network (LTResNet, its init) in place of the one below
    OMP_NUM_THREADS=1 python benchmarks/plain_loop.py --model project

It prints overall, tail-3 and per-class test accuracy and the wall time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltap_hf.data import load_lt_dataset
from ltap_hf.models import LTResNetConfig, LTResNetForImageClassification


ROOT = Path(__file__).resolve().parents[1]
MEAN = torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
STD = torch.tensor([0.2023, 0.1994, 0.2010])[:, None, None]


class Block(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = (planes - in_planes) // 2
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet32(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for index in range(5):
                blocks.append(Block(in_planes, planes, stride if index == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(out.mean((2, 3)))


def build_model(name: str) -> nn.Module:
    """This file's ResNet-32, or the project's (`logits` of its output) for a bisection."""
    if name == "plain":
        return ResNet32()
    project = LTResNetForImageClassification(LTResNetConfig.from_preset("resnet32", num_labels=10))
    return _Logits(project)


class _Logits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def images_and_labels(split) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.stack([np.asarray(image.convert("RGB")) for image in split["image"]])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(split["label"])


def augment(images: torch.Tensor) -> torch.Tensor:
    padded = F.pad(images, (4, 4, 4, 4))
    out = torch.empty_like(images)
    for i, (dy, dx) in enumerate(torch.randint(0, 9, (len(images), 2)).tolist()):
        crop = padded[i, :, dy : dy + 32, dx : dx + 32]
        out[i] = crop.flip(2) if torch.rand(()) < 0.5 else crop
    return out


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - MEAN) / STD


def learning_rate(step: int, steps_per_epoch: int) -> float:
    epoch = step / steps_per_epoch
    if epoch < 1:
        return 0.1 * (step + 1) / steps_per_epoch
    return 0.1 * (1e-4 if epoch >= 27 else 1e-2 if epoch >= 24 else 1.0)


def magnitude_masks(convs: list[torch.Tensor], density: float) -> list[torch.Tensor]:
    """Keep the `density` share of all convolution weights with the largest magnitude, globally."""
    scores = torch.cat([w.abs().flatten() for w in convs])
    keep = max(1, int(round(density * scores.numel())))
    threshold = scores.kthvalue(scores.numel() - keep + 1).values
    return [w.abs() >= threshold for w in convs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--density", type=float, default=1.0, help="final density of the convolutions; 1.0: dense")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--model", choices=["plain", "project"], default="plain",
                        help="this file's ResNet-32 (Kaiming fan-in init) or the project's LTResNet preset")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    options = parser.parse_args()
    if not 0 < options.density <= 1:
        parser.error(f"--density must be in (0, 1], got {options.density}")

    dataset = load_lt_dataset("cifar10_lt", imbalance_ratio=100, data_dir=options.data_dir)
    train_x, train_y = images_and_labels(dataset["train"])
    test_x, test_y = images_and_labels(dataset["test"])
    counts = torch.bincount(train_y, minlength=10)
    log_prior = (counts.float() / counts.sum()).log()

    torch.manual_seed(options.seed)
    model = build_model(options.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    masks = None
    steps_per_epoch = -(-len(train_y) // 128)
    start, step = time.perf_counter(), 0
    for epoch in range(options.epochs):
        if options.density < 1 and 15 <= epoch <= 24:
            progress = (epoch - 15) / 9
            density = options.density + (1 - options.density) * (1 - progress) ** 3
            with torch.no_grad():
                masks = magnitude_masks(convs, density)
                for weight, mask in zip(convs, masks):
                    weight.mul_(mask)
        model.train()
        for batch in torch.randperm(len(train_y)).split(128):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, steps_per_epoch)
            logits = model(normalize(augment(train_x[batch])))
            loss = F.cross_entropy(logits + log_prior, train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if masks is not None:
                with torch.no_grad():
                    for weight, mask in zip(convs, masks):
                        weight.mul_(mask)
            step += 1
        print(f"epoch {epoch + 1}/{options.epochs}  loss {loss.item():.3f}  {time.perf_counter() - start:.0f}s", flush=True)

    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(normalize(x)).argmax(1) for x in test_x.split(1000)])
    per_class = [(predictions[test_y == c] == c).float().mean().item() for c in range(10)]
    density = sum(int(w.count_nonzero()) for w in convs) / sum(w.numel() for w in convs)
    print(f"density {density:.4f}  overall {100 * (predictions == test_y).float().mean().item():.2f}  "
          f"tail-3 {100 * sum(per_class[-3:]) / 3:.2f}  wall {time.perf_counter() - start:.0f}s")
    print("per-class", " ".join(f"{a:.3f}" for a in per_class))


if __name__ == "__main__":
    main()
