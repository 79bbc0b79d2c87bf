"""benchmarks/accuracy.py keeps a record of every run, rebuilds its report from the records alone, and branches
the pruning arms of a seed from its dense run without changing what they end with.

One tiny grid on digits-LT (ResNet-20, 4 epochs of 7 steps: pruning stages at steps 14, 21 and 22, the
first scoring window from step 8 on, so the branch point is step 7), through the script's own `main`.
"""

import contextlib
import hashlib
import io
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ltap_hf import LTResNetConfig, LTResNetForImageClassification
from ltap_hf.calibration import fit_logit_bias
from ltap_hf.data import DATASET_STATS
from ltap_hf.pruning import full_masks, prunable_parameters


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import accuracy  # noqa: E402
import paired  # noqa: E402
import run_records  # noqa: E402


SHORT = "--num_train_epochs 4 --lr_milestones 3 4"
DENSITY = 0.3
BRANCH_STEP = 7


def _main(argv: list[str]) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        accuracy.main(argv)
    return printed.getvalue()


def _table(printed: str) -> str:
    """The report: from the table's header line to the end."""
    return printed[printed.index("| arm | target density |"):]


def _record(folder: Path, arm: str, density: float) -> dict:
    return run_records.read_record(folder / f"digits_lt_demo_{arm}_d{density:g}_seed0.json")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """dense, ltap and magnitude branched from the dense run; ltap once more straight through (--no-branch)."""
    root = tmp_path_factory.mktemp("grid")
    flags = ["--dataset", "digits_lt", "--densities", str(DENSITY), "--run-flags", f"{SHORT} --dataset_cache_dir {root / 'data'}"]
    printed = _main([*flags, "--arms", "dense", "ltap", "magnitude", "--results", str(root / "branched" / "digits.json")])
    _main([*flags, "--arms", "ltap", "--no-branch", "--no-report", "--results", str(root / "straight" / "digits.json")])
    return {"root": root, "flags": flags, "printed": printed, "results": root / "branched" / "digits.json",
            "records": root / "branched" / "digits_records", "straight": root / "straight" / "digits_records"}


def test_mask_hash_tells_masks_apart_by_value_shape_and_name():
    masks = {"a.weight": torch.ones(3, 4, dtype=torch.bool), "b.weight": torch.tensor([True, False, True])}
    same = {name: mask.clone() for name, mask in reversed(masks.items())}
    assert run_records.mask_sha256(same) == run_records.mask_sha256(masks)  # order of the dict does not matter
    flipped = {**masks, "a.weight": masks["a.weight"].clone()}
    flipped["a.weight"][2, 1] = False
    renamed = {"c.weight": masks["a.weight"], "b.weight": masks["b.weight"]}
    reshaped = {**masks, "a.weight": masks["a.weight"].reshape(4, 3)}
    hashes = {run_records.mask_sha256(m) for m in (masks, flipped, renamed, reshaped)}
    assert len(hashes) == 4


