import json
import math

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification, TrainerCallback

from ltap_hf import LTResNetConfig, LTResNetForImageClassification, model_cost
from ltap_hf.pruning.schedule import cubic_density, cubic_density_at
from ltap_hf.pruning.criteria import CRITERIA
from ltap_hf.trainer import (
    STATE_CONFIG_NAME,
    STATE_WEIGHTS_NAME,
    LTAPConfig,
    LTAPTrainer,
    class_balanced_probe,
    load_pruning_state,
)

from toy_data import TOY_COUNTS, augmented_toy_splits, toy_splits


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


def _trainer(output_dir, model=None, splits=toy_splits, vote_dataset=None, probe: bool = False, **kwargs) -> LTAPTrainer:
    train, validation = splits()
    # The probe set of class_taylor: 4 training images per class, without augmentation.
    probe_dataset = class_balanced_probe(toy_splits()[0], 4, seed=0) if probe else None
    return LTAPTrainer(model=model or _model(), args=_args(output_dir, **kwargs), train_dataset=train,
                       eval_dataset=validation, vote_dataset=vote_dataset, class_counts=TOY_COUNTS,
                       probe_dataset=probe_dataset)


class RecordStageInputs(TrainerCallback):
    """Copies, at every stage step, the accumulated statistics the stage is about to rank and whether the
    scaler skipped the optimizer step (it runs after LTAPTrainer's own callback)."""

    def __init__(self, trainer: LTAPTrainer):
        self.trainer, self.scores, self.skipped = trainer, {}, []

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.skipped.append(self.trainer.accelerator.optimizer_step_was_skipped)
        if state.global_step + 1 in self.trainer.stage_steps:
            self.scores[state.global_step + 1] = {k: v.clone() for k, v in self.trainer.pruner.accumulator.state_dict().items()}


def _assert_same_run(full: LTAPTrainer, resumed: LTAPTrainer) -> None:
    """Masks, vote, score accumulator and every model tensor equal, bit for bit."""
    for prefix, a, b in (("pruning", full.pruner.state_dict(), resumed.pruner.state_dict()),
                         ("model", full.model.state_dict(), resumed.model.state_dict())):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{prefix} {name}"


def _stage_logs(trainer: LTAPTrainer) -> list[dict]:
    return [log for log in trainer.state.log_history if "ltap/density" in log]


