"""ltap-hf's class-conditional importance ("class_taylor"): hand-computed weight and channel forms, the
per-class normalisation, each class weighting, and its place in the registry and the pruner."""

import pytest
import torch
from torch import nn

from ltap_hf.pruning.class_importance import class_importance_weights, combine_class_scores
from ltap_hf.pruning.criteria import ALL_CRITERIA, CRITERIA, REGISTRY, combine_rows, weight_criteria
from ltap_hf.pruning.groups import ChannelGroup, GroupSlice
from ltap_hf.pruning.pruner import LTAPPruner
from ltap_hf.pruning.units import ChannelUnits
from ltap_hf.pruning.vote import ClassVote


class TwoLayer(nn.Module):
    """x -> fc1 (2 -> 2, no bias) -> fc2 (2 -> 2, no bias): linear, so the probe gradients are known by hand."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 2, bias=False)
        self.fc2 = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]))
            self.fc2.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, -3.0]]))

    def forward(self, x):
        return self.fc2(self.fc1(x))


def _class_gradients(model, probe):
    """g_c of the loss ℓ_c = mean over class c's probe images of -logit_c (a linear loss: g_c by hand below)."""
    params = dict(model.named_parameters())
    for c, x in probe.items():
        with torch.enable_grad():
            loss = -model(x)[:, c].mean()
            grads = torch.autograd.grad(loss, list(params.values()))
        yield c, {n: g for n, g in zip(params, grads)}


def _hand_gradients(model, probe):
    """ℓ_c = -e_cᵀ W2 W1 x̄_c: ∂/∂W2 = -e_c (W1 x̄_c)ᵀ, ∂/∂W1 = -(W2ᵀ e_c) x̄_cᵀ."""
    w1, w2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    grads = {}
    for c, x in probe.items():
        mean = x.mean(0)
        e = torch.zeros(2)
        e[c] = 1.0
        grads[c] = {"fc1.weight": -torch.outer(w2.T @ e, mean), "fc2.weight": -torch.outer(e, w1 @ mean)}
    return grads


PROBE = {0: torch.tensor([[1.0, 0.0], [1.0, 2.0]]), 1: torch.tensor([[0.0, 1.0]])}


def test_registry_keeps_the_paper_five_first_and_as_the_default():
    assert CRITERIA == ("magnitude", "avg_magnitude", "cosine", "taylor1", "taylor2")
    assert ALL_CRITERIA == CRITERIA + ("class_taylor",) and "class_taylor" in REGISTRY
    # Without class importance, the default computes the paper's five and never needs it.
    assert weight_criteria(torch.ones(2, 2), torch.ones(2, 2), torch.ones(2, 2)).shape == (5, 2, 2)
    with pytest.raises(ValueError, match="class_taylor.*class-conditional importance"):
        weight_criteria(torch.ones(2, 2), torch.ones(2, 2), torch.ones(2, 2), criteria=["class_taylor"])
    importance = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    rows = weight_criteria(torch.ones(2, 2), torch.ones(2, 2), torch.zeros(2, 2),
                           criteria=["class_taylor", "magnitude"], class_importance=importance)
    assert torch.equal(rows[0], importance) and torch.equal(rows[1], torch.ones(2, 2))


