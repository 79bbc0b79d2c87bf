"""When to prune and how much: the stage steps and the cubic density schedule of Zhu & Gupta (2017)."""

from __future__ import annotations


def cubic_density_at(progress: float, target_density: float) -> float:
    """Density d = d_f + (1 − d_f)(1 − progress)³ of Zhu & Gupta (2017), with progress = (t − t₀)/(t_end − t₀).

    Args:
        progress: position in the pruning window, in [0, 1] (0: its start, 1: its end).
        target_density: d_f, the final fraction of prunable units kept, in (0, 1].
    """
    if not 0 <= progress <= 1:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    if not 0 < target_density <= 1:
        raise ValueError(f"target_density must be in (0, 1], got {target_density}")
    if progress == 1:
        return float(target_density)
    return target_density + (1.0 - target_density) * (1.0 - progress) ** 3


def cubic_density(stage: int, num_stages: int, target_density: float) -> float:
    """Density to reach at pruning stage t of `num_stages` evenly spaced ones (T = num_stages − 1).

    Stage 0 keeps everything (1.0) and the last stage lands exactly on `target_density`; with a
    single stage it goes straight to the target.

    Args:
        stage: t, in [0, num_stages).
        num_stages: number of pruning stages, >= 1.
        target_density: d_f, the final fraction of prunable units kept, in (0, 1].
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    if not 0 <= stage < num_stages:
        raise ValueError(f"stage must be in [0, {num_stages}), got {stage}")
    return cubic_density_at(stage / (num_stages - 1) if num_stages > 1 else 1.0, target_density)


def stage_steps(start_step: int, end_step: int, interval_steps: int) -> list[int]:
    """Optimizer steps at which pruning stages run: start, start + interval, ..., and end.

    When `end_step − start_step` is not a multiple of the interval, the last gap is shorter so that
    the schedule still ends at `end_step`. `start_step == end_step` gives a single (one-shot) stage.
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if end_step < start_step:
        raise ValueError(f"end_step must be >= start_step ({start_step}), got {end_step}")
    if interval_steps < 1:
        raise ValueError(f"interval_steps must be >= 1, got {interval_steps}")
    steps = list(range(start_step, end_step, interval_steps))
    steps.append(end_step)
    return steps
