import copy
import importlib.util
import math

import pytest
import torch
from torch import nn
from transformers import ResNetConfig, ResNetForImageClassification

from ltap_hf.models import LTResNetConfig, LTResNetForImageClassification
from ltap_hf.backbones import backbone_for, find_channel_groups
from ltap_hf.backbones.traced import torch_pruning_groups
from ltap_hf.pruning.criteria import CRITERIA, combine_scores, group_criteria
from ltap_hf.pruning.groups import (
    ChannelGroup,
    GroupSlice,
    full_group_masks,
    group_density_report,
    group_parameters,
    parameter_density,
)
from ltap_hf.pruning.masks import apply_masks, prunable_parameters
from ltap_hf.pruning.pruner import LTAPPruner
from ltap_hf.pruning.selection import select_channel_groups
from ltap_hf.pruning.statistics import ScoreAccumulator
from ltap_hf.pruning.vote import ClassVote


requires_torch_pruning = pytest.mark.skipif(
    importlib.util.find_spec("torch_pruning") is None, reason="torch-pruning is an optional dependency"
)


def _lt_resnet(preset: str = "resnet32", seed: int = 0, **kwargs) -> LTResNetForImageClassification:
    torch.manual_seed(seed)
    return LTResNetForImageClassification(LTResNetConfig.from_preset(preset, num_labels=10, **kwargs)).eval()


def _hf_resnet(layer_type: str, embedding_size: int = 8) -> ResNetForImageClassification:
    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=embedding_size, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type=layer_type,
        num_labels=5,
    )
    return ResNetForImageClassification(config).eval()


def _magnitude_scores(groups, model):
    parameters = group_parameters(model, groups)
    zeros = {n: torch.zeros_like(p) for n, p in parameters.items()}
    criteria = group_criteria(groups, parameters, zeros, {g.name: torch.zeros(g.num_channels) for g in groups})
    alive = full_group_masks(groups)
    return combine_scores(criteria, alive, torch.ones(1), criteria=["magnitude"]), alive


def test_resnet32_option_a_has_18_groups_and_every_conv_output_channel_in_exactly_one():
    model = _lt_resnet()
    groups = find_channel_groups(model)
    assert len(groups) == 18
    assert sum(g.num_channels for g in groups) == 672
    streams = [g for g in groups if not g.name.endswith(".conv")]
    assert [(g.name, g.num_channels) for g in streams] == [
        ("resnet.embedder", 16), ("resnet.stages.1", 32), ("resnet.stages.2", 64)
    ]
    # Option A: the padding shortcut copies each stream into the next one; it is not a coupling.
    assert [c.source for g in streams for c in g.copies] == ["resnet.embedder", "resnet.stages.1"]
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for name, conv in convs.items():
        rows = [s.index for g in groups for s in g.slices if s.tensor == f"{name}.weight" and s.dim == 0]
        assert len(rows) == 1 and sorted(rows[0]) == list(range(conv.out_channels)), name
        columns = [s for g in groups for s in g.slices if s.tensor == f"{name}.weight" and s.dim == 1]
        assert len(columns) == (0 if name == "resnet.embedder.embedder.conv" else 1), name
    # The last stream is read by every stage-2 block, by the classifier, and written by all of them.
    last = streams[-1]
    assert sum(s.tensor.endswith("layer.1.conv.weight") for s in last.slices) == 5
    assert any(s.tensor == "classifier.weight" and s.dim == 1 for s in last.slices)


@pytest.mark.parametrize(
    "layer_type, embedding_size, expected", [("basic", 8, 8), ("bottleneck", 8, 12), ("bottleneck", 4, 13)]
)
def test_transformers_resnet_groups(layer_type, embedding_size, expected):
    # 1x1-conv shortcuts cut the streams: one group per stream (the stem's joins stage 0 when the
    # first block needs no projection) plus 1 (basic) or 2 (bottleneck) inner groups per block.
    groups = find_channel_groups(_hf_resnet(layer_type, embedding_size))
    assert len(groups) == expected
    assert all(not g.copies for g in groups)


