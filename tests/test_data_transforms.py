"""Torch-only image transforms and the Trainer collator."""

import dataclasses

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from ltap_hf.data import DATASET_STATS, LT_BUILDERS, EvalTransform, TrainTransform, collate_fn
from ltap_hf.data.transforms import (
    DatasetStats,
    normalize,
    random_crop_with_padding,
    random_horizontal_flip,
    random_resized_crop,
    resize_center_crop,
    resize_then_center_crop,
    stack_images,
)


def random_uint8(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(1, 256, size=shape, dtype=np.uint8))


def image_dataset(num_images=12, size=8, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    images = [PIL.Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode) for _ in range(num_images)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)})
    labels = [i % 3 for i in range(num_images)]
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def matching_offsets(output, image, padding):
    """Every (dy, dx) such that `output` is the window of the zero-padded `image` at that offset."""
    padded = torch.nn.functional.pad(image, (0, 0, padding, padding, padding, padding))
    height, width = image.shape[:2]
    return [
        (dy, dx)
        for dy in range(2 * padding + 1)
        for dx in range(2 * padding + 1)
        if torch.equal(padded[dy : dy + height, dx : dx + width], output)
    ]


def test_random_crop_is_a_window_of_the_padded_image():
    torch.manual_seed(0)
    images = random_uint8(64, 6, 5, 3)
    cropped = random_crop_with_padding(images, padding=2)
    assert cropped.shape == images.shape and cropped.dtype == torch.uint8
    offsets = [matching_offsets(cropped[i], images[i], 2) for i in range(64)]
    assert all(len(found) == 1 for found in offsets)
    assert len({found[0] for found in offsets}) > 10  # offsets differ per image
    assert random_crop_with_padding(images, padding=0) is images


def test_horizontal_flip_mirrors_about_half():
    torch.manual_seed(0)
    images = random_uint8(200, 4, 4, 3)
    flipped = random_horizontal_flip(images)
    mirrored = [torch.equal(flipped[i], images[i].flip(1)) for i in range(200)]
    kept = [torch.equal(flipped[i], images[i]) for i in range(200)]
    assert all(m != k for m, k in zip(mirrored, kept))
    assert 70 < sum(mirrored) < 130