def test_a_run_records_predictions_stages_densities_and_mask_hash(grid):
    records = grid["records"]
    dense, ltap, magnitude = (_record(records, arm, d) for arm, d in (("dense", 1.0), ("ltap", DENSITY), ("magnitude", DENSITY)))
    saved = {(r["arm"], r["target_density"]): r for r in json.loads(grid["results"].read_text())}
    for record, criteria in ((dense, 5), (ltap, 5), (magnitude, 1)):
        arrays, row = record["arrays"], record["row"]
        assert arrays["test_logits"].dtype == np.float16 and arrays["test_logits"].shape == (500, 10)
        assert arrays["test_predictions"].dtype == np.int16 and arrays["test_predictions"].shape == (500,)
        assert np.bincount(arrays["test_labels"], minlength=10).tolist() == [50] * 10
        assert arrays["validation_logits"].shape == (100, 10)
        assert np.bincount(arrays["validation_labels"], minlength=10).tolist() == [10] * 10
        assert arrays["dense_test_predictions"].shape == (500,)
        # float16 logits give the stored predictions back (a tie made by rounding is the only exception)
        assert (arrays["test_logits"].astype(np.float32).argmax(-1) == arrays["test_predictions"]).mean() > 0.99
        # The accuracies recomputed from the stored predictions are the ones the run itself reported.
        rebuilt, merged = run_records.row_from_record(record), saved[(row["arm"], row["target_density"])]
        for key in (*run_records.ACCURACY_KEYS, "per_class_accuracy", "worst_class"):
            assert rebuilt[key] == merged[key], key
        assert merged["record"] == f"digits_records/digits_lt_demo_{row['arm']}_d{row['target_density']:g}_seed0.json"

        # One entry per stage: α (sums to 1), D·w, D (starts at 1, only grows), validation accuracy, density.
        assert record["stage_steps"] == [14, 21, 22] and record["criteria"] == list(record["ltap_settings"]["criteria"])
        assert arrays["stage_alpha"].shape == arrays["stage_weighted_votes"].shape == (3, criteria)
        np.testing.assert_allclose(arrays["stage_alpha"].sum(1), 1.0)
        assert arrays["stage_votes"].shape == (3, criteria, 10) and arrays["stage_validation_accuracy"].shape == (3, 10)
        assert (arrays["stage_votes"] >= 1).all() and (np.diff(arrays["stage_votes"], axis=0) >= 0).all()
        np.testing.assert_allclose(arrays["stage_density"][-1], row["target_density"], atol=1e-3)
        for stage, suppressed in enumerate(record["suppressed"]):
            if suppressed is not None:
                assert arrays["stage_alpha"][stage, record["criteria"].index(suppressed)] == 0

        # Per-layer densities: the pruner's, consistent with the row's prunable density.
        per_tensor = record["layer_density"]["per_tensor"]
        assert per_tensor == row["layer_density"]
        assert record["layer_density"]["prunable_density"] == pytest.approx(row["prunable_density"], abs=1e-6)
        assert row["mask_sha256"] == record["mask_sha256"]

    # The vote moved α only where it votes; magnitude alone keeps α = 1 and D untouched.
    assert (magnitude["arrays"]["stage_alpha"] == 1).all() and (magnitude["arrays"]["stage_votes"] == 1).all()
    # The dense run's hash is that of all-alive masks over the model's prunable weights.
    stats = DATASET_STATS["digits_lt"]
    model = LTResNetForImageClassification(LTResNetConfig.from_preset("resnet20", num_channels=stats.num_channels, num_labels=10))
    assert dense["mask_sha256"] == run_records.mask_sha256(full_masks(prunable_parameters(model)))
    # Different masks, different hashes.
    assert len({dense["mask_sha256"], ltap["mask_sha256"], magnitude["mask_sha256"]}) == 3


def test_report_only_rebuilds_the_table_and_plot_from_the_records_alone(grid, tmp_path):
    # Nothing but the records: no results JSON, no plot, no branch points, no data cache.
    alone = tmp_path / "alone"
    shutil.copytree(grid["records"], alone / "digits_records")
    printed = _main(["--dataset", "digits_lt", "--report-only", "--results", str(alone / "digits.json")])
    assert _table(printed) == _table(grid["printed"])
    assert "| ltap | 0.30 | 1 |" in printed and "- magnitude 0.30, seed 0: " in printed
    assert (alone / "digits.png").stat().st_size > 0
    assert sorted(p.name for p in alone.iterdir()) == ["digits.png", "digits_records"]

    # The records, not the JSON, are what is reported: a record's predictions changed, its row changes.
    record = json.loads((alone / "digits_records" / "digits_lt_demo_ltap_d0.3_seed0.json").read_text())
    arrays_path = alone / "digits_records" / record["arrays"]
    with np.load(arrays_path) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["test_predictions"] = arrays["test_labels"].copy()
    with open(arrays_path, "wb") as file:
        np.savez_compressed(file, **arrays)
    with pytest.raises(ValueError, match="SHA-256 differs"):  # arrays that are not the record's are refused
        _main(["--dataset", "digits_lt", "--report-only", "--results", str(alone / "digits.json")])
    record["arrays_sha256"] = hashlib.sha256(arrays_path.read_bytes()).hexdigest()
    (alone / "digits_records" / "digits_lt_demo_ltap_d0.3_seed0.json").write_text(json.dumps(record))
    assert "| ltap | 0.30 | 1 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |" in _main(
        ["--dataset", "digits_lt", "--report-only", "--results", str(alone / "digits.json")])


