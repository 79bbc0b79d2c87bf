"""Train, validation and test are pairwise disjoint for every builder; the validation size is a
setting of the data (and of its cache key); every class gets validation images, also the head class
of CIFAR-LT and every class at imbalance ratio 1; digits-LT refuses a data_dir."""

import hashlib
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_data_builders import (
    CIFAR10_DIR,
    LT_SPLITS,
    image_bytes,
    image_paths,
    inaturalist_lines,
    lines_of_classes,
    needs_cifar10,
    needs_lt_splits,
    read_lines,
    tiny_png,
    write_images,
)

from ltap_hf.data import (
    class_counts,
    load_lt_dataset,
    load_lt_dataset_builder,
    long_tailed_counts,
    read_lt_metadata,
    select_long_tailed_indices,
)


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def assert_disjoint(identities: dict[str, list]) -> None:
    """No image twice in a split, none in two splits, no split empty."""
    for split, items in identities.items():
        assert items, f"{split} is empty"
        assert len(set(items)) == len(items), f"{split} holds an image twice"
    splits = list(identities)
    for i, first in enumerate(splits):
        for second in splits[i + 1:]:
            shared = set(identities[first]) & set(identities[second])
            assert not shared, f"{first} and {second} share {len(shared)} images, e.g. {sorted(shared)[0]!r}"


def write_traced_cifar(folder: Path, per_class: int, test_per_class: int = 2, num_classes: int = 10) -> np.ndarray:
    """Hub-layout CIFAR-10 Parquet whose image `path` names the split and source row (to trace every
    built image back to its source row); returns the train labels."""
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = np.random.default_rng(1).permutation(np.repeat(np.arange(num_classes), per_class))
    png = tiny_png(90)
    for split, labels in (("train", train_labels), ("test", np.repeat(np.arange(num_classes), test_per_class))):
        images = [{"bytes": png, "path": f"{split}/{row}.png"} for row in range(len(labels))]
        table = pa.table({"img": images, "label": pa.array(labels, pa.int64())})
        pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")
    return train_labels


def source_rows(split: datasets.Dataset) -> list[int]:
    return [int(Path(path).stem) for path in image_paths(split)]


# ---------------------------------------------------------------- every builder: disjoint splits


def cifar10_identities(tmp_path: Path) -> dict[str, list]:
    """Real CIFAR-10 at IR 100: images by content (a JPEG's bytes), tagged with their source split."""
    if not (CIFAR10_DIR / "plain_text").is_dir():
        pytest.skip(f"real CIFAR-10 Parquet files not found at {CIFAR10_DIR}")
    ds = load_lt_dataset("cifar10_lt", 100, data_dir=str(CIFAR10_DIR), cache_dir=str(tmp_path / "c"))
    assert [ds[s].num_rows for s in ds] == [12386, 200, 10000]
    return {split: [sha1(data) for data in image_bytes(ds[split])] for split in ds}


def cifar100_identities(tmp_path: Path) -> dict[str, list]:
    """Synthetic CIFAR-100 (100 x 60 images) at IR 10: images by source split and row."""
    folder = tmp_path / "cifar100"
    labels = write_traced_cifar(folder, per_class=60, num_classes=100)
    pq.write_table(pq.read_table(folder / "train-00000-of-00001.parquet").rename_columns(["img", "fine_label"]),
                   folder / "train-00000-of-00001.parquet")
    pq.write_table(pq.read_table(folder / "test-00000-of-00001.parquet").rename_columns(["img", "fine_label"]),
                   folder / "test-00000-of-00001.parquet")
    ds = load_lt_dataset("cifar100_lt", 10, data_dir=str(folder), cache_dir=str(tmp_path / "c"), val_per_class=5)
    assert read_lt_metadata(ds)["class_counts"]["validation"] == [5] * 100
    assert ds["train"]["label"][:] == labels[source_rows(ds["train"])].tolist()
    return {split: image_paths(ds[split]) for split in ds}


