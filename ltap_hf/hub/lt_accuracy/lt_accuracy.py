"""`lt_accuracy`: long-tail top-1 accuracy as an `evaluate` metric.

Load it by path (nothing is fetched from the Hub):

    import evaluate
    import ltap_hf.hub
    metric = evaluate.load(os.path.join(os.path.dirname(ltap_hf.hub.__file__), "lt_accuracy"))
    metric.compute(predictions=[0, 1, 1], references=[0, 1, 2], class_counts=[500, 50, 5])

The arithmetic lives in `ltap_hf.metrics.long_tail_accuracy`; this module only adapts it to
`evaluate`'s batching (`add_batch`) and reporting.
"""

import datasets
import evaluate
import numpy as np
from ltap_hf.metrics import long_tail_accuracy


_DESCRIPTION = """
Top-1 accuracy for long-tailed classification: overall, per class, per Many / Medium / Few group
(classes with > 100, 20..100, < 20 training images), on the worst class and on the three rarest
training classes. Classes without evaluation examples are NaN in the per-class list and left out of
every mean; a group with no evaluated classes is NaN.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    class_counts (`list` of `int`): number of TRAINING images per class; defines the groups.

Returns:
    accuracy (`float`), per_class_accuracy (`list` of `float`), many_accuracy, medium_accuracy,
    few_accuracy, worst_class_accuracy, tail3_accuracy (`float`), worst_class_index (`int`).

Examples:
    >>> results = metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], class_counts=[500, 50, 5])
    >>> results["accuracy"], results["few_accuracy"]
    (0.75, 0.5)
"""

_CITATION = """
@inproceedings{cao2019ldam,
  title={Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss},
  author={Cao, Kaidi and Wei, Colin and Gaidon, Adrien and Arechiga, Nikos and Ma, Tengyu},
  booktitle={Advances in Neural Information Processing Systems},
  year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LtAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, class_counts):
        return long_tail_accuracy(np.asarray(predictions), np.asarray(references), class_counts)