def test_rows_without_records_stay_reported_as_before(grid, tmp_path):
    # A row as the script wrote them before records (and regimes) existed, beside the grid's records.
    new_fields = ("record", *accuracy.REGIME_FLAGS, "branch_point_step", "mask_sha256")
    legacy = {key: value for key, value in json.loads(grid["results"].read_text())[0].items() if key not in new_fields}
    legacy.update(arm="ltap_novote", target_density=0.05, accuracy=0.5, tail3_accuracy=0.25, wall_seconds=600.0)
    results = tmp_path / "digits.json"
    results.write_text(json.dumps([legacy]))
    shutil.copytree(grid["records"], tmp_path / "digits_records")
    printed = _main(["--dataset", "digits_lt", "--report-only", "--results", str(results)])
    assert "| ltap_novote | 0.05 | 1 | 50.0 |" in printed and "| 25.0 |" in printed and "| 10.0 |" in printed
    assert "| dense | 1.00 | 1 |" in printed and "| ltap | 0.30 | 1 |" in printed

    # The project's results from before records are reported line for line as BENCHMARKS.md publishes them.
    published = (ROOT / "BENCHMARKS.md").read_text()
    # (BENCHMARKS.md lists the per-class lines of CIFAR-10-LT only.)
    for name, schedule, runs, groups, per_class in (("cifar10_lt_cpu30", "cpu30", 18, 12, True),
                                                    ("digits_lt_demo", "demo", 25, 5, False)):
        rows = accuracy.load_rows(ROOT / "benchmarks" / "results" / f"{name}.json", schedule)
        assert len(rows) == runs and not any(row.get("record") for row in rows)
        lines = accuracy.table(rows).splitlines() + (accuracy.per_class_lines(rows).splitlines()[1:] if per_class else [])
        assert len(lines) == 2 + groups + (runs if per_class else 0)
        assert [line for line in lines if line not in published] == [], name


def test_a_branched_arm_ends_as_the_arm_run_straight_through(grid):
    branched, straight = _record(grid["records"], "ltap", DENSITY), _record(grid["straight"], "ltap", DENSITY)
    assert branched["row"]["branch_point_step"] == BRANCH_STEP and straight["row"]["branch_point_step"] is None
    assert "--branch_from" in branched["flags"] and "--branch_from" not in straight["flags"]
    assert branched["mask_sha256"] == straight["mask_sha256"]
    for name in ("test_predictions", "test_logits", "validation_logits", "dense_test_predictions", "stage_alpha",
                 "stage_votes", "stage_validation_accuracy", "stage_density"):
        np.testing.assert_array_equal(branched["arrays"][name], straight["arrays"][name], err_msg=name)
    # The dense run made the branch point (and is itself a whole run from step 0).
    dense = _record(grid["records"], "dense", 1.0)
    assert dense["row"]["branch_point_step"] is None and "--save_branch_point" in dense["flags"]
    points = grid["root"] / "branched" / "branch_points"
    (point,) = [p for p in points.iterdir() if p.is_dir()]
    assert branched["branch_point"] == str(point / f"checkpoint-{BRANCH_STEP}")
    assert (points / ".gitignore").read_text() == "*\n"


def test_an_existing_branch_point_is_reused_and_other_settings_get_their_own(grid):
    dense_record = grid["records"] / "digits_lt_demo_dense_d1_seed0.json"
    before = dense_record.stat().st_mtime_ns
    # Another results file in the same folder: the same branch points, the grid's own records untouched.
    results = grid["results"].with_name("reuse.json")
    printed = _main([*grid["flags"], "--arms", "magnitude", "--densities", "0.5", "--no-report", "--results", str(results)])
    assert "branch point" in printed and ": found" in printed and "making it" not in printed
    assert dense_record.stat().st_mtime_ns == before and not (results.parent / "reuse_records" / dense_record.name).exists()
    assert _record(results.parent / "reuse_records", "magnitude", 0.5)["row"]["branch_point_step"] == BRANCH_STEP

    points = accuracy.BranchPoints(grid["root"])
    base = accuracy.Grid("digits_lt", "demo", run_flags=("--num_train_epochs", "4"))
    names = {points.name(base, 0), points.name(base, 1), points.name(accuracy.Grid("digits_lt", "demo"), 0),
             points.name(accuracy.Grid("digits_lt", "demo", regime={"loss": "ce"}, run_flags=base.run_flags), 0),
             points.name(accuracy.Grid("digits_lt", "demo", workers=2, run_flags=base.run_flags), 0)}
    assert len(names) == 5


