"""Does class-aware pruning keep the rare classes? Dense, magnitude, LTAP (weight), LTAP without the vote
and LTAP (channel, slimmed), side by side with the same seed, data, schedule and loss (Balanced Softmax).

    # every arm, CIFAR-10-LT IR 100, the 30-epoch CPU schedule (about 20 minutes an arm on 2 cores)
    python benchmarks/accuracy.py --dataset cifar10_lt --schedule cpu30
    # one arm at a time, e.g. spread over background jobs; results merge into the same JSON
    python benchmarks/accuracy.py --dataset cifar10_lt --schedule cpu30 --arms ltap --densities 0.05 --seeds 1
    # the paper's 200-epoch schedule (for a GPU)
    python benchmarks/accuracy.py --dataset cifar10_lt --schedule full
    # digits-LT, the demo's ResNet-20 and 100-epoch schedule, 5 seeds (minutes)
    python benchmarks/accuracy.py --dataset digits_lt --seeds 0 1 2 3 4
    # only print the table (and draw the plot) of what the JSON holds
    python benchmarks/accuracy.py --dataset cifar10_lt --report-only

Each run goes through `recipes/run_ltap.py` (the product's own entry point) with the arm's flags. The
JSON keeps per-class test accuracy; the table reports means (± standard deviation over seeds).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import run_ltap  # noqa: E402


SCHEDULES = {
    # The reference runs of REFERENCE_RUNS.md: 30 epochs, 1 warm-up epoch, x0.01 at 24, x1e-4 at 27,
    # pruned once per epoch from epoch 15 to 24.
    "cpu30": ["--num_train_epochs", "30", "--warmup_steps", f"{1 / 30}", "--lr_milestones", "24", "27",
              "--prune_start", "15", "--prune_end", "24"],
    # ALGORITHM.md's CIFAR-LT setting.
    "full": ["--num_train_epochs", "200", "--warmup_steps", "0.025", "--lr_milestones", "160", "180",
             "--prune_start", "100", "--prune_end", "160"],
    # The digits-LT demo recipe as it is.
    "demo": [],
}
DATASETS = {
    "cifar10_lt": [str(ROOT / "recipes" / "cifar10_lt" / "resnet32_ir100.yaml"), "--eval_strategy", "no", "--save_strategy", "no",
                   "--report_to", "none", "--logging_steps", "100"],
    "digits_lt": [],
}
# The source each dataset is built from by default (digits ship with scikit-learn).
DATA_DIRS = {"cifar10_lt": str(ROOT.parent / "shared" / "data" / "cifar10"), "digits_lt": None}
ARMS = {
    "dense": ["--target_density", "1.0"],
    "magnitude": ["--criteria", "magnitude", "--vote", "false"],
    "ltap": [],
    "ltap_novote": ["--vote", "false"],
    "ltap_channel": ["--granularity", "channel", "--channel_allocation", "uniform"],
}
TABLE_KEYS = ("accuracy", "many_accuracy", "medium_accuracy", "few_accuracy", "tail3_accuracy", "worst_class_accuracy")


def run_arm(
    dataset: str, schedule: str, arm: str, density: float, seed: int, output_dir: str, data_dir: str | None, workers: int
) -> dict:
    recipe = DATASETS[dataset]
    flags = [*recipe, *(["--prune_schedule_unit", "epoch"] if schedule != "demo" else []), *SCHEDULES[schedule],
             *ARMS[arm], "--output_dir", output_dir, "--seed", str(seed), "--disable_tqdm", "true",
             "--dataloader_num_workers", str(workers), *(["--data_dir", data_dir] if data_dir else [])]
    if arm != "dense":
        flags += ["--target_density", str(density)]
    start = time.perf_counter()
    result = run_ltap.main(flags)
    wall = time.perf_counter() - start
    test, cost = result["test"], result["cost"]
    per_class = result["per_class_accuracy"]
    worst = min(range(len(per_class)), key=lambda c: per_class[c])
    return {
        "dataset": dataset, "schedule": schedule, "arm": arm, "target_density": density, "seed": seed,
        **{key: test[f"test_{key}"] for key in TABLE_KEYS},
        "worst_class": result["class_names"][worst],
        "per_class_accuracy": dict(zip(result["class_names"], per_class)),
        "class_counts": result["class_counts"],
        "prunable_density": result["density"]["prunable_density"],
        # Where the pruning went: per tensor (weight arms) or per channel group (channel arm).
        "layer_density": result["density"].get("per_group") or result["density"]["per_tensor"],
        "overall_density": result["density"]["overall_density"],
        "parameters_nonzero": cost.parameters_nonzero,
        "macs_nonzero": cost.macs_nonzero,
        "macs_ratio": cost.macs_nonzero / result["base_cost"].macs,
        "wall_seconds": wall,
    }


def _locked(path: Path):
    """An exclusive lock beside `path`: concurrent runs (one arm each, in the background) take turns."""
    lock = open(path.with_suffix(".lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def merge(path: Path, record: dict) -> None:
    """Adds `record` to the JSON list at `path`, replacing an earlier run of the same arm, density and seed
    (under the lock, written to a temporary file and renamed, so a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ("dataset", "schedule", "arm", "target_density", "seed")
    with _locked(path):
        records = json.loads(path.read_text()) if path.exists() else []
        records = [r for r in records if tuple(r[k] for k in key) != tuple(record[k] for k in key)]
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(records + [record], indent=1))
        os.replace(temporary, path)


