"""A Hub backbone trains and is evaluated with its own image processor's size and normalisation.

Stand-ins for pretrained ImageNet models: a tiny ViT and a tiny ConvNeXt with random weights, saved with
processors whose size (32, 48) and mean/std differ from digits-LT's (8 pixels, its own statistics).
"""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextImageProcessorPil,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    pipeline,
)

from ltap_hf.data import DATASET_STATS, EvalTransform, TrainTransform, load_lt_dataset, model_input_stats
from ltap_hf.data.transforms import image_processor_geometry
from ltap_hf.hub import load_sparse_pretrained
from ltap_hf.models.image_processing import image_processor_for_stats, load_image_processor


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import run_ltap  # noqa: E402


DIGITS = DATASET_STATS["digits_lt"]
VIT_MEAN, VIT_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
CONVNEXT_MEAN, CONVNEXT_STD = [0.45, 0.5, 0.55], [0.3, 0.2, 0.25]
# 2 epochs of 7 optimizer steps, pruned to 30% on the demo recipe's schedule.
SHORT_RUN = ["--num_train_epochs", "2", "--lr_milestones", "1", "2", "--learning_rate", "0.01", "--disable_tqdm", "true"]


def vit_processor():
    return ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=VIT_MEAN, image_std=VIT_STD)


def convnext_processor(shortest_edge=48):
    # below 384: the shorter side to int(48 / 0.75) = 64, then the centred 48 x 48
    return ConvNextImageProcessorPil(size={"shortest_edge": shortest_edge}, crop_pct=0.75,
                                     image_mean=CONVNEXT_MEAN, image_std=CONVNEXT_STD)


def rgb_images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for height, width in sizes]


def processed(processor, images):
    """What the processor (and so a pipeline, which converts to RGB first) gives the model."""
    return processor([image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny "pretrained" backbones (5 ImageNet-like labels: the head is replaced for digits' 10)."""
    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=5,
    ))
    vit.save_pretrained(root / "vit")
    vit_processor().save_pretrained(root / "vit")
    convnext = ConvNextForImageClassification(ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5))
    convnext.save_pretrained(root / "convnext")
    convnext_processor().save_pretrained(root / "convnext")
    convnext.save_pretrained(root / "convnext_without_processor")
    load_lt_dataset("digits_lt", cache_dir=str(root / "data"))
    return {"root": root, "data": root / "data", **{name: root / name for name in ("vit", "convnext", "convnext_without_processor")}}


