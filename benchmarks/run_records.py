"""What one benchmark run did, kept beside its summary row, so that every table and plot can be rebuilt,
and new questions asked of old runs, without training again.

A record is two files named after the run (`<run id>.json` and `<run id>.npz`, no pickle):

- `.json`: `format_version`; `row` (the run's summary row as `benchmarks/accuracy.py` merges it into its
  results JSON; its accuracy fields are recomputed from the predictions below when read back);
  `class_names`, `class_counts` (training images per class); `criteria` (the vote's, in the order of the
  per-stage arrays); `stage_steps` (optimizer steps of the pruning stages) and `suppressed` (the
  criterion each stage's vote left out, or null); `layer_density` (`trainer.pruner.density_report`:
  per tensor, and per channel group for the channel arm); `mask_sha256` (SHA-256 of the final masks,
  see `mask_sha256`); `ltap_settings`; `flags` (what `recipes/run_ltap.py` was given); `branch_point`
  (where the run started, or null for a run from step 0).
- `.npz` (`numpy.savez_compressed`; read with `allow_pickle=False`), N test / V validation images, C
  classes, S stages, K criteria:
  `test_logits` float16 [N, C], `test_predictions` int16 [N] (argmax of the float32 logits),
  `test_labels` int16 [N]; the same three for `validation_*` [V, ...]; `dense_test_predictions` int16 [N]
  (the network at the end of its dense phase, when the run recorded it);
  `stage_alpha` float64 [S, K] (α each stage scored with), `stage_weighted_votes` float64 [S, K] (D·w),
  `stage_votes` float64 [S, K, C] (D after the stage's vote), `stage_validation_accuracy` float64 [S, C]
  (the per-class validation accuracy the vote read; NaN for a class without validation images),
  `stage_target_density` and `stage_density` float64 [S].
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from ltap_hf.calibration import fit_logit_bias
from ltap_hf.metrics import long_tail_accuracy


FORMAT_VERSION = 1
# The arm name of a run's post-hoc calibrated twin (`calibrated_record`).
CALIBRATED = "+calibration"
# The row fields a record recomputes from its test predictions (the rest it keeps as written).
ACCURACY_KEYS = ("accuracy", "many_accuracy", "medium_accuracy", "few_accuracy", "tail3_accuracy", "worst_class_accuracy")


def mask_sha256(masks: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a set of masks (`{name: bool tensor}`), over their names, shapes and values in name order:
    equal for two runs exactly when they keep the same units."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        mask = masks[name].detach().to("cpu", torch.uint8).contiguous()
        digest.update(f"{name}:{tuple(mask.shape)};".encode())
        digest.update(mask.numpy().tobytes())
    return digest.hexdigest()


class StageRecorder(TrainerCallback):
    """Copies the vote's inputs and state after every pruning stage: the per-class validation accuracy it read
    and the vote counts D. Added after `LTAPTrainer`'s own callback, so it runs after the stage."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.stages: list[dict] = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.trainer.stage_steps:
            vote = self.trainer.pruner.vote
            accuracy = vote.previous_accuracy.clone()
            accuracy[~vote.previous_has_validation] = math.nan
            self.stages.append({"step": state.global_step, "validation_accuracy": accuracy, "votes": vote.votes.clone()})


