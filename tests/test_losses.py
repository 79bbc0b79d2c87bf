import math

import pytest
import torch
import torch.nn.functional as F

from ltap_hf.losses import LOSS_NAMES, build_loss


def test_balanced_softmax_hand_computed():
    # prior = [0.75, 0.25]; with zero logits the adjusted softmax is the prior itself.
    loss_fn = build_loss("balanced_softmax", [3, 1])
    logits = torch.zeros(2, 2)
    assert loss_fn(logits, torch.tensor([1, 1])).item() == pytest.approx(math.log(4))
    assert loss_fn(logits, torch.tensor([0, 0])).item() == pytest.approx(-math.log(0.75))


def test_balanced_softmax_is_cross_entropy_of_adjusted_logits():
    counts = torch.tensor([500, 120, 40, 7, 1])
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 4, 3, 0])
    expected = F.cross_entropy(logits + (counts / counts.sum()).log(), labels)
    assert build_loss("balanced_softmax", counts)(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["balanced_softmax", "logit_adjusted"])
def test_uniform_prior_is_plain_cross_entropy(name):
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 2, 1])
    loss = build_loss(name, [10, 10, 10, 10])(logits, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_logit_adjusted_tau_scales_the_prior():
    # tau=2: the adjusted softmax is prior**2 normalised = [9, 1] / 10.
    loss_fn = build_loss("logit_adjusted", [3, 1], tau=2.0)
    assert loss_fn(torch.zeros(1, 2), torch.tensor([1])).item() == pytest.approx(math.log(10))


def test_ce_ignores_counts_and_epoch():
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([2, 0, 1, 2])
    loss = build_loss("ce", [100, 10, 1])(logits, labels, epoch=190.0)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item())


def test_ldam_margins_scale_with_inverse_fourth_root_and_peak_at_half():
    loss_fn = build_loss("ldam_drw", [16, 81, 1])
    # n^(-1/4) = [1/2, 1/3, 1]; the rarest class gets 0.5.
    torch.testing.assert_close(loss_fn.margins, torch.tensor([0.25, 0.5 / 3, 0.5]))


def test_ldam_margin_applies_to_the_target_logit_only():
    loss_fn = build_loss("ldam_drw", [16, 1], scale=1.0)
    # Label 1 (margin 0.5): adjusted logits [0, -0.5]; label 0 (margin 0.25): [-0.25, 0].
    assert loss_fn(torch.zeros(1, 2), torch.tensor([1])).item() == pytest.approx(math.log(1 + math.exp(0.5)))
    assert loss_fn(torch.zeros(1, 2), torch.tensor([0])).item() == pytest.approx(math.log(1 + math.exp(0.25)))
    # A margin on a non-target logit would change these gradients: only the target's moves.
    logits = torch.tensor([[1.0, 2.0]], requires_grad=True)
    loss_fn(logits, torch.tensor([1])).backward()
    p = torch.softmax(torch.tensor([1.0, 1.5]), dim=-1)
    torch.testing.assert_close(logits.grad, (p - torch.tensor([0.0, 1.0])).unsqueeze(0))


def test_ldam_scale_multiplies_adjusted_logits():
    loss_fn = build_loss("ldam_drw", [16, 1])  # scale 30: adjusted [0, -0.5] -> [0, -15]
    assert loss_fn(torch.zeros(1, 2), torch.tensor([1])).item() == pytest.approx(math.log(1 + math.exp(15)))


def test_drw_weights_switch_on_at_drw_start_epoch():
    beta = 0.5
    loss_fn = build_loss("ldam_drw", [2, 1], scale=1.0, drw_start_epoch=160, beta=beta)
    inverse_effective = torch.tensor([(1 - beta) / (1 - beta**2), (1 - beta) / (1 - beta)])  # [2/3, 1]
    weights = inverse_effective / inverse_effective.sum() * 2
    torch.testing.assert_close(loss_fn.drw_weights, weights)

    margins = [0.5 * 2 ** (-0.25), 0.5]  # m_c ∝ n_c^(-1/4), the rarest class at 0.5
    per_sample = torch.tensor([math.log(1 + math.exp(m)) for m in margins])
    logits, labels = torch.zeros(2, 2), torch.tensor([0, 1])

    before = loss_fn(logits, labels, epoch=159.99)
    after = loss_fn(logits, labels, epoch=160.0)
    assert before.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert after.item() == pytest.approx(((weights * per_sample).sum() / weights.sum()).item(), rel=1e-6)
    assert after.item() > before.item()  # the rare class's larger loss now weighs more


def test_drw_weights_sum_to_num_classes_with_paper_beta():
    loss_fn = build_loss("ldam_drw", [5000, 500, 50, 5])
    assert loss_fn.drw_weights.sum().item() == pytest.approx(4.0, rel=1e-6)
    assert torch.all(loss_fn.drw_weights[:-1] < loss_fn.drw_weights[1:])


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_is_differentiable_with_the_common_signature(name):
    logits = torch.randn(5, 3, requires_grad=True)
    loss = build_loss(name, [30, 10, 3])(logits, torch.tensor([0, 1, 2, 1, 0]), epoch=0.0)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.grad is not None


def test_unknown_loss_name_raises():
    with pytest.raises(ValueError, match="loss must be one of .*'focal'"):
        build_loss("focal", [10, 1])


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_zero_class_count_raises(name):
    with pytest.raises(ValueError, match=r"class_counts must be >= 1.*\[0\] at class indices \[2\]"):
        build_loss(name, [10, 5, 0])


@pytest.mark.parametrize("counts", [[[10, 5]], [10], [10.0, 5.0]])
def test_malformed_class_counts_raise(counts):
    with pytest.raises(ValueError, match="class_counts"):
        build_loss("ce", counts)


def test_parameter_the_loss_does_not_take_raises():
    with pytest.raises(ValueError, match=r"loss='balanced_softmax' does not take the parameter\(s\) \['tau'\]"):
        build_loss("balanced_softmax", [10, 1], tau=2.0)
    with pytest.raises(ValueError, match=r"\['drw_start'\]"):
        build_loss("ldam_drw", [10, 1], drw_start=100)


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("logit_adjusted", {"tau": -1.0}, "tau"),
        ("ldam_drw", {"beta": 1.0}, "beta"),
        ("ldam_drw", {"scale": 0}, "scale"),
    ],
)
def test_bad_hyper_parameters_raise_naming_the_field(name, params, field):
    with pytest.raises(ValueError, match=field):
        build_loss(name, [10, 1], **params)


def test_logits_with_wrong_number_of_classes_raise():
    with pytest.raises(ValueError, match=r"logits must have shape \[batch_size, 3\].*\(4, 2\)"):
        build_loss("balanced_softmax", [10, 5, 1])(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
