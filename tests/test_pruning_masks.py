import pytest
import torch
from safetensors.torch import save
from torch import nn
from transformers import ResNetConfig, ResNetForImageClassification

from ltap_hf.pruning.masks import apply_masks, density, density_report, full_masks, prunable_parameters
from ltap_hf.pruning.selection import select_mask


def _all_alive(**tensors):
    return {name: torch.ones_like(t, dtype=torch.bool) for name, t in tensors.items()}


def test_ranking_is_global_across_tensors_of_different_scales():
    scores = {"a": torch.tensor([10.0, 20.0, 30.0, 40.0]), "b": torch.tensor([1.0, 25.0, 2.0, 35.0])}
    masks = select_mask(scores, _all_alive(**scores), density=0.5, min_layer_density=0.0)
    assert masks["a"].tolist() == [False, False, True, True]
    assert masks["b"].tolist() == [False, True, False, True]


def test_floor_stops_a_layer_from_being_emptied():
    torch.manual_seed(0)
    scores = {"small": torch.rand(100) * 1e-3, "big": 1.0 + torch.rand(100)}
    masks = select_mask(scores, _all_alive(**scores), density=0.5, min_layer_density=0.1)
    assert int(masks["small"].sum()) == 10
    # The floor protects the layer's best units.
    assert set(masks["small"].nonzero().squeeze(1).tolist()) == set(scores["small"].topk(10).indices.tolist())
    assert int(masks["big"].sum()) == 90
    assert density(masks) == 0.5


def test_floor_wins_when_the_target_is_unreachable():
    scores = {"a": torch.arange(100.0), "b": torch.arange(50.0)}
    masks = select_mask(scores, _all_alive(**scores), density=0.01, min_layer_density=0.1)
    assert int(masks["a"].sum()) == 10 and int(masks["b"].sum()) == 5
    assert masks["a"][90:].all() and masks["b"][45:].all()


def test_every_tensor_keeps_at_least_one_unit():
    scores = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([100.0, 200.0])}
    masks = select_mask(scores, _all_alive(**scores), density=0.25, min_layer_density=0.0)
    assert masks["a"].tolist() == [False, True]
    assert masks["b"].tolist() == [False, True]


def test_masks_only_shrink():
    torch.manual_seed(0)
    alive = {"a": torch.ones(8, 8, dtype=torch.bool), "b": torch.ones(30, dtype=torch.bool)}
    for target in (0.9, 0.7, 0.75, 0.4, 0.3):
        # Fresh random scores each stage: a dead unit may now score highest and must stay dead anyway.
        scores = {name: torch.rand(mask.shape) for name, mask in alive.items()}
        new = select_mask(scores, alive, density=target)
        for name in alive:
            assert not (new[name] & ~alive[name]).any()
        assert sum(int(m.sum()) for m in new.values()) == min(
            sum(int(m.sum()) for m in alive.values()), round(target * 94)
        )
        alive = new


def test_ties_break_by_tensor_then_index():
    scores = {"a": torch.zeros(3), "b": torch.zeros(3)}
    masks = select_mask(scores, _all_alive(**scores), density=0.5, min_layer_density=0.0)
    # Drop three: the two droppable units of "a" (its last is its protected best), then b[0].
    assert masks["a"].tolist() == [False, False, True]
    assert masks["b"].tolist() == [False, True, True]


def test_select_mask_leaves_its_inputs_alone_and_returns_savable_masks():
    scores = {"a": torch.arange(4.0), "b": torch.arange(6.0).reshape(2, 3)}
    alive = _all_alive(**scores)
    masks = select_mask(scores, alive, density=0.5)
    assert all(mask.all() for mask in alive.values())
    assert masks["b"].shape == (2, 3) and masks["b"].dtype == torch.bool
    save(masks)  # safetensors refuses tensors that share storage


def test_select_mask_rejects_bad_input():
    scores = {"a": torch.tensor([1.0, float("nan")])}
    with pytest.raises(ValueError, match="NaN"):
        select_mask(scores, _all_alive(**scores), density=0.5)
    with pytest.raises(ValueError, match="density"):
        select_mask({"a": torch.ones(2)}, _all_alive(a=torch.ones(2)), density=0.0)
    with pytest.raises(ValueError, match="same tensors"):
        select_mask({"a": torch.ones(2)}, _all_alive(b=torch.ones(2)), density=0.5)


def test_apply_masks_writes_positive_zero_and_keeps_the_rest():
    weight = nn.Parameter(torch.tensor([[-1.5, 2.0], [-3.0, -0.25]]))
    mask = torch.tensor([[False, True], [True, False]])
    apply_masks({"w": weight}, {"w": mask})
    assert weight.tolist() == [[0.0, 2.0], [-3.0, 0.0]]
    assert not torch.signbit(weight[~mask]).any()
    assert weight.requires_grad


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)  # weight 18, bias 2
        self.norm = nn.BatchNorm2d(2)  # 4
        self.hidden = nn.Linear(2, 4)  # 8 + 4
        self.head = nn.Linear(4, 3)  # 12 + 3


def test_prunable_parameters_skip_the_last_linear_biases_and_norms():
    model = _TinyNet()
    assert list(prunable_parameters(model)) == ["conv.weight", "hidden.weight"]
    assert list(prunable_parameters(model, prune_classifier=True)) == ["conv.weight", "hidden.weight", "head.weight"]
    assert prunable_parameters(model)["conv.weight"] is model.conv.weight


def test_prunable_parameters_of_transformers_resnet_skip_classifier():
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=5)
    model = ResNetForImageClassification(config)
    names = list(prunable_parameters(model))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert names == [f"{n}.weight" for n in convs]
    assert "classifier.1.weight" in prunable_parameters(model, prune_classifier=True)


def test_density_report_counts_prunable_and_all_parameters():
    model = _TinyNet()
    params = prunable_parameters(model)
    masks = full_masks(params)
    masks["conv.weight"].view(-1)[:9] = False  # prune 9 of 18 conv weights
    report = density_report(model, masks)
    assert report["prunable_parameters"] == 26 and report["total_parameters"] == 51
    assert report["pruned_parameters"] == 9
    assert report["prunable_density"] == pytest.approx(17 / 26) == density(masks)
    assert report["overall_density"] == pytest.approx(42 / 51)
    assert report["per_tensor"] == {"conv.weight": 0.5, "hidden.weight": 1.0}
