import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForImageClassification, pipeline

from ltap_hf.cost import model_cost
from ltap_hf.models import LTResNetConfig, LTResNetForImageClassification
from ltap_hf.models.image_processing import make_image_processor


def _model(preset: str = "resnet20", seed: int = 0, **kwargs) -> LTResNetForImageClassification:
    torch.manual_seed(seed)
    return LTResNetForImageClassification(LTResNetConfig.from_preset(preset, **kwargs)).eval()


def _pruned_widths_config() -> LTResNetConfig:
    """A resnet20-shaped network whose every conv has its own width, as channel pruning leaves it."""
    return LTResNetConfig.from_preset(
        "resnet20",
        num_labels=7,
        embedding_size=11,
        hidden_sizes=[11, 21, 40],
        block_widths=[[[5], [9], [16]], [[3], [32], [17]], [[64], [1], [23]]],
        # stage 1: 11 inputs land on chosen positions of the 21-wide stream, one input is dropped
        shortcut_channels=[None, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, -1], list(range(21))],
        shortcut_type="A",
    )


def test_save_load_round_trip_gives_equal_outputs(tmp_path):
    model = _model(num_labels=10)
    pixels = torch.randn(4, 3, 32, 32)
    model.save_pretrained(tmp_path)
    loaded = LTResNetForImageClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(model(pixels).logits, loaded(pixels).logits)


def test_auto_classes_resolve_to_lt_resnet(tmp_path):
    config = AutoConfig.for_model("lt_resnet", num_labels=3)
    assert isinstance(config, LTResNetConfig)
    assert isinstance(AutoModelForImageClassification.from_config(config), LTResNetForImageClassification)
    _model(num_labels=3).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "lt_resnet"
    assert saved["auto_map"]["AutoModelForImageClassification"].endswith("LTResNetForImageClassification")
    assert isinstance(AutoModelForImageClassification.from_pretrained(tmp_path), LTResNetForImageClassification)


def test_per_layer_widths_round_trip_bit_identical(tmp_path):
    torch.manual_seed(0)
    model = LTResNetForImageClassification(_pruned_widths_config()).train()
    pixels = torch.randn(8, 3, 32, 32)
    model(pixels)  # one training-mode pass so BatchNorm running statistics are not the defaults
    model.eval()
    assert model.resnet.stages[2].layers[1].layer[0].conv.out_channels == 1
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.block_widths == model.config.block_widths
    assert loaded.config.shortcut_channels == model.config.shortcut_channels
    assert torch.equal(model(pixels).logits, loaded(pixels).logits)


def test_padding_shortcut_places_channels_where_configured():
    config = _pruned_widths_config()
    model = LTResNetForImageClassification(config)
    shortcut = model.resnet.stages[1].layers[0].shortcut
    x = torch.arange(11.0).view(1, 11, 1, 1).expand(1, 11, 2, 2)
    out = shortcut(x)
    assert out.shape == (1, 21, 1, 1)
    expected = torch.zeros(21)
    expected[[0, 2, 4, 6, 8, 10, 12, 14, 16, 18]] = torch.arange(10.0)
    assert torch.equal(out.flatten(), expected)


def test_default_padding_shortcut_is_centred_zero_padding():
    model = _model("resnet32", num_labels=10)
    shortcut = model.resnet.stages[1].layers[0].shortcut
    x = torch.randn(2, 16, 8, 8)
    reference = torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
    assert torch.equal(shortcut(x), reference)


def test_trust_remote_code_loads_without_ltap_hf(tmp_path):
    model = _model(num_labels=5)
    pixels = torch.randn(2, 3, 32, 32)
    model.save_pretrained(tmp_path / "model")
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    np.save(tmp_path / "logits.npy", model(pixels).logits.detach().numpy())
    script = f"""
import sys
sys.modules["ltap_hf"] = None  # any import of ltap_hf now raises ImportError
import numpy as np, torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
assert "ltap_hf" not in type(model).__module__, type(model).__module__
logits = model(torch.from_numpy(np.load({str(tmp_path / "pixels.npy")!r}))).logits.detach().numpy()
assert np.array_equal(logits, np.load({str(tmp_path / "logits.npy")!r}))
print("remote-ok", type(model).__module__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-ok transformers_modules" in result.stdout


def test_pipeline_classifies_a_pil_image(tmp_path):
    model = _model(num_labels=3, id2label={0: "cat", 1: "dog", 2: "owl"})
    model.save_pretrained(tmp_path)
    make_image_processor(32, mean=[0.5] * 3, std=[0.25] * 3).save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    predictions = classifier(image, top_k=3)
    assert sorted(p["label"] for p in predictions) == ["cat", "dog", "owl"]
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)


def test_parameter_counts_and_macs():
    # resnet32 (CIFAR, 100 classes): Cao et al. and the LTAP paper quote about 0.47M parameters.
    assert model_cost(_model("resnet32", num_labels=100), (3, 32, 32)).parameters == 470_004
    resnet50 = _model("resnet50", num_labels=1000)
    cost = model_cost(resnet50, (3, 224, 224))
    assert cost.parameters == 25_557_032  # torchvision's resnet50
    assert cost.macs == pytest.approx(4.1e9, rel=0.01)
    with FlopCounterMode(display=False) as counter:
        resnet50(torch.zeros(1, 3, 224, 224))
    assert cost.macs == counter.get_total_flops() // 2


def test_nonzero_macs_skip_zeroed_weights():
    model = _model("resnet20", num_labels=10)
    dense = model_cost(model, (3, 32, 32))
    with torch.no_grad():
        model.resnet.stages[0].layers[0].layer[0].conv.weight.zero_()
    sparse = model_cost(model, (3, 32, 32))
    assert dense.macs == sparse.macs
    assert dense.macs - sparse.macs_nonzero == 16 * 16 * 9 * 32 * 32
    assert sparse.parameters_nonzero == dense.parameters_nonzero - 16 * 16 * 9


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(depths=[2, 0]), "depths"),
        (dict(hidden_sizes=[16, -32, 64]), "hidden_sizes"),
        (dict(embedding_size=0), "embedding_size"),
        (dict(block_widths=[[[16]] * 5, [[32]] * 5, [[0]] * 5]), "block_widths"),
        (dict(num_labels=3, id2label={0: "a", 1: "b"}), "num_labels"),
        (dict(num_labels=0), "num_labels"),
        (dict(stem_type="tiny"), "stem_type"),
        (dict(shortcut_type="C"), "shortcut_type"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LTResNetConfig.from_preset("resnet32", **kwargs)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="resnet32"):
        LTResNetConfig.from_preset("resnet33")


def test_id2label_alone_fills_label2id():
    config = LTResNetConfig(id2label={0: "a", 1: "b", 2: "c"})
    assert config.num_labels == 3
    assert config.label2id == {"a": 0, "b": 1, "c": 2}
