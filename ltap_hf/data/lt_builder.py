"""Base builder for datasets made long-tailed from a balanced source (CIFAR-LT, digits-LT).

Splits, pairwise disjoint:
- ``train``: the long-tailed subset of the source train split (`select_long_tailed_indices`), less
  the images moved to validation by ``val_shortfall="from_train"`` (below);
- ``validation``: balanced, ``val_per_class`` images per class drawn with
  ``numpy.random.default_rng([seed, 1])`` from the source train images that the long-tailed
  selection did not keep. A class with fewer such images (CIFAR-LT's class 0 keeps all of its source
  images; at imbalance ratio 1 every class does):
  - ``val_shortfall="from_train"`` (default): gets the missing images from its own selected training
    images, drawn with ``numpy.random.default_rng([seed, 3])``, which then leave ``train`` (a class
    keeps at least one training image). CIFAR-10-LT IR 100 trains on 4,980 airplanes instead of
    5,000 (12,386 images in all); every class has ``val_per_class`` validation images.
  - ``val_shortfall="leave_short"``: gets what there is; ``train`` is exactly Cao et al.'s selection
    (CIFAR-10-LT IR 100: 12,406 images, no airplane in validation). At imbalance ratio 1 nothing is
    left for validation and the build stops with an error saying so.
  Either way the metadata records the selected and the real training counts, the classes given
  images from training (``validation_from_train``) and those left short (``validation_short_classes``).
  ``val_per_class=0``: no validation split.
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
    top_up_from_train,
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
SHORTFALL_STREAM = 3
# Part of the cache path: bump it when a change of this package changes what a config builds.
# 2.0.0: validation short of `val_per_class` is topped up from training by default; iNaturalist's
# validation is held out of its train list.
DATA_VERSION = datasets.Version("2.0.0")
VAL_SHORTFALLS = ("from_train", "leave_short")

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
        seed: seed of the selection and of the validation draws.
        val_per_class: images per class in the balanced validation split, drawn from the source
            train images the selection left out; ``0``: no validation split.
        val_shortfall: what a class with fewer left-out images gets: ``"from_train"`` (default)
            the rest from its own selected training images, which leave train; ``"leave_short"``
            only what there is, train being exactly the selection (see the module docstring).
    """

    version: datasets.Version | str | None = DATA_VERSION
    imbalance_ratio: float = 100.0
    profile: str = "exp"
    n_max: int | None = None
    selection: str = "cao2019"
    seed: int = 0
    val_per_class: int = 20
    val_shortfall: str = "from_train"

    def validate(self, num_classes: int) -> None:
        """Raise a `ValueError` naming the first bad field."""
        validate_imbalance_ratio(self.imbalance_ratio)
        validate_choice("profile", self.profile, PROFILES)
        validate_choice("selection", self.selection, SELECTIONS)
        validate_int("seed", self.seed, 0, 2**32)
        validate_int("val_per_class", self.val_per_class, 0)
        validate_choice("val_shortfall", self.val_shortfall, VAL_SHORTFALLS)
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

    def _selected_counts(self) -> list[int]:
        """Images per class of the long-tailed selection (before any move to validation)."""
        return long_tailed_counts(len(self.CLASS_NAMES), self.config.imbalance_ratio, self._n_max(), self.config.profile)

    def _split_positions(self) -> dict[str, np.ndarray]:
        """Row positions of every split inside its source split (train and validation: source
        train; test: source test). No ``validation`` when ``val_per_class`` is 0."""
        config, source = self.config, self.source
        num_classes = len(self.CLASS_NAMES)
        labels = source.train.labels
        check_n_max(self._n_max(), class_counts(labels, num_classes), self.CLASS_NAMES)
        train = select_long_tailed_indices(labels, self._selected_counts(), config.seed, config.selection)
        test = np.arange(len(source.test.labels))
        if config.val_per_class == 0:
            return {"train": train, "test": test}
        validation = select_balanced_indices(
            labels, config.val_per_class, num_classes, [config.seed, VALIDATION_STREAM], exclude=train
        )
        if config.val_shortfall == "from_train":
            train, validation = top_up_from_train(
                labels, train, validation, config.val_per_class, num_classes, [config.seed, SHORTFALL_STREAM]
            )
        if len(validation) == 0:
            reason = (
                "val_shortfall='leave_short' takes none from training; use val_shortfall='from_train' (the "
                "default) to hold val_per_class images of each class out of its training images"
                if config.val_shortfall == "leave_short"
                else "and every class has a single training image; lower imbalance_ratio or raise n_max"
            )
            raise ValueError(
                f"{self.dataset_name}: no source training image is left for validation (imbalance_ratio="
                f"{config.imbalance_ratio:g} keeps every image of every class) and {reason}, or pass "
                "val_per_class=0 for no validation split"
            )
        return {"train": train, "validation": validation, "test": test}

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
        selected = self._selected_counts()
        from_train = {
            str(c): selected[c] - n for c, n in enumerate(summary["class_counts"]["train"]) if n < selected[c]
        }
        validation_counts = summary["class_counts"].get("validation", [])
        short = {str(c): n for c, n in enumerate(validation_counts) if n < config.val_per_class}
        if from_train:
            logger.info(
                "%s: validation images held out of the training images of classes with too few left-out "
                "images (class: images): %s", self.dataset_name, from_train,
            )
        if short:
            logger.warning(
                "%s: classes with fewer than val_per_class=%d validation images (class: images): %s",
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
                "val_shortfall": config.val_shortfall,
                "selected_class_counts": selected,
                "validation_from_train": from_train,
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
