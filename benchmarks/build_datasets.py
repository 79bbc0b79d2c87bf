"""How long building CIFAR-10-LT IR100 from the Hub-layout Parquet files takes, cold and cached,
and how long one training epoch of its images spends in the transform and collation.

    python benchmarks/build_datasets.py [--data-dir ../shared/data/cifar10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import torch

from ltap_hf.data import TrainTransform, collate_fn, load_lt_dataset


REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "cifar10"


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder of the CIFAR-10 Parquet files")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (the median is shown)")
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        raise SystemExit(f"--data-dir {args.data_dir} does not exist")
    datasets.disable_progress_bars()
    logging.getLogger("ltap_hf.data").setLevel(logging.ERROR)  # the class-0 validation note, once per build

    def build(cache_dir: str) -> datasets.DatasetDict:
        return load_lt_dataset("cifar10_lt", imbalance_ratio=100, data_dir=str(args.data_dir), cache_dir=cache_dir)

    cold, cached, epoch = [], [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache_dir:
            seconds, ds = timed(lambda: build(cache_dir))
            cold.append(seconds)
            cached.append(timed(lambda: build(cache_dir))[0])
            train = ds["train"].with_transform(TrainTransform.from_dataset("cifar10_lt"))
            loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True, collate_fn=collate_fn)
            epoch.append(timed(lambda: sum(len(batch["labels"]) for batch in loader))[0])

    rows = [
        ("build CIFAR-10-LT IR100 from Parquet, cold (12,406 + 180 + 10,000 images)", cold),
        ("load CIFAR-10-LT IR100, cached", cached),
        ("one epoch of decode + TrainTransform + collate_fn (12,406 images, batch 128, 1 process)", epoch),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'step':<{width}} | median s | min s |")
    print(f"|{'-' * (width + 2)}|---------:|------:|")
    for name, seconds in rows:
        print(f"| {name:<{width}} | {statistics.median(seconds):8.3f} | {min(seconds):5.3f} |")
    print(f"\n{args.repeats} runs, torch threads: {torch.get_num_threads()}, data: {args.data_dir}")


if __name__ == "__main__":
    main()