def _structure(groups):
    return sorted(tuple(sorted((s.tensor, s.dim, s.index, s.is_parameter) for s in g.slices)) for g in groups)


@requires_torch_pruning
@pytest.mark.parametrize(
    "model, example",
    [
        (lambda: _lt_resnet("resnet20", shortcut_type="B"), (3, 32, 32)),
        (lambda: _lt_resnet("resnet50", depths=[2, 1, 1], hidden_sizes=[32, 64, 64], embedding_size=16), (3, 64, 64)),
        (lambda: _hf_resnet("basic"), (3, 64, 64)),
        (lambda: _hf_resnet("bottleneck", 4), (3, 64, 64)),
    ],
)
def test_structural_groups_match_torch_pruning_where_it_is_right(model, example):
    model = model()
    assert _structure(find_channel_groups(model)) == _structure(torch_pruning_groups(model, torch.randn(1, *example)))


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.classifier = nn.Linear(5, 4)

    def forward(self, x):
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.classifier(x.mean(dim=(2, 3)))


@requires_torch_pruning
def test_other_models_use_torch_pruning_and_keep_the_head_width():
    groups = {g.name: g for g in find_channel_groups(_Tiny(), torch.randn(1, 3, 8, 8))}
    assert {n: g.num_channels for n, g in groups.items()} == {"conv1": 6, "conv2": 5}
    assert {(s.tensor, s.dim) for s in groups["conv2"].slices if s.is_parameter} == {
        ("conv2.weight", 0), ("conv2.bias", 0), ("bn2.weight", 0), ("bn2.bias", 0), ("classifier.weight", 1)
    }


def test_other_models_without_torch_pruning_raise(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch_pruning", None)
    with pytest.raises(NotImplementedError, match="need Torch-Pruning"):
        find_channel_groups(_Tiny(), torch.randn(1, 3, 8, 8))


def _toy_group():
    """Channel j of the group: row j of `a` [2, 3], entry j of `b` [2], column j of `c` [4, 2]."""
    slices = (GroupSlice("a", 0, (0, 1)), GroupSlice("b", 0, (0, 1)), GroupSlice("c", 1, (1, 0)))
    return [ChannelGroup("toy", slices)]


def test_group_criteria_by_hand():
    weights = {
        "a": torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 1.0]]),
        "b": torch.tensor([4.0, 0.0]),
        "c": torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]),
    }
    step1 = {"a": torch.full((2, 3), 1.0), "b": torch.tensor([1.0, -1.0]), "c": torch.full((4, 2), 0.5)}
    step2 = {"a": torch.full((2, 3), -1.0), "b": torch.tensor([3.0, 1.0]), "c": torch.full((4, 2), 0.5)}
    groups = _toy_group()
    accumulator = ScoreAccumulator(weights, groups)
    accumulator.update(weights, step1)
    accumulator.update(weights, step2)
    scores = group_criteria(groups, weights, accumulator.mean_grad(), accumulator.taylor2_mean())["toy"]

    # channel 0: x = a[0] ++ b[0] ++ c[:, 1] = (1, 2, 2, 4, 1, 1, 1, 1); channel 1: (0, 0, 1, 0, 0, 0, 0, 0)
    x0, x1 = torch.tensor([1.0, 2, 2, 4, 1, 1, 1, 1]), torch.tensor([0.0, 0, 1, 0, 0, 0, 0, 0])
    g_mean0 = torch.tensor([0.0, 0, 0, 2, 0.5, 0.5, 0.5, 0.5])  # mean of the two steps, same layout
    g_mean1 = torch.tensor([0.0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5])
    # <x, g> per step: channel 0: 5 + 4 + 2 = 11, then -5 + 12 + 2 = 9; channel 1: 1 + 0 + 0 = 1, then -1
    expected = torch.tensor(
        [
            [x0.norm(), x1.norm()],
            [x0.norm() / 8, x1.norm() / 8],
            [x0 @ g_mean0 / (x0.norm() * g_mean0.norm()) + 1, 1.0],  # x1 ⟂ ḡ1
            [abs(x0 @ g_mean0), abs(x1 @ g_mean1)],
            [(0.5 * 11**2 + 0.5 * 9**2) / 2, (0.5 + 0.5) / 2],
        ]
    )
    assert scores.shape == (len(CRITERIA), 2)
    torch.testing.assert_close(scores, expected)