def test_regime_options_reach_the_run_and_name_its_results(tmp_path):
    argv = ["--dataset", "digits_lt", "--arms", "dense", "--no-branch", "--no-report", "--loss", "ce",
            "--imbalance-ratio", "20", "--val-per-class", "5", "--run-flags", f"{SHORT} --dataset_cache_dir {tmp_path / 'data'}"]
    grid = accuracy.Grid("digits_lt", "demo", regime={"loss": "ce", "imbalance_ratio": 20.0, "val_per_class": 5})
    flags = grid.shared_flags(0)
    assert flags[flags.index("--loss") + 1] == "ce" and flags[flags.index("--imbalance_ratio") + 1] == "20"
    assert flags[flags.index("--val_per_class") + 1] == "5"
    assert accuracy.regime_suffix(grid.regime) == "_ce_ir20_val5" and accuracy.regime_suffix({}) == ""

    _main([*argv, "--results", str(tmp_path / "ce.json")])
    record = run_records.read_record(tmp_path / "ce_records" / "digits_lt_demo_dense_d1_seed0_ce_ir20_val5.json")
    assert record["ltap_settings"]["loss"] == "ce"
    counts = record["class_counts"]
    assert counts[0] / counts[-1] == pytest.approx(20, rel=0.1)
    assert np.bincount(record["arrays"]["validation_labels"], minlength=10).tolist() == [5] * 10
    (row,) = json.loads((tmp_path / "ce.json").read_text())
    assert (row["loss"], row["imbalance_ratio"], row["val_per_class"]) == ("ce", 20.0, 5)


def test_every_stage_votes_on_every_validation_class(grid):
    accuracy_by_stage = _record(grid["records"], "ltap", DENSITY)["arrays"]["stage_validation_accuracy"]
    assert not np.isnan(accuracy_by_stage).any()


def test_paired_difference_by_hand():
    # Seed 3 has no reference run and seed 4 no number: both are left out.
    arm, reference = {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.9, 4: math.nan}, {0: 0.4, 1: 0.4, 2: 0.6, 4: 0.5}
    difference = paired.paired_difference(arm, reference)
    # Differences of 10, 20 and 10 points: mean 40/3, standard deviation 10/sqrt(3), standard error 10/3,
    # t = 4 on 2 degrees of freedom, whose two-sided p-value is 1 - t / sqrt(t² + 2).
    assert difference.n == 3
    assert difference.mean == pytest.approx(40 / 3) and difference.se == pytest.approx(10 / 3)
    assert difference.p == pytest.approx(1 - 4 / math.sqrt(18))
    assert str(difference) == "+13.3 ± 3.3 (p 0.057)"
    single = paired.paired_difference({0: 0.25}, {0: 0.5, 1: 0.5})
    assert (single.mean, single.se, single.p, single.n, str(single)) == (-25.0, None, None, 1, "-25.0")
    assert paired.paired_difference({0: 0.5}, {1: 0.5}) is None
    assert math.isnan(paired.paired_difference({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5}).p)  # the same gain on every seed

    # Half of the reference's loss against dense won back: (0.1 + 0.2) / (0.2 + 0.4).
    assert paired.recovered_fraction({0: 0.2, 1: 0.3}, {0: 0.1, 1: 0.1}, {0: 0.3, 1: 0.5}) == pytest.approx(0.5)
    assert paired.recovered_fraction({0: 0.2}, {0: 0.3}, {0: 0.3}) is None  # no loss to win back

    # Against dense, seed 0 loses 20 points overall and 25 on tail-3, seed 1 10 and 30: 5 and 20 extra.
    dense = [{"arm": "dense", "target_density": 1.0, "seed": 0, "accuracy": 0.6, "tail3_accuracy": 0.3},
             {"arm": "dense", "target_density": 1.0, "seed": 1, "accuracy": 0.6, "tail3_accuracy": 0.4}]
    pruned = [{"arm": "magnitude", "target_density": 0.02, "seed": 0, "accuracy": 0.4, "tail3_accuracy": 0.05},
              {"arm": "magnitude", "target_density": 0.02, "seed": 1, "accuracy": 0.5, "tail3_accuracy": 0.1}]
    extra = paired.tail_extra_loss(pruned, dense)
    assert (extra.n, extra.mean, extra.se) == (2, pytest.approx(12.5), pytest.approx(7.5))
    assert paired.regime_lines([dense, pruned], "magnitude", "dense") == (
        "- magnitude at 0.02 loses against dense: overall +15.0 ± 5.0 (p 0.205), tail-3 +27.5 ± 2.5 (p 0.058); "
        f"the tail-3's extra loss {extra}")