def read_records(path: Path, schedule: str) -> list[dict]:
    with _locked(path):
        return [r for r in json.loads(path.read_text()) if r["schedule"] == schedule]


def _mean_spread(values: list[float]) -> str:
    values = [100 * v for v in values if v == v]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(records: list[dict]) -> str:
    rows = ["| arm | target density | seeds | overall | many | medium | few | tail-3 | worst class | density (prunable / all) | MACs vs dense | wall (min) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((list(ARMS).index(record["arm"]), -record["target_density"]), []).append(record)
    for _, runs in sorted(groups.items()):
        worst = ", ".join(f"{r['worst_class']} {100 * r['worst_class_accuracy']:.1f}" for r in runs)
        rows.append(
            f"| {runs[0]['arm']} | {runs[0]['target_density']:.2f} | {len(runs)} | "
            + " | ".join(_mean_spread([r[k] for r in runs]) for k in TABLE_KEYS[:5])
            + f" | {worst} | {statistics.mean(r['prunable_density'] for r in runs):.3f} / "
            f"{statistics.mean(r['overall_density'] for r in runs):.3f} | "
            f"{statistics.mean(r['macs_ratio'] for r in runs):.2f} | {statistics.mean(r['wall_seconds'] for r in runs) / 60:.1f} |"
        )
    return "\n".join(rows)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for arm in ARMS:
        by_target: dict[float, list[dict]] = {}
        for record in records:
            if record["arm"] == arm:
                by_target.setdefault(record["target_density"], []).append(record)
        points = sorted((statistics.mean(r["prunable_density"] for r in runs), runs) for runs in by_target.values())
        for axis, key in zip(axes, ("accuracy", "tail3_accuracy")):
            axis.plot([d for d, _ in points], [100 * statistics.mean(r[key] for r in runs) for _, runs in points],
                      marker="o", label=arm)
    for axis, title in zip(axes, ("overall test accuracy (%)", "tail-3 test accuracy (%)")):
        axis.set_xscale("log")
        axis.set_xlabel("density of prunable weights")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="digits_lt")
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default=None, help="cpu30 for cifar10_lt, demo for digits_lt")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--densities", nargs="+", type=float, default=[0.3, 0.1, 0.05], help="weight arms")
    parser.add_argument("--channel-densities", nargs="+", type=float, default=[0.3, 0.15], help="channel arm (parameters)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--data-dir", default=None,
                        help="source of the dataset, or a folder written by export_parquet (default: ../shared/data/...)")
    parser.add_argument("--workers", type=int, default=0, help="dataloader workers per run")
    parser.add_argument("--results", type=Path, default=None, help="JSON to merge into (default benchmarks/results/<dataset>.json)")
    parser.add_argument("--report-only", action="store_true", help="print the table and draw the plot of the JSON only")
    parser.add_argument("--no-report", action="store_true", help="run and merge only (many runs at once: report once after)")
    options = parser.parse_args()
    schedule = options.schedule or ("cpu30" if options.dataset == "cifar10_lt" else "demo")
    results = options.results or ROOT / "benchmarks" / "results" / f"{options.dataset}_{schedule}.json"

    if not options.report_only:
        for seed in options.seeds:
            for arm in options.arms:
                densities = [1.0] if arm == "dense" else options.channel_densities if arm == "ltap_channel" else options.densities
                for density in densities:
                    with tempfile.TemporaryDirectory() as output_dir:
                        record = run_arm(options.dataset, schedule, arm, density, seed, output_dir,
                                         options.data_dir or DATA_DIRS[options.dataset], options.workers)
                    merge(results, record)
                    print(f"{arm} density {density} seed {seed}: overall {100 * record['accuracy']:.2f}, "
                          f"tail-3 {100 * record['tail3_accuracy']:.2f}, {record['wall_seconds'] / 60:.1f} min", flush=True)
    if options.no_report:
        return
    records = read_records(results, schedule)
    print(f"\n{options.dataset}, schedule {schedule}, results in {results}")
    print(table(records))
    plot(records, results.with_suffix(".png"))


if __name__ == "__main__":
    main()
