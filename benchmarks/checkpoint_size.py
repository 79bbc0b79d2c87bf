"""Size and load time of sparse-bitmask checkpoints against dense ones.

    python benchmarks/checkpoint_size.py [--repeats 3] [--threads 1]

For ResNet-32 (CIFAR, 100 classes) and ResNet-50 (ImageNet, 1000 classes), float32, pruned by global
magnitude (of the random initial weights: the size depends only on the density) to 50%, 30% and 10%
of the prunable weights, it prints a markdown table: bytes of `model.safetensors` (dense) and
`sparse_model.safetensors`, their ratio, and the median `AutoModelForImageClassification.from_pretrained`
time of each. On a shared machine, `--threads 1` keeps other processes from stalling torch's
parallel loops, which dominate the decoding time there.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification
from transformers.utils import logging

from ltap_hf.models import LTResNetConfig, LTResNetForImageClassification
from ltap_hf.models.sparse_safetensors import SPARSE_WEIGHTS_NAME
from ltap_hf.pruning import apply_masks, full_masks, prunable_parameters, select_mask


MODELS = {"resnet32": 100, "resnet50": 1000}
DENSITIES = (0.5, 0.3, 0.1)


def _load_seconds(folder: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        AutoModelForImageClassification.from_pretrained(folder)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="loads timed per checkpoint (the median is shown)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.disable_progress_bar()
    logging.set_verbosity_error()

    print("| model | density | dense bytes | sparse bytes | sparse / dense | dense load (s) | sparse load (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as root:
        for preset, num_labels in MODELS.items():
            torch.manual_seed(0)
            model = LTResNetForImageClassification(LTResNetConfig.from_preset(preset, num_labels=num_labels)).eval()
            dense_dir = Path(root) / f"{preset}-dense"
            model.save_pretrained(dense_dir)
            dense_bytes = (dense_dir / "model.safetensors").stat().st_size
            dense_seconds = _load_seconds(dense_dir, args.repeats)
            parameters = prunable_parameters(model)
            scores = {name: weight.detach().abs() for name, weight in parameters.items()}
            masks = full_masks(parameters)
            for density in DENSITIES:  # masks only shrink, so each density prunes the previous model further
                masks = select_mask(scores, masks, density, min_layer_density=0.0)
                apply_masks(parameters, masks)
                sparse_dir = Path(root) / f"{preset}-{density}"
                model.save_pretrained(sparse_dir, sparse=True)
                sparse_bytes = (sparse_dir / SPARSE_WEIGHTS_NAME).stat().st_size
                print(
                    f"| {preset} | {density:.0%} | {dense_bytes:,} | {sparse_bytes:,} | {sparse_bytes / dense_bytes:.3f} "
                    f"| {dense_seconds:.3f} | {_load_seconds(sparse_dir, args.repeats):.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
