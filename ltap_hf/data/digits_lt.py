"""digits-LT: scikit-learn's bundled handwritten digits (1,797 real 8x8 images) made long-tailed.

The embedded dataset of the demo job and of fast tests; needs no download. Images are stored as
8x8 grayscale (PIL mode ``"L"``, one channel), the 0..16 intensities scaled to 0..255.

Splits (all drawn from ``load_digits()``, indices into it):
- ``test``: ``test_per_class`` images per class (default 50), drawn first with
  ``numpy.random.default_rng([seed, 2])``;
- ``train``: Cao et al.'s long-tailed selection from the remaining images in their original order
  (default ``n_max=110``, ``imbalance_ratio=10``: 110 down to 11 per class, 446 images; many, medium
  and few groups are all non-empty);
- ``validation``: ``val_per_class`` (default 10) of the remaining unused images per class (every
  class has at least 18 left at the default ``n_max=110``, so ``train`` is exactly the selection).

It reads no files: a ``data_dir`` is an error (``load_lt_dataset`` still reads a folder written by
``export_parquet``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .imbalance import select_balanced_indices, validate_int
from .lt_builder import HOLDOUT_STREAM, BalancedSource, LongTailedBuilder, LongTailedConfig, SourceSplit


@dataclass
class DigitsLTConfig(LongTailedConfig):
    """`LongTailedConfig` with digits-sized defaults, plus the size of the held-out test split."""

    imbalance_ratio: float = 10.0
    n_max: int | None = 110
    val_per_class: int = 10
    test_per_class: int = 50

    def validate(self, num_classes: int) -> None:
        super().validate(num_classes)
        validate_int("test_per_class", self.test_per_class, 1)


class DigitsLT(LongTailedBuilder):
    """digits-LT (scikit-learn ``load_digits``), grayscale 8x8."""

    BUILDER_CONFIG_CLASS = DigitsLTConfig
    BUILDER_CONFIGS = [
        DigitsLTConfig(name="ir10", imbalance_ratio=10.0, description="110 down to 11 images per class"),
        DigitsLTConfig(name="ir20", imbalance_ratio=20.0, description="110 down to 5 images per class"),
    ]
    DEFAULT_CONFIG_NAME = "ir10"
    CLASS_NAMES = tuple(str(digit) for digit in range(10))
    SUMMARY = "digits-LT: scikit-learn's 8x8 handwritten digits (grayscale), long-tailed train split."
    HOMEPAGE = "https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.config.data_dir is not None:
            raise ValueError(
                f"digits_lt is embedded (scikit-learn's load_digits) and reads no files: pass no data_dir, "
                f"got data_dir={self.config.data_dir!r} (load_lt_dataset reads a folder written by export_parquet, "
                "recognised by its lt_metadata.json)"
            )

    def _load_source(self) -> BalancedSource:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ImportError("digits_lt needs scikit-learn: pip install scikit-learn") from None
        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        labels = digits.target.astype(np.int64)
        test = select_balanced_indices(
            labels, self.config.test_per_class, len(self.CLASS_NAMES), [self.config.seed, HOLDOUT_STREAM]
        )
        rest = np.setdiff1d(np.arange(len(labels)), test)
        return BalancedSource(
            train=SourceSplit(labels=labels[rest], images=images[rest], ids=rest),
            test=SourceSplit(labels=labels[test], images=images[test], ids=test),
            origin="sklearn.datasets.load_digits",
        )
