"""Long-tailed datasets: exact, reproducible imbalance sampling, `datasets` builders, transforms."""

from .cifar import CifarLTConfig
from .cifar10_lt import Cifar10LT
from .cifar100_lt import Cifar100LT
from .digits_lt import DigitsLT, DigitsLTConfig
from .imagenet_lt import ImagenetLT
from .imbalance import (
    class_counts,
    indices_fingerprint,
    long_tailed_counts,
    make_long_tailed,
    select_balanced_indices,
    select_long_tailed_indices,
    split_groups,
    top_up_from_train,
)
from .inaturalist2018 import Inaturalist2018, Inaturalist2018Config
from .loading import LT_BUILDERS, export_parquet, load_lt_dataset, load_lt_dataset_builder
from .lt_builder import LongTailedConfig
from .metadata import read_lt_metadata
from .official_splits import OfficialSplitConfig
from .transforms import DATASET_STATS, DatasetStats, EvalTransform, TrainTransform, collate_fn, model_input_stats


__all__ = [
    "DATASET_STATS",
    "LT_BUILDERS",
    "Cifar100LT",
    "Cifar10LT",
    "CifarLTConfig",
    "DatasetStats",
    "DigitsLT",
    "DigitsLTConfig",
    "EvalTransform",
    "ImagenetLT",
    "Inaturalist2018",
    "Inaturalist2018Config",
    "LongTailedConfig",
    "OfficialSplitConfig",
    "TrainTransform",
    "class_counts",
    "collate_fn",
    "export_parquet",
    "indices_fingerprint",
    "load_lt_dataset",
    "load_lt_dataset_builder",
    "long_tailed_counts",
    "make_long_tailed",
    "model_input_stats",
    "push_lt_dataset",
    "read_lt_metadata",
    "select_balanced_indices",
    "select_long_tailed_indices",
    "split_groups",
    "top_up_from_train",
]


def __getattr__(name: str):
    # Imported on first use, so that `python -m ltap_hf.data.publish` does not find the module
    # already imported by its package (runpy warns about that).
    if name == "push_lt_dataset":
        from .publish import push_lt_dataset

        return push_lt_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