def test_arms_that_correct_the_prior_themselves_are_paired_with_calibrated_magnitude():
    def runs(arm: str, density: float, accuracies: tuple[float, float], tail3: float) -> list[dict]:
        return [{"arm": arm, "target_density": density, "seed": seed, "macs_ratio": density,
                 **dict.fromkeys(paired.PAIRED_KEYS, accuracy), "tail3_accuracy": tail3}
                for seed, accuracy in enumerate(accuracies)]

    records = [*runs("dense", 1.0, (0.6, 0.6), 0.3), *runs("dense+calibration", 1.0, (0.62, 0.62), 0.5),
               *runs("magnitude", 0.05, (0.5, 0.5), 0.1), *runs("magnitude+calibration", 0.05, (0.55, 0.55), 0.4),
               *runs("ltap", 0.05, (0.52, 0.52), 0.15), *runs("magnitude_la", 0.05, (0.56, 0.58), 0.45)]
    against_calibrated = accuracy.paired_tables(records).split("against magnitude+calibration")[1]
    # 1 and 3 points overall: t = 2 on 1 degree of freedom, p = 1 - 2 atan(2) / pi. Tail-3 wins back 5 of the
    # 10 points calibrated magnitude loses against calibrated dense.
    assert "| magnitude_la | 0.05 | 2 | +2.0 ± 1.0 (p 0.295) |" in against_calibrated
    assert "| +5.0 ± 0.0 (p n/a) | +2.0 ± 1.0 (p 0.295) | 50% | 0.050 |" in against_calibrated
    assert "| ltap |" not in against_calibrated  # its predictions keep the training prior
    # Any arm can be the reference: ltap against magnitude_la loses 4 and 6 points overall, 30 on tail-3.
    against_la = accuracy.paired_tables(records, reference="magnitude_la")
    assert "against magnitude_la (" in against_la and "| ltap | 0.05 | 2 | -5.0 ± 1.0 (p 0.126) |" in against_la


def test_the_report_pairs_each_arm_with_magnitude_and_calibrates_on_validation_only(grid):
    records = grid["records"]
    ltap, magnitude = _record(records, "ltap", DENSITY), _record(records, "magnitude", DENSITY)
    rows = {r["row"]["arm"]: run_records.row_from_record(r) for r in (ltap, magnitude)}
    difference = 100 * (rows["ltap"]["accuracy"] - rows["magnitude"]["accuracy"])
    assert "paired by seed, against magnitude (" in grid["printed"]
    assert f"| ltap | {DENSITY:.2f} | 1 | {difference:+.1f} | " in grid["printed"]

    # The calibrated twin: the bias fitted on the validation logits, added to the test logits.
    arrays = ltap["arrays"]
    fit = fit_logit_bias(arrays["validation_logits"].astype(np.float64), arrays["validation_labels"].astype(np.int64),
                         ltap["class_counts"])
    twin = run_records.calibrated_record(ltap)
    assert twin["row"]["arm"] == "ltap+calibration" and twin["row"]["calibration"]["method"] == fit.method
    np.testing.assert_allclose(twin["row"]["calibration"]["bias"], fit.bias.numpy())
    calibrated = (arrays["test_logits"].astype(np.float32) + fit.bias.numpy()).argmax(-1)
    np.testing.assert_array_equal(twin["arrays"]["test_predictions"], calibrated)
    # On validation it scores what the fit says it scores; the test logits play no part in the fit.
    validation = run_records.row_from_record(twin, "validation")["per_class_accuracy"].values()
    assert np.mean(list(validation)) == pytest.approx(fit.balanced_accuracy_after, abs=0.02)
    flipped = run_records.calibrated_record({**ltap, "arrays": {**arrays, "test_logits": -arrays["test_logits"]}})
    assert flipped["row"]["calibration"] == twin["row"]["calibration"]
    assert f"| ltap+calibration | {DENSITY:.2f} | 1 |" in grid["printed"]
    assert "paired by seed, against magnitude+calibration (" in grid["printed"]


def test_a_report_on_the_validation_split_reads_the_validation_predictions(grid, tmp_path):
    shutil.copytree(grid["records"], tmp_path / "digits_records")
    printed = _main(["--dataset", "digits_lt", "--report-only", "--split", "validation", "--results", str(tmp_path / "digits.json")])
    arrays = _record(grid["records"], "dense", 1.0)["arrays"]
    accuracy_ = (arrays["validation_predictions"] == arrays["validation_labels"]).mean()
    assert "validation split" in printed and f"| dense | 1.00 | 1 | {100 * accuracy_:.1f} |" in printed
    assert (tmp_path / "digits_validation.png").stat().st_size > 0 and not (tmp_path / "digits.png").exists()
