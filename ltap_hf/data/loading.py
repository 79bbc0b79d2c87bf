"""One entry point for every long-tailed dataset, and export to plain Parquet."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
from datasets.table import embed_table_storage

from .cifar10_lt import Cifar10LT
from .cifar100_lt import Cifar100LT
from .digits_lt import DigitsLT
from .imagenet_lt import ImagenetLT
from .inaturalist2018 import Inaturalist2018
from .metadata import read_lt_metadata, write_lt_metadata


LT_BUILDERS: dict[str, type[datasets.DatasetBuilder]] = {
    "cifar10_lt": Cifar10LT,
    "cifar100_lt": Cifar100LT,
    "imagenet_lt": ImagenetLT,
    "inaturalist2018": Inaturalist2018,
    "digits_lt": DigitsLT,
}
METADATA_FILE = "lt_metadata.json"


# Builder arguments that only some builders take, and why the others do not.
NOT_APPLICABLE = {
    "imbalance_ratio": "its imbalance is fixed by the official split files",
    "val_per_class": "its validation split is the official one",
    "val_shortfall": "its validation split is the official one",
    "seed": "nothing in it is drawn at random (the official split files fix every split)",
}


def _builder_kwargs(
    name: str, imbalance_ratio: float | None, val_per_class: int | None, config_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The config fields to pass to builder `name`. ``None`` means the builder's default and is left
    out; an argument its config lacks is an error, except ``seed=0`` (every builder's default, so a
    script may pass it to any of them)."""
    if name not in LT_BUILDERS:
        raise ValueError(f"name must be one of {sorted(LT_BUILDERS)}, got {name!r}")
    fields = {field.name for field in dataclasses.fields(LT_BUILDERS[name].BUILDER_CONFIG_CLASS)}
    kwargs = {key: value for key, value in config_kwargs.items() if value is not None}
    kwargs.update({k: v for k, v in (("imbalance_ratio", imbalance_ratio), ("val_per_class", val_per_class)) if v is not None})
    if "seed" not in fields and kwargs.get("seed") == 0:
        del kwargs["seed"]
    for key, why in NOT_APPLICABLE.items():
        if key in kwargs and key not in fields:
            raise ValueError(f"{key} does not apply to {name}: {why}; got {key}={kwargs[key]!r}")
    return kwargs


def load_lt_dataset_builder(
    name: str,
    imbalance_ratio: float | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    val_per_class: int | None = None,
    **config_kwargs: Any,
) -> datasets.DatasetBuilder:
    """The builder behind `load_lt_dataset` (for `split_indices()` or `download_and_prepare` options)."""
    kwargs = _builder_kwargs(name, imbalance_ratio, val_per_class, config_kwargs)
    return LT_BUILDERS[name](data_dir=data_dir, cache_dir=cache_dir, **kwargs)


def load_lt_dataset(
    name: str,
    imbalance_ratio: float | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    val_per_class: int | None = None,
    **config_kwargs: Any,
) -> datasets.DatasetDict:
    """Build (or reuse from the cache) a long-tailed dataset with train / validation / test splits,
    pairwise disjoint.

    Args:
        name: one of ``cifar10_lt``, ``cifar100_lt``, ``imagenet_lt``, ``inaturalist2018``, ``digits_lt``.
        imbalance_ratio: IR of the train split (CIFAR-LT and digits-LT only); ``None``: the
            builder's default config (``ir100`` for CIFAR-LT, ``ir10`` for digits-LT).
        data_dir: local source. CIFAR-LT: a folder of the Hub's Parquet files or the python
            archive (``None``: the Hub); ImageNet-LT / iNaturalist: the image root; digits-LT is
            embedded and takes none (an error). Any dataset: a folder written by `export_parquet`
            (it holds ``lt_metadata.json``), read as it is (then ``imbalance_ratio=None`` takes the
            exported ratio, and other arguments must match it).
        cache_dir: where the built Arrow files go (default: the `datasets` cache).
        val_per_class: validation images per class (a config field, so part of the cache key);
            ``None``: the builder's default (CIFAR-LT 20, the paper's recipe; digits-LT 10;
            iNaturalist 1); ``0``: no validation split. CIFAR-LT and digits-LT draw them from the
            source training images the long-tailed selection left out; a class with fewer such
            images gets the rest from its own selected training images by default
            (``val_shortfall="from_train"``: CIFAR-10-LT IR 100 then trains on 4,980 airplanes,
            12,386 images in all), or only what there is with ``val_shortfall="leave_short"``
            (exactly Cao et al.'s 12,406 images, no airplane in validation); the builder reports
            either in the metadata. iNaturalist holds them out of its train list (its ``test`` is
            the official validation list). ImageNet-LT's validation split is the official one: an
            error.
        **config_kwargs: any other field of the builder's config (``seed``, ``val_shortfall``,
            ``selection``, ``profile``, ``n_max``, ``split_dir`` ...) or ``config_name``. ``seed=0``
            is accepted by every builder (ImageNet-LT draws nothing at random).

    Returns:
        A `DatasetDict` with columns ``image`` (`Image`) and ``label`` (`ClassLabel`);
        `read_lt_metadata` gives its class counts, groups, selection rule, seed and fingerprint.

    Example:
        >>> ds = load_lt_dataset("cifar10_lt", imbalance_ratio=100, data_dir="../shared/data/cifar10")
        >>> read_lt_metadata(ds)["class_counts"]["train"]
        [4980, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
        >>> read_lt_metadata(ds)["class_counts"]["validation"]
        [20, 20, 20, 20, 20, 20, 20, 20, 20, 20]
    """
    kwargs = _builder_kwargs(name, None, val_per_class, config_kwargs)
    if data_dir is not None and (Path(data_dir) / METADATA_FILE).is_file():
        return _load_exported(name, imbalance_ratio, Path(data_dir), cache_dir, kwargs)
    builder = load_lt_dataset_builder(name, imbalance_ratio, data_dir, cache_dir, **kwargs)
    builder.download_and_prepare()
    return builder.as_dataset()


