import copy

import pytest
import torch
from transformers import AutoModelForImageClassification

from ltap_hf.models import LTResNetConfig, LTResNetForImageClassification
from ltap_hf.models.modeling_lt_resnet import LTResNetConvLayer
from ltap_hf.backbones import backbone_for, find_channel_groups, slim_model
from ltap_hf.pruning.groups import full_group_masks, group_density_report


def _trained_statistics(model, image_size: int):
    """One training-mode pass so BatchNorm running statistics differ from their defaults."""
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, image_size, image_size))
    return model.eval()


def _lt_resnet(preset: str, image_size: int, **kwargs) -> LTResNetForImageClassification:
    torch.manual_seed(0)
    config = LTResNetConfig.from_preset(preset, num_labels=10, **kwargs)
    return _trained_statistics(LTResNetForImageClassification(config), image_size)


def _random_alive(groups, seed: int = 0, keep: float = 0.5):
    generator = torch.Generator().manual_seed(seed)
    alive = {g.name: torch.rand(g.num_channels, generator=generator) < keep for g in groups}
    for mask in alive.values():
        mask[torch.randint(len(mask), (1,), generator=generator)] = True  # no group empty
    return alive


CASES = {
    "resnet32-A": (lambda: _lt_resnet("resnet32", 32), 32),
    "resnet20-B": (lambda: _lt_resnet("resnet20", 32, shortcut_type="B"), 32),
    "bottleneck-imagenet-B": (
        lambda: _lt_resnet("resnet50", 64, depths=[2, 1, 1, 1], hidden_sizes=[32, 64, 64, 128], embedding_size=16),
        64,
    ),
    "bottleneck-imagenet-A": (
        lambda: _lt_resnet(
            "resnet50", 64, depths=[2, 1, 1, 1], hidden_sizes=[32, 64, 64, 128], embedding_size=16, shortcut_type="A"
        ),
        64,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_slimmed_model_computes_the_masked_function(case):
    build, image_size = CASES[case]
    model = build()
    groups = find_channel_groups(model)
    alive = _random_alive(groups)
    backbone_for(model).apply_channel_masks(model, groups, alive)
    before = copy.deepcopy(model.state_dict())
    slim = slim_model(model, groups, alive)

    assert type(slim) is type(model)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())  # the input is left alone
    expected = {g.name: int(alive[g.name].sum()) for g in groups}
    assert slim.config.hidden_sizes[-1] == slim.classifier.in_features == expected[groups[-1].name]
    report = group_density_report(model, groups, alive)
    assert sum(p.numel() for p in slim.parameters()) == report["total_parameters"] - report["pruned_parameters"]
    pixels = torch.randn(4, 3, image_size, image_size)
    torch.testing.assert_close(slim(pixels).logits, model(pixels).logits, rtol=0, atol=1e-5)


def test_slimmed_model_round_trips_bit_identical_through_save_pretrained(tmp_path):
    model = _lt_resnet("resnet32", 32)
    groups = find_channel_groups(model)
    alive = _random_alive(groups, seed=1, keep=0.4)
    backbone_for(model).apply_channel_masks(model, groups, alive)
    slim = slim_model(model, groups, alive)
    slim.save_pretrained(tmp_path)

    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, LTResNetForImageClassification)
    assert loaded.config.block_widths == slim.config.block_widths
    assert loaded.config.shortcut_channels == slim.config.shortcut_channels
    loaded_state = loaded.state_dict()
    assert all(torch.equal(t, loaded_state[n]) for n, t in slim.state_dict().items())
    pixels = torch.randn(4, 3, 32, 32)
    assert torch.equal(slim(pixels).logits, loaded(pixels).logits)


def test_padding_maps_are_renumbered_to_the_kept_channels():
    model = _lt_resnet("resnet20", 32)
    groups = find_channel_groups(model)
    alive = full_group_masks(groups)
    alive["resnet.embedder"][[0, 1]] = False  # stream-0 channels 0, 1 went to stage-1 channels 8, 9
    alive["resnet.stages.1"][[2, 10]] = False  # channel 10 received stream-0 channel 2
    slim = slim_model(model, groups, alive)
    # Kept stage-0 channels 2..15 went to 10..23: 2's target is pruned, 11..23 are renumbered past
    # the two pruned channels below them, to 9..21.
    assert slim.config.shortcut_channels[1] == [-1] + list(range(9, 22))


def test_conv_shortcut_survives_equal_slimmed_widths():
    # Stage 0 of a bottleneck network projects the stem's 16 channels to 32 with a stride-1 conv:
    # slimmed to equal widths, the config would build an identity there.
    model = _lt_resnet("resnet50", 64, depths=[1, 1, 1, 1], hidden_sizes=[32, 64, 64, 128], embedding_size=16)
    groups = find_channel_groups(model)
    alive = full_group_masks(groups)
    alive["resnet.embedder"][8:] = False
    alive["resnet.stages.0"][torch.randperm(32, generator=torch.Generator().manual_seed(0))[:24]] = False
    backbone_for(model).apply_channel_masks(model, groups, alive)
    slim = slim_model(model, groups, alive)
    assert isinstance(slim.resnet.stages[0].layers[0].shortcut, LTResNetConvLayer)
    assert slim.config.embedding_size != slim.config.hidden_sizes[0]
    pixels = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(slim(pixels).logits, model(pixels).logits, rtol=0, atol=1e-5)
