"""Parameter and multiply-add counts of a model, dense and with its zeroed weights left out."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelCost:
    """Counts for one image. `*_nonzero` leave out weights that are exactly zero (what a sparse kernel
    would skip); the dense figures are what a dense kernel computes."""

    parameters: int
    parameters_nonzero: int
    macs: int
    macs_nonzero: int


@torch.no_grad()
def model_cost(model: nn.Module, input_size: tuple[int, int, int]) -> ModelCost:
    """Counts the parameters and the multiply-adds (MACs) of convolutions and linear layers of `model`
    for one input of shape `input_size` = (channels, height, width).

    The model is run once in eval mode on zeros (its training mode is restored afterwards).
    """
    macs = {"dense": 0, "nonzero": 0}

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        # Every weight of a conv is used once per output position (per group it belongs to).
        positions = output[0].numel() // module.weight.shape[0]
        macs["dense"] += module.weight.numel() * positions
        macs["nonzero"] += int(torch.count_nonzero(module.weight)) * positions

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        model(torch.zeros(1, *input_size, dtype=parameter.dtype, device=parameter.device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return ModelCost(
        parameters=sum(p.numel() for p in model.parameters()),
        parameters_nonzero=sum(int(torch.count_nonzero(p)) for p in model.parameters()),
        macs=macs["dense"],
        macs_nonzero=macs["nonzero"],
    )