def test_density_follows_the_cubic_schedule_and_pruned_weights_stay_zero(tmp_path, monkeypatch):
    def no_probe(self):
        raise AssertionError("the paper's criteria must never build a probe set")

    monkeypatch.setattr(LTAPTrainer, "_build_probe_dataloaders", no_probe)
    monkeypatch.setattr(LTAPTrainer, "_probe_class_gradients", no_probe)
    trainer = _trainer(tmp_path)
    assert trainer.args.criteria == list(CRITERIA)  # the paper's five are the default
    trainer.train()
    assert trainer._probe_dataloaders is None and trainer.pruner.vote.criteria == CRITERIA
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
    _assert_same_run(full, resumed)
    full_metrics = {k: v for k, v in full.evaluate().items() if "runtime" not in k and "per_second" not in k}
    resumed_metrics = {k: v for k, v in resumed.evaluate().items() if "runtime" not in k and "per_second" not in k}
    assert full_metrics == pytest.approx(resumed_metrics, nan_ok=True)


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_resume_mid_epoch_between_two_stages_with_augmentation_ends_like_the_uninterrupted_run(tmp_path, granularity):
    # 8 optimizer steps per epoch, stages at 14 and 22: the checkpoint at step 18 is inside epoch 3, with
    # the score accumulator half full, and the resumed epoch's random crops must be the ones drawn before.
    full = _trainer(tmp_path / "full", splits=augmented_toy_splits, granularity=granularity,
                    save_strategy="steps", save_steps=18)
    full_inputs = RecordStageInputs(full)
    full.add_callback(full_inputs)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-18"
    assert int(load_pruning_state(str(checkpoint))[0]["scores.num_steps"]) == 4
    resumed = _trainer(tmp_path / "resumed", model=_model(seed=123), splits=augmented_toy_splits,
                       granularity=granularity)
    resumed_inputs = RecordStageInputs(resumed)
    resumed.add_callback(resumed_inputs)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert list(resumed_inputs.scores) == [22, 30, 38]
    for step, scores in resumed_inputs.scores.items():
        for name, value in scores.items():
            assert torch.equal(value, full_inputs.scores[step][name]), f"step {step} {name}"
    _assert_same_run(full, resumed)


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_an_arm_branched_from_the_dense_run_equals_the_arm_run_straight_through(tmp_path, granularity):
    arm = dict(splits=augmented_toy_splits, granularity=granularity, criteria=["magnitude", "taylor1"])
    straight = _trainer(tmp_path / "straight", **arm)
    straight.train()
    # The dense run shares everything up to step 6, the last before the first stage's window (steps 7..14).
    dense = _trainer(tmp_path / "dense", splits=augmented_toy_splits, target_density=1.0, save_branch_point=True)
    dense.train()
    assert sorted(p.name for p in (tmp_path / "dense").glob("checkpoint-*")) == ["checkpoint-6"]
    branch_point = str(tmp_path / "dense" / "checkpoint-6")
    branched = _trainer(tmp_path / "branched", model=_model(seed=123), branch_from=branch_point, **arm)
    branched.train()
    _assert_same_run(straight, branched)

    # What acts before the branch point must match; a checkpoint after scoring began is no branch point.
    with pytest.raises(ValueError, match=r"differing fields: \['loss'\]"):
        _trainer(tmp_path / "ce", branch_from=branch_point, loss="ce", **arm).train()
    with pytest.raises(ValueError, match="not a branch point"):
        _trainer(tmp_path / "late", branch_from=branch_point, prune_start=0.1, **arm).train()


def test_pruning_loss_takes_over_at_the_branch_point_and_may_differ_from_the_branch_points(tmp_path):
    arm = dict(splits=augmented_toy_splits, criteria=["magnitude"], vote=False, loss="ce", save_branch_point=True,
               logging_steps=1)
    ce = _trainer(tmp_path / "ce", **arm)
    ce.train()
    adjusted = _trainer(tmp_path / "adjusted", pruning_loss="logit_adjusted", **arm)
    adjusted.train()
    # The same batches and weights: cross-entropy through the branch point (step 6), then at step 7, the first
    # of the scoring window, the logit-adjusted loss of the same logits.
    ce_losses, adjusted_losses = ({log["step"]: log["loss"] for log in run.state.log_history if "loss" in log}
                                  for run in (ce, adjusted))
    assert all(ce_losses[step] == adjusted_losses[step] for step in range(1, 7)) and ce_losses[7] != adjusted_losses[7]

    branched = _trainer(tmp_path / "branched", model=_model(seed=123), branch_from=str(tmp_path / "ce" / "checkpoint-6"),
                        pruning_loss="logit_adjusted", **arm)
    branched.train()
    _assert_same_run(adjusted, branched)
    with pytest.raises(ValueError, match="pruning_loss must be None or one of"):
        _args(tmp_path, pruning_loss="focal")


def test_resume_under_another_seed_is_refused(tmp_path):
    full = _trainer(tmp_path / "full", save_strategy="steps", save_steps=22)
    full.train()
    # The seed draws the vote's suppressions: another seed would silently change them from stage 2 on.
    with pytest.raises(ValueError, match="seed 0.*seed 1"):
        _trainer(tmp_path / "resumed", seed=1).train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-22"))


