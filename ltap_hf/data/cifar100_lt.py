"""CIFAR-100-LT: CIFAR-100 (fine labels) made long-tailed as in Cao et al. (2019)."""

from __future__ import annotations

from .cifar import CifarLTBuilder, cifar_configs


CIFAR100_CLASS_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm",
)  # fmt: skip


class Cifar100LT(CifarLTBuilder):
    """CIFAR-100-LT. Config ``ir100`` selects 10,847 training images, ``ir50`` 12,608 (500 down to
    5/10, Cao et al.); 20 of class 0's 500 then go to validation (nothing else is left for it), so
    train has 10,827 / 12,588 images. ``val_shortfall="leave_short"`` keeps Cao et al.'s selection
    and gives class 0 no validation image."""

    BUILDER_CONFIGS = cifar_configs("uoft-cs/cifar100")
    CLASS_NAMES = CIFAR100_CLASS_NAMES
    SUMMARY = "CIFAR-100-LT: long-tailed CIFAR-100 train split (Cao et al. 2019), balanced validation and test."
    LABEL_COLUMN = "fine_label"
    PICKLE_FOLDER = "cifar-100-python"
    PICKLE_ARCHIVE = "cifar-100-python.tar.gz"
    PICKLE_LABEL_KEY = b"fine_labels"
    PICKLE_FILES = {"train": ("train",), "test": ("test",)}