def test_weight_form_by_hand_with_per_class_normalisation_and_uniform_weights():
    model = TwoLayer()
    hand = _hand_gradients(model, PROBE)
    autograd = dict(_class_gradients(model, PROBE))
    for c in PROBE:
        for n in hand[c]:
            torch.testing.assert_close(autograd[c][n], hand[c][n])
    # Class 0: x̄ = (1, 1); W1 x̄ = (3, -0.5); W2ᵀe_0 = (2, 0).
    #   g0(fc1) = -[[2, 2], [0, 0]]; g0(fc2) = -[[3, -0.5], [0, 0]].
    #   F0 = (w·g)²: fc1 [[4, 16], [0, 0]], fc2 [[36, 0], [0, 0]]; ‖F0‖ = sqrt(16 + 256 + 1296) = sqrt(1568).
    # Class 1: x̄ = (0, 1); W1 x̄ = (2, 0.5); W2ᵀe_1 = (1, -3).
    #   g1(fc1) = -[[0, 1], [0, -3]]; g1(fc2) = -[[0, 0], [2, 0.5]].
    #   F1: fc1 [[0, 4], [0, 2.25]], fc2 [[0, 0], [4, 2.25]]; ‖F1‖ = sqrt(16 + 5.0625 + 16 + 5.0625) = sqrt(42.125).
    f0 = {"fc1.weight": torch.tensor([[4.0, 16.0], [0.0, 0.0]]), "fc2.weight": torch.tensor([[36.0, 0.0], [0.0, 0.0]])}
    f1 = {"fc1.weight": torch.tensor([[0.0, 4.0], [0.0, 2.25]]), "fc2.weight": torch.tensor([[0.0, 0.0], [4.0, 2.25]])}
    alive = {n: torch.ones(2, 2, dtype=torch.bool) for n in f0}
    vote = ClassVote(["class_taylor"], [30, 10])
    pruner = LTAPPruner(model, vote, prune_classifier=True)  # fc2 is the head: prunable here
    assert set(pruner.parameters) == {"fc1.weight", "fc2.weight"}
    weights = class_importance_weights("uniform", [30, 10])
    assert torch.equal(weights, torch.tensor([0.5, 0.5], dtype=torch.float64))
    importance = pruner.class_importance(_class_gradients(model, PROBE), weights)
    for n in f0:
        expected = 0.5 * f0[n] / 1568 ** 0.5 + 0.5 * f1[n] / 42.125 ** 0.5
        torch.testing.assert_close(importance[n], expected)

    # Per-class normalisation: scaling one class's loss (say, a class with huge gradients) changes nothing.
    loud = ((c, {n: g * (100.0 if c == 0 else 1.0) for n, g in grads.items()}) for c, grads in _class_gradients(model, PROBE))
    for n, value in pruner.class_importance(loud, weights).items():
        torch.testing.assert_close(value, importance[n])

    # Only alive units enter the norms: with fc2[0, 0] (36 of F0) dead, ‖F0‖ = sqrt(16 + 256).
    alive["fc2.weight"] = torch.tensor([[False, True], [True, True]])
    masked = combine_class_scores([(0, f0), (1, f1)], alive, weights)
    torch.testing.assert_close(masked["fc1.weight"], 0.5 * f0["fc1.weight"] / 272 ** 0.5 + 0.5 * f1["fc1.weight"] / 42.125 ** 0.5)