def digits_identities(tmp_path: Path) -> dict[str, list]:
    """digits-LT: every built image is the load_digits image at the row its builder reports."""
    from sklearn.datasets import load_digits

    builder = load_lt_dataset_builder("digits_lt", cache_dir=str(tmp_path / "c"))
    builder.download_and_prepare()
    ds = builder.as_dataset()
    source = load_digits()
    identities = {}
    for split, rows in builder.split_indices().items():
        built = np.stack([np.asarray(image) for image in ds[split]["image"]])
        np.testing.assert_array_equal(built, np.round(source.images[rows] * 255 / 16).astype(np.uint8))
        assert ds[split]["label"][:] == source.target[rows].tolist()
        identities[split] = rows.tolist()
    return identities


def imagenet_identities(tmp_path: Path) -> dict[str, list]:
    """ImageNet-LT: real official validation and test lines (train stands in with other val lines)."""
    if not LT_SPLITS.is_dir():
        pytest.skip(f"official split files not found at {LT_SPLITS}")
    root, split_dir = write_imagenet_files(tmp_path)
    ds = load_lt_dataset("imagenet_lt", data_dir=str(root), split_dir=str(split_dir), cache_dir=str(tmp_path / "c"))
    return {split: image_paths(ds[split]) for split in ds}


def inaturalist_identities(tmp_path: Path) -> dict[str, list]:
    """iNaturalist 2018: real official validation lines as test; validation held out of train."""
    if not LT_SPLITS.is_dir():
        pytest.skip(f"official split files not found at {LT_SPLITS}")
    train, official, _ = inaturalist_lines()
    root = tmp_path / "inat"
    root.mkdir()
    write_images(root, train + official)
    (root / "iNaturalist18_train.txt").write_text("\n".join(train) + "\n")
    (root / "iNaturalist18_val.txt").write_text("\n".join(official) + "\n")
    ds = load_lt_dataset("inaturalist2018", data_dir=str(root), cache_dir=str(tmp_path / "c"))
    # test is the official validation list; validation is not
    assert image_paths(ds["test"]) == [str(root / line.rsplit(maxsplit=1)[0]) for line in official]
    return {split: image_paths(ds[split]) for split in ds}


def write_imagenet_files(tmp_path: Path, extra_val_lines: list[str] = ()) -> tuple[Path, Path]:
    val, test = read_lines("ImageNet_LT_val.txt"), read_lines("ImageNet_LT_test.txt")
    splits = {
        "ImageNet_LT_train.txt": lines_of_classes(val, {0: slice(5, 12), 1: slice(5, 8)}),
        "ImageNet_LT_val.txt": lines_of_classes(val, {0: slice(0, 5), 1: slice(0, 5)}) + list(extra_val_lines),
        "ImageNet_LT_test.txt": lines_of_classes(test, {0: slice(0, 3), 1: slice(0, 3)}),
    }
    root, split_dir = tmp_path / "ILSVRC", tmp_path / "splits"
    root.mkdir()
    split_dir.mkdir()
    for name, lines in splits.items():
        (split_dir / name).write_text("\n".join(lines) + "\n")
        write_images(root, lines)
    return root, split_dir


IDENTITIES = {
    "cifar10_lt": cifar10_identities,
    "cifar100_lt": cifar100_identities,
    "digits_lt": digits_identities,
    "imagenet_lt": imagenet_identities,
    "inaturalist2018": inaturalist_identities,
}


@pytest.mark.parametrize("name", sorted(IDENTITIES))
def test_train_validation_and_test_are_disjoint(name, tmp_path):
    identities = IDENTITIES[name](tmp_path)
    assert list(identities) == ["train", "validation", "test"]
    assert_disjoint(identities)


@needs_lt_splits
def test_official_split_files_that_share_an_image_are_refused(tmp_path):
    shared = read_lines("ImageNet_LT_test.txt")[0]  # a test image listed in validation too
    root, split_dir = write_imagenet_files(tmp_path, extra_val_lines=[shared])
    with pytest.raises(ValueError, match=r"listed in both the validation split .* and the test split"):
        load_lt_dataset("imagenet_lt", data_dir=str(root), split_dir=str(split_dir), cache_dir=str(tmp_path / "c"))


# ---------------------------------------------------------------- every class gets validation images


