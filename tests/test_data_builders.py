"""The `datasets` builders: CIFAR-LT on the real CIFAR-10 Parquet files and synthetic sources,
digits-LT, ImageNet-LT and iNaturalist 2018 on the official split files, export to Parquet."""

import hashlib
import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ltap_hf.data import (
    class_counts,
    export_parquet,
    load_lt_dataset,
    load_lt_dataset_builder,
    long_tailed_counts,
    read_lt_metadata,
    select_long_tailed_indices,
)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR10_DIR = SHARED_DATA / "cifar10"
LT_SPLITS = SHARED_DATA / "lt_splits"
needs_cifar10 = pytest.mark.skipif(
    not (CIFAR10_DIR / "plain_text").is_dir(), reason=f"real CIFAR-10 Parquet files not found at {CIFAR10_DIR}"
)
needs_lt_splits = pytest.mark.skipif(not LT_SPLITS.is_dir(), reason=f"official split files not found at {LT_SPLITS}")
CIFAR10_IR100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # Cao et al.'s selection
# What train keeps by default: 20 airplanes go to validation, none being left over for it.
CIFAR10_IR100_TRAIN = [4980, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def image_bytes(split: datasets.Dataset) -> list[bytes]:
    return [item["bytes"] for item in split.cast_column("image", datasets.Image(decode=False))["image"]]


def image_paths(split: datasets.Dataset) -> list[str]:
    return [item["path"] for item in split.cast_column("image", datasets.Image(decode=False))["image"]]


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


# ---------------------------------------------------------------- real CIFAR-10 (Hub Parquet layout)


@pytest.fixture(scope="module")
def cifar10_ir100(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    builder = load_lt_dataset_builder("cifar10_lt", 100, data_dir=str(CIFAR10_DIR), cache_dir=str(cache_dir))
    builder.download_and_prepare()
    return builder, builder.as_dataset(), cache_dir


@needs_cifar10
def test_cifar10_lt_ir100_counts_and_metadata(cifar10_ir100):
    _, ds, _ = cifar10_ir100
    assert ds["train"].num_rows == 12386
    assert class_counts(ds["train"]["label"][:], 10) == CIFAR10_IR100_TRAIN
    assert ds["train"].features["label"].names[:2] == ["airplane", "automobile"]
    metadata = read_lt_metadata(ds)
    assert metadata["class_counts"]["train"] == CIFAR10_IR100_TRAIN
    assert metadata["selected_class_counts"] == CIFAR10_IR100
    assert metadata["class_counts"]["test"] == [1000] * 10
    # IR 100 selects all 5,000 airplanes: none is left over, so 20 of them go to validation.
    assert metadata["class_counts"]["validation"] == [20] * 10
    assert class_counts(ds["validation"]["label"][:], 10) == [20] * 10
    assert metadata["validation_from_train"] == {"0": 20}
    assert metadata["validation_short_classes"] == {}
    assert metadata["val_shortfall"] == "from_train"
    assert (metadata["imbalance_ratio"], metadata["selection"], metadata["seed"]) == (100.0, "cao2019", 0)
    assert metadata["groups"] == {"many": list(range(8)), "medium": [8, 9], "few": []}
    assert len(metadata["fingerprint"]) == 64
    assert json.loads(ds["validation"].info.description) == metadata


@needs_cifar10
def test_cifar10_lt_rows_are_the_selected_source_rows(cifar10_ir100):
    builder, ds, _ = cifar10_ir100
    source = {s: pq.read_table(CIFAR10_DIR / "plain_text" / f"{s}-00000-of-00001.parquet") for s in ("train", "test")}
    row_of = {
        split: {sha1(item["bytes"]): row for row, item in enumerate(table["img"].to_pylist())}
        for split, table in source.items()
    }
    indices = builder.split_indices()
    labels = source["train"]["label"].to_numpy()
    selected = select_long_tailed_indices(labels, CIFAR10_IR100, seed=0).tolist()
    moved = set(selected) - set(indices["train"].tolist())
    # train is Cao et al.'s selection, in its order, less 20 airplanes that went to validation
    assert indices["train"].tolist() == [row for row in selected if row not in moved]
    assert len(moved) == 20 and set(labels[sorted(moved)]) == {0} and moved <= set(indices["validation"].tolist())
    for split, source_split in (("train", "train"), ("validation", "train"), ("test", "test")):
        rows = [row_of[source_split][sha1(data)] for data in image_bytes(ds[split])]
        assert rows == indices[split].tolist(), split
    assert indices["test"].tolist() == list(range(10000))
    assert not set(indices["train"].tolist()) & set(indices["validation"].tolist())
    hashes = {split: {sha1(data) for data in image_bytes(ds[split])} for split in ds}
    assert not hashes["train"] & hashes["validation"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["validation"] & hashes["test"]


@needs_cifar10
def test_cifar10_lt_fingerprint_reproducible_and_seed_sensitive(cifar10_ir100, tmp_path):
    builder, ds, cache_dir = cifar10_ir100
    fingerprint = read_lt_metadata(ds)["fingerprint"]
    rebuilt = load_lt_dataset("cifar10_lt", 100, data_dir=str(CIFAR10_DIR), cache_dir=str(tmp_path / "a"))
    assert read_lt_metadata(rebuilt)["fingerprint"] == fingerprint
    assert image_bytes(rebuilt["train"])[:50] == image_bytes(ds["train"])[:50]
    other = load_lt_dataset("cifar10_lt", 100, data_dir=str(CIFAR10_DIR), cache_dir=str(cache_dir), seed=1)
    assert read_lt_metadata(other)["fingerprint"] != fingerprint
    assert read_lt_metadata(other)["class_counts"]["train"] == CIFAR10_IR100_TRAIN
    assert image_bytes(other["train"])[:50] != image_bytes(ds["train"])[:50]


@needs_cifar10
def test_cifar10_lt_through_the_hub_loader(cifar10_ir100, tmp_path):
    """`hub_id` goes through `datasets.load_dataset`, which also takes a local folder: same rows."""
    _, ds, _ = cifar10_ir100
    hub = load_lt_dataset("cifar10_lt", 100, hub_id=str(CIFAR10_DIR), cache_dir=str(tmp_path))
    assert read_lt_metadata(hub)["fingerprint"] == read_lt_metadata(ds)["fingerprint"]
    assert read_lt_metadata(hub)["source"] == f"hub: {CIFAR10_DIR}"
    assert image_bytes(hub["validation"]) == image_bytes(ds["validation"])


@needs_cifar10
def test_cifar10_lt_cached_build_is_reused(cifar10_ir100):
    _, ds, cache_dir = cifar10_ir100
    files = [Path(f["filename"]) for f in ds["train"].cache_files]
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = load_lt_dataset("cifar10_lt", imbalance_ratio=100, data_dir=str(CIFAR10_DIR), cache_dir=str(cache_dir))
    assert [Path(f["filename"]) for f in again["train"].cache_files] == files
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert read_lt_metadata(again) == read_lt_metadata(ds)


# ---------------------------------------------------------------- synthetic CIFAR sources


def tiny_png(value: int) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.full((2, 2, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_hub_parquet(folder: Path, split: str, labels: np.ndarray, label_column: str) -> None:
    """Hub-layout Parquet whose image `path` field names the source row, to trace rows."""
    png = tiny_png(128)
    images = [{"bytes": png, "path": f"{row}.png"} for row in range(len(labels))]
    table = pa.table({"img": images, label_column: pa.array(labels, pa.int64())})
    pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")


@pytest.mark.parametrize("imbalance_ratio, selected_total", [(100, 10847), (50, 12608)])
def test_cifar100_lt_on_synthetic_balanced_source(tmp_path, imbalance_ratio, selected_total):
    folder = tmp_path / "cifar100"
    folder.mkdir()
    train_labels = np.random.default_rng(0).permutation(np.repeat(np.arange(100), 500))
    write_hub_parquet(folder, "train", train_labels, "fine_label")
    write_hub_parquet(folder, "test", np.arange(100), "fine_label")
    ds = load_lt_dataset("cifar100_lt", imbalance_ratio, data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    # class 0 keeps all its 500 source images: 20 of them go to validation
    assert ds["train"].num_rows == selected_total - 20
    counts = long_tailed_counts(100, imbalance_ratio, 500)
    selected = select_long_tailed_indices(train_labels, counts, seed=0).tolist()
    rows = [int(Path(p).stem) for p in image_paths(ds["train"])]
    validation_rows = {int(Path(p).stem) for p in image_paths(ds["validation"])}
    assert rows == [row for row in selected if row not in validation_rows]
    assert len(set(selected) - set(rows)) == 20
    assert ds["train"]["label"][:] == train_labels[rows].tolist()
    assert read_lt_metadata(ds)["class_counts"]["validation"] == [20] * 100
    assert read_lt_metadata(ds)["class_counts"]["train"] == [counts[0] - 20, *counts[1:]]
    assert ds["train"].info.config_name == f"ir{imbalance_ratio}"

    exact = load_lt_dataset("cifar100_lt", imbalance_ratio, data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"),
                            val_shortfall="leave_short")
    assert [int(Path(p).stem) for p in image_paths(exact["train"])] == selected
    assert exact["train"].num_rows == selected_total
    assert read_lt_metadata(exact)["class_counts"]["validation"] == [0] + [20] * 99


def write_cifar10_pickle_archive(path: Path, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The python release layout, small: 5 train batches and a test batch of random images."""
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    planes = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)  # red, green, blue planes
    batches = {f"data_batch_{i + 1}": part for i, part in enumerate(np.array_split(np.arange(len(labels)), 5))}
    batches["test_batch"] = np.arange(10)
    with tarfile.open(path, "w:gz") as tar:
        for name, rows in batches.items():
            data = pickle.dumps({b"data": planes[rows], b"labels": labels[rows].tolist()})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return images, labels


def test_cifar10_lt_from_python_pickle_archive(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    images, labels = write_cifar10_pickle_archive(archive, per_class=12)
    builder = load_lt_dataset_builder(
        "cifar10_lt", imbalance_ratio=4, data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), val_per_class=2
    )
    builder.download_and_prepare()
    ds = builder.as_dataset()
    indices = builder.split_indices()
    selected = long_tailed_counts(10, 4, 12)
    assert selected[0] == 12  # class 0 keeps all of its source images: 2 of them go to validation
    assert class_counts(ds["train"]["label"][:], 10) == [10, *selected[1:]]
    assert class_counts(ds["validation"]["label"][:], 10) == [2] * 10
    for split in ("train", "validation"):
        built = np.stack([np.asarray(image) for image in ds[split]["image"]])
        np.testing.assert_array_equal(built, images[indices[split]])
    assert ds["test"].num_rows == 10
    assert read_lt_metadata(ds)["source"].startswith("pickle: ")


def test_cifar_missing_local_source_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_lt_dataset("cifar10_lt", data_dir=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        load_lt_dataset("cifar10_lt", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))


# ---------------------------------------------------------------- digits-LT (embedded)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    builder = load_lt_dataset_builder("digits_lt", cache_dir=str(tmp_path_factory.mktemp("cache")))
    builder.download_and_prepare()
    return builder, builder.as_dataset()


def test_digits_lt_default_splits(digits):
    from sklearn.datasets import load_digits

    builder, ds = digits
    metadata = read_lt_metadata(ds)
    assert metadata["class_counts"]["train"] == [110, 85, 65, 51, 39, 30, 23, 18, 14, 11]
    assert metadata["class_counts"]["validation"] == [10] * 10
    assert metadata["class_counts"]["test"] == [50] * 10
    assert all(metadata["groups"][group] for group in ("many", "medium", "few"))
    indices = {split: set(rows.tolist()) for split, rows in builder.split_indices().items()}
    assert not indices["train"] & indices["validation"] and not indices["train"] & indices["test"]
    assert not indices["validation"] & indices["test"]
    source = load_digits()
    rows = builder.split_indices()["train"]
    expected = np.round(source.images[rows] * 255 / 16).astype(np.uint8)
    built = np.stack([np.asarray(image) for image in ds["train"]["image"]])
    np.testing.assert_array_equal(built, expected)
    assert ds["train"]["label"][:] == source.target[rows].tolist()
    assert ds["train"][0]["image"].mode == "L" and ds["train"][0]["image"].size == (8, 8)


def test_digits_lt_config_changes_rebuild(tmp_path):
    default = load_lt_dataset("digits_lt", cache_dir=str(tmp_path))
    fewer = load_lt_dataset("digits_lt", cache_dir=str(tmp_path), val_per_class=3)
    reseeded = load_lt_dataset("digits_lt", cache_dir=str(tmp_path), seed=5)
    assert fewer["validation"].num_rows == 30 and default["validation"].num_rows == 100
    assert read_lt_metadata(reseeded)["fingerprint"] != read_lt_metadata(default)["fingerprint"]
    custom = load_lt_dataset("digits_lt", imbalance_ratio=5.5, cache_dir=str(tmp_path), selection="first")
    assert read_lt_metadata(custom)["class_counts"]["train"] == long_tailed_counts(10, 5.5, 110)
    assert custom["train"].info.config_name == "ir5.5"


def test_export_parquet_round_trip(digits, tmp_path):
    _, ds = digits
    files = export_parquet(ds, tmp_path / "export")
    assert sorted(files) == ["test", "train", "validation"]
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "export"), cache_dir=str(tmp_path / "cache"))
    assert loaded["train"].features == ds["train"].features
    assert loaded["train"]["label"][:] == ds["train"]["label"][:]
    np.testing.assert_array_equal(np.asarray(loaded["test"][7]["image"]), np.asarray(ds["test"][7]["image"]))
    exported_metadata = json.loads((tmp_path / "export" / "lt_metadata.json").read_text())
    assert exported_metadata == read_lt_metadata(ds)

    # The entry point reads an export as it is, metadata included, and refuses one of another config.
    reread = load_lt_dataset("digits_lt", imbalance_ratio=10, data_dir=str(tmp_path / "export"),
                             cache_dir=str(tmp_path / "cache"))
    assert read_lt_metadata(reread) == read_lt_metadata(ds)
    assert reread["train"].features == ds["train"].features
    for split in ("train", "validation", "test"):
        assert reread[split]["label"][:] == ds[split]["label"][:]
    np.testing.assert_array_equal(np.asarray(reread["train"][3]["image"]), np.asarray(ds["train"][3]["image"]))
    same = load_lt_dataset("digits_lt", data_dir=str(tmp_path / "export"), config_name="ir10", seed=0)
    assert same["test"].num_rows == ds["test"].num_rows
    with pytest.raises(ValueError, match="imbalance_ratio"):
        load_lt_dataset("digits_lt", imbalance_ratio=5, data_dir=str(tmp_path / "export"))
    with pytest.raises(ValueError, match=r"\['split_dir'\] cannot apply"):
        load_lt_dataset("digits_lt", data_dir=str(tmp_path / "export"), split_dir="splits")
    with pytest.raises(ValueError, match="dataset"):
        load_lt_dataset("cifar10_lt", data_dir=str(tmp_path / "export"))
    (tmp_path / "export" / "test-00000-of-00001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="test-00000-of-00001"):
        load_lt_dataset("digits_lt", data_dir=str(tmp_path / "export"))


# ---------------------------------------------------------------- bad input through the entry point


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"name": "cifar1000_lt"}, ValueError, "name must be one of"),
        ({"name": "imagenet_lt", "imbalance_ratio": 100}, ValueError, "imbalance_ratio does not apply to imagenet_lt"),
        ({"imbalance_ratio": 0.5}, ValueError, "imbalance_ratio must be >= 1"),
        ({"imbalance_ratio": float("nan")}, ValueError, "imbalance_ratio must be a finite number"),
        ({"imbalance_ratio": 1000}, ValueError, "leaves class 9 with 0 images"),
        ({"n_max": 500}, ValueError, "n_max=500 is larger than the smallest source class"),
        ({"seed": -1}, ValueError, "seed must be an integer"),
        ({"val_per_class": -2}, ValueError, "val_per_class must be an integer >= 0"),
        ({"test_per_class": 0}, ValueError, "test_per_class must be an integer >= 1"),
        ({"profile": "linear"}, ValueError, "profile must be one of"),
        ({"selection": "random"}, ValueError, "selection must be one of"),
    ],
)
def test_bad_input_names_the_problem(tmp_path, kwargs, error, message):
    arguments = {"name": "digits_lt", "cache_dir": str(tmp_path), **kwargs}
    with pytest.raises(error, match=message):
        load_lt_dataset(**arguments)


# ---------------------------------------------------------------- ImageNet-LT and iNaturalist 2018


def read_lines(name: str) -> list[str]:
    return (LT_SPLITS / name).read_text().splitlines()


def lines_of_classes(lines: list[str], per_class: dict[int, slice]) -> list[str]:
    by_class: dict[int, list[str]] = {}
    for line in lines:
        by_class.setdefault(int(line.rsplit(maxsplit=1)[1]), []).append(line)
    return [line for label, rows in per_class.items() for line in by_class[label][rows]]


def write_images(root: Path, lines: list[str]) -> dict[str, int]:
    """A tiny solid-colour JPEG at every listed path; returns path -> grey level."""
    levels = {}
    for number, line in enumerate(lines):
        relative_path = line.rsplit(maxsplit=1)[0]
        levels[relative_path] = (number * 37) % 200 + 20
        (root / relative_path).parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.new("RGB", (6, 4), (levels[relative_path],) * 3).save(root / relative_path, format="JPEG")
    return levels


@pytest.fixture
def imagenet_lt_files(tmp_path):
    """Official lines: validation and test from the real files; the train file is not shipped in
    shared/data, so train takes other lines of ImageNet_LT_val.txt (same format, ILSVRC train paths)."""
    val, test = read_lines("ImageNet_LT_val.txt"), read_lines("ImageNet_LT_test.txt")
    splits = {
        "ImageNet_LT_train.txt": lines_of_classes(val, {0: slice(5, 20), 1: slice(5, 10), 2: slice(5, 7)}),
        "ImageNet_LT_val.txt": lines_of_classes(val, {0: slice(0, 5), 1: slice(0, 5), 2: slice(0, 5)}),
        "ImageNet_LT_test.txt": lines_of_classes(test, {c: slice(0, 4) for c in range(3)}),
    }
    root, split_dir = tmp_path / "ILSVRC", tmp_path / "splits"
    root.mkdir()
    split_dir.mkdir()
    levels = {}
    for name, lines in splits.items():
        (split_dir / name).write_text("\n".join(lines) + "\n")
        levels.update(write_images(root, lines))
    return root, split_dir, splits, levels


@needs_lt_splits
def test_imagenet_lt_follows_the_split_files(imagenet_lt_files, tmp_path):
    root, split_dir, splits, levels = imagenet_lt_files
    ds = load_lt_dataset("imagenet_lt", data_dir=str(root), split_dir=str(split_dir), cache_dir=str(tmp_path / "c"))
    for split, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        expected = [line.rsplit(maxsplit=1) for line in splits[f"ImageNet_LT_{name}.txt"]]
        assert image_paths(ds[split]) == [str(root / path) for path, _ in expected]
        assert ds[split]["label"][:] == [int(label) for _, label in expected]
    first = ds["train"][0]
    relative = splits["ImageNet_LT_train.txt"][0].rsplit(maxsplit=1)[0]
    assert abs(int(np.asarray(first["image"]).mean()) - levels[relative]) <= 3
    names = ds["train"].features["label"].names
    assert len(names) == 1000 and names[0] == "n01440764" and names[999] == "999"
    metadata = read_lt_metadata(ds)
    assert metadata["class_counts"]["train"][:4] == [15, 5, 2, 0]
    assert metadata["imbalance_ratio"] == 7.5 and metadata["selection"] == "official split files"
    assert metadata["groups"]["few"][:3] == [0, 1, 2]


@needs_lt_splits
def test_imagenet_lt_export_embeds_images(imagenet_lt_files, tmp_path):
    root, split_dir, _, _ = imagenet_lt_files
    ds = load_lt_dataset("imagenet_lt", data_dir=str(root), split_dir=str(split_dir), cache_dir=str(tmp_path / "c"))
    export_parquet(ds, tmp_path / "export")
    shutil.rmtree(root)
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "export"), cache_dir=str(tmp_path / "c2"))
    assert loaded["test"][0]["image"].size == (6, 4)
    assert loaded["train"].features["label"].names[0] == "n01440764"


@needs_lt_splits
def test_imagenet_lt_missing_downloads_say_what_to_do(imagenet_lt_files, tmp_path):
    root, split_dir, splits, _ = imagenet_lt_files
    cache = str(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match=r"no image root given(.|\n)*image-net.org"):
        load_lt_dataset("imagenet_lt", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match=r"does not exist(.|\n)*ImageNet_LT_train.txt"):
        load_lt_dataset("imagenet_lt", data_dir=str(tmp_path / "missing"), cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="no train split file"):
        load_lt_dataset("imagenet_lt", data_dir=str(root), cache_dir=cache)
    (root / splits["ImageNet_LT_test.txt"][3].rsplit(maxsplit=1)[0]).unlink()
    with pytest.raises(FileNotFoundError, match="1 of 12 images listed in .*ImageNet_LT_test.txt are missing"):
        load_lt_dataset("imagenet_lt", data_dir=str(root), split_dir=str(split_dir), cache_dir=cache)


def write_coco_annotations(path: Path, lines: list[str]) -> None:
    entries = [(file, int(label)) for file, label in (line.rsplit(maxsplit=1) for line in lines)]
    labels = sorted({label for _, label in entries})
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1000 + i, "file_name": file} for i, (file, _) in enumerate(entries)],
                "annotations": [{"image_id": 1000 + i, "category_id": label} for i, (_, label) in enumerate(entries)],
                "categories": [{"id": label, "name": f"species {label}"} for label in labels],
            }
        )
    )


INAT_TRAIN_COUNTS = [6, 4, 2, 1]  # per class of the fixture's train list, long-tailed, down to one image


def inaturalist_lines() -> tuple[list[str], list[str], list[int]]:
    """(train lines, official validation lines, classes): the test split is the real lines of four
    classes of iNaturalist18_val.txt; the train file is not in shared/data, so train lists stand-in
    images of the same classes (same format), INAT_TRAIN_COUNTS of them."""
    val = read_lines("iNaturalist18_val.txt")
    classes = [int(line.rsplit(maxsplit=1)[1]) for line in val[:4]]
    official = lines_of_classes(val, {c: slice(0, 3) for c in classes})
    train = []
    for c, n in zip(classes, INAT_TRAIN_COUNTS):
        folder = next(line for line in official if line.endswith(f" {c}")).rsplit("/", 1)[0]
        train += [f"{folder}/train_{c}_{k}.jpg {c}" for k in range(n)]
    return train, official, classes


@needs_lt_splits
@pytest.mark.parametrize("annotations", ["txt", "json"])
def test_inaturalist2018_follows_the_split_files(tmp_path, annotations):
    train, val, classes = inaturalist_lines()
    root = tmp_path / "inat"
    root.mkdir()
    write_images(root, train + val)
    if annotations == "txt":
        (root / "iNaturalist18_train.txt").write_text("\n".join(train) + "\n")
        (root / "iNaturalist18_val.txt").write_text("\n".join(val) + "\n")
    else:
        write_coco_annotations(root / "train2018.json", train)
        write_coco_annotations(root / "val2018.json", val)
    ds = load_lt_dataset("inaturalist2018", data_dir=str(root), cache_dir=str(tmp_path / "c"))
    assert list(ds) == ["train", "validation", "test"]
    # test: the official validation list, as it is
    expected = [line.rsplit(maxsplit=1) for line in val]
    assert image_paths(ds["test"]) == [str(root / path) for path, _ in expected]
    assert ds["test"]["label"][:] == [int(label) for _, label in expected]
    # validation: one image per class held out of the train list (a class keeps at least one)
    listed = {str(root / path): int(label) for path, label in (line.rsplit(maxsplit=1) for line in train)}
    train_paths, validation_paths = image_paths(ds["train"]), image_paths(ds["validation"])
    assert sorted(train_paths + validation_paths) == sorted(listed)
    assert not set(train_paths) & set(validation_paths)
    assert not (set(train_paths) | set(validation_paths)) & set(image_paths(ds["test"]))
    assert [listed[p] for p in validation_paths] == ds["validation"]["label"][:] == sorted(classes[:3])  # by class
    assert [p for p in listed if p not in validation_paths] == train_paths  # the list's order is kept
    metadata = read_lt_metadata(ds)
    assert [metadata["class_counts"]["train"][c] for c in classes] == [5, 3, 1, 1]
    assert [metadata["selected_class_counts"][c] for c in classes] == INAT_TRAIN_COUNTS
    assert metadata["imbalance_ratio"] == 6.0  # of the list
    assert metadata["validation_short_classes"] == {str(classes[3]): 0}  # its only image stays in train
    assert (metadata["seed"], metadata["val_per_class"]) == (0, 1)
    names = ds["train"].features["label"].names
    assert len(names) == 8142
    assert names[classes[0]] == (str(classes[0]) if annotations == "txt" else f"species {classes[0]}")
    assert "test is the official validation set" in metadata["notes"]

    reseeded = load_lt_dataset("inaturalist2018", data_dir=str(root), cache_dir=str(tmp_path / "c"), seed=3,
                               val_per_class=2)
    assert [read_lt_metadata(reseeded)["class_counts"]["validation"][c] for c in classes] == [2, 2, 1, 0]
    assert read_lt_metadata(reseeded)["fingerprint"] != metadata["fingerprint"]
    whole = load_lt_dataset("inaturalist2018", data_dir=str(root), cache_dir=str(tmp_path / "c"), val_per_class=0)
    assert list(whole) == ["train", "test"] and image_paths(whole["train"]) == list(listed)


def test_inaturalist2018_without_root_explains_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no image root given(.|\n)*train_val2018"):
        load_lt_dataset("inaturalist2018", cache_dir=str(tmp_path))
