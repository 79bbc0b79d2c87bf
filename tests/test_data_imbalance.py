"""Class-count profiles, Cao et al. (2019) selection, groups and input validation."""

import math

import datasets
import numpy as np
import pytest

from ltap_hf.data import (
    class_counts,
    indices_fingerprint,
    long_tailed_counts,
    make_long_tailed,
    select_balanced_indices,
    select_long_tailed_indices,
    split_groups,
    top_up_from_train,
)


def cao2019_reference(labels, num_classes, imbalance_ratio, img_max, seed=0):
    """Cao et al.'s procedure, written from its description: global NumPy seed once, then per class
    in order, the indices of that class in source order, shuffled, the first n_i kept."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        selected = []
        for c in range(num_classes):
            n_c = int(img_max * (1 / imbalance_ratio) ** (c / (num_classes - 1.0)))
            idx = np.where(np.asarray(labels) == c)[0]
            np.random.shuffle(idx)
            selected.extend(idx[:n_c].tolist())
        return selected
    finally:
        np.random.set_state(state)


def synthetic_balanced_labels(num_classes, per_class, seed=123):
    """A balanced source whose classes are interleaved in a random order, like CIFAR's."""
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def test_cifar10_ir100_counts():
    counts = long_tailed_counts(10, 100, 5000)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406


@pytest.mark.parametrize("imbalance_ratio, total", [(100, 10847), (50, 12608)])
def test_cifar100_counts_on_synthetic_source(imbalance_ratio, total):
    labels = synthetic_balanced_labels(100, 500)
    counts = long_tailed_counts(100, imbalance_ratio, 500)
    assert sum(counts) == total
    assert counts[0] == 500 and counts[-1] == 500 // imbalance_ratio
    selected = select_long_tailed_indices(labels, counts, seed=0, selection="cao2019")
    assert len(selected) == total
    assert class_counts(labels[selected], 100) == counts


@pytest.mark.parametrize("imbalance_ratio, seed", [(100, 0), (50, 0), (100, 7)])
def test_cao2019_selection_equals_reference_procedure(imbalance_ratio, seed):
    labels = synthetic_balanced_labels(100, 500)
    counts = long_tailed_counts(100, imbalance_ratio, 500)
    selected = select_long_tailed_indices(labels, counts, seed=seed, selection="cao2019")
    assert selected.tolist() == cao2019_reference(labels, 100, imbalance_ratio, 500, seed)


def test_cao2019_selection_leaves_global_numpy_state_alone():
    np.random.seed(42)
    expected = np.random.rand()
    np.random.seed(42)
    select_long_tailed_indices(synthetic_balanced_labels(10, 50), long_tailed_counts(10, 10, 50), seed=0)
    assert np.random.rand() == expected


def test_make_long_tailed_on_a_dataset_matches_reference():
    labels = synthetic_balanced_labels(100, 500)
    features = datasets.Features(
        {"idx": datasets.Value("int64"), "fine": datasets.ClassLabel(names=[f"c{i}" for i in range(100)])}
    )
    source = datasets.Dataset.from_dict({"idx": np.arange(len(labels)), "fine": labels}, features=features)
    subset = make_long_tailed(source, 100, label_column="fine")
    assert len(subset) == 10847
    assert subset["idx"][:] == cao2019_reference(labels, 100, 100, 500)
    assert subset.features == source.features


def test_first_selection_keeps_source_order():
    labels = synthetic_balanced_labels(10, 50)
    counts = long_tailed_counts(10, 10, 50)
    selected = select_long_tailed_indices(labels, counts, selection="first")
    expected = np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in enumerate(counts)])
    assert selected.tolist() == expected.tolist()


def test_step_profile():
    assert long_tailed_counts(10, 10, 500, profile="step") == [500] * 5 + [50] * 5
    assert long_tailed_counts(5, 10, 100, profile="step") == [100, 100, 10, 10, 10]


def test_imbalance_ratio_one_is_balanced():
    assert long_tailed_counts(10, 1, 300) == [300] * 10


def test_split_groups_boundaries():
    groups = split_groups([101, 100, 50, 20, 19, 1])
    assert groups == {"many": [0], "medium": [1, 2, 3], "few": [4, 5]}
    assert split_groups(long_tailed_counts(100, 100, 500)) == {
        "many": list(range(35)),
        "medium": list(range(35, 70)),
        "few": list(range(70, 100)),
    }


def test_class_counts():
    assert class_counts([0, 2, 2, 3], 5) == [1, 0, 2, 1, 0]
    with pytest.raises(ValueError, match="labels must lie in"):
        class_counts([0, 5], 5)