@needs_cifar10
def test_cifar10_lt_at_imbalance_ratio_1_holds_validation_out_of_training(tmp_path):
    """At IR 1 every class keeps all of its 5,000 images: each gives 20 of them to validation."""
    ds = load_lt_dataset("cifar10_lt", imbalance_ratio=1, data_dir=str(CIFAR10_DIR), cache_dir=str(tmp_path))
    metadata = read_lt_metadata(ds)
    assert class_counts(ds["train"]["label"][:], 10) == metadata["class_counts"]["train"] == [4980] * 10
    assert class_counts(ds["validation"]["label"][:], 10) == [20] * 10
    assert metadata["selected_class_counts"] == [5000] * 10
    assert metadata["validation_from_train"] == {str(c): 20 for c in range(10)}
    hashes = {split: {sha1(data) for data in image_bytes(ds[split])} for split in ("train", "validation")}
    assert len(hashes["train"]) == 49800 and not hashes["train"] & hashes["validation"]

    with pytest.raises(ValueError, match="no source training image is left for validation.*val_shortfall='from_train'"):
        load_lt_dataset("cifar10_lt", imbalance_ratio=1, data_dir=str(CIFAR10_DIR), cache_dir=str(tmp_path),
                        val_shortfall="leave_short")


@pytest.mark.parametrize("imbalance_ratio", [1, 2, 10, 30])
def test_every_class_has_val_per_class_images_and_train_loses_only_the_shortfall(tmp_path, imbalance_ratio):
    """The documented rule: class c trains on n_c - max(0, val_per_class - left_c) images, where n_c
    is Cao et al.'s count and left_c the source images the selection left out."""
    labels = write_traced_cifar(tmp_path / "src", per_class=30)
    ds = load_lt_dataset("cifar10_lt", imbalance_ratio, data_dir=str(tmp_path / "src"),
                         cache_dir=str(tmp_path / "c"), val_per_class=8)
    selected_counts = long_tailed_counts(10, imbalance_ratio, 30)
    expected_train = [n - max(0, 8 - (30 - n)) for n in selected_counts]
    metadata = read_lt_metadata(ds)
    assert class_counts(ds["train"]["label"][:], 10) == metadata["class_counts"]["train"] == expected_train
    assert class_counts(ds["validation"]["label"][:], 10) == [8] * 10
    assert metadata["validation_short_classes"] == {}
    # what train lost went to validation, and train keeps Cao et al.'s order otherwise
    selected = select_long_tailed_indices(labels, selected_counts, seed=0).tolist()
    train, validation = source_rows(ds["train"]), set(source_rows(ds["validation"]))
    assert train == [row for row in selected if row not in validation]
    assert len(set(selected) & validation) == sum(selected_counts) - sum(expected_train)
    assert ds["validation"]["label"][:] == labels[source_rows(ds["validation"])].tolist()


def test_validation_draw_is_seeded(tmp_path):
    write_traced_cifar(tmp_path / "src", per_class=30)

    def rows(cache: str, **kwargs) -> list[int]:
        ds = load_lt_dataset("cifar10_lt", 1, data_dir=str(tmp_path / "src"), cache_dir=str(tmp_path / cache),
                             val_per_class=8, **kwargs)
        return source_rows(ds["validation"])

    assert rows("a") == rows("b")  # a fresh cache builds the same split
    assert rows("a", seed=1) != rows("a")


def test_leave_short_keeps_cao_selection_and_reports_the_short_class(tmp_path):
    labels = write_traced_cifar(tmp_path / "src", per_class=30)
    ds = load_lt_dataset("cifar10_lt", 10, data_dir=str(tmp_path / "src"), cache_dir=str(tmp_path / "c"),
                         val_per_class=8, val_shortfall="leave_short")
    counts = long_tailed_counts(10, 10, 30)
    assert source_rows(ds["train"]) == select_long_tailed_indices(labels, counts, seed=0).tolist()
    metadata = read_lt_metadata(ds)
    left = [min(8, 30 - n) for n in counts]
    assert metadata["class_counts"]["validation"] == left and left[0] == 0
    assert metadata["validation_short_classes"] == {str(c): n for c, n in enumerate(left) if n < 8}
    assert metadata["validation_from_train"] == {}


