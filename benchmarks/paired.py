"""Paired differences between the arms of a grid: every arm against a reference arm at the same target
density, seed by seed (the runs of one seed share their data, initialisation and dense phase), with the
mean difference, its standard error and the p-value of a two-sided paired t-test."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


# Row field -> column title, in the order of the table.
PAIRED_KEYS = {"accuracy": "overall", "many_accuracy": "many", "medium_accuracy": "medium", "few_accuracy": "few",
               "tail3_accuracy": "tail-3", "worst_class_accuracy": "worst class"}


@dataclass(frozen=True)
class PairedDifference:
    """`arm − reference` in percentage points over `n` seeds; `se` and `p` are None for a single seed."""

    mean: float
    se: float | None
    p: float | None
    n: int

    def __str__(self) -> str:
        if self.se is None:
            return f"{self.mean:+.1f}"
        p = "n/a" if math.isnan(self.p) else f"{self.p:.3f}" if self.p >= 0.001 else f"{self.p:.0e}"
        return f"{self.mean:+.1f} ± {self.se:.1f} (p {p})"


def paired_difference(runs: dict[int, float], reference: dict[int, float]) -> PairedDifference | None:
    """The difference of two arms' values (fractions, by seed) over the seeds both have a number for; None
    if there are none."""
    seeds = [s for s in sorted(runs.keys() & reference.keys()) if runs[s] == runs[s] and reference[s] == reference[s]]
    differences = [100 * (runs[s] - reference[s]) for s in seeds]
    if not differences:
        return None
    if len(differences) == 1:
        return PairedDifference(differences[0], None, None, 1)
    from scipy import stats  # only to report: a training run (accuracy.py without a report) does not need it

    se = statistics.stdev(differences) / math.sqrt(len(differences))
    # A difference equal on every seed has no spread to test against: its p-value is undefined (nan).
    p = float(stats.ttest_1samp(differences, 0.0).pvalue) if se > 0 else math.nan
    return PairedDifference(statistics.mean(differences), se, p, len(differences))


def recovered_fraction(runs: dict[int, float], reference: dict[int, float], dense: dict[int, float]) -> float | None:
    """How much of the reference's loss against dense an arm wins back, over the seeds all three have:
    mean(arm − reference) / mean(dense − reference). 1 is all of it, 0 none, < 0 a further loss; None
    without common seeds or without a loss to win back."""
    seeds = sorted(runs.keys() & reference.keys() & dense.keys())
    gained = sum(runs[s] - reference[s] for s in seeds)
    lost = sum(dense[s] - reference[s] for s in seeds)
    return gained / lost if seeds and lost > 0 else None


def tail_extra_loss(runs: list[dict], dense: list[dict]) -> PairedDifference | None:
    """How many more points the arm loses against dense on its tail-3 than overall, paired by seed:
    (dense − arm) on tail-3 minus (dense − arm) overall. Positive: the pruning hurts the rarest classes
    more than the rest."""
    return paired_difference(_tail_gap(dense), _tail_gap(runs))


def _tail_gap(rows: list[dict]) -> dict[int, float]:
    """Seed -> tail-3 accuracy minus overall accuracy."""
    return {r["seed"]: r["tail3_accuracy"] - r["accuracy"] for r in rows}


def regime_lines(groups: list[list[dict]], arm: str, dense: str) -> str:
    """One line per density of `arm`: its loss against `dense`, overall and on tail-3, and the tail's extra loss."""
    by_arm = {(runs[0]["arm"], runs[0]["target_density"]): runs for runs in groups}
    dense_runs = by_arm.get((dense, 1.0), [])
    lines = []
    for (name, density), runs in by_arm.items():
        extra = tail_extra_loss(runs, dense_runs) if name == arm else None
        if extra is None:
            continue
        loss = {key: paired_difference({r["seed"]: r[key] for r in dense_runs}, {r["seed"]: r[key] for r in runs})
                for key in ("accuracy", "tail3_accuracy")}
        lines.append(f"- {arm} at {density:.2f} loses against {dense}: overall {loss['accuracy']}, tail-3 "
                     f"{loss['tail3_accuracy']}; the tail-3's extra loss {extra}")
    return "\n".join(lines)


def paired_table(groups: list[list[dict]], reference: str, dense: str) -> str:
    """Every arm of `groups` (lists of one arm's runs at one target density) against the `reference` arm at the
    same density, paired by seed; `dense` names the unpruned arm whose tail-3 the reference's loss is measured
    from. Empty if the grid has no `reference` run."""
    by_arm = {(runs[0]["arm"], runs[0]["target_density"]): runs for runs in groups}
    dense_runs = {r["seed"]: r["tail3_accuracy"] for r in by_arm.get((dense, 1.0), [])}
    lines = [f"| arm | target density | seeds | {' | '.join(PAIRED_KEYS.values())} | tail-3 loss recovered | MACs vs dense |",
             "|---|---|---|" + "---|" * (len(PAIRED_KEYS) + 2)]
    for (arm, density), runs in by_arm.items():
        base = by_arm.get((reference, density))
        if base is None or arm in (reference, dense):
            continue
        values = {key: {r["seed"]: r[key] for r in runs} for key in PAIRED_KEYS}
        base_values = {key: {r["seed"]: r[key] for r in base} for key in PAIRED_KEYS}
        differences = [paired_difference(values[key], base_values[key]) for key in PAIRED_KEYS]
        seeds = max((d.n for d in differences if d is not None), default=0)
        recovered = recovered_fraction(values["tail3_accuracy"], base_values["tail3_accuracy"], dense_runs)
        lines.append(f"| {arm} | {density:.2f} | {seeds} | " + " | ".join("n/a" if d is None else str(d) for d in differences)
                     + f" | {'n/a' if recovered is None else f'{100 * recovered:.0f}%'} | "
                     f"{statistics.mean(r['macs_ratio'] for r in runs):.3f} |")
    return "\n".join(lines) if len(lines) > 2 else ""
