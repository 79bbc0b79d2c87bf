"""What a built long-tailed dataset records about itself.

Every builder of this package writes a JSON document into ``DatasetInfo.description``: the class
counts of each split, the many/medium/few groups, the imbalance ratio, the selection rule, the
seed and a fingerprint of what was selected. It travels with the dataset (``dataset_info.json`` in
the cache, ``ds.info`` of every split) and `read_lt_metadata` reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import datasets
import numpy as np

from .imbalance import class_counts, split_groups


def summarize_splits(labels_by_split: Mapping[str, np.ndarray], num_classes: int) -> dict[str, Any]:
    """Class counts of every split and the many/medium/few groups of the train split."""
    counts = {split: class_counts(labels, num_classes) for split, labels in labels_by_split.items()}
    return {"class_counts": counts, "groups": split_groups(counts["train"])}


def write_lt_metadata(info: datasets.DatasetInfo, metadata: Mapping[str, Any]) -> None:
    """Store `metadata` as the JSON description of `info` (in place)."""
    info.description = json.dumps(metadata, sort_keys=True)


def read_lt_metadata(dataset: datasets.Dataset | datasets.DatasetDict) -> dict[str, Any]:
    """The metadata a builder of this package recorded, e.g. ``read_lt_metadata(ds)["class_counts"]``.

    Keys: ``dataset``, ``config``, ``summary``, ``source``, ``num_classes``, ``imbalance_ratio``,
    ``selection``, ``seed``, ``class_counts`` (per split), ``groups`` (``many``/``medium``/``few``
    class indices of the train split), ``fingerprint`` (SHA-256 of what was selected), plus
    builder-specific keys (``profile``, ``n_max``, ``val_per_class``, ``validation_short_classes``
    for the CIFAR-LT and digits builders).
    """
    if isinstance(dataset, datasets.DatasetDict):
        dataset = next(iter(dataset.values()))
    try:
        return json.loads(dataset.info.description or "")
    except json.JSONDecodeError:
        raise ValueError(
            "dataset.info.description holds no long-tailed metadata; build the dataset with "
            "ltap_hf.data.load_lt_dataset (or read lt_metadata.json next to an exported copy)"
        ) from None
