"""iNaturalist 2018 (Van Horn et al. 2018), with the long-tailed literature's split files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .imbalance import top_up_from_train, validate_int
from .lt_builder import VALIDATION_STREAM
from .official_splits import OfficialSplitBuilder, OfficialSplitConfig, SplitEntries


@dataclass
class Inaturalist2018Config(OfficialSplitConfig):
    """`OfficialSplitConfig` plus the validation split held out of the train list.

    Args:
        val_per_class: validation images per class, held out of the class's training images (a
            class keeps at least one); ``0``: no validation split, train is the whole list.
        seed: seed of the draw (``numpy.random.default_rng([seed, 1])``).
    """

    val_per_class: int = 1
    seed: int = 0

    def validate(self) -> None:
        """Raise a `ValueError` naming the first bad field."""
        validate_int("val_per_class", self.val_per_class, 0)
        validate_int("seed", self.seed, 0, 2**32)


class Inaturalist2018(OfficialSplitBuilder):
    """iNaturalist 2018: 8,142 classes, 437,513 images in the train list (1,000 down to 2 per class),
    24,426 in the official validation set (3 per class).

    Its test labels were never released: as in the long-tailed literature (e.g. Kang et al. 2020),
    ``test`` is the official validation set. ``validation`` (for LTAP's class vote and any model
    selection) is therefore held out of the train list: ``val_per_class`` images per class (default
    1), drawn with a seeded generator, never leaving a class without a training image. Train,
    validation and test are disjoint. With the default, ``train`` keeps n_c - 1 images of a class
    listed with n_c (429,371 images in all) and every class has one validation image; the metadata
    keeps the listed counts (``selected_class_counts``) and the imbalance ratio of the list.
    ``val_per_class=0`` trains on the whole list and builds no validation split.
    """

    BUILDER_CONFIG_CLASS = Inaturalist2018Config
    BUILDER_CONFIGS = [Inaturalist2018Config(name="default")]
    NUM_CLASSES = 8142
    SPLIT_FILES = {
        "train": ("iNaturalist18_train.txt", "train2018.json"),
        "test": ("iNaturalist18_val.txt", "val2018.json"),
    }
    SUMMARY = "iNaturalist 2018: naturally long-tailed species classification, official train and validation sets."
    NOTES = (
        "test is the official validation set (test labels were never released), as in the literature; "
        "validation is held out of the official train list, so train, validation and test are disjoint"
    )
    HOMEPAGE = "https://github.com/visipedia/inat_comp/tree/master/2018"
    CITATION = """@inproceedings{van2018inaturalist,
  title={The iNaturalist Species Classification and Detection Dataset},
  author={Van Horn, Grant and Mac Aodha, Oisin and Song, Yang and Cui, Yin and Sun, Chen and Shepard, Alex
          and Adam, Hartwig and Perona, Pietro and Belongie, Serge},
  booktitle={CVPR},
  year={2018}
}"""
    manual_download_instructions = """iNaturalist 2018 needs a manual download:
1. Download train_val2018.tar.gz from https://github.com/visipedia/inat_comp/tree/master/2018 and
   extract it into a folder, the image root, so that
   <root>/train_val2018/Plantae/7477/3b60c9486db1d2ee875f11a669fbde4a.jpg exists.
2. Put the split files next to it (or anywhere and pass split_dir=<that folder>): either
   iNaturalist18_train.txt and iNaturalist18_val.txt (Kang et al. 2020,
   https://github.com/facebookresearch/classifier-balancing) or the official train2018.json and
   val2018.json annotations.
3. load_lt_dataset("inaturalist2018", data_dir=<root>)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config.validate()

    def _derive_splits(self, splits: dict[str, SplitEntries]) -> dict[str, SplitEntries]:
        train = splits["train"]
        if self.config.val_per_class == 0:
            return {"train": train, "test": splits["test"]}
        labels = np.asarray(train.labels, dtype=np.int64)
        kept, held_out = top_up_from_train(
            labels, np.arange(len(labels)), np.empty(0, dtype=np.int64), self.config.val_per_class,
            self.NUM_CLASSES, [self.config.seed, VALIDATION_STREAM],
        )

        def rows(positions: np.ndarray) -> SplitEntries:
            return SplitEntries([train.paths[i] for i in positions], [train.labels[i] for i in positions], train.file)

        return {"train": rows(kept), "validation": rows(held_out), "test": splits["test"]}

    def _derived_metadata(self, listed: list[int], summary: dict[str, Any]) -> dict[str, Any]:
        validation = summary["class_counts"].get("validation", [])
        return {
            "selection": "official split files; validation held out of the train list",
            "seed": int(self.config.seed),
            "val_per_class": int(self.config.val_per_class),
            "validation_short_classes": {
                str(c): n for c, n in enumerate(validation) if n < self.config.val_per_class and listed[c] > 0
            },
        }
