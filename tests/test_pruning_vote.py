import math

import pytest
import torch
from safetensors.torch import load, save

from ltap_hf.pruning.vote import ClassVote, stage_generator


ALL_VALID = torch.tensor([True, True])


def test_first_stage_gives_equal_alpha_and_leaves_votes_alone():
    vote = ClassVote(["magnitude", "cosine", "taylor1"], class_counts=[100, 10])
    result = vote.step(torch.tensor([0.9, 0.1]), ALL_VALID)
    assert result.stage == 0
    torch.testing.assert_close(result.alpha_before_suppression, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert torch.equal(vote.state_dict()["votes"], torch.ones(3, 2, dtype=torch.float64))
    torch.testing.assert_close(result.u, torch.ones(3, dtype=torch.float64))


def test_only_criteria_active_while_the_tail_improved_gain_weight():
    vote = ClassVote(["magnitude", "cosine", "taylor1"], class_counts=[100, 10], seed=3)
    first = vote.step(torch.tensor([0.5, 0.5]), ALL_VALID)
    m = first.suppressed_index
    second = vote.step(torch.tensor([0.4, 0.6]), ALL_VALID)  # only the tail class improved

    # Inverse frequency: w = [1/100, 1/10] / 0.11 = [1/11, 10/11].
    torch.testing.assert_close(second.class_weights, torch.tensor([1 / 11, 10 / 11], dtype=torch.float64))
    expected_u = torch.full((3,), (1 / 11 + 2 * 10 / 11) / 2, dtype=torch.float64)
    expected_u[m] = 1 / 2  # the suppressed criterion was not active, so it got no vote
    torch.testing.assert_close(second.u, expected_u)
    torch.testing.assert_close(second.alpha_before_suppression, torch.softmax(expected_u / 0.5, dim=0))
    assert second.alpha_before_suppression[m] < second.alpha_before_suppression.max()


def test_tail_improvement_counts_more_than_head_improvement_under_inverse_frequency():
    def gain(weighting, accuracy):
        vote = ClassVote(["magnitude"], class_counts=[100, 10], weighting=weighting)
        vote.step(torch.tensor([0.5, 0.5]), ALL_VALID)
        return float(vote.step(accuracy, ALL_VALID).weighted_votes[0]) - 1.0

    head, tail = torch.tensor([0.6, 0.5]), torch.tensor([0.5, 0.6])
    assert gain("inverse_frequency", tail) == pytest.approx(10 / 11)
    assert gain("inverse_frequency", head) == pytest.approx(1 / 11)
    assert gain("uniform", tail) == pytest.approx(gain("uniform", head)) == pytest.approx(0.5)


def test_suppression_zeroes_one_alpha_and_shares_it_out():
    vote = ClassVote(["magnitude", "avg_magnitude", "cosine", "taylor1", "taylor2"], class_counts=[5, 3, 1], seed=7)
    accuracies = [torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.3, 0.1, 0.4]), torch.tensor([0.2, 0.5, 0.6])]
    for accuracy in accuracies:
        result = vote.step(accuracy, torch.ones(3, dtype=torch.bool))
        m, before = result.suppressed_index, result.alpha_before_suppression
        assert 0 <= m < 5 and result.suppressed_name == vote.criteria[m]
        assert result.alpha[m] == 0
        expected = before + before[m] / 4
        expected[m] = 0
        torch.testing.assert_close(result.alpha, expected)
        assert float(result.alpha.sum()) == pytest.approx(1.0)


def test_suppression_draw_follows_softmax_of_one_minus_alpha():
    # Over many seeds, the draw at a fixed stage has the frequencies of softmax((1 - alpha) / tau).
    alpha = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    expected = torch.softmax((1 - alpha) / 0.5, dim=0)
    counts = torch.zeros(3)
    for seed in range(3000):
        counts[ClassVote(["magnitude", "cosine", "taylor1"], [1], seed=seed)._draw_suppressed(alpha, stage=4)] += 1
    torch.testing.assert_close(counts / counts.sum(), expected.float(), atol=0.03, rtol=0)
    assert counts[2] > counts[1] > counts[0]  # the weakest criterion is dropped most


def test_same_seed_and_stage_give_the_same_draw():
    def sample(seed, stage):
        return torch.rand(4, generator=stage_generator(seed, stage))

    assert torch.equal(sample(11, 2), sample(11, 2))
    assert not torch.equal(sample(11, 2), sample(11, 3))

    def draws(seed):
        vote = ClassVote(["magnitude", "avg_magnitude", "cosine", "taylor1", "taylor2"], [10, 1], seed=seed)
        return [vote.step(torch.tensor([0.1 * t, 0.5]), ALL_VALID).suppressed_index for t in range(20)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


def _accuracies(stages, num_classes=4):
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(num_classes, generator=generator) for _ in range(stages)]


