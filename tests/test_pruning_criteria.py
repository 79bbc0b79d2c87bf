import pytest
import torch
from safetensors.torch import load, save

from ltap_hf.pruning.criteria import CRITERIA, combine_scores, criterion_indices, weight_criteria
from ltap_hf.pruning.statistics import ScoreAccumulator


def test_criterion_indices_accepts_names_and_indices_in_given_order():
    assert criterion_indices(None) == [0, 1, 2, 3, 4]
    assert criterion_indices(["taylor2", "magnitude"]) == [4, 0]
    assert criterion_indices([3, 1]) == [3, 1]
    # ltap-hf's class_taylor is registered after the paper's five, which stay the default.
    assert criterion_indices(["class_taylor", "magnitude"]) == [5, 0] and criterion_indices([5]) == [5]
    for bad in (["taylor3"], [6], [], ["cosine", "cosine"], "cosine"):
        with pytest.raises(ValueError):
            criterion_indices(bad)


def test_accumulator_means_over_steps():
    params = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    acc = ScoreAccumulator(params)
    def step(w_a, g_a, g_b):
        weights = {"a": torch.full((2, 3), w_a), "b": torch.ones(4)}
        return weights, {"a": torch.full((2, 3), g_a), "b": torch.full((4,), g_b)}

    steps = [step(2.0, 1.0, -2.0), step(-1.0, 3.0, 4.0)]
    for weights, grads in steps:
        acc.update(weights, grads)
    assert acc.num_steps == 2
    assert torch.equal(acc.mean_grad()["a"], torch.full((2, 3), 2.0))
    assert torch.equal(acc.mean_grad()["b"], torch.full((4,), 1.0))
    # ½(w·g)²: a: ½·4 = 2 and ½·9 = 4.5 -> mean 3.25; b: ½·4 = 2 and ½·16 = 8 -> mean 5.
    assert torch.equal(acc.taylor2_mean()["a"], torch.full((2, 3), 3.25))
    assert torch.equal(acc.taylor2_mean()["b"], torch.full((4,), 5.0))

    acc.reset()
    assert acc.num_steps == 0
    with pytest.raises(ValueError, match="no optimizer steps"):
        acc.mean_grad()
    acc.update(*steps[1])
    assert torch.equal(acc.mean_grad()["a"], torch.full((2, 3), 3.0))


def test_accumulator_is_float32_under_bf16_parameters():
    # 1 + 1/128 is exact in bf16, but its square (1.015625 + 2^-14) is not: a bf16 product would round it.
    value = 1.0 + 1.0 / 128
    params = {"w": torch.full((3,), value, dtype=torch.bfloat16)}
    acc = ScoreAccumulator(params)
    acc.update(params, {"w": torch.full((3,), value, dtype=torch.bfloat16)})
    taylor2 = acc.taylor2_mean()["w"]
    assert taylor2.dtype == torch.float32 and acc.mean_grad()["w"].dtype == torch.float32
    assert torch.equal(taylor2, torch.full((3,), 0.5 * (value * value) ** 2, dtype=torch.float32))
    assert acc.nbytes() == 3 * 3 * 4  # grad sum, taylor2 sum and scratch, float32


def test_accumulator_rejects_a_missing_gradient():
    acc = ScoreAccumulator({"w": torch.zeros(2)})
    with pytest.raises(ValueError, match="'w'"):
        acc.update({"w": torch.zeros(2)}, {})


def test_accumulator_state_round_trip_through_safetensors_continues_identically():
    torch.manual_seed(0)
    params = {"conv": torch.randn(4, 2, 3, 3), "fc": torch.randn(5, 4)}
    def random_like_params():
        return {n: torch.randn_like(p) for n, p in params.items()}

    batches = [(random_like_params(), random_like_params()) for _ in range(4)]
    straight = ScoreAccumulator(params)
    for weights, grads in batches:
        straight.update(weights, grads)

    first = ScoreAccumulator(params)
    for weights, grads in batches[:2]:
        first.update(weights, grads)
    restored = ScoreAccumulator(params)
    restored.load_state_dict(load(save(first.state_dict())))
    for weights, grads in batches[2:]:
        restored.update(weights, grads)
    assert restored.num_steps == 4
    for name in params:
        assert torch.equal(restored.mean_grad()[name], straight.mean_grad()[name])
        assert torch.equal(restored.taylor2_mean()[name], straight.taylor2_mean()[name])

    with pytest.raises(ValueError, match="shape"):
        state = first.state_dict()
        state["grad_sum.fc"] = torch.zeros(4, 5)
        restored.load_state_dict(state)


