import pytest
import torch

from ltap_hf.weight_decay import coupled_weight_decay


def _parameters():
    return [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]


@pytest.mark.parametrize(
    "make, coupled",
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01), True),
        (lambda p: torch.optim.Adagrad(p, weight_decay=0.01), True),
        (lambda p: torch.optim.RMSprop(p, weight_decay=0.01), True),
        (lambda p: torch.optim.Adam(p, weight_decay=0.01), True),
        (lambda p: torch.optim.Adam(p, weight_decay=0.01, decoupled_weight_decay=True), False),
        (lambda p: torch.optim.NAdam(p, weight_decay=0.01, decoupled_weight_decay=True), False),
        (lambda p: torch.optim.AdamW(p, weight_decay=0.01), False),
    ],
)
def test_decay_is_counted_only_where_the_optimizer_adds_it_to_the_gradient(make, coupled):
    parameters = _parameters()
    decay = coupled_weight_decay(make(parameters))
    assert decay == {id(p): 0.01 if coupled else 0.0 for p in parameters}


def test_a_subclass_counts_as_its_nearest_known_class():
    class MySGD(torch.optim.SGD):
        pass

    parameters = _parameters()
    assert coupled_weight_decay(MySGD(parameters, lr=0.1, weight_decay=0.01)) == {id(p): 0.01 for p in parameters}


def test_decay_is_read_per_parameter_group():
    decayed, exempt = _parameters()
    optimizer = torch.optim.SGD([{"params": [decayed], "weight_decay": 5e-4}, {"params": [exempt], "weight_decay": 0.0}], lr=0.1)
    assert coupled_weight_decay(optimizer) == {id(decayed): 5e-4, id(exempt): 0.0}


class Unknown(torch.optim.Optimizer):
    def __init__(self, params, weight_decay: float):
        super().__init__(params, {"weight_decay": weight_decay})


class Lomo(Unknown):
    pass


def test_an_unknown_optimizer_with_decay_is_refused_and_without_decay_accepted():
    parameters = _parameters()
    with pytest.raises(ValueError, match=r"cannot tell whether .*Unknown adds its weight decay"):
        coupled_weight_decay(Unknown(parameters, weight_decay=0.01))
    assert coupled_weight_decay(Unknown(parameters, weight_decay=0.0)) == {id(p): 0.0 for p in parameters}
    with pytest.raises(ValueError, match="leaves no gradient"):
        coupled_weight_decay(Lomo(parameters, weight_decay=0.0))