def test_state_round_trip_through_safetensors_continues_identically():
    criteria, counts = ["magnitude", "cosine", "taylor1", "taylor2"], [50, 20, 5, 1]
    has_validation = torch.tensor([True, True, False, True])
    accuracies = _accuracies(8)
    straight = ClassVote(criteria, counts, seed=1)
    expected = [straight.step(a, has_validation) for a in accuracies]

    interrupted = ClassVote(criteria, counts, seed=1)
    for accuracy in accuracies[:3]:
        interrupted.step(accuracy, has_validation)
    resumed = ClassVote(criteria, counts, seed=1)
    resumed.load_state_dict(load(save(interrupted.state_dict())))
    for accuracy, reference in zip(accuracies[3:], expected[3:]):
        result = resumed.step(accuracy, has_validation)
        assert result.stage == reference.stage
        assert result.suppressed_index == reference.suppressed_index
        assert torch.equal(result.alpha, reference.alpha)
        assert torch.equal(result.weighted_votes, reference.weighted_votes)
    assert torch.equal(resumed.state_dict()["votes"], straight.state_dict()["votes"])

    with pytest.raises(ValueError, match="votes has shape"):
        ClassVote(criteria[:2], counts, seed=1).load_state_dict(interrupted.state_dict())
    # The seed draws the suppressions: a state of another seed is refused, one saved before seeds were is taken.
    with pytest.raises(ValueError, match="saved with seed 1, this vote has seed 0"):
        ClassVote(criteria, counts, seed=0).load_state_dict(interrupted.state_dict())
    unseeded = {k: v for k, v in interrupted.state_dict().items() if k != "seed"}
    ClassVote(criteria, counts, seed=0).load_state_dict(unseeded)


def test_vote_off_keeps_alpha_uniform_and_votes_untouched():
    vote = ClassVote(["magnitude", "cosine", "taylor1"], [100, 10], enabled=False)
    for accuracy in _accuracies(4, num_classes=2):
        result = vote.step(accuracy, ALL_VALID)
        assert torch.equal(result.alpha, torch.full((3,), 1 / 3, dtype=torch.float64))
        assert result.suppressed_index == -1 and result.suppressed_name is None
    assert torch.equal(vote.state_dict()["votes"], torch.ones(3, 2, dtype=torch.float64))


def test_single_criterion_is_never_suppressed():
    vote = ClassVote(["taylor2"], [3, 1])
    for accuracy in _accuracies(3, num_classes=2):
        result = vote.step(accuracy, ALL_VALID)
        assert result.suppressed_index == -1
        assert torch.equal(result.alpha, torch.ones(1, dtype=torch.float64))


def test_classes_without_validation_get_no_weight_and_no_votes():
    vote = ClassVote(["magnitude"], class_counts=[1, 2, 4])
    has_validation = torch.tensor([True, False, True])
    vote.step(torch.tensor([0.5, 0.5, 0.5]), has_validation)
    result = vote.step(torch.tensor([0.5, 0.9, 0.5]), has_validation)  # only the unvalidated class "improved"
    torch.testing.assert_close(result.class_weights, torch.tensor([0.8, 0.0, 0.2], dtype=torch.float64))
    assert torch.equal(vote.state_dict()["votes"], torch.ones(1, 3, dtype=torch.float64))
    assert result.u[0] == pytest.approx(1 / 2)


def test_log_dict_names_every_criterion():
    vote = ClassVote(["magnitude", "taylor1"], [2, 1], seed=0)
    logs = vote.step(torch.tensor([0.5, 0.5]), ALL_VALID).to_log_dict(vote.criteria)
    assert set(logs) == {
        "ltap/alpha/magnitude", "ltap/alpha/taylor1", "ltap/weighted_votes/magnitude",
        "ltap/weighted_votes/taylor1", "ltap/suppressed_index",
    }
    assert math.isclose(logs["ltap/alpha/magnitude"] + logs["ltap/alpha/taylor1"], 1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"criteria": ["magnitude", "taylor3"]}, "unknown criterion"),
        ({"class_counts": [10, 0]}, "class_counts"),
        ({"weighting": "sqrt"}, "weighting"),
        ({"temperature": 0.0}, "temperature"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    arguments = {"criteria": ["magnitude"], "class_counts": [10, 1], **kwargs}
    with pytest.raises(ValueError, match=message):
        ClassVote(**arguments)


def test_accuracy_length_must_match_the_classes():
    with pytest.raises(ValueError, match="one entry per class"):
        ClassVote(["magnitude"], [10, 1]).step(torch.tensor([0.5, 0.5, 0.5]), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one validated class"):
        ClassVote(["magnitude"], [10, 1]).step(torch.tensor([0.5, 0.5]), torch.zeros(2, dtype=torch.bool))
