"""Long-tailed class profiles and the exact, reproducible selection of a long-tailed subset.

The conventions follow Cao et al. (2019), the de-facto standard of long-tailed benchmarks:

- class counts ``n_i = int(n_max * (1 / IR) ** (i / (C - 1)))`` for class index ``i = 0 ... C - 1``;
- ``selection="cao2019"``: one legacy NumPy generator seeded once, then for each class in class
  order: the indices of that class in source order, shuffled, the first ``n_i`` kept;
- many / medium / few: classes with more than 100, 20 to 100, fewer than 20 training images.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import datasets
import numpy as np


PROFILES = ("exp", "step")
SELECTIONS = ("cao2019", "first")
MANY_SHOT_MIN = 101  # "many": more than 100 training images
FEW_SHOT_MAX = 19  # "few": fewer than 20 training images


def validate_imbalance_ratio(imbalance_ratio: float) -> float:
    """Return `imbalance_ratio` as a float, or raise a `ValueError` saying what is wrong with it."""
    try:
        ratio = float(imbalance_ratio)
    except (TypeError, ValueError):
        raise ValueError(f"imbalance_ratio must be a number >= 1, got {imbalance_ratio!r}") from None
    if math.isnan(ratio) or math.isinf(ratio):
        raise ValueError(f"imbalance_ratio must be a finite number >= 1, got {imbalance_ratio!r}")
    if ratio < 1:
        raise ValueError(
            f"imbalance_ratio must be >= 1 (largest class / smallest class), got {imbalance_ratio!r}"
        )
    return ratio


def validate_int(name: str, value: int, minimum: int, maximum: int | None = None) -> None:
    """Raise a `ValueError` unless `value` is an integer in ``[minimum, maximum)``."""
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not is_int or value < minimum or (maximum is not None and value >= maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum})"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")


def validate_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise a `ValueError` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def long_tailed_counts(
    num_classes: int, imbalance_ratio: float, n_max: int, profile: str = "exp"
) -> list[int]:
    """Number of images each class keeps in a long-tailed subset.

    Args:
        num_classes: number of classes C (at least 2).
        imbalance_ratio: IR = n_max / n_min, at least 1.
        n_max: images of the largest class (class 0).
        profile: ``"exp"``: ``int(n_max * (1 / IR) ** (i / (C - 1)))``; ``"step"``: the first
            ``C // 2`` classes keep ``n_max``, the others ``int(n_max / IR)`` (Cao et al.'s step
            profile; for odd C the middle class belongs to the tail).

    Returns:
        C counts, head class first.

    Raises:
        ValueError: on a bad argument, or when the profile would leave a class with no image.
    """
    validate_int("num_classes", num_classes, 2)
    validate_int("n_max", n_max, 1)
    ratio = validate_imbalance_ratio(imbalance_ratio)
    validate_choice("profile", profile, PROFILES)
    if profile == "exp":
        counts = [int(n_max * (1.0 / ratio) ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    else:
        head = num_classes // 2
        counts = [int(n_max) if i < head else int(n_max * (1.0 / ratio)) for i in range(num_classes)]
    if counts[-1] < 1:
        raise ValueError(
            f"imbalance_ratio={imbalance_ratio!r} with n_max={n_max} leaves class {num_classes - 1} with 0 "
            f"images; use imbalance_ratio <= {n_max} or a larger n_max"
        )
    return counts


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int) -> list[int]:
    """Images per class: a list of `num_classes` counts for integer labels in ``[0, num_classes)``."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"labels must lie in [0, {num_classes}), got label {int(bad)}")
    return np.bincount(labels, minlength=num_classes).tolist()


