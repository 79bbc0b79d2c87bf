"""Backbone adapters: coupled channels found, slimmed network = masked network, save/reload without pickle."""

import ast
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForImageClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
)

import ltap_hf.pruning
from ltap_hf.backbones import (
    ConvNextBackbone,
    HFResNetBackbone,
    LTResNetBackbone,
    TracedBackbone,
    backbone_for,
    find_channel_groups,
)
from ltap_hf.models import LTAPConvNextForImageClassification, LTResNetConfig, LTResNetForImageClassification


def _trained_statistics(model: nn.Module, image_size: int) -> nn.Module:
    """One training-mode pass so normalisation running statistics differ from their defaults."""
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, image_size, image_size))
    return model.eval()


def _hf_resnet(layer_type: str) -> ResNetForImageClassification:
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1], layer_type=layer_type,
                          num_labels=5)
    return _trained_statistics(ResNetForImageClassification(config), 64)


def _convnext() -> ConvNextForImageClassification:
    torch.manual_seed(0)
    config = ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[2, 1], num_labels=5, layer_scale_init_value=0.5)
    return ConvNextForImageClassification(config).eval()


def _random_alive(groups, keep: float = 0.4):
    generator = torch.Generator().manual_seed(0)
    alive = {g.name: torch.rand(g.num_channels, generator=generator) < keep for g in groups}
    for mask in alive.values():
        mask[0] = True  # no group empty
    return alive


def test_the_registry_finds_each_family_adapter():
    lt = LTResNetForImageClassification(LTResNetConfig.from_preset("resnet20", num_labels=3))
    assert isinstance(backbone_for(lt), LTResNetBackbone)
    assert isinstance(backbone_for(_hf_resnet("basic")), HFResNetBackbone)
    assert isinstance(backbone_for(_convnext()), ConvNextBackbone)
    assert isinstance(backbone_for(nn.Sequential(nn.Conv2d(3, 4, 3))), TracedBackbone)


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_a_slimmed_transformers_resnet_is_a_smaller_ltresnet_with_the_same_function(tmp_path, layer_type):
    model = _hf_resnet(layer_type)
    backbone = backbone_for(model)
    groups = backbone.channel_groups(model)
    alive = _random_alive(groups)
    backbone.apply_channel_masks(model, groups, alive)
    slim = backbone.slim(model, groups, alive).eval()
    assert isinstance(slim, LTResNetForImageClassification)
    assert sum(p.numel() for p in slim.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    pixels = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(slim(pixels).logits, model(pixels).logits, rtol=0, atol=1e-5)
    slim.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(pixels).logits, slim(pixels).logits)
    assert loaded.config.id2label == model.config.id2label


def test_convnext_prunes_mlp_channels_and_slims_into_per_block_widths(tmp_path):
    model = _convnext()
    backbone = backbone_for(model)
    groups = backbone.channel_groups(model)
    # One group per block: its MLP's hidden channels (4 x the stage width), pwconv1 rows and pwconv2 columns.
    assert [g.num_channels for g in groups] == [32, 32, 64]
    assert {(s.tensor.rsplit(".", 2)[-2], s.dim) for s in groups[0].slices} == {("pwconv1", 0), ("pwconv2", 1)}
    alive = _random_alive(groups)
    backbone.apply_channel_masks(model, groups, alive)
    slim = backbone.slim(model, groups, alive).eval()
    assert isinstance(slim, LTAPConvNextForImageClassification)
    assert slim.config.intermediate_sizes == [[int(alive[g.name].sum()) for g in groups[:2]], [int(alive[groups[2].name].sum())]]
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(slim(pixels).logits, model(pixels).logits, rtol=0, atol=1e-5)
    slim.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, LTAPConvNextForImageClassification)
    assert torch.equal(loaded(pixels).logits, slim(pixels).logits)
    assert find_channel_groups(loaded)[0].num_channels == slim.config.intermediate_sizes[0][0]


def test_a_family_that_cannot_be_slimmed_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="cannot slim .*granularity='weight'"):
        TracedBackbone().check_slimmable(nn.Sequential(nn.Conv2d(3, 4, 3)))
    model = _hf_resnet("bottleneck")
    model.config.downsample_in_bottleneck = True
    with pytest.raises(ValueError, match="downsample_in_bottleneck"):
        backbone_for(model).check_slimmable(model)


def test_the_pruning_package_imports_no_model_class():
    # Tensor code only: no module under ltap_hf/pruning imports a model (ltap_hf's or transformers') or an adapter.
    imported = set()
    for path in (Path(ltap_hf.pruning.__file__).parent).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                imported.add("." * node.level + (node.module or ""))
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert imported, "no imports read"
    forbidden = [m for m in imported if m.startswith(("..models", "..backbones", "transformers", "ltap_hf"))]
    assert forbidden == []
