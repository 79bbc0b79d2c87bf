"""CIFAR-10-LT: CIFAR-10 made long-tailed as in Cao et al. (2019)."""

from __future__ import annotations

from .cifar import CifarLTBuilder, cifar_configs


CIFAR10_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


class Cifar10LT(CifarLTBuilder):
    """CIFAR-10-LT. Config ``ir100`` selects 12,406 training images (5000 down to 50 per class, Cao
    et al.); 20 of the 5,000 airplanes then go to validation (nothing else is left for it), so train
    has 12,386 images (4980, 2997, ..., 50) and every class 20 validation images.
    ``val_shortfall="leave_short"`` keeps all 12,406 and gives airplane no validation image."""

    BUILDER_CONFIGS = cifar_configs("uoft-cs/cifar10")
    CLASS_NAMES = CIFAR10_CLASS_NAMES
    SUMMARY = "CIFAR-10-LT: long-tailed CIFAR-10 train split (Cao et al. 2019), balanced validation and test."
    PICKLE_FOLDER = "cifar-10-batches-py"
    PICKLE_ARCHIVE = "cifar-10-python.tar.gz"
    PICKLE_LABEL_KEY = b"labels"
    PICKLE_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