def test_accumulator_state_round_trip_and_reset():
    weights = {"a": torch.randn(2, 3), "b": torch.randn(2), "c": torch.randn(4, 2)}
    groups = _toy_group()
    accumulator = ScoreAccumulator(weights, groups)
    accumulator.update(weights, {n: torch.randn_like(w) for n, w in weights.items()})
    state = accumulator.state_dict()
    assert set(state) == {"grad_sum.a", "grad_sum.b", "grad_sum.c", "taylor2_sum.toy", "num_steps"}
    assert state["taylor2_sum.toy"].dtype == torch.float32 and state["taylor2_sum.toy"].shape == (2,)
    restored = ScoreAccumulator(weights, groups)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.taylor2_mean()["toy"], accumulator.taylor2_mean()["toy"])
    accumulator.reset()
    assert accumulator.num_steps == 0 and not accumulator.state_dict()["taylor2_sum.toy"].any()
    with pytest.raises(ValueError, match="group_parameters"):
        ScoreAccumulator({"a": weights["a"]}, groups)


def test_selection_counts_parameters_and_respects_floors_and_rounding():
    model = _lt_resnet()
    groups = find_channel_groups(model)
    prunable = prunable_parameters(model)
    scores, alive = _magnitude_scores(groups, model)

    selected = select_channel_groups(groups, scores, alive, 0.3, prunable)
    achieved = parameter_density(groups, selected, prunable)
    # The fewest channels that meet the target: one channel of ResNet-32 costs at most ~1% of its weights.
    assert 0.29 < achieved <= 0.3
    # A channel's cost counts its consumers' columns too: counting rows only would overshoot.
    rows_only = sum(int(selected[g.name].sum()) * prunable[s.tensor][0].numel()
                    for g in groups for s in g.slices if s.tensor in prunable and s.dim == 0)
    assert rows_only / sum(p.numel() for p in prunable.values()) > achieved + 0.05

    rounded = select_channel_groups(groups, scores, alive, 0.3, prunable, round_to=8)
    later = select_channel_groups(groups, scores, rounded, 0.2, prunable, round_to=8)
    for masks, target in ((rounded, 0.3), (later, 0.2)):
        assert target - 0.03 < parameter_density(groups, masks, prunable) <= target
        assert all(int(m.sum()) % 8 == 0 for m in masks.values())
    assert all(not (later[n] & ~rounded[n]).any() for n in rounded)  # masks only shrink
    # Rounding keeps the best-scored extra channels: each group keeps its top channels by score.
    for name, mask in later.items():
        kept = int(mask.sum())
        assert torch.equal(mask, scores[name] >= scores[name].sort(descending=True).values[kept - 1])

    # Floors: no group loses its last channel, and every prunable tensor keeps ceil(2%) of its weights.
    floored = select_channel_groups(groups, scores, alive, 1e-4, prunable, min_tensor_density=0.0)
    assert all(int(m.sum()) == 1 for m in floored.values())


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_the_floor_holds_per_tensor_where_a_conv_sits_between_two_groups(allocation):
    # A conv keeps the product of its output and input groups' fractions: a 2% floor per group lets it fall
    # to 0.04% (11 of ResNet-20's 19 tensors fell under 2% at a target of 1%).
    model = _lt_resnet("resnet20")
    groups = find_channel_groups(model)
    prunable = prunable_parameters(model)
    scores, alive = _magnitude_scores(groups, model)
    first = select_channel_groups(groups, scores, alive, 0.3, prunable, allocation=allocation)
    for masks in (first, select_channel_groups(groups, scores, first, 0.01, prunable, allocation=allocation)):
        masked = copy.deepcopy(model)
        backbone_for(model).apply_channel_masks(masked, groups, masks)
        kept = {n: int(p.count_nonzero()) for n, p in prunable_parameters(masked).items()}
        assert all(kept[n] >= math.ceil(0.02 * p.numel()) for n, p in prunable.items()), kept
        assert all(not (masks[n] & ~alive[n]).any() for n in masks)
    # Only what the floors need is kept beyond the target: the floored tensors sit at their floor, up to the
    # one channel (a row or column of the tensor) that reached it.
    assert parameter_density(groups, masks, prunable) < 0.05


