import json

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification, TrainerCallback

from ltap_hf import LTResNetConfig, LTResNetForImageClassification, model_cost
from ltap_hf.pruning.schedule import cubic_density
from ltap_hf.trainer import STATE_CONFIG_NAME, STATE_WEIGHTS_NAME, LTAPConfig, LTAPTrainer

from toy_data import TOY_COUNTS, toy_splits


def _args(output_dir, **kwargs) -> LTAPConfig:
    defaults = dict(
        output_dir=str(output_dir), num_train_epochs=6, per_device_train_batch_size=16, learning_rate=0.05,
        optim="sgd", weight_decay=2e-4, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
        prune_start=0.3, prune_end=0.8, target_density=0.3, seed=0, data_seed=0, logging_steps=1000,
    )
    return LTAPConfig(**{**defaults, **kwargs})


def _model(seed: int = 0) -> LTResNetForImageClassification:
    torch.manual_seed(seed)
    return LTResNetForImageClassification(LTResNetConfig.from_preset("resnet20", num_labels=len(TOY_COUNTS)))


def _trainer(output_dir, model=None, **kwargs) -> LTAPTrainer:
    train, validation = toy_splits()
    return LTAPTrainer(model=model or _model(), args=_args(output_dir, **kwargs), train_dataset=train,
                       eval_dataset=validation, class_counts=TOY_COUNTS)


def _stage_logs(trainer: LTAPTrainer) -> list[dict]:
    return [log for log in trainer.state.log_history if "ltap/density" in log]