def _load_exported(
    name: str, imbalance_ratio: float | None, data_dir: Path, cache_dir: str | None, config_kwargs: dict[str, Any]
) -> datasets.DatasetDict:
    """A folder of `export_parquet`: its splits as they are, with its metadata. What is asked for
    (`imbalance_ratio`, ``config_name``, ``seed`` ...) must match what the export records: a folder of
    another dataset or config is an error, not a silent swap; what is left unasked is taken as exported."""
    metadata = json.loads((data_dir / METADATA_FILE).read_text(encoding="utf-8"))
    asked = {"dataset": name, "imbalance_ratio": imbalance_ratio, **config_kwargs}
    if "config_name" in asked:
        asked["config"] = asked.pop("config_name")
    unrecorded = sorted(k for k, v in asked.items() if v is not None and k not in metadata)
    if unrecorded:
        raise ValueError(f"{data_dir} is an export, read as it is: {unrecorded} cannot apply to it")
    differing = {k: (v, metadata[k]) for k, v in asked.items() if v is not None and metadata[k] != v}
    if differing:
        raise ValueError(f"{data_dir} is an export of another dataset or config; asked vs exported: {differing}")
    files = {split: str(data_dir / f"{split}-00000-of-00001.parquet") for split in metadata["class_counts"]}
    missing = [path for path in files.values() if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"{data_dir} lacks the split files {missing} that its {METADATA_FILE} lists")
    dataset = datasets.load_dataset("parquet", data_files=files, cache_dir=cache_dir)
    for split in dataset.values():
        write_lt_metadata(split.info, metadata)
    return dataset


def export_parquet(dataset: datasets.DatasetDict, output_dir: str | Path) -> dict[str, Path]:
    """Write every split as ``{split}-00000-of-00001.parquet``, plus ``lt_metadata.json`` when the
    dataset was built by this package.

    Image files referenced by path (ImageNet-LT, iNaturalist) are embedded as bytes, so the folder
    stands alone: ``datasets.load_dataset("parquet", data_dir=output_dir)`` (or
    ``load_dataset(output_dir)``) reads it back with the same features, without this library.
    To share on the Hub instead: `ltap_hf.data.push_lt_dataset` (images embedded too, with a
    dataset card and the metadata).

    Returns:
        split -> written Parquet file.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, split_dataset in dataset.items():
        path = output_dir / f"{split}-00000-of-00001.parquet"
        with pq.ParquetWriter(path, split_dataset.features.arrow_schema) as writer:
            for table in split_dataset.with_format("arrow").iter(batch_size=1000):
                writer.write_table(embed_table_storage(table))
        written[split] = path
    try:
        metadata = read_lt_metadata(dataset)
    except ValueError:  # any DatasetDict can be exported; only ours carry metadata
        return written
    (output_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True), encoding="utf-8")
    return written
