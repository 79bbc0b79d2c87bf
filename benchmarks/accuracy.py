"""Does class-aware pruning keep the rare classes? Dense, magnitude, LTAP (weight), LTAP without the vote,
LTAP (channel, slimmed), ltap-hf's class-conditional criterion (class_taylor: classes alike, or
class_taylor_worst: by their validation error) and magnitude pruning or LTAP that switch to the
logit-adjusted loss as they prune (magnitude_la, ltap_la), side by side with the same seed, data,
schedule and loss (the recipe's Balanced Softmax unless `--loss` says otherwise).

    # every arm, CIFAR-10-LT IR 100, the 30-epoch CPU schedule (about 20 minutes an arm on 2 cores)
    python benchmarks/accuracy.py --dataset cifar10_lt --schedule cpu30
    # one arm at a time, e.g. spread over background jobs; results merge into the same JSON
    python benchmarks/accuracy.py --dataset cifar10_lt --schedule cpu30 --arms ltap --densities 0.05 --seeds 1
    # the paper's 200-epoch schedule (for a GPU)
    python benchmarks/accuracy.py --dataset cifar10_lt --schedule full
    # digits-LT, the demo's ResNet-20 and 100-epoch schedule, 5 seeds (minutes)
    python benchmarks/accuracy.py --dataset digits_lt --seeds 0 1 2 3 4
    # another regime (its own results file, here cifar10_lt_cpu30_ce_ir500_val300.json): plain
    # cross-entropy, IR 500, 300 validation images per class, 5% and 2% density
    python benchmarks/accuracy.py --dataset cifar10_lt --loss ce --imbalance-ratio 500 --val-per-class 300 \
        --arms dense magnitude ltap --densities 0.05 0.02
    # only print the tables (and draw the plot) of what the records and the JSON hold
    python benchmarks/accuracy.py --dataset cifar10_lt --report-only

Each run goes through `recipes/run_ltap.py` (the product's own entry point) with the arm's flags. The
table reports means (± standard deviation over seeds).

Branching. All arms of one seed train the same dense network up to the first scoring window. The first
run of a seed (its dense arm, or any arm that finds no branch point) trains the dense arm with
`save_branch_point`, and hands that checkpoint to `--branch-dir` the moment it is written; every other
arm of the seed then starts there (`branch_from`) and ends exactly as it would have straight through,
for about half the cost. A branch point is shared by the runs whose flags other than the arm's are
equal (dataset, schedule, seed, loss, imbalance ratio, validation split, data source, dataloader
workers, `--run-flags`); the trainer refuses one whose LTAP settings before the branch differ. Runs
in parallel take turns on a lock per branch point: one makes it, the others wait for it. `--no-branch`
runs every arm from step 0.

Records. Beside its row in the results JSON, every run keeps a record in `<results>_records/` (see
benchmarks/run_records.py): test and validation logits and predictions, α, D and the per-class
validation accuracy of every stage, per-layer densities and a SHA-256 of the final masks.
`--report-only` rebuilds the tables and plots from the records, and from the JSON only for the rows
that have none (runs made before records were kept).

Report. Every recorded run also appears calibrated (`<arm>+calibration`: `run_ltap --calibrate`'s logit
bias, fitted on the run's validation logits and applied to its test logits, no training). Below the
table, every arm is paired by seed with magnitude pruning at its density (and every calibrated arm, and
every *_la arm, with calibrated magnitude pruning): mean difference in points, its standard error and a paired t-test's p, and
the share of magnitude's tail-3 loss against dense that the arm wins back (`--reference` pairs them with
another arm). `--split validation` reports the validation predictions instead, the split to make choices on.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import paired  # noqa: E402
import run_ltap  # noqa: E402
import run_records  # noqa: E402
from ltap_hf.losses import LOSS_NAMES  # noqa: E402


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
    # ltap-hf's class-conditional criterion alone (not the paper's), its classes weighed alike or by their
    # validation error at each stage.
    "class_taylor": ["--criteria", "class_taylor", "--vote", "false"],
    "class_taylor_worst": ["--criteria", "class_taylor", "--vote", "false", "--class_importance_weighting", "worst_class"],
    # Magnitude pruning and the paper's LTAP trained with the logit-adjusted loss from the branch point on
    # (ltap-hf's pruning_loss, not the paper's): class-aware in what the pruned network learns.
    "magnitude_la": ["--criteria", "magnitude", "--vote", "false", "--pruning_loss", "logit_adjusted"],
    "ltap_la": ["--pruning_loss", "logit_adjusted"],
}
# Under the recipe's Balanced Softmax these equal their twins (the logit-adjusted loss with tau 1 is the same loss).
PRUNING_LOSS_ARMS = frozenset(arm for arm, flags in ARMS.items() if "--pruning_loss" in flags)
TABLE_KEYS = ("accuracy", "many_accuracy", "medium_accuracy", "few_accuracy", "tail3_accuracy", "worst_class_accuracy")
# The data and loss of a grid beyond its recipe, as run_ltap flags. None keeps the recipe's (Balanced Softmax;
# IR 100 for CIFAR-10-LT, IR 10 for digits-LT; the dataset's validation split); rows from before these
# options have none of these fields, and read as None.
REGIME_FLAGS = {"loss": "--loss", "imbalance_ratio": "--imbalance_ratio", "val_per_class": "--val_per_class",
                "val_shortfall": "--val_shortfall"}
# A run's identity in the results JSON and its record's name: a later run with the same key replaces it.
RUN_KEY = ("dataset", "schedule", "arm", "target_density", "seed", *REGIME_FLAGS)


def regime_suffix(regime: dict) -> str:
    """'' for the recipe's regime, otherwise e.g. '_ce_ir500_val300': in results, plot and record names."""
    parts = [regime.get("loss"),
             None if regime.get("imbalance_ratio") is None else f"ir{regime['imbalance_ratio']:g}",
             None if regime.get("val_per_class") is None else f"val{regime['val_per_class']}",
             regime.get("val_shortfall")]
    return "".join(f"_{part}" for part in parts if part is not None)


