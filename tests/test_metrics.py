import math
import os

import numpy as np
import pytest
from transformers import EvalPrediction

import ltap_hf.hub
from ltap_hf.metrics import COMPUTE_METRICS_KEYS, long_tail_accuracy, make_compute_metrics


# Groups by training count: many {0, 1} (> 100), medium {2, 3} (20..100), few {4, 5} (< 20).
CLASS_COUNTS = [200, 101, 100, 20, 19, 5]
# Per class: 0 -> 3/4, 1 -> 2/2, 2 -> absent (only ever predicted), 3 -> 1/4, 4 -> 0/1, 5 -> 2/2.
REFERENCES = np.array([0, 0, 0, 0, 1, 1, 3, 3, 3, 3, 4, 5, 5])
PREDICTIONS = np.array([0, 0, 0, 1, 1, 1, 3, 0, 0, 2, 5, 5, 5])
EXPECTED = {
    "accuracy": 8 / 13,
    "per_class_accuracy": [0.75, 1.0, math.nan, 0.25, 0.0, 1.0],
    "many_accuracy": (0.75 + 1.0) / 2,
    "medium_accuracy": 0.25,  # class 2 has no examples: left out, not counted as 0
    "few_accuracy": (0.0 + 1.0) / 2,
    "worst_class_accuracy": 0.0,
    "worst_class_index": 4,
    "tail3_accuracy": (0.25 + 0.0 + 1.0) / 3,  # classes 5, 4, 3
}


def assert_results_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, err_msg=key)  # NaN == NaN here


def one_hot_logits(ids: np.ndarray, num_classes: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(ids.size, num_classes)).astype(np.float32)
    logits[np.arange(ids.size), ids] = 10.0
    return logits


def test_long_tail_accuracy_hand_computed():
    assert_results_equal(long_tail_accuracy(PREDICTIONS, REFERENCES, CLASS_COUNTS), EXPECTED)


def test_logits_give_the_same_result_as_their_argmax():
    logits = one_hot_logits(PREDICTIONS, len(CLASS_COUNTS))
    assert_results_equal(long_tail_accuracy(logits, REFERENCES, CLASS_COUNTS, num_classes=6), EXPECTED)


def test_empty_few_group_is_nan_and_tail3_still_reported():
    # CIFAR-10-LT IR100 counts: no class has fewer than 20 training images.
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    references = np.arange(10).repeat(2)
    predictions = references.copy()
    predictions[[15, 17, 19]] = 0  # classes 7, 8, 9 each get one of two right
    result = long_tail_accuracy(predictions, references, counts)
    assert math.isnan(result["few_accuracy"])
    assert result["many_accuracy"] == pytest.approx((7 * 1.0 + 0.5) / 8)  # classes 0..7 (> 100)
    assert result["medium_accuracy"] == pytest.approx(0.5)  # classes 8, 9
    assert result["tail3_accuracy"] == pytest.approx(0.5)
    assert result["accuracy"] == pytest.approx(17 / 20)


def test_tail3_breaks_count_ties_towards_the_last_classes():
    # Four classes share the smallest count (as in CIFAR-100-LT IR100): the last three are the tail.
    counts = [50, 5, 5, 5, 5]
    references = np.array([0, 1, 2, 3, 4])
    predictions = np.array([0, 0, 2, 3, 4])  # only class 1 is wrong
    result = long_tail_accuracy(predictions, references, counts)
    assert result["tail3_accuracy"] == 1.0
    assert result["few_accuracy"] == pytest.approx(0.75)


def test_worst_class_ties_go_to_the_lowest_index():
    result = long_tail_accuracy(np.array([1, 0, 2]), np.array([0, 1, 2]), [300, 200, 100])
    assert (result["worst_class_accuracy"], result["worst_class_index"]) == (0.0, 0)


@pytest.mark.parametrize(
    "predictions, references, kwargs, match",
    [
        (np.array([0, 3]), np.array([0, 1]), {}, r"predictions must be integer class ids in \[0, 3\)"),
        (np.array([0, 1]), np.array([0, -1]), {}, r"references must be integer class ids"),
        (np.array([0.0, 1.0]), np.array([0, 1]), {}, r"predictions must be integer class ids.*float64"),
        (np.array([0, 1, 2]), np.array([0, 1]), {}, r"same N examples"),
        (np.zeros((2, 4)), np.array([0, 1]), {}, r"logits must have shape \[N, 3\]"),
        (np.array([0, 1]), np.array([0, 1]), {"num_classes": 4}, r"num_classes \(4\) must equal len\(class_counts\)"),
        (np.array([], dtype=int), np.array([], dtype=int), {}, r"references is empty"),
    ],
)
def test_bad_inputs_raise_naming_the_field(predictions, references, kwargs, match):
    with pytest.raises(ValueError, match=match):
        long_tail_accuracy(predictions, references, [300, 50, 5], **kwargs)


def test_compute_metrics_on_eval_prediction_with_logits():
    compute_metrics = make_compute_metrics(CLASS_COUNTS)
    logits = one_hot_logits(PREDICTIONS, len(CLASS_COUNTS))
    expected = {key: EXPECTED[key] for key in COMPUTE_METRICS_KEYS}

    metrics = compute_metrics(EvalPrediction(predictions=logits, label_ids=REFERENCES))
    assert all(type(value) is float for value in metrics.values())
    assert_results_equal(metrics, expected)

    # Models returning extra outputs give a tuple whose first element is the logits.
    extra = np.zeros((REFERENCES.size, 4), dtype=np.float32)
    assert_results_equal(compute_metrics(EvalPrediction(predictions=(logits, extra), label_ids=REFERENCES)), expected)


def test_evaluate_module_matches_long_tail_accuracy(tmp_path):
    evaluate = pytest.importorskip("evaluate")
    path = os.path.join(os.path.dirname(ltap_hf.hub.__file__), "lt_accuracy")
    metric = evaluate.load(path, cache_dir=str(tmp_path), keep_in_memory=True)
    # Two batches, to exercise evaluate's accumulation, must equal one call on everything.
    metric.add_batch(predictions=PREDICTIONS[:5].tolist(), references=REFERENCES[:5].tolist())
    metric.add_batch(predictions=PREDICTIONS[5:].tolist(), references=REFERENCES[5:].tolist())
    result = metric.compute(class_counts=CLASS_COUNTS)
    assert_results_equal(result, long_tail_accuracy(PREDICTIONS, REFERENCES, CLASS_COUNTS))
    assert_results_equal(result, EXPECTED)