class BranchPointPublisher(TrainerCallback):
    """Hands the branch-point checkpoint (`save_branch_point`) to `publish(folder)` as soon as it is written,
    so that other arms can start from it while this run trains on."""

    def __init__(self, trainer, publish: Callable[[Path], None]):
        self.trainer, self.publish, self.published = trainer, publish, False

    def on_save(self, args, state, control, **kwargs):
        # The trainer saves its branch point at the last step before the first scoring window.
        if args.save_branch_point and not self.published and state.global_step == self.trainer._accumulate_from:
            self.publish(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            self.published = True


@contextlib.contextmanager
def watching_trainers(module, publish: Callable[[Path], None] | None = None):
    """While open, every `LTAPTrainer` that `module` (e.g. `recipes/run_ltap.py`) builds records its stages and
    predictions (`trainer.stage_recorder`, `trainer.recorded_predictions`: metric prefix -> PredictionOutput)
    and, with `publish`, hands over its branch point. Yields the list of the trainers built.

    The entry point builds its trainer inside `main`; watching it this way runs the product's own code path
    unchanged rather than a copy of it.
    """
    built: list = []
    original = module.LTAPTrainer

    class RecordingLTAPTrainer(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.stage_recorder = StageRecorder(self)
            self.recorded_predictions: dict = {}
            self.add_callback(self.stage_recorder)
            if publish is not None:
                self.branch_point_publisher = BranchPointPublisher(self, publish)
                self.add_callback(self.branch_point_publisher)
            built.append(self)

        def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
            output = super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            self.recorded_predictions[metric_key_prefix] = output
            return output

    module.LTAPTrainer = RecordingLTAPTrainer
    try:
        yield built
    finally:
        module.LTAPTrainer = original


def _logits_and_labels(output) -> tuple[np.ndarray, np.ndarray]:
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    labels = output.label_ids[0] if isinstance(output.label_ids, tuple) else output.label_ids
    return np.asarray(logits, dtype=np.float32), np.asarray(labels)


def _prediction_arrays(prefix: str, output, num_classes: int) -> dict[str, np.ndarray]:
    logits, labels = _logits_and_labels(output)
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"{prefix} predictions have shape {logits.shape}, expected [N, {num_classes}]")
    return {f"{prefix}_logits": logits.astype(np.float16), f"{prefix}_predictions": logits.argmax(-1).astype(np.int16),
            f"{prefix}_labels": labels.astype(np.int16)}


def collect(trainer) -> tuple[dict, dict[str, np.ndarray]]:
    """What a finished run did, read from its trainer: (JSON-ready fields, arrays); see the module docstring.

    Predicts the validation split once more with the final model (the run itself evaluates only the test
    split at the end); the test predictions are the ones the run's own evaluation made.
    """
    num_classes = len(trainer.class_counts)
    if num_classes >= 2**15:
        raise ValueError(f"{num_classes} classes do not fit the records' int16 class ids")
    model = trainer.accelerator.unwrap_model(trainer.model)
    predictions = trainer.recorded_predictions
    if "test" not in predictions:
        raise ValueError("the run made no test predictions to record")
    trainer.predict(trainer.vote_dataset, metric_key_prefix="validation")
    arrays = {**_prediction_arrays("test", predictions["test"], num_classes),
              **_prediction_arrays("validation", predictions["validation"], num_classes)}
    if "dense_test" in predictions:
        dense = _prediction_arrays("dense_test", predictions["dense_test"], num_classes)
        arrays["dense_test_predictions"] = dense["dense_test_predictions"]

    criteria = list(trainer.pruner.vote.criteria)
    logs = [log for log in trainer.state.log_history if "ltap/stage" in log]
    stages = trainer.stage_recorder.stages
    if [int(log["ltap/stage"]) for log in logs] != list(range(len(stages))) or len(stages) != len(trainer.stage_steps):
        raise ValueError(f"the run logged stages {[log['ltap/stage'] for log in logs]} and recorded {len(stages)} of "
                         f"{len(trainer.stage_steps)}: a record needs every stage of one run from its first stage on")
    num_stages, num_criteria = len(stages), len(criteria)

    def per_criterion(key: str) -> np.ndarray:
        values = [[log[f"ltap/{key}/{c}"] for c in criteria] for log in logs]
        return np.array(values, dtype=np.float64).reshape(num_stages, num_criteria)

    arrays.update({
        "stage_alpha": per_criterion("alpha"),
        "stage_weighted_votes": per_criterion("weighted_votes"),
        "stage_votes": np.array([s["votes"].numpy() for s in stages]).reshape(num_stages, num_criteria, num_classes),
        "stage_validation_accuracy": np.array([s["validation_accuracy"].numpy() for s in stages]).reshape(num_stages, num_classes),
        "stage_target_density": np.array([log["ltap/target_density"] for log in logs], dtype=np.float64),
        "stage_density": np.array([log["ltap/density"] for log in logs], dtype=np.float64),
    })
    suppressed = [criteria[int(log["ltap/suppressed_index"])] if log["ltap/suppressed_index"] >= 0 else None for log in logs]
    fields = {
        "class_names": [str(model.config.id2label[c]) for c in range(num_classes)],
        "class_counts": list(trainer.class_counts),
        "criteria": criteria,
        "stage_steps": [s["step"] for s in stages],
        "suppressed": suppressed,
        "layer_density": json.loads(json.dumps(trainer.pruner.density_report(model), default=float)),
        "mask_sha256": mask_sha256(trainer.pruner.alive),
        "ltap_settings": json.loads(json.dumps(trainer.args.ltap_settings(), default=str)),
    }
    return fields, arrays


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_record(folder: Path, run_id: str, row: dict, fields: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Writes `<folder>/<run_id>.npz`, then `<folder>/<run_id>.json` (each atomically; the JSON names the arrays
    and their SHA-256, so a reader never pairs a JSON with another run's arrays). Returns the JSON's path."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays_path = folder / f"{run_id}.npz"

    def save_arrays(path: Path) -> None:
        with open(path, "wb") as file:  # a file object: numpy would append ".npz" to a name without it
            np.savez_compressed(file, **arrays)

    _atomic(arrays_path, save_arrays)
    record = {"format_version": FORMAT_VERSION, "row": row, **fields,
              "arrays": arrays_path.name, "arrays_sha256": hashlib.sha256(arrays_path.read_bytes()).hexdigest()}
    path = folder / f"{run_id}.json"
    _atomic(path, lambda p: p.write_text(json.dumps(record, indent=1)))
    return path


def read_record(path: Path) -> dict:
    """A record's JSON fields plus `"arrays"`: {name: numpy array}. Refuses arrays that are not the ones the
    JSON was written with."""
    record = json.loads(Path(path).read_text())
    if record.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {record.get('format_version')}, this script reads {FORMAT_VERSION}")
    arrays_path = Path(path).with_name(record["arrays"])
    if hashlib.sha256(arrays_path.read_bytes()).hexdigest() != record["arrays_sha256"]:
        raise ValueError(f"{arrays_path} is not the file {path} was written with (SHA-256 differs): run it again")
    with np.load(arrays_path, allow_pickle=False) as arrays:
        record["arrays"] = {name: arrays[name] for name in arrays.files}
    return record


def row_from_record(record: dict, split: str = "test") -> dict:
    """The summary row of a record, its accuracy fields (overall, groups, tail-3, worst class, per class)
    computed from the stored predictions of `split` ("test", or "validation" to make choices on)."""
    arrays, names = record["arrays"], record["class_names"]
    accuracy = long_tail_accuracy(arrays[f"{split}_predictions"].astype(np.int64), arrays[f"{split}_labels"].astype(np.int64),
                                  record["class_counts"])
    per_class = accuracy["per_class_accuracy"]
    worst = min(range(len(per_class)), key=lambda c: per_class[c])
    return {**record["row"], **{key: float(accuracy[key]) for key in ACCURACY_KEYS},
            "worst_class": names[worst], "per_class_accuracy": dict(zip(names, per_class))}


def calibrated_record(record: dict) -> dict | None:
    """The record as if the run had ended with `run_ltap --calibrate`: a per-class logit bias fitted on its
    validation logits (`ltap_hf.calibration.fit_logit_bias`, the same choice between tau * log prior and a
    fitted C-vector) added to its test and validation logits, the arm named `<arm>+calibration`, and the
    fit in `row["calibration"]`. None for a run without validation images.

    The logits are the stored float16 ones, so a prediction can differ from the float32 network's where
    two classes tie within float16 rounding. On the validation split the calibrated accuracies are
    in-sample (the bias was fitted there).
    """
    arrays = record["arrays"]
    if arrays["validation_labels"].size == 0:
        return None
    fit = fit_logit_bias(arrays["validation_logits"].astype(np.float64), arrays["validation_labels"].astype(np.int64),
                         record["class_counts"])
    bias = fit.bias.numpy().astype(np.float32)
    predictions = {f"{split}_predictions": (arrays[f"{split}_logits"].astype(np.float32) + bias).argmax(-1).astype(np.int16)
                   for split in ("test", "validation")}
    row = {**record["row"], "arm": f"{record['row']['arm']}{CALIBRATED}",
           "calibration": {"method": fit.method, "tau": fit.tau, "bias": [float(b) for b in bias]}}
    return {**record, "row": row, "arrays": {**arrays, **predictions}}


__all__ = ["CALIBRATED", "BranchPointPublisher", "StageRecorder", "calibrated_record", "collect", "mask_sha256",
           "read_record", "row_from_record", "watching_trainers", "write_record"]