def regime_label(regime: dict) -> str:
    parts = [f"loss {regime['loss']}" if regime.get("loss") is not None else None,
             f"IR {regime['imbalance_ratio']:g}" if regime.get("imbalance_ratio") is not None else None,
             f"{regime['val_per_class']} validation images per class" if regime.get("val_per_class") is not None else None,
             f"val_shortfall {regime['val_shortfall']}" if regime.get("val_shortfall") is not None else None]
    return ", ".join(p for p in parts if p) or "the recipe's loss and data"


@dataclass(frozen=True)
class Grid:
    """What every run of one invocation shares: all but the arm, its density and the seed."""

    dataset: str
    schedule: str
    data_dir: str | None = None
    workers: int = 0
    regime: dict = field(default_factory=lambda: dict.fromkeys(REGIME_FLAGS))
    run_flags: tuple[str, ...] = ()

    def shared_flags(self, seed: int) -> list[str]:
        """The flags of `recipes/run_ltap.py` that every arm of `seed` shares (they name its branch point)."""
        regime = [item for key, flag in REGIME_FLAGS.items() if self.regime.get(key) is not None
                  for item in (flag, f"{self.regime[key]:g}" if isinstance(self.regime[key], float) else str(self.regime[key]))]
        return [*DATASETS[self.dataset], *(["--prune_schedule_unit", "epoch"] if self.schedule != "demo" else []),
                *SCHEDULES[self.schedule], *regime, "--seed", str(seed), "--disable_tqdm", "true",
                "--dataloader_num_workers", str(self.workers), *(["--data_dir", self.data_dir] if self.data_dir else []),
                *self.run_flags]

    @staticmethod
    def arm_flags(arm: str, density: float) -> list[str]:
        return [*ARMS[arm], *(["--target_density", str(density)] if arm != "dense" else [])]