class AttachLossScaler(TrainerCallback):
    """fp16's loss scaling on CPU, where Accelerate attaches no scaler: a real `GradScaler` scales every loss
    before backward and unscales the gradients once per optimizer step, which it skips on inf/nan. The
    forward pass stays in float32 (autocast is set up only when the model is prepared, before this turns
    AMP on), so with a power-of-two scale the unscaled gradients equal float32 training's bit for bit.
    `overflow_at`: optimizer steps (1-based) whose logits are made infinite, as an fp16 overflow would."""

    def __init__(self, trainer: LTAPTrainer, overflow_at: tuple[int, ...] = ()):
        self.accelerator, self.overflow_at, self.overflow = trainer.accelerator, overflow_at, False
        self.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1000)
        trainer.model.classifier.register_forward_hook(lambda module, inputs, output: output * math.inf if self.overflow else None)

    def on_train_begin(self, args, state, control, **kwargs):
        self.accelerator.native_amp = True

    def on_step_begin(self, args, state, control, **kwargs):
        self.overflow = state.global_step + 1 in self.overflow_at

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.overflow = False


@pytest.mark.parametrize("max_grad_norm", [0.0, 1e9])
def test_fp16_loss_scaling_scores_the_unscaled_gradients_and_leaves_out_skipped_steps(tmp_path, max_grad_norm):
    reference = _trainer(tmp_path / "fp32", max_grad_norm=max_grad_norm)
    reference_inputs = RecordStageInputs(reference)
    reference.add_callback(reference_inputs)
    reference.train()

    scaled = _trainer(tmp_path / "fp16", fp16=True, max_grad_norm=max_grad_norm)
    scaled.add_callback(AttachLossScaler(scaled))
    scaled_inputs = RecordStageInputs(scaled)
    scaled.add_callback(scaled_inputs)
    scaled.train()
    assert scaled.accelerator.scaler.get_scale() == 2.0**16 and not any(scaled_inputs.skipped)
    for step, scores in reference_inputs.scores.items():
        for name, value in scores.items():
            assert torch.equal(value, scaled_inputs.scores[step][name]), f"step {step} {name}"
    _assert_same_run(reference, scaled)

    overflowing = _trainer(tmp_path / "overflow", fp16=True, max_grad_norm=max_grad_norm)
    overflowing.add_callback(AttachLossScaler(overflowing, overflow_at=(10,)))
    inputs = RecordStageInputs(overflowing)
    overflowing.add_callback(inputs)
    overflowing.train()
    # The scaler skips step 10 (and only it); the stage at step 14 ranks 7 of the steps 7..14.
    assert [i + 1 for i, skipped in enumerate(inputs.skipped) if skipped] == [10]
    assert int(inputs.scores[14]["num_steps"]) == 7
    assert all(torch.isfinite(v).all() for v in inputs.scores[14].values())
    assert _stage_logs(overflowing)[-1]["ltap/density"] == pytest.approx(0.3, abs=1e-4)


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
        (dict(criteria=["class_taylor"], class_importance_weighting="counts"), "class_importance_weighting"),
        (dict(criteria=["class_taylor"], probe_per_class=0), "probe_per_class"),
        (dict(channel_allocation="uniform"), "channel_allocation"),
    ],
)
def test_bad_ltap_config_values_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _args(tmp_path, **kwargs)


def test_a_diverging_run_stops_at_the_step_its_loss_is_not_finite(tmp_path):
    trainer = _trainer(tmp_path, learning_rate=1e6, warmup_steps=0)
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at optimizer step \d+ .*diverged. Lower the learning rate \(it is \d+"):
        trainer.train()
    assert trainer.state.global_step < 14  # before the first pruning stage, not at it


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


@pytest.mark.parametrize(
    "optim, coupled", [("sgd", True), ("adagrad", True), ("rmsprop", True), ("adamw_torch", False), ("adafactor", False)]
)
def test_weight_decay_enters_the_accumulated_gradient_only_where_the_optimizer_couples_it(tmp_path, optim, coupled):
    trainer = _trainer(tmp_path, optim=optim, max_steps=1)
    trainer.train()
    name = "resnet.embedder.embedder.conv.weight"
    assert trainer.pruner.weight_decay[name] == (2e-4 if coupled else 0.0)

    pruner = trainer.pruner
    weight = pruner.parameters[name]
    for other in pruner.parameters.values():
        other.grad = torch.zeros_like(other)
    weight.grad = torch.ones_like(weight)
    pruner.accumulator.reset()
    pruner.accumulate()
    torch.testing.assert_close(pruner.accumulator.mean_grad()[name], 1 + pruner.weight_decay[name] * weight.detach())


def test_an_optimizer_whose_decay_kind_is_unknown_is_refused(tmp_path):
    class Custom(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 0.05, "weight_decay": 2e-4})

    model = _model()
    trainer = _trainer(tmp_path, model=model, max_steps=1)
    trainer.optimizer = Custom(model.parameters())
    with pytest.raises(ValueError, match="cannot tell whether .*Custom adds its weight decay"):
        trainer.train()


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