def test_weight_criteria_by_hand_on_a_2x2_conv():
    # A 1x1 conv from 2 to 2 channels: filter rows [3, -4] and [0, 2].
    weight = torch.tensor([[3.0, -4.0], [0.0, 2.0]]).reshape(2, 2, 1, 1)
    grad_mean = torch.tensor([[4.0, 3.0], [0.0, -5.0]]).reshape(2, 2, 1, 1)
    taylor2 = torch.tensor([[0.1, 0.2], [0.3, 0.4]]).reshape(2, 2, 1, 1)
    scores = weight_criteria(weight, grad_mean, taylor2)
    assert scores.shape == (5, 2, 2, 1, 1) and scores.dtype == torch.float32
    by_name = dict(zip(CRITERIA, scores.reshape(5, 2, 2)))
    torch.testing.assert_close(by_name["magnitude"], torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    # mean |W| = 9/4 over the whole tensor, the pruned zero included.
    torch.testing.assert_close(by_name["avg_magnitude"], torch.tensor([[4 / 3, 16 / 9], [0.0, 8 / 9]]))
    # Row 0 is orthogonal to its gradient (cos 0), row 1 opposite (cos -1); +1, shared along the row.
    torch.testing.assert_close(by_name["cosine"], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(by_name["taylor1"], torch.tensor([[12.0, 12.0], [0.0, 10.0]]))
    torch.testing.assert_close(by_name["taylor2"], torch.tensor([[0.1, 0.2], [0.3, 0.4]]))


def test_weight_criteria_zero_gradient_row_has_cosine_one_not_nan():
    scores = weight_criteria(torch.ones(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    assert torch.isfinite(scores).all()
    assert torch.equal(scores[CRITERIA.index("cosine")], torch.ones(2, 3))


def _criteria_rows(magnitude, taylor1):
    """A [5, n] tensor with the given magnitude and taylor1 rows and junk elsewhere (unused criteria)."""
    rows = torch.full((5, len(magnitude)), 1e6)
    rows[CRITERIA.index("magnitude")] = torch.tensor(magnitude)
    rows[CRITERIA.index("taylor1")] = torch.tensor(taylor1)
    return rows


def test_combine_scores_normalises_globally_over_alive_units_by_hand():
    per_tensor = {"a": _criteria_rows([3.0, 4.0], [0.0, 3.0]), "b": _criteria_rows([100.0, 12.0], [99.0, 4.0])}
    alive = {"a": torch.tensor([True, True]), "b": torch.tensor([False, True])}
    alpha = torch.tensor([0.25, 0.75])
    combined = combine_scores(per_tensor, alive, alpha, criteria=["magnitude", "taylor1"])
    # Alive magnitudes 3, 4, 12 -> norm 13; alive taylor1 0, 3, 4 -> norm 5.
    torch.testing.assert_close(combined["a"], torch.tensor([0.25 * 3 / 13, 0.25 * 4 / 13 + 0.75 * 3 / 5]))
    torch.testing.assert_close(combined["b"][1], torch.tensor(0.25 * 12 / 13 + 0.75 * 4 / 5))

    # The same subset given by index, in the other order with alpha swapped, gives the same scores.
    swapped = combine_scores(per_tensor, alive, torch.tensor([0.75, 0.25]), criteria=[3, 0])
    torch.testing.assert_close(swapped["a"], combined["a"])

    # A dead unit's value does not move the alive scores.
    per_tensor["b"][:, 0] = 1e9
    again = combine_scores(per_tensor, alive, alpha, criteria=["magnitude", "taylor1"])
    torch.testing.assert_close(again["a"], combined["a"])


def test_combine_scores_uses_all_five_by_default_and_checks_alpha():
    torch.manual_seed(0)
    per_tensor = {"w": torch.rand(5, 3, 4)}
    alive = {"w": torch.ones(3, 4, dtype=torch.bool)}
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2])
    combined = combine_scores(per_tensor, alive, alpha)
    normalised = per_tensor["w"] / per_tensor["w"].flatten(1).norm(dim=1)[:, None, None]
    torch.testing.assert_close(combined["w"], (alpha[:, None, None] * normalised).sum(0))
    with pytest.raises(ValueError, match="alpha"):
        combine_scores(per_tensor, alive, alpha[:2])
    with pytest.raises(ValueError, match="shape"):
        combine_scores({"w": torch.rand(2, 3, 4)}, alive, alpha[:2], criteria=["magnitude", "cosine"])