def run_arm(grid: Grid, arm: str, density: float, seed: int, output_dir: str, *, branch_from: Path | None = None,
            save_branch_point: bool = False, publish=None) -> tuple[dict, dict, dict]:
    """Trains one arm through `recipes/run_ltap.py`: (summary row, record fields, record arrays).

    `branch_from`: start at this branch point. `save_branch_point`: save one, handed to `publish(folder)`
    the moment it is written (the run goes on meanwhile).
    """
    flags = [*grid.shared_flags(seed), *grid.arm_flags(arm, density), "--output_dir", output_dir]
    if save_branch_point:
        flags += ["--save_branch_point", "true"]
    if branch_from is not None:
        flags += ["--branch_from", str(branch_from)]
    start = time.perf_counter()
    with run_records.watching_trainers(run_ltap, publish=publish if save_branch_point else None) as trainers:
        result = run_ltap.main(flags)
    wall = time.perf_counter() - start
    (trainer,) = trainers
    if save_branch_point and not trainer.branch_point_publisher.published:
        raise RuntimeError(f"the {arm} run of seed {seed} saved no branch point")
    fields, arrays = run_records.collect(trainer)
    test, cost = result["test"], result["cost"]
    per_class = result["per_class_accuracy"]
    worst = min(range(len(per_class)), key=lambda c: per_class[c])
    row = {
        "dataset": grid.dataset, "schedule": grid.schedule, "arm": arm, "target_density": density, "seed": seed,
        **{key: grid.regime.get(key) for key in REGIME_FLAGS},
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
        # This process's own time: a branched run's excludes the dense steps it shares.
        "wall_seconds": wall,
        "branch_point_step": None if branch_from is None else int(Path(branch_from).name.rsplit("-", 1)[1]),
        "mask_sha256": fields["mask_sha256"],
    }
    fields.update(flags=[("<temporary folder>" if flag == output_dir else flag) for flag in flags],
                  branch_point=None if branch_from is None else str(branch_from))
    return row, fields, arrays