def split_groups(class_counts: Sequence[int]) -> dict[str, list[int]]:
    """Class indices of the many-shot (> 100), medium-shot (20 to 100) and few-shot (< 20) groups.

    Args:
        class_counts: training images per class (class index = position).

    Returns:
        ``{"many": [...], "medium": [...], "few": [...]}``, each list in class order (possibly empty).
    """
    groups: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
    for class_index, count in enumerate(class_counts):
        if count >= MANY_SHOT_MIN:
            groups["many"].append(class_index)
        elif count <= FEW_SHOT_MAX:
            groups["few"].append(class_index)
        else:
            groups["medium"].append(class_index)
    return groups


def check_n_max(n_max: int, source_counts: Sequence[int], class_names: Sequence[str] | None = None) -> None:
    """Raise a `ValueError` if `n_max` exceeds the smallest class of the source."""
    smallest = int(np.argmin(source_counts))
    if n_max > source_counts[smallest]:
        name = f" ({class_names[smallest]!r})" if class_names else ""
        raise ValueError(
            f"n_max={n_max} is larger than the smallest source class: class {smallest}{name} has "
            f"{source_counts[smallest]} images; use n_max <= {source_counts[smallest]}"
        )


def select_long_tailed_indices(
    labels: Sequence[int] | np.ndarray,
    counts: Sequence[int],
    seed: int = 0,
    selection: str = "cao2019",
) -> np.ndarray:
    """Source indices of the long-tailed subset, class by class.

    Args:
        labels: ``[N]`` integer class labels of the source, in source order.
        counts: images to keep per class (from `long_tailed_counts`).
        seed: seed of the legacy NumPy generator (``"cao2019"`` only).
        selection: ``"cao2019"``: ``RandomState(seed)`` created once (the same stream as
            ``np.random.seed(seed)``, without touching the global state); for each class in
            order, its source indices are shuffled and the first ``counts[c]`` kept.
            ``"first"``: the first ``counts[c]`` indices of each class in source order.

    Returns:
        ``[sum(counts)]`` int64 source indices: class 0's first, each class in selection order
        (Cao et al.'s order).
    """
    validate_choice("selection", selection, SELECTIONS)
    labels = np.asarray(labels, dtype=np.int64)
    available = class_counts(labels, len(counts))
    for class_index, (wanted, have) in enumerate(zip(counts, available)):
        if wanted > have:
            raise ValueError(
                f"class {class_index} needs {wanted} images but the source has only {have}; "
                "lower n_max or imbalance_ratio"
            )
    generator = np.random.RandomState(seed) if selection == "cao2019" else None
    selected = []
    for class_index, wanted in enumerate(counts):
        class_indices = np.flatnonzero(labels == class_index)
        if generator is not None:
            generator.shuffle(class_indices)
        selected.append(class_indices[:wanted])
    return np.concatenate(selected).astype(np.int64)


