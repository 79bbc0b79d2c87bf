"""CIFAR-10/100 sources and the CIFAR-LT builder base.

The balanced source is read from one of:
- a local folder of the Hub's Parquet files (``**/train-*.parquet`` and ``**/test-*.parquet``,
  columns ``img`` and the label column), passed as ``data_dir``;
- the original python-pickle release, passed as ``data_dir``: the ``.tar.gz`` archive, a folder
  holding it, or its extracted folder. Pickle runs code from the file: use the official archive;
- otherwise the Hub dataset ``hub_id`` (``uoft-cs/cifar10`` / ``uoft-cs/cifar100``).
"""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .lt_builder import CAO2019_CITATION, BalancedSource, LongTailedBuilder, LongTailedConfig, SourceSplit


IMAGE_COLUMN = "img"
CIFAR_CITATION = """@techreport{krizhevsky2009cifar,
  title={Learning Multiple Layers of Features from Tiny Images},
  author={Krizhevsky, Alex},
  institution={University of Toronto},
  year={2009}
}
""" + CAO2019_CITATION


@dataclass
class CifarLTConfig(LongTailedConfig):
    """`LongTailedConfig` plus the Hub dataset read when ``data_dir`` is not given."""

    hub_id: str = ""


def cifar_configs(hub_id: str, ratios: tuple[int, ...] = (10, 20, 50, 100, 200)) -> list[CifarLTConfig]:
    """Predefined configs ``ir10`` ... ``ir200`` (Cao et al.'s settings: exp profile, seed 0)."""
    return [
        CifarLTConfig(
            name=f"ir{ratio}",
            imbalance_ratio=float(ratio),
            hub_id=hub_id,
            description=f"Cao et al. (2019) long-tailed split with imbalance ratio {ratio}",
        )
        for ratio in ratios
    ]


class CifarLTBuilder(LongTailedBuilder):
    """CIFAR-LT: subclasses name the label column and the files of the pickle release."""

    BUILDER_CONFIG_CLASS = CifarLTConfig
    DEFAULT_CONFIG_NAME = "ir100"
    HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
    CITATION = CIFAR_CITATION
    LABEL_COLUMN = "label"
    PICKLE_FOLDER = ""  # folder of the extracted archive
    PICKLE_ARCHIVE = ""  # file name of the archive
    PICKLE_LABEL_KEY = b"labels"
    PICKLE_FILES: dict[str, tuple[str, ...]] = {}  # split -> pickle file names

    def _load_source(self) -> BalancedSource:
        data_dir = self.config.data_dir
        if data_dir is None:
            return self._load_hub()
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data_dir={data_dir!r} does not exist; {self._layouts()}")
        parquet = {split: sorted(path.rglob(f"{split}-*.parquet")) for split in ("train", "test")}
        if path.is_dir() and all(parquet.values()):
            return self._load_parquet(parquet)
        archive = path if path.is_file() else path / self.PICKLE_ARCHIVE
        if archive.is_file():
            return self._load_pickle_archive(archive)
        for folder in (path, path / self.PICKLE_FOLDER):
            if all((folder / name).is_file() for names in self.PICKLE_FILES.values() for name in names):
                return self._load_pickle(lambda name: open(folder / name, "rb"), str(folder))
        raise FileNotFoundError(f"no CIFAR files found in data_dir={data_dir!r}; {self._layouts()}")

    def _layouts(self) -> str:
        return (
            "pass a folder of the Hub's Parquet files (train-*.parquet, test-*.parquet), the python "
            f"archive {self.PICKLE_ARCHIVE} (or a folder holding it or its extracted "
            f"{self.PICKLE_FOLDER}/), or no data_dir to download {self.config.hub_id!r} from the Hub"
        )

    def _from_table(self, table: pa.Table, origin: str) -> SourceSplit:
        for column in (IMAGE_COLUMN, self.LABEL_COLUMN):
            if column not in table.column_names:
                raise ValueError(f"{origin} has no column {column!r}; columns: {table.column_names}")
        labels = table.column(self.LABEL_COLUMN).to_numpy().astype(np.int64)
        return SourceSplit(labels=labels, images=table.column(IMAGE_COLUMN))

    def _load_parquet(self, files: dict[str, list[Path]]) -> BalancedSource:
        splits = {
            split: self._from_table(pa.concat_tables([pq.read_table(f) for f in paths]), str(paths[0]))
            for split, paths in files.items()
        }
        origin = "parquet: " + ", ".join(str(f) for paths in files.values() for f in paths)
        return BalancedSource(train=splits["train"], test=splits["test"], origin=origin)

    def _load_hub(self) -> BalancedSource:
        hub = datasets.load_dataset(self.config.hub_id, cache_dir=self._cache_dir_root)
        splits = {
            split: self._from_table(hub[split].with_format("arrow")[:], f"{self.config.hub_id}[{split}]")
            for split in ("train", "test")
        }
        return BalancedSource(train=splits["train"], test=splits["test"], origin=f"hub: {self.config.hub_id}")

    def _load_pickle_archive(self, archive: Path) -> BalancedSource:
        with tarfile.open(archive, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}

            def open_member(name: str) -> BinaryIO:
                if name not in members:
                    raise FileNotFoundError(f"{archive} has no file {name!r}; {self._layouts()}")
                return tar.extractfile(members[name])

            return self._load_pickle(open_member, str(archive))

    def _load_pickle(self, open_file: Callable[[str], BinaryIO], origin: str) -> BalancedSource:
        splits = {}
        for split, names in self.PICKLE_FILES.items():
            images, labels = [], []
            for name in names:
                with open_file(name) as handle:
                    batch: dict[bytes, Any] = pickle.load(handle, encoding="bytes")
                # Rows are 3072 bytes: the red, green, then blue 32x32 planes.
                images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels.append(np.asarray(batch[self.PICKLE_LABEL_KEY], dtype=np.int64))
            splits[split] = SourceSplit(labels=np.concatenate(labels), images=np.concatenate(images))
        return BalancedSource(train=splits["train"], test=splits["test"], origin=f"pickle: {origin}")