def test_normalize_matches_formula_and_layout():
    images = random_uint8(2, 4, 5, 3)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    out = normalize(images, mean, std)
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32 and out.is_contiguous()
    channels = images.permute(0, 3, 1, 2).float() / 255
    expected = (channels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(out, expected)


def test_stack_images_converts_modes():
    rgb = PIL.Image.fromarray(np.full((3, 3, 3), 200, dtype=np.uint8), "RGB")
    gray = PIL.Image.fromarray(np.full((3, 3), 50, dtype=np.uint8), "L")
    assert stack_images([rgb, gray], num_channels=1).shape == (2, 3, 3, 1)
    as_rgb = stack_images([rgb, gray], num_channels=3)
    assert as_rgb.shape == (2, 3, 3, 3) and as_rgb[1].unique().tolist() == [50]


def test_train_transform_draws_from_torch_global_rng():
    dataset = image_dataset()
    transformed = dataset.with_transform(TrainTransform.from_dataset("cifar10_lt", image_size=8))
    state = torch.get_rng_state()
    first = transformed[:12]["pixel_values"]
    torch.set_rng_state(state)
    assert torch.equal(transformed[:12]["pixel_values"], first)  # a restored RNG replays the batch
    assert not torch.equal(transformed[:12]["pixel_values"], first)  # a moved RNG gives a new batch


def test_eval_transform_is_deterministic_normalisation():
    dataset = image_dataset(mode="L")
    stats = DATASET_STATS["digits_lt"]
    batch = dataset.with_transform(EvalTransform.from_dataset("digits_lt"))[:12]
    expected = normalize(stack_images(dataset[:12]["image"], 3), stats.mean, stats.std)
    torch.testing.assert_close(batch["pixel_values"], expected)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == dataset["label"][:]


def test_digits_train_transform_never_mirrors():
    torch.manual_seed(0)
    dataset = image_dataset(num_images=40, mode="L", seed=1)
    transform = TrainTransform.from_dataset("digits_lt", crop_padding=0)
    stats = DATASET_STATS["digits_lt"]
    expected = normalize(stack_images(dataset[:40]["image"], 3), stats.mean, stats.std)
    torch.testing.assert_close(dataset.with_transform(transform)[:40]["pixel_values"], expected)


def test_collate_for_trainer_through_a_dataloader():
    dataset = image_dataset(num_images=10).with_transform(TrainTransform.from_dataset("cifar10_lt"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_fn)
    batches = list(loader)
    assert [b["pixel_values"].shape for b in batches] == [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    assert torch.cat([b["labels"] for b in batches]).tolist() == [i % 3 for i in range(10)]
    assert all(b["labels"].dtype == torch.long for b in batches)


def test_batch_without_labels_gives_only_pixel_values():
    image = PIL.Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    assert set(EvalTransform.from_dataset("cifar10_lt")({"image": [image]})) == {"pixel_values"}


def test_random_resized_crop_and_eval_resize():
    torch.manual_seed(0)
    array = np.zeros((60, 100, 3), dtype=np.uint8)
    array[:, 20:80] = 255  # white centred square of side 60, black bands left and right
    image = PIL.Image.fromarray(array)
    assert all(random_resized_crop(image, 16).size == (16, 16) for _ in range(20))
    center = np.asarray(resize_center_crop(image, 16))
    assert center.shape == (16, 16, 3) and center.min() == 255  # the crop lies inside the white square
    batch = EvalTransform.from_dataset("imagenet_lt")({"image": [image, image.convert("L")], "label": [0, 1]})
    assert batch["pixel_values"].shape == (2, 3, 224, 224)


def test_resize_then_center_crop_resizes_the_shorter_side_and_crops_at_integer_offsets():
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))  # 30 wide, 20 high
    # shorter side 20 -> 10, longer 30 -> int(10 * 30 / 20) = 15; the 8 x 8 centre starts at row 1, column 3
    expected = image.resize((15, 10), PIL.Image.BICUBIC).crop((3, 1, 11, 9))
    out = resize_then_center_crop(image, 10, 8, PIL.Image.BICUBIC)
    assert out.size == (8, 8) and np.array_equal(np.asarray(out), np.asarray(expected))
    # (height, width): exactly that size, then the centre (row 0, column 2)
    exact = resize_then_center_crop(image, (12, 16), 12)
    assert np.array_equal(np.asarray(exact), np.asarray(image.resize((16, 12), PIL.Image.BILINEAR).crop((2, 0, 14, 12))))
    assert np.array_equal(np.asarray(resize_then_center_crop(image.crop((0, 0, 8, 8)), (8, 8), 8)), np.asarray(image)[:8, :8])


def test_eval_transform_with_resize_size_upsamples_stored_images():
    dataset = image_dataset(mode="L")
    stats = dataclasses.replace(DATASET_STATS["digits_lt"], image_size=32, resize_size=(32, 32), crop_padding=4)
    batch = dataset.with_transform(EvalTransform(stats))[:12]["pixel_values"]
    upsampled = [image.convert("RGB").resize((32, 32), PIL.Image.BILINEAR) for image in dataset[:12]["image"]]
    torch.testing.assert_close(batch, normalize(stack_images(upsampled, 3), stats.mean, stats.std))
    torch.manual_seed(0)
    assert dataset.with_transform(TrainTransform(stats))[:12]["pixel_values"].shape == (12, 3, 32, 32)


def test_every_builder_has_stats_and_bad_names_fail():
    assert set(DATASET_STATS) == set(LT_BUILDERS)
    assert DATASET_STATS["digits_lt"].num_channels == 3 and DATASET_STATS["cifar10_lt"].num_channels == 3
    with pytest.raises(ValueError, match="name must be one of"):
        TrainTransform.from_dataset("mnist")
    with pytest.raises(ValueError, match="image_column='img' is not in the batch"):
        TrainTransform.from_dataset("cifar10_lt", image_column="img")({"image": [], "label": []})
    with pytest.raises(ValueError, match="crop_padding must be >= 0"):
        DatasetStats((0.5,), (0.5,), image_size=8, crop_padding=-1)
    with pytest.raises(ValueError, match="resize_size must be .* none smaller than image_size=8"):
        DatasetStats((0.5,), (0.5,), image_size=8, resize_size=(8, 6))
    with pytest.raises(ValueError, match="image_size must be >= 1"):
        DatasetStats((0.5,), (0.5,), image_size=0)