def test_magnitude_pruning_keeps_every_weight_that_outranks_a_pruned_one(tmp_path):
    # One criterion, no vote, no floor: global magnitude pruning. At every stage every weight it keeps is at
    # least as large as every weight it prunes, across all tensors.
    trainer = _trainer(tmp_path, vote=False, criteria=["magnitude"], min_layer_density=0.0)
    margins = []

    class CheckRanking(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            if state.global_step + 1 in trainer.stage_steps:  # the weights and masks the stage will rank
                self.before = {n: (w.detach().abs().clone(), trainer.pruner.alive[n].clone())
                               for n, w in trainer.pruner.parameters.items()}

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in trainer.stage_steps[1:]:
                alive = trainer.pruner.alive
                kept = torch.cat([w[alive[n]] for n, (w, _) in self.before.items()])
                pruned = torch.cat([w[was & ~alive[n]] for n, (w, was) in self.before.items()])
                margins.append(float(kept.min() - pruned.max()))

    trainer.add_callback(CheckRanking())
    trainer.train()
    assert len(margins) == 3 and all(margin >= 0 for margin in margins)
    assert _stage_logs(trainer)[-1]["ltap/alpha/magnitude"] == 1.0


def test_the_vote_reads_the_vote_split_and_moves_alpha_with_the_classes_that_improve(tmp_path):
    train, validation = toy_splits()
    vote_split = validation.filter(lambda row: int(row["labels"]) >= 2)  # classes 2 and 3 only
    trainer = LTAPTrainer(model=_model(), args=_args(tmp_path), train_dataset=train, eval_dataset=validation,
                          vote_dataset=vote_split, class_counts=TOY_COUNTS)
    seen = []

    class RecordVotes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in trainer.stage_steps:
                vote = trainer.pruner.vote
                seen.append((vote.previous_accuracy.clone(), vote.previous_has_validation.clone(), vote.votes.clone(),
                             vote.last_suppressed))

    trainer.add_callback(RecordVotes())
    trainer.train()
    assert len(seen) == 4
    # The vote saw the vote split, not the eval split: only classes 2 and 3 have validation images.
    assert all(has_validation.tolist() == [False, False, True, True] for _, has_validation, _, _ in seen)
    # D grows by one for each criterion active in the last stage, on each class whose accuracy rose.
    gains = 0
    for (before, _, votes_before, suppressed), (after, valid, votes, _) in zip(seen, seen[1:]):
        improved = (after > before) & valid
        active = torch.ones(5, dtype=torch.bool)
        active[suppressed] = False
        assert torch.equal(votes - votes_before, (active[:, None] & improved[None, :]).double())
        gains += int(improved.sum())
    assert gains > 0
    # α follows D·w: it left 1/K, and among the criteria not suppressed at the last stage it ranks as D·w does.
    last = _stage_logs(trainer)[-1]
    criteria = trainer.args.criteria
    weighted = torch.tensor([last[f"ltap/weighted_votes/{c}"] for c in criteria])
    alpha = torch.tensor([last[f"ltap/alpha/{c}"] for c in criteria])
    assert weighted.max() > weighted.min()
    active = [i for i in range(5) if i != int(last["ltap/suppressed_index"])]
    assert torch.equal(weighted[active].argsort(stable=True), alpha[active].argsort(stable=True))


def test_a_stage_at_the_end_of_an_epoch_votes_on_every_validation_image(tmp_path):
    # 120 training images in batches of 16 leave a last batch of 8; stages on epoch ends (steps 16, 24, 32)
    # must still read all 24 validation images (one batch), of all four classes, not a remainder's worth.
    trainer = _trainer(tmp_path, prune_schedule_unit="epoch", prune_start=2, prune_end=4, per_device_eval_batch_size=24)
    seen = []

    class RecordValidation(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in trainer.stage_steps:
                seen.append(trainer.pruner.vote.previous_has_validation.tolist())

    trainer.add_callback(RecordValidation())
    trainer.train()
    assert trainer.stage_steps == [16, 24, 32] and seen == [[True] * 4] * 3


def test_stage_targets_follow_the_step_based_schedule_with_a_shorter_last_interval(tmp_path):
    trainer = _trainer(tmp_path, prune_end=0.75)
    trainer.train()
    stages = _stage_logs(trainer)
    # 48 steps, 8 per epoch: stages at round(0.3 * 48) = 14, 22, 30 and round(0.75 * 48) = 36, 6 steps later.
    assert [log["step"] for log in stages] == [14, 22, 30, 36]
    for log in stages:
        assert log["ltap/target_density"] == pytest.approx(cubic_density_at((log["step"] - 14) / 22, 0.3))
    # Progress by stage index (2/3 at step 30) would ask for less than progress by steps (16/22) does.
    assert cubic_density(2, 4, 0.3) > stages[2]["ltap/target_density"] + 0.01


def test_prune_classifier_prunes_the_head_and_saves_it_sparse(tmp_path):
    trainer = _trainer(tmp_path, prune_classifier=True)
    trainer.train()
    head = trainer.pruner.parameters["classifier.weight"]
    assert 0.02 <= float((head != 0).float().mean()) < 1.0
    assert _stage_logs(trainer)[-1]["ltap/density"] == pytest.approx(0.3, abs=1e-3)
    trainer.save_model(str(tmp_path / "pruned"))
    loaded = LTResNetForImageClassification.from_pretrained(tmp_path / "pruned").eval()
    assert torch.equal(loaded.classifier.weight, head.detach())
    pixels = torch.randn(4, 3, 8, 8)
    assert torch.equal(loaded(pixels).logits, trainer.model.eval()(pixels).logits)


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


def test_class_balanced_probe_draws_up_to_per_class_images_per_class_seeded():
    train = toy_splits()[0]
    probe = class_balanced_probe(train, 10, seed=0)
    labels = probe[:]["labels"].tolist()
    # TOY_COUNTS = 64, 32, 16, 8: the last class gives the 8 it has. Ordered by class.
    assert labels == [0] * 10 + [1] * 10 + [2] * 10 + [3] * 8
    pixels = probe[:]["pixel_values"]
    assert torch.equal(class_balanced_probe(train, 10, seed=0)[:]["pixel_values"], pixels)
    assert not torch.equal(class_balanced_probe(train, 10, seed=1)[:]["pixel_values"], pixels)


def test_class_taylor_without_a_probe_dataset_is_refused_at_train_start(tmp_path):
    trainer = _trainer(tmp_path, criteria=["magnitude", "class_taylor"])
    with pytest.raises(ValueError, match="class_taylor.*probe_dataset"):
        trainer.train()
    assert trainer.state.global_step == 0


class RecordProbe(TrainerCallback):
    """Counts the probe's per-class gradients and checks that they leave training's `.grad` alone."""

    def __init__(self, trainer: LTAPTrainer):
        self.trainer, self.classes = trainer, []
        original = trainer._probe_class_gradients

        def recording():
            model = trainer.accelerator.unwrap_model(trainer.model)
            assert not model.training  # eval mode: BatchNorm statistics untouched
            grads_before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
            buffers_before = [b.clone() for b in model.buffers()]
            for c, grads in original():
                self.classes.append(c)
                yield c, grads
            assert all(a is None and p.grad is None or torch.equal(a, p.grad) for a, p in zip(grads_before, model.parameters()))
            assert all(torch.equal(a, b) for a, b in zip(buffers_before, model.buffers()))

        trainer._probe_class_gradients = recording


@pytest.mark.parametrize(
    "granularity, criteria, weighting",
    [("weight", ["class_taylor"], "uniform"), ("channel", ["class_taylor"], "inverse_frequency"),
     ("weight", [*CRITERIA, "class_taylor"], "worst_class"), ("channel", [*CRITERIA, "class_taylor"], "uniform")],
)
def test_class_taylor_run_alone_and_in_the_vote_reaches_the_density_target(tmp_path, granularity, criteria, weighting):
    trainer = _trainer(tmp_path, probe=True, granularity=granularity, criteria=criteria,
                       class_importance_weighting=weighting)
    probe = RecordProbe(trainer)
    trainer.train()
    stages = _stage_logs(trainer)
    assert [log["step"] for log in stages] == [14, 22, 30, 38]
    # One gradient per class and stage, every class of the probe set.
    assert probe.classes == [0, 1, 2, 3] * 4
    # The vote's D has one row per criterion in use, α one entry each.
    assert trainer.pruner.vote.votes.shape == (len(criteria), len(TOY_COUNTS))
    assert sum(stages[-1][f"ltap/alpha/{c}"] for c in criteria) == pytest.approx(1.0)
    if granularity == "weight":
        assert stages[-1]["ltap/density"] == pytest.approx(0.3, abs=1e-4)
    else:
        assert 0.27 <= stages[-1]["ltap/density"] <= 0.30
    for name, weight in trainer.pruner.parameters.items():
        pruned = weight[~trainer.pruner.masks[name]]
        assert torch.equal(pruned, torch.zeros_like(pruned))


def test_class_taylor_alone_prunes_the_units_of_lowest_class_importance(tmp_path):
    # One criterion, no vote, no floor: at each stage every weight kept outranks every weight pruned by the
    # class importance recomputed at that stage.
    trainer = _trainer(tmp_path, probe=True, vote=False, criteria=["class_taylor"], min_layer_density=0.0)
    margins = []

    def wrap(pruner):
        stage = pruner.prune_stage

        def checked(class_accuracy, has_validation, target, class_importance=None):
            before = {n: m.clone() for n, m in pruner.alive.items()}
            result = stage(class_accuracy, has_validation, target, class_importance=class_importance)
            if result.vote.stage > 0:
                kept = torch.cat([class_importance[n][pruner.alive[n]] for n in before])
                pruned = torch.cat([class_importance[n][before[n] & ~pruner.alive[n]] for n in before])
                margins.append(float(kept.min() - pruned.max()))
            return result

        pruner.prune_stage = checked

    begin = trainer._begin_pruning
    trainer._begin_pruning = lambda: (begin(), wrap(trainer.pruner))
    trainer.train()
    assert len(margins) == 3 and all(m >= 0 for m in margins)


def test_resume_mid_epoch_with_class_taylor_ends_like_the_uninterrupted_run(tmp_path):
    arm = dict(splits=augmented_toy_splits, probe=True, criteria=[*CRITERIA, "class_taylor"],
               class_importance_weighting="worst_class")
    full = _trainer(tmp_path / "full", save_strategy="steps", save_steps=18, **arm)
    full.train()
    resumed = _trainer(tmp_path / "resumed", model=_model(seed=123), **arm)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-18"))
    _assert_same_run(full, resumed)
    # The log history resumes with the checkpoint's (stage 0 at step 14); the stages after it log the same α.
    assert [log["ltap/alpha/class_taylor"] for log in _stage_logs(resumed)] == [
        log["ltap/alpha/class_taylor"] for log in _stage_logs(full)]
    assert len(_stage_logs(full)) == 4
