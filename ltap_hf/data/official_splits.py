"""Base builder for long-tailed benchmarks defined by official split files over a local image root.

A split file lists one image per line, ``relative/path label``; iNaturalist's COCO-style JSON
annotations (``images[].file_name`` + ``annotations[].category_id``) are read too. The images
themselves need a manual download (see each builder's ``manual_download_instructions``); the built
dataset stores their absolute paths, not copies (`export_parquet` embeds the bytes).

Train, validation and test are pairwise disjoint: the build checks it (by image path) and stops with
an error naming an image listed twice. A builder whose benchmark ships no validation split of its own
(iNaturalist 2018) derives it from the train list (`OfficialSplitBuilder._derive_splits`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .imbalance import class_counts
from .lt_builder import DATA_VERSION
from .metadata import summarize_splits, write_lt_metadata


@dataclass
class OfficialSplitConfig(datasets.BuilderConfig):
    """``data_dir``: the image root. ``split_dir``: the folder of the split files (default: ``data_dir``)."""

    version: datasets.Version | str | None = DATA_VERSION
    split_dir: str | None = None


@dataclass
class SplitEntries:
    """The images of one split: relative paths and integer labels, in file order."""

    paths: list[str]
    labels: list[int]
    file: Path


def read_split_file(path: Path) -> list[tuple[str, int]]:
    """Lines ``relative/path label`` as ``(path, label)`` pairs (blank lines skipped)."""
    entries = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{line_number}: expected 'relative/path label', got {line.rstrip()!r}")
            entries.append((parts[0], int(parts[1])))
    return entries


def read_coco_annotations(path: Path) -> tuple[list[tuple[str, int]], dict[int, str]]:
    """``(file_name, category_id)`` pairs in ``images`` order, and category id -> name."""
    with open(path, encoding="utf-8") as handle:
        annotations = json.load(handle)
    category_of = {item["image_id"]: item["category_id"] for item in annotations["annotations"]}
    entries = [(image["file_name"], int(category_of[image["id"]])) for image in annotations["images"]]
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in annotations.get("categories", [])}
    return entries, names


class OfficialSplitBuilder(datasets.GeneratorBasedBuilder):
    """Subclasses set `NUM_CLASSES`, `SPLIT_FILES` (split -> candidate file names, first found
    wins), `SUMMARY`, `NOTES` and `manual_download_instructions`."""

    BUILDER_CONFIG_CLASS = OfficialSplitConfig
    BUILDER_CONFIGS = [OfficialSplitConfig(name="default")]
    VERSION = DATA_VERSION
    NUM_CLASSES = 0
    SPLIT_FILES: dict[str, tuple[str, ...]] = {}
    SUMMARY = ""
    NOTES = ""
    HOMEPAGE = ""
    CITATION = ""

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=self.SUMMARY,
            features=self._features([str(label) for label in range(self.NUM_CLASSES)]),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
        )

    @staticmethod
    def _features(names: list[str]) -> datasets.Features:
        return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})

    def _missing(self, what: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"{self.dataset_name}: {what}.\n{self.manual_download_instructions}"
        )

    def _image_root(self) -> Path:
        if self.config.data_dir is None:
            raise self._missing("no image root given; pass data_dir=<folder of the downloaded images>")
        root = Path(self.config.data_dir).expanduser()
        if not root.is_dir():
            raise self._missing(f"the image root data_dir={self.config.data_dir!r} does not exist")
        return root

    def _read_split(self, split: str, split_dir: Path) -> tuple[SplitEntries, dict[int, str]]:
        for name in self.SPLIT_FILES[split]:
            path = split_dir / name
            if path.is_file():
                if path.suffix == ".json":
                    entries, names = read_coco_annotations(path)
                else:
                    entries, names = read_split_file(path), {}
                break
        else:
            raise self._missing(f"no {split} split file in {split_dir} (looked for {list(self.SPLIT_FILES[split])})")
        for relative_path, label in entries:
            if not 0 <= label < self.NUM_CLASSES:
                raise ValueError(f"{path}: label {label} of {relative_path!r} is not in [0, {self.NUM_CLASSES})")
        paths, labels = zip(*entries) if entries else ((), ())
        return SplitEntries(paths=list(paths), labels=list(labels), file=path), names

    def _class_names(self, splits: dict[str, SplitEntries], names: dict[int, str]) -> list[str]:
        """Names from the annotations, else the image's folder name (the WordNet id of ImageNet,
        the category id of iNaturalist), else the label itself."""
        folder_names: dict[int, str] = {}
        for entries in splits.values():
            for relative_path, label in zip(entries.paths, entries.labels):
                folder_names.setdefault(label, Path(relative_path).parent.name)
        return [names.get(c, folder_names.get(c, str(c))) for c in range(self.NUM_CLASSES)]

    def _check_images(self, root: Path, entries: SplitEntries) -> None:
        missing = [p for p in entries.paths if not (root / p).is_file()]
        if missing:
            raise self._missing(
                f"{len(missing)} of {len(entries.paths)} images listed in {entries.file} are missing "
                f"under {root}, e.g. {missing[0]!r}"
            )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        root = self._image_root()
        split_dir = Path(self.config.split_dir).expanduser() if self.config.split_dir else root
        splits, names = {}, {}
        for split in self.SPLIT_FILES:
            splits[split], split_names = self._read_split(split, split_dir)
            names.update(split_names)
            self._check_images(root, splits[split])
        self.info.features = self._features(self._class_names(splits, names))
        listed = class_counts(splits["train"].labels, self.NUM_CLASSES)
        splits = self._derive_splits(splits)
        check_disjoint(splits)
        summary = summarize_splits(
            {split: np.asarray(entries.labels, dtype=np.int64) for split, entries in splits.items()}, self.NUM_CLASSES
        )
        present = [n for n in listed if n > 0]
        write_lt_metadata(
            self.info,
            {
                "dataset": self.dataset_name,
                "config": self.config.name,
                "summary": self.SUMMARY,
                "notes": self.NOTES,
                "source": {"image_root": str(root), "split_files": {s: str(e.file) for s, e in splits.items()}},
                "num_classes": self.NUM_CLASSES,
                # of the official train list: the benchmark's imbalance, whatever validation takes from it
                "imbalance_ratio": max(present) / min(present) if present else None,
                "selection": "official split files",
                "seed": None,
                "selected_class_counts": listed,
                "fingerprint": entries_fingerprint(splits),
                **summary,
                **self._derived_metadata(listed, summary),
            },
        )
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"root": root, "entries": entries})
            for split, entries in splits.items()
        ]

    def _derive_splits(self, splits: dict[str, SplitEntries]) -> dict[str, SplitEntries]:
        """The splits to build from those read from the files (default: as read)."""
        return splits

    def _derived_metadata(self, listed: list[int], summary: dict[str, Any]) -> dict[str, Any]:
        """Metadata of what `_derive_splits` did (default: nothing)."""
        return {}

    def _generate_examples(self, root: Path, entries: SplitEntries) -> Iterator[tuple[int, dict[str, Any]]]:
        for key, (relative_path, label) in enumerate(zip(entries.paths, entries.labels)):
            yield key, {"image": str(root / relative_path), "label": label}


def check_disjoint(splits: dict[str, SplitEntries]) -> None:
    """Raise a `ValueError` if an image path is listed in two splits."""
    seen: dict[str, str] = {}
    for split, entries in splits.items():
        for relative_path in entries.paths:
            other = seen.setdefault(relative_path, split)
            if other != split:
                raise ValueError(
                    f"{relative_path!r} is listed in both the {other} split ({splits[other].file}) and the {split} "
                    f"split ({entries.file}): the splits must not share images (the model would be selected or "
                    "scored on images it trained on); check the split files"
                )


def entries_fingerprint(splits: dict[str, SplitEntries]) -> str:
    """SHA-256 (hex) of every split's ``path label`` lines, in split-name order."""
    digest = hashlib.sha256()
    for split in sorted(splits):
        digest.update(split.encode() + b"\0")
        for relative_path, label in zip(splits[split].paths, splits[split].labels):
            digest.update(f"{relative_path} {label}\n".encode())
    return digest.hexdigest()
