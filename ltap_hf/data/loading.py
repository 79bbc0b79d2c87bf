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


def load_lt_dataset_builder(
    name: str,
    imbalance_ratio: float | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    **config_kwargs: Any,
) -> datasets.DatasetBuilder:
    """The builder behind `load_lt_dataset` (for `split_indices()` or `download_and_prepare` options)."""
    if name not in LT_BUILDERS:
        raise ValueError(f"name must be one of {sorted(LT_BUILDERS)}, got {name!r}")
    builder_class = LT_BUILDERS[name]
    if imbalance_ratio is not None:
        fields = {field.name for field in dataclasses.fields(builder_class.BUILDER_CONFIG_CLASS)}
        if "imbalance_ratio" not in fields:
            raise ValueError(
                f"imbalance_ratio does not apply to {name}: its imbalance is fixed by the official split "
                f"files; got imbalance_ratio={imbalance_ratio!r}"
            )
        config_kwargs["imbalance_ratio"] = imbalance_ratio
    return builder_class(data_dir=data_dir, cache_dir=cache_dir, **config_kwargs)


def load_lt_dataset(
    name: str,
    imbalance_ratio: float | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    **config_kwargs: Any,
) -> datasets.DatasetDict:
    """Build (or reuse from the cache) a long-tailed dataset with train / validation / test splits.

    Args:
        name: one of ``cifar10_lt``, ``cifar100_lt``, ``imagenet_lt``, ``inaturalist2018``, ``digits_lt``.
        imbalance_ratio: IR of the train split (CIFAR-LT and digits-LT only); ``None``: the
            builder's default config (``ir100`` for CIFAR-LT, ``ir10`` for digits-LT).
        data_dir: local source. CIFAR-LT: a folder of the Hub's Parquet files or the python
            archive (``None``: the Hub); ImageNet-LT / iNaturalist: the image root. Any dataset: a
            folder written by `export_parquet` (it holds ``lt_metadata.json``), read as it is (then
            ``imbalance_ratio=None`` takes the exported ratio, and other arguments must match it).
        cache_dir: where the built Arrow files go (default: the `datasets` cache).
        **config_kwargs: any other field of the builder's config (``seed``, ``val_per_class``,
            ``selection``, ``profile``, ``n_max``, ``split_dir`` ...) or ``config_name``.

    Returns:
        A `DatasetDict` with columns ``image`` (`Image`) and ``label`` (`ClassLabel`);
        `read_lt_metadata` gives its class counts, groups, selection rule, seed and fingerprint.

    Example:
        >>> ds = load_lt_dataset("cifar10_lt", imbalance_ratio=100, data_dir="../shared/data/cifar10")
        >>> read_lt_metadata(ds)["class_counts"]["train"]
        [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    """
    if data_dir is not None and (Path(data_dir) / METADATA_FILE).is_file():
        return _load_exported(name, imbalance_ratio, Path(data_dir), cache_dir, config_kwargs)
    builder = load_lt_dataset_builder(name, imbalance_ratio, data_dir, cache_dir, **config_kwargs)
    builder.download_and_prepare()
    return builder.as_dataset()


def _load_exported(
    name: str, imbalance_ratio: float | None, data_dir: Path, cache_dir: str | None, config_kwargs: dict[str, Any]
) -> datasets.DatasetDict:
    """A folder of `export_parquet`: its splits as they are, with its metadata. What is asked for
    (`imbalance_ratio`, ``config_name``, ``seed`` ...) must match what the export records: a folder of
    another dataset or config is an error, not a silent swap; what is left unasked is taken as exported."""
    if name not in LT_BUILDERS:
        raise ValueError(f"name must be one of {sorted(LT_BUILDERS)}, got {name!r}")
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
    To share on the Hub instead, ``dataset.push_to_hub(repo_id)`` (it embeds images too), then
    upload the metadata: ``HfApi().upload_file(path_or_fileobj=json.dumps(read_lt_metadata(dataset))
    .encode(), path_in_repo="lt_metadata.json", repo_id=repo_id, repo_type="dataset")``.

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