def select_balanced_indices(
    labels: Sequence[int] | np.ndarray,
    per_class: int,
    num_classes: int,
    seed: int | Sequence[int],
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Draw up to `per_class` source indices of every class, without replacement.

    Used for the balanced validation split (from the images the long-tailed subset did not keep)
    and for held-out test splits. A class with fewer candidates gives all it has.

    Args:
        labels: ``[N]`` integer class labels of the source, in source order.
        per_class: images wanted per class.
        num_classes: number of classes.
        seed: seed (or seed sequence) of a ``numpy.random.default_rng`` generator.
        exclude: source indices that must not be drawn.

    Returns:
        int64 source indices, class by class, ascending within a class.
    """
    labels = np.asarray(labels, dtype=np.int64)
    candidates = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        candidates[exclude] = False
    generator = np.random.default_rng(seed)
    drawn = []
    for class_index in range(num_classes):
        pool = np.flatnonzero(candidates & (labels == class_index))
        take = min(per_class, len(pool))
        drawn.append(np.sort(generator.choice(pool, size=take, replace=False)))
    return np.concatenate(drawn).astype(np.int64)


def top_up_from_train(
    labels: Sequence[int] | np.ndarray,
    train: np.ndarray,
    validation: np.ndarray,
    per_class: int,
    num_classes: int,
    seed: int | Sequence[int],
    min_train: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Move training images of the classes with fewer than `per_class` validation images into
    validation, until each has `per_class` or its training images are down to `min_train`.

    How a class whose unused source images run short still gets validation images (CIFAR-LT's
    class 0 keeps all of its source images; at imbalance ratio 1 every class does).

    Args:
        labels: ``[N]`` integer class labels of the source, in source order.
        train: source indices of the training split (any order; the order is kept).
        validation: source indices of the validation split so far.
        per_class: validation images wanted per class.
        num_classes: number of classes.
        seed: seed (or seed sequence) of the ``numpy.random.default_rng`` generator of the draw;
            classes are drawn in class order, each from its training indices in `train` order.
        min_train: training images a class keeps at least.

    Returns:
        ``(train, validation)``: `train` without the moved indices, in its order; `validation`
        with them, class by class, ascending within a class.
    """
    labels = np.asarray(labels, dtype=np.int64)
    train = np.asarray(train, dtype=np.int64)
    validation = np.asarray(validation, dtype=np.int64)
    have = np.bincount(labels[validation], minlength=num_classes)
    # Group the training indices by class once (a stable sort keeps `train` order within a class):
    # iNaturalist has 8,142 classes over 437,513 images.
    order = np.argsort(labels[train], kind="stable")
    bounds = np.searchsorted(labels[train][order], np.arange(num_classes + 1))
    generator = np.random.default_rng(seed)
    moved = []
    for class_index in range(num_classes):
        pool = train[order[bounds[class_index] : bounds[class_index + 1]]]
        take = min(per_class - int(have[class_index]), len(pool) - min_train)
        if take > 0:
            moved.append(generator.choice(pool, size=take, replace=False))
    if not moved:
        return train, validation
    moved_indices = np.concatenate(moved)
    train = train[~np.isin(train, moved_indices)]
    validation = np.concatenate([validation, moved_indices])
    validation = validation[np.lexsort((validation, labels[validation]))]
    return train, validation


def indices_fingerprint(split_indices: Mapping[str, np.ndarray]) -> str:
    """SHA-256 (hex) of the source indices of every split, in split-name order."""
    digest = hashlib.sha256()
    for split in sorted(split_indices):
        digest.update(split.encode() + b"\0")
        digest.update(np.asarray(split_indices[split], dtype="<i8").tobytes())
    return digest.hexdigest()


def make_long_tailed(
    dataset: datasets.Dataset,
    imbalance_ratio: float,
    label_column: str = "label",
    profile: str = "exp",
    n_max: int | None = None,
    seed: int = 0,
    selection: str = "cao2019",
) -> datasets.Dataset:
    """The long-tailed subset of any `datasets.Dataset` with an integer class-label column.

    Args:
        dataset: the source, usually balanced.
        imbalance_ratio: IR = n_max / n_min, at least 1.
        label_column: the class-label column (`ClassLabel` or integers).
        profile: ``"exp"`` or ``"step"`` (see `long_tailed_counts`).
        n_max: images of class 0; defaults to the smallest source class count (Cao et al.'s
            ``img_max`` on a balanced source). Must not exceed it.
        seed: seed of the selection.
        selection: ``"cao2019"`` or ``"first"`` (see `select_long_tailed_indices`).

    Returns:
        ``dataset.select(indices)`` with the indices of `select_long_tailed_indices`.
    """
    if label_column not in dataset.column_names:
        raise ValueError(
            f"label_column={label_column!r} is not a column of the dataset; columns: {dataset.column_names}"
        )
    labels = np.asarray(dataset[label_column], dtype=np.int64)
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        num_classes, names = feature.num_classes, feature.names
    else:
        num_classes, names = int(labels.max()) + 1, None
    source_counts = class_counts(labels, num_classes)
    n_max = min(source_counts) if n_max is None else n_max
    counts = long_tailed_counts(num_classes, imbalance_ratio, n_max, profile)
    check_n_max(n_max, source_counts, names)
    return dataset.select(select_long_tailed_indices(labels, counts, seed, selection))
