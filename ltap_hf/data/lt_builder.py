"""Base builder for datasets made long-tailed from a balanced source (CIFAR-LT, digits-LT).

Splits:
- ``train``: the long-tailed subset of the source train split (`select_long_tailed_indices`);
- ``validation``: balanced, ``val_per_class`` images per class drawn with
  ``numpy.random.default_rng([seed, 1])`` from the source train images that ``train`` did not keep
  (a class with fewer such images gives what it has; the metadata lists it);
- ``test``: the balanced source test split, complete.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from .imbalance import (
    PROFILES,
    SELECTIONS,
    check_n_max,
    class_counts,
    indices_fingerprint,
    long_tailed_counts,
    select_balanced_indices,
    select_long_tailed_indices,
    validate_choice,
    validate_imbalance_ratio,
    validate_int,
)
from .metadata import summarize_splits, write_lt_metadata


logger = logging.getLogger(__name__)

# Second entry of the seed sequence of each independent draw, so that one `seed` drives them all
# without two draws sharing a random stream.
VALIDATION_STREAM = 1
HOLDOUT_STREAM = 2
# Part of the cache path: bump it when a change of this package changes what a config builds.
DATA_VERSION = datasets.Version("1.0.0")

CAO2019_CITATION = """@inproceedings{cao2019ldam,
  title={Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss},
  author={Cao, Kaidi and Wei, Colin and Gaidon, Adrien and Arechiga, Nikos and Ma, Tengyu},
  booktitle={NeurIPS},
  year={2019}
}"""


@dataclass
class LongTailedConfig(datasets.BuilderConfig):
    """Every parameter of a long-tailed build; each one is part of the cache key.

    Args:
        imbalance_ratio: IR = n_max / n_min (>= 1).
        profile: ``"exp"`` or ``"step"`` class-count profile.
        n_max: images of class 0; ``None``: the smallest class of the source train split.
        selection: ``"cao2019"`` (Cao et al.'s seeded shuffle) or ``"first"`` (source order).
        seed: seed of the selection and of the validation draw.
        val_per_class: images per class in the balanced validation split.
    """

    version: datasets.Version | str | None = DATA_VERSION
    imbalance_ratio: float = 100.0
    profile: str = "exp"
    n_max: int | None = None
    selection: str = "cao2019"
    seed: int = 0
    val_per_class: int = 20

    def validate(self, num_classes: int) -> None:
        """Raise a `ValueError` naming the first bad field."""
        validate_imbalance_ratio(self.imbalance_ratio)
        validate_choice("profile", self.profile, PROFILES)
        validate_choice("selection", self.selection, SELECTIONS)
        validate_int("seed", self.seed, 0, 2**32)
        validate_int("val_per_class", self.val_per_class, 0)
        if self.n_max is not None:
            long_tailed_counts(num_classes, self.imbalance_ratio, self.n_max, self.profile)


@dataclass
class SourceSplit:
    """One split of a balanced source.

    Args:
        labels: ``[N]`` int64 class labels in source order.
        images: ``N`` images, in any form `datasets.Image` encodes: a pyarrow array of
            ``{"bytes", "path"}`` structs, an ``[N, H, W(, C)]`` uint8 array, or a sequence.
        ids: ``[N]`` row indices in the original source; ``None``: ``0 ... N - 1``.
    """

    labels: np.ndarray
    images: Any
    ids: np.ndarray | None = None

    def source_ids(self, positions: np.ndarray) -> np.ndarray:
        """Original source row indices of the rows at `positions`."""
        return positions if self.ids is None else self.ids[positions]

    def images_at(self, positions: np.ndarray) -> Iterator[Any]:
        """The images at `positions`, in that order."""
        if isinstance(self.images, (pa.Array, pa.ChunkedArray)):
            yield from self.images.take(pa.array(positions)).to_pylist()
        else:
            for position in positions:
                yield self.images[position]


@dataclass
class BalancedSource:
    """A balanced source: its train and test splits and a readable note of where it came from."""

    train: SourceSplit
    test: SourceSplit
    origin: str


class LongTailedBuilder(datasets.GeneratorBasedBuilder):
    """Builds train / validation / test of a long-tailed version of a balanced source.

    Subclasses set `CLASS_NAMES`, `SUMMARY`, `BUILDER_CONFIGS` and implement `_load_source`.
    Passing ``imbalance_ratio=R`` without a config name picks the predefined config ``irR`` when
    there is one, and otherwise names the new config ``irR``.
    """

    BUILDER_CONFIG_CLASS = LongTailedConfig
    VERSION = DATA_VERSION
    CLASS_NAMES: Sequence[str] = ()
    SUMMARY = ""
    HOMEPAGE = ""
    CITATION = CAO2019_CITATION

    def __init__(self, **kwargs: Any) -> None:
        ratio = kwargs.get("imbalance_ratio")
        if ratio is not None and kwargs.get("config_name") is None and "name" not in kwargs:
            name = f"ir{validate_imbalance_ratio(ratio):g}"
            if name in self.builder_configs:
                kwargs["config_name"] = name
                del kwargs["imbalance_ratio"]
            else:
                kwargs["name"] = name
        super().__init__(**kwargs)
        self.config.validate(len(self.CLASS_NAMES))
        self._source: BalancedSource | None = None

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=self.SUMMARY,
            features=datasets.Features(
                {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(self.CLASS_NAMES))}
            ),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
        )

    def _load_source(self) -> BalancedSource:
        """Read the balanced source (train and test splits)."""
        raise NotImplementedError

    @property
    def source(self) -> BalancedSource:
        """The balanced source, read once."""
        if self._source is None:
            self._source = self._load_source()
        return self._source

    def _n_max(self) -> int:
        """Images of class 0: the config's `n_max`, or the smallest class of the source train split."""
        if self.config.n_max is not None:
            return self.config.n_max
        return min(class_counts(self.source.train.labels, len(self.CLASS_NAMES)))

    def _split_positions(self) -> dict[str, np.ndarray]:
        """Row positions of every split inside its source split (train and validation: source
        train; test: source test)."""
        config, source = self.config, self.source
        num_classes = len(self.CLASS_NAMES)
        n_max = self._n_max()
        counts = long_tailed_counts(num_classes, config.imbalance_ratio, n_max, config.profile)
        check_n_max(n_max, class_counts(source.train.labels, num_classes), self.CLASS_NAMES)
        train = select_long_tailed_indices(source.train.labels, counts, config.seed, config.selection)
        validation = select_balanced_indices(
            source.train.labels, config.val_per_class, num_classes, [config.seed, VALIDATION_STREAM], exclude=train
        )
        return {"train": train, "validation": validation, "test": np.arange(len(source.test.labels))}

    def _source_split(self, split: str) -> SourceSplit:
        return self.source.test if split == "test" else self.source.train

    def _source_ids(self, positions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {split: self._source_split(split).source_ids(rows) for split, rows in positions.items()}

    def split_indices(self) -> dict[str, np.ndarray]:
        """Source row indices of every split: ``train`` and ``validation`` index the source train
        split, ``test`` the source test split (for digits-LT, all three index `load_digits`)."""
        return self._source_ids(self._split_positions())

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        config = self.config
        positions = self._split_positions()
        labels = {split: self._source_split(split).labels[rows] for split, rows in positions.items()}
        summary = summarize_splits(labels, len(self.CLASS_NAMES))
        validation_counts = summary["class_counts"]["validation"]
        short = {str(c): n for c, n in enumerate(validation_counts) if n < config.val_per_class}
        if short:
            logger.warning(
                "%s: classes with fewer than val_per_class=%d images left for validation (class: images): %s",
                self.dataset_name, config.val_per_class, short,
            )
        write_lt_metadata(
            self.info,
            {
                "dataset": self.dataset_name,
                "config": config.name,
                "summary": self.SUMMARY,
                "source": self.source.origin,
                "num_classes": len(self.CLASS_NAMES),
                "imbalance_ratio": float(config.imbalance_ratio),
                "profile": config.profile,
                "n_max": int(self._n_max()),
                "selection": config.selection,
                "seed": int(config.seed),
                "val_per_class": int(config.val_per_class),
                "validation_short_classes": short,
                "fingerprint": indices_fingerprint(self._source_ids(positions)),
                **summary,
            },
        )
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"split": split, "positions": rows})
            for split, rows in positions.items()
        ]

    def _generate_examples(self, split: str, positions: np.ndarray) -> Iterator[tuple[int, dict[str, Any]]]:
        source_split = self._source_split(split)
        labels = source_split.labels[positions].tolist()
        for key, (image, label) in enumerate(zip(source_split.images_at(positions), labels)):
            yield key, {"image": image, "label": label}
