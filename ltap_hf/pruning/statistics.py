"""Gradient statistics between two pruning stages: what the criteria read of training.

All statistics are float32 whatever the parameter dtype, so bf16/fp16 training does not lose the small
squared Taylor terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .groups import ChannelGroup, GroupSums


class ScoreAccumulator:
    """Running gradient statistics of the prunable tensors between two pruning stages, the one place the
    training gradients enter the criteria.

    Holds float32 buffers whatever the parameters' dtype: per tensor W, the sum of the gradients g over
    the optimizer steps since the last `reset()`; per unit, the sum of ½(x·g)², with x·g the product
    w·g of one weight, or with `groups` the inner product ⟨x, g⟩ over one channel's slices. `update`
    works in preallocated scratch buffers.

    Args:
        parameters: name -> prunable tensor (with `groups`: every parameter they slice). Only shapes and
            devices are read.
        groups: channel groups; None for weight units.
    """

    def __init__(self, parameters: Mapping[str, torch.Tensor], groups: Sequence[ChannelGroup] | None = None) -> None:
        if not parameters:
            raise ValueError("parameters must hold at least one prunable tensor, got an empty mapping")
        self.names: tuple[str, ...] = tuple(parameters)
        self._grad_sum = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in parameters.items()}
        self._scratch = {n: torch.empty_like(b) for n, b in self._grad_sum.items()}
        self._group_sums = GroupSums(groups, parameters) if groups is not None else None
        if groups is None:
            self._taylor2_sum = {n: torch.zeros_like(b) for n, b in self._grad_sum.items()}
        else:
            first = {g.name: next(s.tensor for s in g.slices if s.is_parameter) for g in groups}
            self._taylor2_sum = {g.name: torch.zeros(g.num_channels, dtype=torch.float32,
                                                     device=parameters[first[g.name]].device) for g in groups}
        self.num_steps = 0

    @torch.no_grad()
    def update(self, weights: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> None:
        """Add one optimizer step: `grad_sum += g` per tensor and `taylor2_sum += ½(x·g)²` per unit.

        Args:
            weights: name -> weight W at this step (before the optimizer moves it), any float dtype.
            grads: name -> synchronised gradient of W, weight-decay term included, same shape as W.
        """
        for name in self.names:
            if name not in weights or name not in grads:
                raise ValueError(
                    f"update() needs a weight and a gradient for {name!r}; pass zeros for an unused tensor"
                )
            # copy_ then mul_ keeps the product in float32 even when w and g are bf16/fp16.
            self._scratch[name].copy_(weights[name]).mul_(grads[name])
            self._grad_sum[name].add_(grads[name])
        products = self._scratch if self._group_sums is None else self._group_sums(self._scratch)
        for unit, product in products.items():
            self._taylor2_sum[unit].addcmul_(product, product, value=0.5)
        self.num_steps += 1

    def _check_steps(self) -> None:
        if self.num_steps == 0:
            raise ValueError(
                "no optimizer steps were accumulated since the last reset(); call update() at least once "
                "before scoring (a pruning stage needs gradients)"
            )

    def mean_grad(self) -> dict[str, torch.Tensor]:
        """ḡ: name -> mean gradient over the accumulated steps, float32, shape of the tensor."""
        self._check_steps()
        return {n: b / self.num_steps for n, b in self._grad_sum.items()}

    def taylor2_mean(self) -> dict[str, torch.Tensor]:
        """unit -> mean over the accumulated steps of ½(x·g)², float32: tensor name -> [*W], or group -> [C_g]."""
        self._check_steps()
        return {n: b / self.num_steps for n, b in self._taylor2_sum.items()}

    def reset(self) -> None:
        """Start a new accumulation window (called right after a pruning stage)."""
        for buffer in (*self._grad_sum.values(), *self._taylor2_sum.values()):
            buffer.zero_()
        self.num_steps = 0

    def nbytes(self) -> int:
        """Bytes held by the accumulator's buffers (sums and scratch)."""
        buffers = (*self._grad_sum.values(), *self._taylor2_sum.values(), *self._scratch.values())
        return sum(b.numel() * b.element_size() for b in buffers)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-ready): `grad_sum.<tensor>`, `taylor2_sum.<unit>` and `num_steps` (int64, 0-d)."""
        state = {f"grad_sum.{n}": b for n, b in self._grad_sum.items()}
        state.update({f"taylor2_sum.{n}": b for n, b in self._taylor2_sum.items()})
        state["num_steps"] = torch.tensor(self.num_steps, dtype=torch.int64)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` wrote; keys and shapes must match this accumulator's tensors."""
        expected = set(self.state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"accumulator state does not match its tensors: missing {missing}, unexpected {unexpected}"
            )
        for prefix, buffers in (("grad_sum", self._grad_sum), ("taylor2_sum", self._taylor2_sum)):
            for name, buffer in buffers.items():
                value = state[f"{prefix}.{name}"]
                if value.shape != buffer.shape:
                    raise ValueError(f"{prefix}.{name} has shape {tuple(value.shape)}, expected {tuple(buffer.shape)}")
                buffer.copy_(value)
        self.num_steps = int(state["num_steps"])