def test_uniform_allocation_thins_every_group_alike_and_cuts_macs_with_parameters():
    model = _lt_resnet()
    groups = find_channel_groups(model)
    prunable = prunable_parameters(model)
    scores, alive = _magnitude_scores(groups, model)
    def select_and_report(allocation: str) -> tuple[dict, dict]:
        selected = select_channel_groups(groups, scores, alive, 0.3, prunable, allocation=allocation)
        assert 0.27 < parameter_density(groups, selected, prunable) <= 0.3
        masked = copy.deepcopy(model)
        backbone_for(model).apply_channel_masks(masked, groups, selected)
        return selected, group_density_report(masked, groups, selected, (3, 32, 32))

    # Global magnitude ranking keeps the residual streams (many slices, large norms) whole.
    assert max(select_and_report("global")[1]["per_group"].values()) == 1.0
    # Uniform: the same share of every group (up to rounding up one channel), its best-scored channels,
    # so every layer thins by about sqrt(density) and multiply-adds fall with the parameters.
    selected, report = select_and_report("uniform")
    fractions = report["per_group"].values()
    assert max(fractions) - min(fractions) < 1 / 16
    assert report["macs_kept"] / report["macs"] < 0.32
    for name, mask in selected.items():
        assert torch.equal(mask, scores[name] >= scores[name].sort(descending=True).values[int(mask.sum()) - 1])

    # Later stages only shrink the masks, with or without widths rounded to multiples of 8.
    for round_to in (1, 8):
        first = select_channel_groups(groups, scores, alive, 0.5, prunable, round_to=round_to, allocation="uniform")
        later = select_channel_groups(groups, scores, first, 0.2, prunable, round_to=round_to, allocation="uniform")
        assert 0.15 < parameter_density(groups, later, prunable) <= 0.2
        assert all(not (later[n] & ~first[n]).any() for n in first)
        assert all(int(m.sum()) % round_to == 0 for m in later.values())

    # Dead channels stay dead even when every score ties; ties go as in the global ranking (earlier first).
    flat = {name: torch.zeros_like(score) for name, score in scores.items()}
    half_dead = {name: torch.arange(mask.numel()) % 2 == 1 for name, mask in alive.items()}
    tied = select_channel_groups(groups, flat, half_dead, 0.1, prunable, allocation="uniform")
    assert all(not (tied[n] & ~half_dead[n]).any() for n in tied)
    name = groups[0].name
    assert tied[name].nonzero().min() > half_dead[name].nonzero().min()

    with pytest.raises(ValueError, match="NaN"):
        select_channel_groups(groups, {**scores, name: torch.full_like(scores[name], float("nan"))}, alive, 0.3,
                              prunable, allocation="uniform")
    with pytest.raises(ValueError, match="allocation"):
        select_channel_groups(groups, scores, alive, 0.3, prunable, allocation="layer")