def test_density_follows_the_cubic_schedule_and_pruned_weights_stay_zero(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train()
    stages = _stage_logs(trainer)
    # 48 optimizer steps: stages from step round(0.3*48)=14 to round(0.8*48)=38, one epoch (8 steps) apart.
    assert [log["step"] for log in stages] == [14, 22, 30, 38]
    units = sum(m.numel() for m in trainer.pruner.masks.values())
    for t, log in enumerate(stages):
        assert log["ltap/target_density"] == pytest.approx(cubic_density(t, 4, 0.3))
        assert log["ltap/density"] == pytest.approx(log["ltap/target_density"], abs=1.5 / units)
        assert sum(log[f"ltap/alpha/{c}"] for c in trainer.args.criteria) == pytest.approx(1.0)
    assert stages[0]["ltap/density"] == 1.0 and stages[-1]["ltap/density"] == pytest.approx(0.3, abs=1e-4)
    # Masks are re-applied after every optimizer step of the fine-tuning phase: zeros stay exact +0.0.
    for name, weight in trainer.pruner.parameters.items():
        pruned = weight[~trainer.pruner.masks[name]]
        assert torch.equal(pruned, torch.zeros_like(pruned)) and not pruned.signbit().any()
    metrics = trainer.evaluate()
    assert {"eval_accuracy", "eval_many_accuracy", "eval_worst_class_accuracy", "eval_tail3_accuracy"} <= set(metrics)


def test_scores_accumulate_once_per_optimizer_step_with_gradient_accumulation(tmp_path):
    trainer = _trainer(tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=2, prune_end=0.3)
    window = []

    class RecordWindow(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            if state.global_step + 1 == 14:  # the optimizer step that ends with the only stage
                window.append(trainer.pruner.accumulator.num_steps)

    trainer.add_callback(RecordWindow())
    trainer.train()
    # 96 micro-batches make 48 optimizer steps; the single stage at step round(0.3 * 48) = 14 scores the
    # 8 optimizer steps of the interval before it (steps 7..14), not the 16 micro-batch backward passes.
    assert trainer.state.global_step == 48
    assert [log["step"] for log in _stage_logs(trainer)] == [14]
    assert window == [8]


def test_works_with_transformers_resnet(tmp_path):
    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=len(TOY_COUNTS))
    model = ResNetForImageClassification(config)
    trainer = _trainer(tmp_path, model=model)
    trainer.train()
    assert "classifier.1.weight" not in trainer.pruner.parameters
    assert _stage_logs(trainer)[-1]["ltap/density"] == pytest.approx(0.3, abs=1e-3)
    conv = model.resnet.embedder.embedder.convolution.weight
    assert (conv == 0).float().mean() > 0


def test_resume_after_pruning_started_ends_like_the_uninterrupted_run(tmp_path):
    full = _trainer(tmp_path / "full", save_strategy="steps", save_steps=22)
    full.train()
    assert (tmp_path / "full" / "checkpoint-22" / STATE_WEIGHTS_NAME).is_file()
    resumed = _trainer(tmp_path / "resumed", model=_model(seed=123))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-22"))
    for name, mask in full.pruner.masks.items():
        assert torch.equal(mask, resumed.pruner.masks[name]), name
    assert torch.equal(full.pruner.vote.votes, resumed.pruner.vote.votes)
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    full_metrics = {k: v for k, v in full.evaluate().items() if "runtime" not in k and "per_second" not in k}
    resumed_metrics = {k: v for k, v in resumed.evaluate().items() if "runtime" not in k and "per_second" not in k}
    assert full_metrics == pytest.approx(resumed_metrics, nan_ok=True)


def test_resume_from_a_checkpoint_without_pruning_state_is_a_clear_error(tmp_path):
    full = _trainer(tmp_path / "full", save_strategy="steps", save_steps=22)
    full.train()
    # Settings: a field the checkpoint predates counts as its default; a changed one is refused by name.
    meta = json.loads((tmp_path / "full" / "checkpoint-22" / STATE_CONFIG_NAME).read_text())
    del meta["settings"]["channel_allocation"]
    full._check_resumed_state(meta)
    meta["settings"]["target_density"] = 0.5
    with pytest.raises(ValueError, match=r"differing fields: \['target_density'\]"):
        full._check_resumed_state(meta)
    (tmp_path / "full" / "checkpoint-22" / STATE_WEIGHTS_NAME).unlink()
    with pytest.raises(ValueError, match="no LTAP pruning state"):
        _trainer(tmp_path / "resumed").train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-22"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_density=0.0), "target_density"),
        (dict(target_density=1.5), "target_density"),
        (dict(granularity="filter"), "granularity"),
        (dict(prune_start=0.9, prune_end=0.5), "prune_start"),
        (dict(prune_end=1.5), "prune_end"),
        (dict(prune_interval=0), "prune_interval"),
        (dict(criteria=["magnitude", "hessian"]), "criteria"),
        (dict(criteria=[]), "criteria"),
        (dict(vote_temperature=0), "vote_temperature"),
        (dict(vote_class_weighting="counts"), "vote_class_weighting"),
        (dict(min_layer_density=-0.1), "min_layer_density"),
        (dict(loss="focal"), "loss"),
        (dict(channel_round_to=8), "channel_round_to"),
        (dict(granularity="channel", channel_allocation="layer"), "channel_allocation"),
        (dict(channel_allocation="uniform"), "channel_allocation"),
    ],
)
def test_bad_ltap_config_values_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _args(tmp_path, **kwargs)


def test_prune_end_past_training_is_rejected_at_train_time(tmp_path):
    trainer = _trainer(tmp_path, prune_schedule_unit="epoch", prune_start=2, prune_end=9)
    with pytest.raises(ValueError, match="prune_end"):
        trainer.train()


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_channel_ltap_run_hits_the_density_target_and_slims(tmp_path, allocation):
    trainer = _trainer(tmp_path, granularity="channel", channel_round_to=1, channel_allocation=allocation)
    trainer.train()
    stages = _stage_logs(trainer)
    assert [log["step"] for log in stages] == [14, 22, 30, 38]
    # Density counts prunable parameters; one channel removes a whole row and its consumers' columns,
    # so the last stage lands at or just under the target.
    assert 0.27 <= stages[-1]["ltap/density"] <= 0.30
    if allocation == "uniform":  # every group keeps the same share, up to one channel of the narrowest (16)
        kept = trainer.pruner.density_report(trainer.model)["per_group"].values()
        assert max(kept) - min(kept) < 1 / 16
    model = trainer.model.eval()
    slim = trainer.pruner.slimmed_model().eval()
    pixels = torch.randn(4, 3, 8, 8)
    assert torch.allclose(model(pixels).logits, slim(pixels).logits, atol=1e-5)
    assert model_cost(slim, (3, 8, 8)).parameters < 0.45 * model_cost(model, (3, 8, 8)).parameters
    slim.save_pretrained(tmp_path / "slim")
    loaded = LTResNetForImageClassification.from_pretrained(tmp_path / "slim").eval()
    assert torch.equal(loaded(pixels).logits, slim(pixels).logits)