def test_class_weightings_by_hand():
    counts = [30, 10, 5]
    torch.testing.assert_close(class_importance_weights("inverse_frequency", counts),
                               torch.tensor([2.0, 6.0, 12.0], dtype=torch.float64) / 20)
    accuracy = torch.tensor([0.9, 0.5, 0.0])
    validated = torch.tensor([True, True, False])
    # Weights ∝ validation error; a class without validation images gets 0.
    torch.testing.assert_close(class_importance_weights("worst_class", counts, accuracy, validated),
                               torch.tensor([0.1, 0.5, 0.0], dtype=torch.float64) / 0.6)
    # All validated classes perfect: nothing to favour, uniform over the validated classes.
    torch.testing.assert_close(class_importance_weights("worst_class", counts, torch.ones(3), validated),
                               torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    # A class without probe images has no gradient: weight 0.
    torch.testing.assert_close(class_importance_weights("uniform", counts, has_probe=torch.tensor([True, False, True])),
                               torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="weighting must be one of"):
        class_importance_weights("counts", counts)

    # The combination follows λ: inverse frequency on F0, F1 of the weight test gives λ0 F0/‖F0‖ + λ1 F1/‖F1‖.
    f0, f1 = {"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([0.0, 2.0])}
    alive = {"w": torch.ones(2, dtype=torch.bool)}
    combined = combine_class_scores([(0, f0), (1, f1)], alive, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(combined["w"], torch.tensor([0.25 * 3 / 5, 0.25 * 4 / 5 + 0.75 * 1.0]))


class _Structure:
    """One channel group over fc1's output rows and fc2's input columns of `TwoLayer`."""

    group = ChannelGroup("hidden", (GroupSlice("fc1.weight", 0, (0, 1)), GroupSlice("fc2.weight", 1, (0, 1))))

    def channel_groups(self, model):
        return [self.group]

    def apply_channel_masks(self, model, groups, group_alive):
        alive = group_alive["hidden"]
        masks = {"fc1.weight": alive[:, None].expand(2, 2).clone(), "fc2.weight": alive[None, :].expand(2, 2).clone()}
        with torch.no_grad():
            for name, mask in masks.items():
                model.get_parameter(name).mul_(mask)
        return masks


def test_channel_form_by_hand():
    model = TwoLayer()
    units = ChannelUnits(model, _Structure(), prune_classifier=True, round_to=1, allocation="global")
    hand = _hand_gradients(model, PROBE)
    # Channel j's x is row j of W1 and column j of W2: ⟨x, g_c⟩ = Σ_k W1[j,k] g1[j,k] + Σ_i W2[i,j] g2[i,j].
    # Class 0: w·g: fc1 [[-2, -4], [0, 0]], fc2 [[-6, 0], [0, 0]] -> channel 0: -2-4-6 = -12, channel 1: 0.
    # Class 1: w·g: fc1 [[0, -2], [0, 1.5]], fc2 [[0, 0], [-2, 1.5]] -> channel 0: -2-2 = -4, channel 1: 1.5+1.5 = 3.
    torch.testing.assert_close(units.class_scores(hand[0])["hidden"], torch.tensor([144.0, 0.0]))
    torch.testing.assert_close(units.class_scores(hand[1])["hidden"], torch.tensor([16.0, 9.0]))
    vote = ClassVote(["class_taylor", "magnitude"], [30, 10], enabled=False)
    pruner = LTAPPruner(model, vote, granularity="channel", prune_classifier=True, channel_structure=_Structure(),
                        min_layer_density=0.0)
    importance = pruner.class_importance(_class_gradients(model, PROBE), class_importance_weights("uniform", [30, 10]))
    # Class 0 normalised is (1, 0), class 1 (16, 9) / sqrt(337); λ = (½, ½).
    torch.testing.assert_close(importance["hidden"], 0.5 * torch.tensor([1.0, 0.0]) + 0.5 * torch.tensor([16.0, 9.0]) / 337 ** 0.5)
    rows = units.criteria({n: torch.zeros(2, 2) for n in units.parameters}, {"hidden": torch.zeros(2)},
                          ["class_taylor", "magnitude"], importance)
    assert torch.equal(rows["hidden"][0], importance["hidden"])

    # The stage scores with it, α = (½, ½): magnitude barely prefers channel 1 (‖x‖² 10.25 vs 10), class_taylor
    # strongly prefers channel 0, so channel 1 goes.
    pruner.accumulator.update(units.parameters, {n: torch.zeros(2, 2) for n in units.parameters})
    with pytest.raises(ValueError, match="pass class_importance"):
        pruner.prune_stage(torch.ones(2), torch.ones(2, dtype=torch.bool), 0.5)
    pruner.prune_stage(torch.ones(2), torch.ones(2, dtype=torch.bool), 0.5, class_importance=importance)
    assert pruner.alive["hidden"].tolist() == [True, False]
    assert model.fc2.weight[:, 1].eq(0).all() and model.fc1.weight[1].eq(0).all()


def test_combine_rows_takes_rows_in_the_order_of_alpha():
    rows = {"w": torch.tensor([[3.0, 4.0], [0.0, 2.0]])}
    alive = {"w": torch.ones(2, dtype=torch.bool)}
    torch.testing.assert_close(combine_rows(rows, alive, torch.tensor([0.5, 0.5]))["w"],
                               torch.tensor([0.5 * 3 / 5, 0.5 * 4 / 5 + 0.5]))
    with pytest.raises(ValueError, match="one entry per criterion"):
        combine_rows(rows, alive, torch.tensor([1.0]))