def test_balanced_indices_exclude_and_report_short_classes():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 6)
    exclude = np.array([0, 1, 2, 13, 14])
    drawn = select_balanced_indices(labels, per_class=4, num_classes=3, seed=[0, 1], exclude=exclude)
    assert not set(drawn.tolist()) & set(exclude.tolist())
    assert class_counts(labels[drawn], 3) == [4, 3, 4]  # class 1 has only 3 images
    assert len(set(drawn.tolist())) == len(drawn)
    again = select_balanced_indices(labels, per_class=4, num_classes=3, seed=[0, 1], exclude=exclude)
    assert drawn.tolist() == again.tolist()


def test_fingerprint_is_stable_and_sensitive():
    splits = {"train": np.array([3, 1, 2]), "validation": np.array([7])}
    assert indices_fingerprint(splits) == indices_fingerprint({k: v.copy() for k, v in splits.items()})
    assert indices_fingerprint(splits) != indices_fingerprint({**splits, "train": np.array([1, 2, 3])})
    swapped = {"train": splits["validation"], "validation": splits["train"]}
    assert indices_fingerprint(splits) != indices_fingerprint(swapped)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"imbalance_ratio": 0.5}, "imbalance_ratio must be >= 1"),
        ({"imbalance_ratio": math.nan}, "imbalance_ratio must be a finite number"),
        ({"imbalance_ratio": math.inf}, "imbalance_ratio must be a finite number"),
        ({"imbalance_ratio": "ten"}, "imbalance_ratio must be a number"),
        ({"imbalance_ratio": 1e6}, "leaves class 9 with 0 images"),
        ({"n_max": 0}, "n_max must be an integer >= 1"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"profile": "linear"}, "profile must be one of"),
    ],
)
def test_long_tailed_counts_rejects_bad_input(kwargs, message):
    arguments = {"num_classes": 10, "imbalance_ratio": 100, "n_max": 5000, "profile": "exp", **kwargs}
    with pytest.raises(ValueError, match=message):
        long_tailed_counts(**arguments)


@pytest.fixture
def small_source():
    labels = synthetic_balanced_labels(4, 30)
    features = datasets.Features({"label": datasets.ClassLabel(names=["a", "b", "c", "d"])})
    return datasets.Dataset.from_dict({"label": labels}, features=features)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"label_column": "fine_label"}, "label_column='fine_label' is not a column"),
        ({"n_max": 31}, "n_max=31 is larger than the smallest source class"),
        ({"imbalance_ratio": 0.5}, "imbalance_ratio must be >= 1"),
        ({"imbalance_ratio": math.nan}, "imbalance_ratio must be a finite number"),
        ({"imbalance_ratio": 100}, "leaves class 3 with 0 images"),
        ({"selection": "random"}, "selection must be one of"),
    ],
)
def test_make_long_tailed_rejects_bad_input(small_source, kwargs, message):
    arguments = {"imbalance_ratio": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_long_tailed(small_source, **arguments)


def test_n_max_defaults_to_smallest_class(small_source):
    subset = make_long_tailed(small_source, 10)
    assert class_counts(subset["label"][:], 4) == long_tailed_counts(4, 10, 30)


def test_selection_needing_more_than_a_class_has():
    labels = np.array([0] * 5 + [1] * 2)
    with pytest.raises(ValueError, match="class 1 needs 3 images but the source has only 2"):
        select_long_tailed_indices(labels, [5, 3])


def test_top_up_from_train_moves_only_the_shortfall_and_keeps_one_training_image():
    labels = np.repeat(np.arange(4), [10, 10, 3, 1])
    train = np.array([9, 0, 8, 1, 2, 3, 10, 11, 20, 21, 23])  # class 0: 6, class 1: 2, class 2: 2, class 3: 1
    validation = np.array([4, 5, 12, 13, 14, 15, 22])  # class 0: 2, class 1: 4, class 2: 1, class 3: 0
    kept, held = top_up_from_train(labels, train, validation, per_class=4, num_classes=4, seed=[0, 3])
    assert np.bincount(labels[held], minlength=4).tolist() == [4, 4, 2, 0]  # class 2 and 3 keep one image
    assert np.bincount(labels[kept], minlength=4).tolist() == [4, 2, 1, 1]
    assert sorted(kept.tolist() + held.tolist()) == sorted(train.tolist() + validation.tolist())
    assert kept.tolist() == [i for i in train.tolist() if i not in set(held.tolist())]  # train order kept
    assert held.tolist() == sorted(held.tolist(), key=lambda i: (labels[i], i))  # class by class, ascending
    again = top_up_from_train(labels, train, validation, per_class=4, num_classes=4, seed=[0, 3])
    assert again[1].tolist() == held.tolist()
    assert {tuple(top_up_from_train(labels, train, validation, 4, 4, seed=[s, 3])[1]) for s in range(8)} != {tuple(held)}
    unchanged = top_up_from_train(labels, train, validation, per_class=1, num_classes=4, seed=0)
    assert unchanged[0].tolist() == train.tolist() and unchanged[1].tolist() == validation.tolist()