def test_bf16_mixed_precision_run_keeps_float32_scores(tmp_path):
    trainer = _trainer(tmp_path, bf16=True)
    trainer.train()
    assert trainer.accelerator.mixed_precision == "bf16"
    assert _stage_logs(trainer)[-1]["ltap/density"] == pytest.approx(0.3, abs=1e-4)
    assert all(t.dtype == torch.float32 for k, t in trainer.pruner.accumulator.state_dict().items() if k != "num_steps")


def test_weight_decay_enters_the_accumulated_gradient_for_sgd_only(tmp_path):
    sgd = _trainer(tmp_path / "sgd", max_steps=1)
    sgd.train()
    adamw = _trainer(tmp_path / "adamw", optim="adamw_torch", max_steps=1)
    adamw.train()
    name = "resnet.embedder.embedder.conv.weight"
    assert sgd.pruner.weight_decay[name] == 2e-4 and adamw.pruner.weight_decay[name] == 0.0

    pruner = sgd.pruner
    weight = pruner.parameters[name]
    weight.grad = torch.ones_like(weight)
    for other in pruner.parameters.values():
        if other is not weight:
            other.grad = torch.zeros_like(other)
    pruner.accumulator.reset()
    assert pruner.accumulate()
    torch.testing.assert_close(pruner.accumulator.mean_grad()[name], 1 + 2e-4 * weight.detach())
    weight.grad[0, 0, 0, 0] = float("inf")
    assert not pruner.accumulate(skip_non_finite=True) and pruner.accumulator.num_steps == 1  # fp16 overflow: left out


def test_lr_milestones_step_the_learning_rate_down_after_warmup(tmp_path):
    trainer = _trainer(tmp_path, warmup_steps=4, lr_milestones=[2, 4], lr_milestone_factors=[0.1, 0.01], target_density=1.0)
    trainer.train()
    scheduler = trainer.lr_scheduler
    rates = [scheduler.lr_lambdas[0](step) for step in (0, 3, 15, 16, 31, 32, 47)]
    # 8 optimizer steps per epoch: milestones at epochs 2 and 4 are steps 16 and 32.
    assert rates == pytest.approx([0.25, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_vote_off_keeps_equal_alpha_and_suppresses_nothing(tmp_path):
    trainer = _trainer(tmp_path, vote=False)
    trainer.train()
    for log in _stage_logs(trainer):
        assert log["ltap/suppressed_index"] == -1
        assert [log[f"ltap/alpha/{c}"] for c in trainer.args.criteria] == pytest.approx([0.2] * 5)
    magnitude = _trainer(tmp_path / "magnitude", vote=False, criteria=["magnitude"])
    magnitude.train()
    # one criterion, no vote: global magnitude pruning, every surviving weight outranks every pruned one
    weights = magnitude.pruner.parameters
    kept = torch.cat([w.detach().abs()[m] for w, m in zip(weights.values(), magnitude.pruner.masks.values())])
    assert _stage_logs(magnitude)[-1]["ltap/alpha/magnitude"] == 1.0 and kept.min() > 0


def test_every_accumulation_window_spans_one_interval(tmp_path):
    trainer = _trainer(tmp_path)
    windows = []

    class RecordWindows(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            if state.global_step + 1 in trainer.stage_steps:
                windows.append(trainer.pruner.accumulator.num_steps)

    trainer.add_callback(RecordWindows())
    trainer.train()
    assert windows == [8, 8, 8, 8]