def test_pruner_checks_its_channel_options_when_built():
    model, vote = _lt_resnet("resnet20"), ClassVote(CRITERIA, [10] * 10)
    assert LTAPPruner(model, vote, granularity="channel", channel_allocation="uniform", channel_structure=backbone_for(model)).units.allocation == "uniform"
    with pytest.raises(ValueError, match="channel_allocation must be one of"):
        LTAPPruner(model, vote, granularity="channel", channel_allocation="layer", channel_structure=backbone_for(model))
    with pytest.raises(ValueError, match="channel pruning only"):
        LTAPPruner(model, vote, channel_allocation="uniform")


def test_masks_zero_whole_channels_and_padding_shortcut_copies():
    model = _lt_resnet()
    groups = find_channel_groups(model)
    alive = full_group_masks(groups)
    alive["resnet.stages.1"][[3, 8, 20]] = False  # 8 and 20 receive stream-0 channels 0 and 12 through the pad
    alive["resnet.embedder"][[5]] = False
    alive["resnet.stages.0.layers.2.layer.0.conv"][[1, 2]] = False
    masks = backbone_for(model).apply_channel_masks(model, groups, alive)

    hidden = model(torch.randn(2, 3, 32, 32), output_hidden_states=True).hidden_states
    assert not hidden[1][:, 5].any()  # stage-0 stream channel
    assert not hidden[2][:, [3, 8, 20]].any()  # stage-1 stream channels, copies from stage 0 dropped too
    assert hidden[2][:, [9, 21]].abs().sum() > 0
    channel_map = model.config.shortcut_channels[1]
    assert channel_map[0] == -1 and channel_map[12] == -1 and channel_map[5] == -1 and channel_map[1] == 9

    conv = model.resnet.stages[0].layers[2].layer[0].conv.weight
    assert not conv[[1, 2]].any() and not conv[:, 5].any()  # its rows, and the column of the dead stream channel
    assert int(conv[0].count_nonzero()) == 15 * 9
    next_conv = model.resnet.stages[0].layers[2].layer[1].conv.weight
    assert not next_conv[:, [1, 2]].any()
    # After an optimizer step the masks put the groups back at exactly +0.0.
    parameters = group_parameters(model, groups)
    with torch.no_grad():
        for p in parameters.values():
            p.sub_(1.0)
    apply_masks(parameters, masks)
    assert torch.equal(conv[[1, 2]], torch.zeros_like(conv[[1, 2]]))
    assert not torch.signbit(conv[[1, 2]]).any()
    assert not model.resnet.stages[1].layers[0].layer[1].bn.bias[[3, 8, 20]].any()


def test_masked_option_a_model_saves_and_reloads_with_the_same_function(tmp_path):
    model = _lt_resnet("resnet20")
    groups = find_channel_groups(model)
    alive = full_group_masks(groups)
    alive["resnet.stages.2"][16:40:3] = False
    backbone_for(model).apply_channel_masks(model, groups, alive)
    model.save_pretrained(tmp_path)
    reloaded = LTResNetForImageClassification.from_pretrained(tmp_path).eval()
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(pixels).logits, reloaded(pixels).logits)


def test_density_report_counts_parameters_and_macs():
    model = _lt_resnet("resnet20")
    groups = find_channel_groups(model)
    scores, alive = _magnitude_scores(groups, model)
    selected = select_channel_groups(groups, scores, alive, 0.5, prunable_parameters(model))
    backbone_for(model).apply_channel_masks(model, groups, selected)
    report = group_density_report(model, groups, selected, (3, 32, 32))
    assert report["prunable_density"] == pytest.approx(parameter_density(groups, selected, prunable_parameters(model)))
    assert report["prunable_density"] <= 0.5
    assert report["total_parameters"] == sum(p.numel() for p in model.parameters())
    assert report["overall_density"] == pytest.approx(1 - report["pruned_parameters"] / report["total_parameters"])
    assert 0 < report["macs_kept"] < report["macs"]
    assert math.isclose(
        report["channel_density"], sum(int(m.sum()) for m in selected.values()) / sum(g.num_channels for g in groups)
    )