# ---------------------------------------------------------------- val_per_class as a setting of the data


def test_val_per_class_is_part_of_the_cache_key(tmp_path):
    write_traced_cifar(tmp_path / "src", per_class=30)
    cache, source = str(tmp_path / "c"), str(tmp_path / "src")
    default = load_lt_dataset("cifar10_lt", 10, data_dir=source, cache_dir=cache)
    fewer = load_lt_dataset("cifar10_lt", 10, data_dir=source, cache_dir=cache, val_per_class=3)
    again = load_lt_dataset("cifar10_lt", 10, data_dir=source, cache_dir=cache)
    assert read_lt_metadata(default)["val_per_class"] == 20
    assert class_counts(default["validation"]["label"][:], 10) == [20] * 10
    assert class_counts(fewer["validation"]["label"][:], 10) == [3] * 10
    assert read_lt_metadata(fewer)["val_per_class"] == 3
    assert fewer["train"].cache_files[0]["filename"] != default["train"].cache_files[0]["filename"]
    assert again["validation"].cache_files == default["validation"].cache_files
    assert class_counts(again["validation"]["label"][:], 10) == [20] * 10


def test_val_per_class_0_builds_no_validation_split(tmp_path):
    labels = write_traced_cifar(tmp_path / "src", per_class=30)
    ds = load_lt_dataset("cifar10_lt", 1, data_dir=str(tmp_path / "src"), cache_dir=str(tmp_path / "c"), val_per_class=0)
    assert list(ds) == ["train", "test"]
    assert source_rows(ds["train"]) == select_long_tailed_indices(labels, [30] * 10, seed=0).tolist()
    assert "validation" not in read_lt_metadata(ds)["class_counts"]


@needs_lt_splits
def test_arguments_that_do_not_apply_to_imagenet_lt_are_refused(tmp_path):
    root, split_dir = write_imagenet_files(tmp_path)
    common = {"data_dir": str(root), "split_dir": str(split_dir), "cache_dir": str(tmp_path / "c")}
    with pytest.raises(ValueError, match="val_per_class does not apply to imagenet_lt: its validation split is the official one"):
        load_lt_dataset("imagenet_lt", val_per_class=5, **common)
    with pytest.raises(ValueError, match="seed does not apply to imagenet_lt"):
        load_lt_dataset("imagenet_lt", seed=3, **common)
    # seed=0 is every builder's default: a script passing it (run_ltap does) still loads ImageNet-LT
    assert load_lt_dataset("imagenet_lt", seed=0, val_shortfall=None, **common)["validation"].num_rows == 10


def test_run_ltap_passes_val_per_class_to_the_data(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    import run_ltap

    class Loaded(Exception):
        """Stops main() once the data is loaded: what follows is training, not under test here."""

    def load_then_stop(*args, **kwargs):
        raise Loaded(load_lt_dataset(*args, **kwargs))

    monkeypatch.setattr(run_ltap, "load_lt_dataset", load_then_stop)
    with pytest.raises(Loaded) as loaded:
        run_ltap.main(["--output_dir", str(tmp_path / "run"), "--dataset_cache_dir", str(tmp_path / "data"),
                       "--val_per_class", "3", "--val_shortfall", "leave_short"])
    ds = loaded.value.args[0]
    assert class_counts(ds["validation"]["label"][:], 10) == [3] * 10
    assert (read_lt_metadata(ds)["val_per_class"], read_lt_metadata(ds)["val_shortfall"]) == (3, "leave_short")
    data_args = next(a for a in run_ltap.parse_args(["--output_dir", str(tmp_path)]) if isinstance(a, run_ltap.DataArguments))
    assert (data_args.val_per_class, data_args.val_shortfall) == (None, None)  # the dataset's defaults


# ---------------------------------------------------------------- digits-LT is embedded


def test_digits_lt_refuses_a_data_dir(tmp_path):
    with pytest.raises(ValueError, match="digits_lt is embedded .* pass no data_dir, got data_dir="):
        load_lt_dataset("digits_lt", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="digits_lt is embedded"):
        load_lt_dataset_builder("digits_lt", data_dir="anything")
