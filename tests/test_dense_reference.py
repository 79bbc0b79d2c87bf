"""DenseReferenceCallback: the dense network's per-class test accuracy, recorded at the end of the dense
phase of an LTAP run, kept across checkpoint resumes, without changing what the run does."""

import copy
import json

import pytest
import torch
from transformers import TrainerCallback

from ltap_hf.dense_reference import DenseReferenceCallback
from ltap_hf.evaluation import evaluate_long_tail, weight_density
from ltap_hf.models import LTResNetConfig, LTResNetForImageClassification
from ltap_hf.trainer import LTAPConfig, LTAPTrainer

from toy_data import TOY_COUNTS, augmented_toy_splits, toy_split


TEST_SPLIT = toy_split([6] * len(TOY_COUNTS), seed=2)


def _trainer(output_dir, **kwargs) -> LTAPTrainer:
    defaults = dict(
        output_dir=str(output_dir), num_train_epochs=4, per_device_train_batch_size=16, learning_rate=0.05,
        optim="sgd", report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
        prune_start=0.4, prune_end=0.8, target_density=0.3, seed=0, data_seed=0, logging_steps=1000,
    )
    torch.manual_seed(0)
    model = LTResNetForImageClassification(LTResNetConfig.from_preset("resnet20", num_labels=len(TOY_COUNTS)))
    train, validation = augmented_toy_splits()  # augmentation draws from torch's global RNG
    return LTAPTrainer(model=model, args=LTAPConfig(**{**defaults, **kwargs}), train_dataset=train,
                       eval_dataset=validation, class_counts=TOY_COUNTS)


class SnapshotBeforeFirstStage(TrainerCallback):
    """A copy of the model's state right after the optimizer update of the first stage's step."""

    def __init__(self, trainer):
        self.trainer, self.state_dict = trainer, None

    def on_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.trainer.stage_steps[0]:
            self.state_dict = copy.deepcopy(self.trainer.model.state_dict())


def _evaluate_snapshot(state_dict) -> dict:
    model = LTResNetForImageClassification(LTResNetConfig.from_preset("resnet20", num_labels=len(TOY_COUNTS)))
    model.load_state_dict(state_dict)
    return evaluate_long_tail(model, TEST_SPLIT, TOY_COUNTS)


@pytest.mark.parametrize("prune_start", [0.4, 0.8])  # 0.8: a one-stage schedule prunes to the target at once
def test_records_the_dense_network_before_the_first_stage_prunes(tmp_path, prune_start):
    trainer = _trainer(tmp_path, prune_start=prune_start)
    snapshot = SnapshotBeforeFirstStage(trainer)
    reference = DenseReferenceCallback(trainer, TEST_SPLIT)
    trainer.add_callback(snapshot)
    trainer.add_callback(reference)
    trainer.train()

    assert reference.step == trainer.stage_steps[0]
    assert (len(trainer.stage_steps) > 1) == (prune_start == 0.4)
    dense = _evaluate_snapshot(snapshot.state_dict)
    assert dense["density"]["prunable_density"] == 1.0 and reference.prunable_density == 1.0
    assert reference.accuracy["per_class_accuracy"] == dense["accuracy"]["per_class_accuracy"]
    assert reference.accuracy["few_accuracy"] == dense["accuracy"]["few_accuracy"]
    # the model the run ends with is the pruned one, not what was recorded
    assert weight_density(trainer.model)["prunable_density"] == pytest.approx(0.3, abs=1e-3)


def test_recording_the_dense_network_does_not_change_the_run(tmp_path):
    plain = _trainer(tmp_path / "plain")
    plain.train()
    recorded = _trainer(tmp_path / "recorded")
    reference = DenseReferenceCallback(recorded, TEST_SPLIT)
    recorded.add_callback(reference)
    recorded.train()
    assert reference.accuracy is not None
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(tensor, recorded.model.state_dict()[name]), name


@pytest.mark.parametrize("restore_callback_states", [False, True])
def test_the_record_survives_a_resume_from_a_checkpoint_after_the_dense_phase(tmp_path, restore_callback_states):
    full = _trainer(tmp_path, save_strategy="steps", save_steps=16)
    full_reference = DenseReferenceCallback(full, TEST_SPLIT)
    full.add_callback(full_reference)
    full.train()
    first_stage = full.stage_steps[0]
    assert first_stage < 16 and full_reference.accuracy is not None
    saved = json.loads((tmp_path / "checkpoint-16" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["DenseReferenceCallback"]["attributes"]["record"]["step"] == first_stage

    # Resumed past the dense phase: its step never runs again, so the record can only come from the checkpoint.
    resumed = _trainer(tmp_path, save_strategy="steps", save_steps=16,
                       restore_callback_states_from_checkpoint=restore_callback_states)
    reference = DenseReferenceCallback(resumed, TEST_SPLIT)
    resumed.add_callback(reference)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-16"))
    assert reference.step == first_stage
    assert reference.accuracy["per_class_accuracy"] == full_reference.accuracy["per_class_accuracy"]
    live = [cb for cb in resumed.callback_handler.callbacks if isinstance(cb, DenseReferenceCallback)]
    assert len(live) == 1 and live[0].accuracy == reference.accuracy