def _locked(path: Path):
    """An exclusive lock beside `path`: concurrent runs (one arm each, in the background) take turns."""
    lock = open(path.with_suffix(".lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def _key(row: dict) -> tuple:
    return tuple(row.get(k) for k in RUN_KEY)


def merge(path: Path, record: dict) -> None:
    """Adds `record` to the JSON list at `path`, replacing an earlier run of the same arm, density, seed and
    regime (under the lock, written to a temporary file and renamed, so a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        records = json.loads(path.read_text()) if path.exists() else []
        records = [r for r in records if _key(r) != _key(record)]
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(records + [record], indent=1))
        os.replace(temporary, path)


def records_dir(results: Path) -> Path:
    return results.with_name(f"{results.stem}_records")


def record_id(row: dict) -> str:
    return (f"{row['dataset']}_{row['schedule']}_{row['arm']}_d{row['target_density']:g}_seed{row['seed']}"
            f"{regime_suffix(row)}")


def run_and_record(grid: Grid, arm: str, density: float, seed: int, results: Path, **run) -> dict:
    """`run_arm` in a temporary output folder; writes the record, then merges the row into `results`."""
    with tempfile.TemporaryDirectory() as output_dir:
        row, fields, arrays = run_arm(grid, arm, density, seed, output_dir, **run)
    folder = records_dir(results)
    path = run_records.write_record(folder, record_id(row), row, fields, arrays)
    merge(results, {**row, "record": f"{folder.name}/{path.name}"})
    branched = "" if row["branch_point_step"] is None else f", from the branch point at step {row['branch_point_step']}"
    print(f"{arm} density {density} seed {seed}: overall {100 * row['accuracy']:.2f}, "
          f"tail-3 {100 * row['tail3_accuracy']:.2f}, {row['wall_seconds'] / 60:.1f} min{branched}", flush=True)
    return row


class BranchPoints:
    """Branch-point checkpoints, one folder per name, in `folder` (git ignores it: they hold model and
    optimizer state, not results)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def name(self, grid: Grid, seed: int) -> str:
        digest = hashlib.sha256(json.dumps(grid.shared_flags(seed)).encode()).hexdigest()[:12]
        return f"{grid.dataset}_{grid.schedule}_seed{seed}_{digest}"

    def find(self, name: str) -> Path | None:
        """The checkpoint folder of branch point `name`, or None (a checkpoint is complete once Trainer has
        written its trainer_state.json, the last file it writes)."""
        complete = sorted((self.folder / name).glob("checkpoint-*/trainer_state.json"))
        return complete[0].parent if complete else None

    @contextlib.contextmanager
    def lock(self, name: str):
        """Holds the lock of branch point `name`; yields a function that releases it early."""
        self.folder.mkdir(parents=True, exist_ok=True)
        ignore = self.folder / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")
        handle = open(self.folder / f"{name}.lock", "w")
        fcntl.flock(handle, fcntl.LOCK_EX)

        def release() -> None:
            if not handle.closed:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()

        try:
            yield release
        finally:
            release()

    def publish(self, name: str, checkpoint: Path, flags: list[str]) -> Path:
        """Copies `checkpoint` in as branch point `name` (whole or not at all); call it holding the lock."""
        target, temporary = self.folder / name, self.folder / f"{name}.tmp-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.copytree(checkpoint, temporary / checkpoint.name)
        (temporary / "branch_point.json").write_text(json.dumps({"shared_flags": flags}, indent=1))
        shutil.rmtree(target, ignore_errors=True)  # what an interrupted attempt left (find() saw nothing whole)
        os.rename(temporary, target)
        return target / checkpoint.name


def run_cell(grid: Grid, arm: str, density: float, seed: int, results: Path, branch_points: BranchPoints | None) -> dict | None:
    """One (arm, density, seed) of the grid, from its seed's branch point when `branch_points` is given (made
    first, by the dense arm, if missing). arm=None only makes sure the branch point exists."""
    if branch_points is None:
        return run_and_record(grid, arm, density, seed, results)
    name = branch_points.name(grid, seed)
    with branch_points.lock(name) as release:
        point = branch_points.find(name)
        if point is None:
            print(f"branch point {branch_points.folder / name}: making it (the dense arm of seed {seed})", flush=True)

            def publish(checkpoint: Path) -> None:
                branch_points.publish(name, checkpoint, grid.shared_flags(seed))
                release()  # the other arms of this seed may start from it now

            dense = run_and_record(grid, "dense", 1.0, seed, results, save_branch_point=True, publish=publish)
            point = branch_points.find(name)
            if point is None:
                raise RuntimeError(f"the dense run of seed {seed} left no branch point in {branch_points.folder / name}")
            if arm in (None, "dense"):
                return dense
        else:
            print(f"branch point {point}: found", flush=True)
    if arm is None:
        return None
    return run_and_record(grid, arm, density, seed, results, branch_from=point)


def load_rows(results: Path, schedule: str, split: str = "test") -> list[dict]:
    """The rows of `schedule`: one per run key, from its record when there is one (its accuracies
    recomputed from the stored predictions of `split`, and its calibrated twin beside it, see
    `run_records.calibrated_record`), else as the results JSON holds it (runs without records, test split
    only)."""
    rows: dict[tuple, dict] = {}
    if results.exists() and split == "test":
        with _locked(results):
            saved = json.loads(results.read_text())
        rows.update((_key(row), row) for row in saved if row["schedule"] == schedule)
    folder = records_dir(results)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = run_records.read_record(path)
        if record["row"]["schedule"] != schedule:
            continue
        for twin in (record, run_records.calibrated_record(record)):
            if twin is not None:
                row = run_records.row_from_record(twin, split)
                rows[_key(row)] = row
    for row in rows.values():
        if row.get("record"):
            print(f"warning: {results.parent / row['record']} is missing; {record_id(row)} is reported from {results}")
    return list(rows.values())


def _mean_spread(values: list[float]) -> str:
    values = [100 * v for v in values if v == v]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def arm_order(arm: str) -> tuple[int, bool]:
    """Where `arm` sits in tables and plots: ARMS' order, each arm's calibrated twin after it."""
    calibrated = arm.endswith(run_records.CALIBRATED)
    return list(ARMS).index(arm.removesuffix(run_records.CALIBRATED)), calibrated


def _groups(records: list[dict]) -> list[list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((arm_order(record["arm"]), -record["target_density"]), []).append(record)
    return [sorted(runs, key=lambda r: r["seed"]) for _, runs in sorted(groups.items())]


def table(records: list[dict]) -> str:
    rows = ["| arm | target density | seeds | overall | many | medium | few | tail-3 | worst class | density (prunable / all) | MACs vs dense | wall (min) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for runs in _groups(records):
        worst = ", ".join(f"{r['worst_class']} {100 * r['worst_class_accuracy']:.1f}" for r in runs)
        # † a run started at its seed's branch point: its wall time leaves out the dense steps it shares.
        branched = "†" if any(r.get("branch_point_step") is not None for r in runs) else ""
        rows.append(
            f"| {runs[0]['arm']} | {runs[0]['target_density']:.2f} | {len(runs)} | "
            + " | ".join(_mean_spread([r[k] for r in runs]) for k in TABLE_KEYS[:5])
            + f" | {worst} | {statistics.mean(r['prunable_density'] for r in runs):.3f} / "
            f"{statistics.mean(r['overall_density'] for r in runs):.3f} | "
            f"{statistics.mean(r['macs_ratio'] for r in runs):.2f} | {statistics.mean(r['wall_seconds'] for r in runs) / 60:.1f}{branched} |"
        )
    if any(r.get("branch_point_step") is not None for r in records):
        rows.append("\n† started from the seed's branch point: the wall time leaves out the dense steps it shares")
    return "\n".join(rows)


def per_class_lines(records: list[dict]) -> str:
    """Per-class test accuracy of every run, one line each, in the table's order."""
    lines = [f"per class ({', '.join(records[0]['per_class_accuracy'])}):"] if records else []
    for runs in _groups(records):
        for r in runs:
            values = " ".join(f"{v:.3f}" for v in r["per_class_accuracy"].values())
            lines.append(f"- {r['arm']} {r['target_density']:.2f}, seed {r['seed']}: {values} (MACs {r['macs_ratio']:.3f}x)")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted({record["arm"] for record in records}, key=arm_order)
    rows = math.ceil(len(arms) / 4)  # of the legend, below the plots
    figure, axes = plt.subplots(1, 2, figsize=(10, 4 + 0.25 * rows), sharex=True)
    colors = plt.get_cmap("tab10")
    for arm in arms:
        by_target: dict[float, list[dict]] = {}
        for record in records:
            if record["arm"] == arm:
                by_target.setdefault(record["target_density"], []).append(record)
        points = sorted((statistics.mean(r["prunable_density"] for r in runs), runs) for runs in by_target.values())
        index, calibrated = arm_order(arm)  # an arm and its calibrated twin share a colour, the twin dashed
        for axis, key in zip(axes, ("accuracy", "tail3_accuracy")):
            axis.plot([d for d, _ in points], [100 * statistics.mean(r[key] for r in runs) for _, runs in points],
                      marker="o", label=arm, color=colors(index % colors.N), linestyle="--" if calibrated else "-")
    for axis, title in zip(axes, ("overall accuracy (%)", "tail-3 accuracy (%)")):
        axis.set_xscale("log")
        axis.set_xlabel("density of prunable weights")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize="small")
    figure.tight_layout(rect=(0, 0.06 * rows, 1, 1))
    figure.savefig(path, dpi=120)


def corrects_prior(arm: str) -> bool:
    """Whether `arm` corrects the class prior of its predictions itself: calibrated, or trained with a
    `pruning_loss` (the logit-adjusted loss of the *_la arms)."""
    return arm_order(arm)[1] or arm in PRUNING_LOSS_ARMS


def paired_tables(records: list[dict], reference: str = "magnitude") -> str:
    """Every arm (calibrated or not) against the `reference` arm (magnitude pruning) at its density, paired by
    seed, and every arm that corrects the class prior (`corrects_prior`) against the calibrated reference (the
    bar a method must clear once calibration is applied)."""
    tables = []
    every = _groups(records)
    corrected = [runs for runs in every if corrects_prior(runs[0]["arm"])]
    for groups, suffix in ((every, ""), (corrected, run_records.CALIBRATED)):
        reference_arm, dense = f"{reference}{suffix}", f"dense{suffix}"
        regime = paired.regime_lines(groups, reference_arm, dense)
        if regime:
            tables.append(f"paired by seed (percentage points):\n{regime}")
        table = paired.paired_table(groups, reference_arm, dense)
        if table:
            tables.append(f"paired by seed, against {reference_arm} (percentage points; tail-3 loss recovered: of "
                          f"{reference_arm}'s tail-3 loss against {dense}):\n{table}")
    return "\n\n".join(tables)


def report(rows: list[dict], results: Path, split: str = "test", reference: str = "magnitude") -> None:
    """Prints a table, the paired differences and the per-class lines, and draws a plot, for each regime
    among `rows`."""
    regimes: dict[tuple, list[dict]] = {}
    for row in rows:
        regimes.setdefault(tuple(row.get(key) for key in REGIME_FLAGS), []).append(row)
    for regime, runs in sorted(regimes.items(), key=lambda item: tuple(str(v) for v in item[0])):
        regime = dict(zip(REGIME_FLAGS, regime))
        if len(regimes) > 1 or regime_suffix(regime):
            print(f"\nregime: {regime_label(regime)}")
        print(table(runs))
        differences = paired_tables(runs, reference)
        if differences:
            print("\n" + differences)
        print("\n" + per_class_lines(runs))
        name = f"{results.stem}{regime_suffix(regime) if len(regimes) > 1 else ''}{'' if split == 'test' else f'_{split}'}"
        plot(runs, results.with_name(f"{name}.png"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="digits_lt")
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default=None, help="cpu30 for cifar10_lt, demo for digits_lt")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=[arm for arm in ARMS if arm not in PRUNING_LOSS_ARMS],
                        help="default: all but the *_la arms, which equal their twins under the recipe's Balanced "
                             "Softmax; run them with --loss ce")
    parser.add_argument("--densities", nargs="+", type=float, default=[0.3, 0.1, 0.05], help="weight arms")
    parser.add_argument("--channel-densities", nargs="+", type=float, default=[0.3, 0.15], help="channel arm (parameters)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--loss", choices=LOSS_NAMES, default=None, help="training loss (default: the recipe's, balanced_softmax)")
    parser.add_argument("--imbalance-ratio", type=float, default=None, help="of the training split (default: the recipe's)")
    parser.add_argument("--val-per-class", type=int, default=None,
                        help="validation images per class, drawn from the training images the long-tailed selection left "
                             "out (default: the dataset's, 20 for CIFAR-LT)")
    parser.add_argument("--val-shortfall", choices=("from_train", "leave_short"), default=None,
                        help="a class with too few left-out images (see load_lt_dataset; default: the dataset's)")
    parser.add_argument("--data-dir", default=None,
                        help="source of the dataset, or a folder written by export_parquet (default: ../shared/data/...)")
    parser.add_argument("--workers", type=int, default=0, help="dataloader workers per run")
    parser.add_argument("--run-flags", default="",
                        help="more flags for recipes/run_ltap.py, shared by every arm, as one string: "
                             "--run-flags='--num_train_epochs 4'")
    parser.add_argument("--results", type=Path, default=None,
                        help="JSON to merge into (default <results-dir>/<dataset>_<schedule>[_<regime>].json)")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder of the default results JSON (its records and branch points go beside it)")
    parser.add_argument("--no-branch", action="store_true", help="run every arm from step 0, not from its seed's branch point")
    parser.add_argument("--branch-dir", type=Path, default=None, help="branch points (default: branch_points/ beside the results)")
    parser.add_argument("--branch-point-only", action="store_true",
                        help="only make sure every seed has its branch point (training its dense arm where it has none)")
    parser.add_argument("--report-only", action="store_true", help="print the tables and draw the plots of the records and JSON only")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="the split the report reads from the records (validation: to make choices on; the "
                             "calibrated arms are then in-sample)")
    parser.add_argument("--reference", choices=[arm for arm in ARMS if arm != "dense"], default="magnitude",
                        help="the arm every other is paired with in the report (e.g. ltap, to read ltap_novote against it)")
    parser.add_argument("--no-report", action="store_true", help="run and merge only (many runs at once: report once after)")
    options = parser.parse_args(argv)
    schedule = options.schedule or ("cpu30" if options.dataset == "cifar10_lt" else "demo")
    regime = {"loss": options.loss, "imbalance_ratio": options.imbalance_ratio, "val_per_class": options.val_per_class,
              "val_shortfall": options.val_shortfall}
    results = options.results or options.results_dir / f"{options.dataset}_{schedule}{regime_suffix(regime)}.json"
    grid = Grid(options.dataset, schedule, options.data_dir or DATA_DIRS[options.dataset], options.workers, regime,
                tuple(shlex.split(options.run_flags)))
    branch_points = None if options.no_branch else BranchPoints(options.branch_dir or results.parent / "branch_points")

    if options.branch_point_only:
        if branch_points is None:
            parser.error("--branch-point-only makes branch points: drop --no-branch")
        for seed in options.seeds:
            run_cell(grid, None, 1.0, seed, results, branch_points)
    elif not options.report_only:
        for seed in options.seeds:
            for arm in options.arms:
                densities = [1.0] if arm == "dense" else options.channel_densities if arm == "ltap_channel" else options.densities
                for density in densities:
                    run_cell(grid, arm, density, seed, results, branch_points)
    if options.no_report:
        return
    rows = load_rows(results, schedule, options.split)
    if not rows:
        raise SystemExit(f"nothing to report: no {schedule} runs in {results} or {records_dir(results)}")
    print(f"\n{options.dataset}, schedule {schedule}, {options.split} split, results in {results}")
    report(rows, results, options.split, options.reference)


if __name__ == "__main__":
    main()