def record_model_inputs(patch: pytest.MonkeyPatch) -> list[tuple[bool, torch.Tensor]]:
    """Every `pixel_values` the model of a run_ltap run is then called with: (training mode, tensor)."""
    seen = []
    build_model = run_ltap.build_model

    def record(module, args, kwargs):
        pixels = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
        seen.append((module.training, pixels.detach().clone()))

    def build_and_record(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_pre_hook(record, with_kwargs=True)
        return model

    patch.setattr(run_ltap, "build_model", build_and_record)
    return seen


@pytest.fixture
def seen_inputs(monkeypatch):
    return record_model_inputs(monkeypatch)


def _test_images(folders, count):
    return load_lt_dataset("digits_lt", cache_dir=str(folders["data"]))["test"]["image"][:count]


@pytest.fixture(scope="module")
def vit_run(folders, tmp_path_factory):
    """One short run of the tiny ViT (its processor: 32 x 32, its own mean and std), with what its model saw."""
    output_dir = tmp_path_factory.mktemp("vit_run") / "run"
    with pytest.MonkeyPatch.context() as patch:
        seen = record_model_inputs(patch)
        result = run_ltap.main(["--model_name_or_path", str(folders["vit"]), "--output_dir", str(output_dir),
                                "--dataset_cache_dir", str(folders["data"]), *SHORT_RUN])
    return {"output_dir": output_dir, "result": result, "seen": seen}


def test_vit_trains_and_evaluates_at_its_processors_size_and_normalisation(folders, vit_run):
    result, seen = vit_run["result"], vit_run["seen"]
    assert {image.size for image in _test_images(folders, 500)} == {(8, 8)}  # digits-LT's own size
    training = [pixels for train, pixels in seen if train]
    evaluation = [pixels for train, pixels in seen if not train]
    assert len(training) == 14 and all(pixels.shape[1:] == (3, 32, 32) for pixels in training)
    assert all(pixels.shape[1:] == (3, 32, 32) for pixels in evaluation)
    # The final test evaluation's first batch (256 images, in order) is what the ViT's own processor makes
    # of those images: its resize and its normalisation, not digits-LT's.
    expected = processed(vit_processor(), _test_images(folders, 256))
    assert any(pixels.shape == expected.shape and torch.allclose(pixels, expected, atol=1e-5) for pixels in evaluation)
    # The MACs are counted, and reported, for the processor's input; the run pruned as usual.
    assert result["input_size"] == (3, 32, 32)
    assert result["density"]["prunable_density"] == pytest.approx(0.30, abs=1e-3)


def test_saved_vit_folder_carries_its_processor_and_a_pipeline_preprocesses_the_same_way(folders, vit_run):
    output_dir = vit_run["output_dir"]
    saved = json.loads((output_dir / "preprocessor_config.json").read_text())
    assert saved == json.loads((folders["vit"] / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": 32, "width": 32} and saved["image_mean"] == VIT_MEAN

    # The pruned ViT is a sparse checkpoint of a foreign backbone: its folder carries the decoding code.
    classifier = pipeline("image-classification", model=str(output_dir), trust_remote_code=True)
    digit = rgb_images([(8, 8)], seed=3)[0]
    predictions = classifier(digit, top_k=10)
    assert sorted(p["label"] for p in predictions) == [str(d) for d in range(10)]
    # Its scores are the trained model's on the run's evaluation transform of that image: same input, same weights.
    stats = run_ltap.model_input(*_model_and_data_args(folders, ["--model_name_or_path", str(folders["vit"])]), DIGITS)[0]
    model = load_sparse_pretrained(output_dir).eval()
    with torch.no_grad():
        probabilities = model(EvalTransform(stats)({"image": [digit]})["pixel_values"]).logits.softmax(-1)[0]
    by_label = {p["label"]: p["score"] for p in predictions}
    assert [by_label[str(d)] for d in range(10)] == pytest.approx(probabilities.tolist(), abs=1e-5)


def _model_and_data_args(folders, flags):
    model_args, data_args, _, _ = run_ltap.parse_args(["--output_dir", str(folders["root"] / "unused"), *flags])
    return model_args, data_args


def test_a_model_without_a_processor_keeps_the_datasets_size_and_statistics(folders, seen_inputs, tmp_path, capsys):
    result = run_ltap.main(["--model_name_or_path", str(folders["convnext_without_processor"]),
                            "--output_dir", str(tmp_path / "run"), "--dataset_cache_dir", str(folders["data"]), *SHORT_RUN])
    assert result["input_size"] == (3, 8, 8)
    assert "MACs per image (8x8 input)" in capsys.readouterr().out
    training = [pixels for train, pixels in seen_inputs if train]
    assert training and all(pixels.shape[1:] == (3, 8, 8) for pixels in training)
    expected = EvalTransform(DIGITS)({"image": _test_images(folders, 256)})["pixel_values"]
    assert any(pixels.shape == expected.shape and torch.equal(pixels, expected) for train, pixels in seen_inputs if not train)
    saved = json.loads((tmp_path / "run" / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": 8, "width": 8} and saved["image_mean"] == list(DIGITS.mean)
    assert saved["image_std"] == list(DIGITS.std)


def test_the_override_flags_win_over_the_processor(folders, seen_inputs, tmp_path):
    result = run_ltap.main(["--model_name_or_path", str(folders["convnext"]), "--image_size", "24",
                            "--use_dataset_normalization", "--output_dir", str(tmp_path / "run"),
                            "--dataset_cache_dir", str(folders["data"]), *SHORT_RUN])
    assert result["input_size"] == (3, 24, 24)
    training = [pixels for train, pixels in seen_inputs if train]
    assert training and all(pixels.shape[1:] == (3, 24, 24) for pixels in training)
    # The folder carries a processor built for 24 pixels: ConvNeXt's 64-then-48 scaled to 32-then-24, with
    # digits-LT's statistics; the model saw exactly what that processor makes of the test images.
    saved = load_image_processor(tmp_path / "run")
    assert (saved.size.shortest_edge, saved.crop_size.height, saved.crop_size.width) == (32, 24, 24)
    assert list(saved.image_mean) == list(DIGITS.mean) and list(saved.image_std) == list(DIGITS.std)
    expected = processed(saved, _test_images(folders, 256))
    assert any(pixels.shape == expected.shape and torch.allclose(pixels, expected, atol=1e-5)
               for train, pixels in seen_inputs if not train)


def test_each_override_alone_keeps_the_other_from_the_processor(folders):
    convnext = ["--model_name_or_path", str(folders["convnext"])]
    stats, processor = run_ltap.model_input(*_model_and_data_args(folders, convnext), DIGITS)
    assert (stats.image_size, stats.resize_size, stats.mean) == (48, 64, tuple(CONVNEXT_MEAN))
    assert type(processor).__name__ == "ConvNextImageProcessorPil"  # the model's own, saved as it is
    stats, processor = run_ltap.model_input(*_model_and_data_args(folders, [*convnext, "--image_size", "24"]), DIGITS)
    assert (stats.image_size, stats.resize_size, stats.mean) == (24, 32, tuple(CONVNEXT_MEAN))
    assert list(processor.image_mean) == CONVNEXT_MEAN
    stats, processor = run_ltap.model_input(*_model_and_data_args(folders, [*convnext, "--use_dataset_normalization"]), DIGITS)
    assert (stats.image_size, stats.resize_size, stats.mean, stats.std) == (48, 64, DIGITS.mean, DIGITS.std)
    assert processor.crop_size.height == 48 and list(processor.image_mean) == list(DIGITS.mean)


def test_a_vit_forced_to_another_size_is_refused_before_training(folders, tmp_path):
    with pytest.raises(ValueError, match=r"ViTForImageClassification does not take 3x48x48 inputs.*--image_size"):
        run_ltap.main(["--model_name_or_path", str(folders["vit"]), "--image_size", "48", "--output_dir", str(tmp_path),
                       "--dataset_cache_dir", str(folders["data"]), "--num_train_epochs", "0"])


# ---- the transforms against the processors, without training -------------------------------------------------------

PROCESSORS = {
    "vit": vit_processor,
    "convnext_crop_pct": convnext_processor,
    "convnext_warp_from_384": lambda: convnext_processor(shortest_edge=384),
    "shortest_edge_then_crop": lambda: ViTImageProcessorPil(  # CLIP / BiT style, bicubic
        size={"shortest_edge": 40}, do_center_crop=True, crop_size={"height": 32, "width": 32}, resample=3,
        image_mean=VIT_MEAN, image_std=VIT_STD),
    "square_resize_then_crop": lambda: ViTImageProcessorPil(  # DeiT / BEiT style
        size={"height": 40, "width": 40}, do_center_crop=True, crop_size={"height": 32, "width": 32}),
}


@pytest.mark.parametrize("name", sorted(PROCESSORS))
@pytest.mark.parametrize("dataset", ["digits_lt", "imagenet_lt"])
def test_eval_transform_gives_what_the_processor_gives(name, dataset):
    processor = PROCESSORS[name]()
    images = rgb_images([(8, 8), (37, 53), (61, 29)]) + [rgb_images([(9, 9)], seed=1)[0].convert("L")]
    stats = model_input_stats(DATASET_STATS[dataset], processor)
    ours = EvalTransform(stats)({"image": images})["pixel_values"]
    expected = processed(processor, images)
    assert ours.shape == expected.shape and ours.shape[2] == ours.shape[3] == stats.image_size
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    # the processor a run saves for these settings (after an override) preprocesses the same way
    rebuilt = image_processor_for_stats(stats)
    torch.testing.assert_close(processed(rebuilt, images), ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", [
    {"do_normalize": False},
    {"do_rescale": False, "image_mean": [100.0, 120.0, 140.0], "image_std": [50.0, 60.0, 70.0]},
    {"rescale_factor": 1 / 127.5, "image_mean": [1.0, 1.0, 1.0], "image_std": [1.0, 1.0, 1.0]},  # to [-1, 1]
    {"image_mean": 0.25, "image_std": 0.5},  # one value for every channel
])
def test_eval_transform_follows_the_processors_rescale_and_normalisation(options):
    processor = ViTImageProcessorPil(size={"height": 16, "width": 16}, **options)
    images = rgb_images([(8, 8), (16, 16)])
    ours = EvalTransform(model_input_stats(DIGITS, processor))({"image": images})["pixel_values"]
    torch.testing.assert_close(ours, processed(processor, images), atol=1e-4, rtol=1e-5)


def test_train_transform_is_the_processors_image_shifted_by_the_datasets_scaled_padding():
    processor = vit_processor()
    stats = model_input_stats(DIGITS, processor)
    assert stats.crop_padding == 4 and not stats.horizontal_flip  # digits: 1 pixel at 8, so 4 at 32; never mirrored
    images = rgb_images([(8, 8)] * 24, seed=2)
    reference = processed(processor, images)
    torch.manual_seed(0)
    trained_on = TrainTransform(stats)({"image": images})["pixel_values"]
    # zero padding happens before normalisation: a padded pixel reads (0 - mean) / std
    border = (-torch.tensor(VIT_MEAN) / torch.tensor(VIT_STD))[:, None, None]
    offsets = set()
    for image, output in zip(reference, trained_on):
        padded = border.expand(3, 40, 40).clone()
        padded[:, 4:36, 4:36] = image
        found = [(dy, dx) for dy in range(9) for dx in range(9)
                 if torch.allclose(padded[:, dy:dy + 32, dx:dx + 32], output, atol=1e-5)]
        assert len(found) >= 1
        offsets.add(found[0])
    assert len(offsets) > 5  # shifted, by offsets that differ per image


def test_imagenet_style_training_keeps_its_random_resized_crop_at_the_processors_size():
    stats = model_input_stats(DATASET_STATS["imagenet_lt"], convnext_processor())
    assert (stats.image_size, stats.resize_size, stats.crop_padding, stats.resample) == (48, 64, 0, 3)
    torch.manual_seed(0)
    images = rgb_images([(60, 90)] * 4)
    batch = TrainTransform(stats)({"image": images})["pixel_values"]
    assert batch.shape == (4, 3, 48, 48)
    assert not torch.allclose(batch, EvalTransform(stats)({"image": images})["pixel_values"])  # random crops


def test_without_a_processor_the_dataset_stats_are_unchanged_unless_a_size_is_given():
    assert model_input_stats(DIGITS) == DIGITS
    assert model_input_stats(DATASET_STATS["cifar10_lt"]) == DATASET_STATS["cifar10_lt"]
    resized = model_input_stats(DIGITS, image_size=16)
    assert (resized.image_size, resized.resize_size, resized.crop_padding, resized.mean) == (16, (16, 16), 2, DIGITS.mean)
    imagenet = model_input_stats(DATASET_STATS["imagenet_lt"], image_size=160)
    assert (imagenet.image_size, imagenet.resize_size) == (160, None)  # its own resize and crop, at 160
    with pytest.raises(ValueError, match="image_size must be >= 1"):
        model_input_stats(DIGITS, image_size=0)


def test_image_size_scales_the_processors_geometry():
    stats = model_input_stats(DIGITS, convnext_processor(), image_size=24)
    assert (stats.image_size, stats.resize_size) == (24, 32)
    stats = model_input_stats(DIGITS, PROCESSORS["square_resize_then_crop"](), image_size=64)
    assert (stats.image_size, stats.resize_size) == (64, (80, 80))


@pytest.mark.parametrize("options, reason", [
    ({"size": {"height": 32, "width": 48}}, "does not give square inputs"),
    ({"size": {"shortest_edge": 32}}, "does not give square inputs"),
    ({"size": {"longest_edge": 32}}, "resizes to size"),
    ({"size": {"height": 32, "width": 32}, "do_pad": True}, "pads"),
])
def test_a_geometry_the_transforms_cannot_reproduce_is_refused_unless_a_size_is_given(options, reason):
    processor = ViTImageProcessorPil(image_mean=VIT_MEAN, image_std=VIT_STD, **options)
    with pytest.raises(ValueError, match=reason):
        image_processor_geometry(processor)
    with pytest.raises(ValueError, match="explicit input size"):
        model_input_stats(DIGITS, processor)
    stats = model_input_stats(DIGITS, processor, image_size=16)  # the dataset's geometry, the processor's mean
    assert (stats.image_size, stats.mean) == (16, tuple(VIT_MEAN))


def test_load_image_processor_is_none_for_a_folder_without_one(folders):
    assert load_image_processor(folders["convnext_without_processor"]) is None
    assert load_image_processor(folders["vit"]).size.height == 32


def test_a_processor_that_does_not_resize_keeps_the_datasets_geometry():
    processor = dataclasses.make_dataclass("Plain", [("do_resize", bool), ("image_mean", list), ("image_std", list),
                                                     ("rescale_factor", float)])(False, VIT_MEAN, VIT_STD, 1 / 255)
    stats = model_input_stats(DIGITS, processor)
    assert (stats.image_size, stats.resize_size, stats.mean, stats.std) == (8, None, tuple(VIT_MEAN), tuple(VIT_STD))
