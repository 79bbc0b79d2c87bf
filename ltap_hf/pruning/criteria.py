"""The five importance criteria of LTAP, their accumulation over training steps, and their combination.

The code is split by what it knows about a *unit* (the thing that gets pruned):

- `ScoreAccumulator` and `weight_criteria` are weight-specific: one unit is one scalar weight.
- `combine_scores` only sees per-unit score tensors and alive masks of matching shape, so it serves
  any granularity (a channel-group criterion function plugs in beside `weight_criteria`).

All statistics are float32 whatever the parameter dtype, so bf16/fp16 training does not lose the
small squared Taylor terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


CRITERIA: tuple[str, ...] = ("magnitude", "avg_magnitude", "cosine", "taylor1", "taylor2")

_EPS = 1e-12


def criterion_indices(criteria: Sequence[str | int] | None) -> list[int]:
    """Map criterion names or indices to indices into `CRITERIA` (None means all five, in order).

    Raises a `ValueError` for unknown names, out-of-range indices, duplicates or an empty selection.
    """
    if criteria is None:
        return list(range(len(CRITERIA)))
    if isinstance(criteria, str):
        raise ValueError(f"criteria must be a sequence of names, got the string {criteria!r}; wrap it in a list")
    indices = []
    for criterion in criteria:
        if isinstance(criterion, str):
            if criterion not in CRITERIA:
                raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
            indices.append(CRITERIA.index(criterion))
        elif isinstance(criterion, int) and 0 <= criterion < len(CRITERIA):
            indices.append(criterion)
        else:
            raise ValueError(f"criterion index must be in [0, {len(CRITERIA)}), got {criterion!r}")
    if not indices:
        raise ValueError("criteria must name at least one criterion, got an empty sequence")
    if len(set(indices)) != len(indices):
        raise ValueError(f"criteria must not repeat, got {list(criteria)}")
    return indices


class ScoreAccumulator:
    """Running per-weight gradient statistics between two pruning stages.

    Holds, for every prunable tensor W (any shape, any floating dtype), float32 buffers of W's shape:
    the sum of the gradients g and the sum of ½(w·g)² over the optimizer steps since the last
    `reset()`. `update` allocates nothing: it works in a preallocated scratch buffer.

    Args:
        parameters: name -> prunable tensor. Only shapes and devices are read.
    """

    def __init__(self, parameters: Mapping[str, torch.Tensor]) -> None:
        if not parameters:
            raise ValueError("parameters must hold at least one prunable tensor, got an empty mapping")
        self.names: tuple[str, ...] = tuple(parameters)
        self._grad_sum = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in parameters.items()}
        self._taylor2_sum = {n: torch.zeros_like(b) for n, b in self._grad_sum.items()}
        self._scratch = {n: torch.empty_like(b) for n, b in self._grad_sum.items()}
        self.num_steps = 0

    @torch.no_grad()
    def update(self, weights: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> None:
        """Add one optimizer step: `grad_sum += g` and `taylor2_sum += ½(w·g)²`.

        Args:
            weights: name -> weight W at this step (before the optimizer moves it), any float dtype.
            grads: name -> synchronised gradient of W, weight-decay term included, same shape as W.
        """
        for name in self.names:
            if name not in weights or name not in grads:
                raise ValueError(
                    f"update() needs a weight and a gradient for {name!r}; pass zeros for an unused tensor"
                )
            weight, grad = weights[name], grads[name]
            scratch = self._scratch[name]
            # copy_ then mul_ keeps the product in float32 even when w and g are bf16/fp16.
            scratch.copy_(weight).mul_(grad)
            self._taylor2_sum[name].addcmul_(scratch, scratch, value=0.5)
            self._grad_sum[name].add_(grad)
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
        """name -> mean over the accumulated steps of ½(w·g)², float32, shape of the tensor."""
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
        """Tensors only (safetensors-ready): `grad_sum.<name>`, `taylor2_sum.<name>` and `num_steps` (int64, 0-d)."""
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


def weight_criteria(weight: torch.Tensor, grad_mean: torch.Tensor, taylor2_mean: torch.Tensor) -> torch.Tensor:
    """The five criteria for every scalar weight of one tensor (ALGORITHM.md, "single weight" column).

    Args:
        weight: W, shape [out, ...] (a conv's [out, in, kh, kw] or a linear's [out, in]).
        grad_mean: ḡ, the mean gradient since the last stage, shape of W.
        taylor2_mean: mean over steps of ½(w·g)², shape of W.

    Returns:
        float32 tensor [len(CRITERIA), *W.shape] in `CRITERIA` order:
        |w|; |w| / mean(|W|) with the mean over the whole tensor (pruned zeros included, as the
        channel version divides by the fixed size of x); the cosine of the output filter
        (row of W flattened over dims 1..) with its row of ḡ, plus 1, shared by the filter's weights;
        |w·ḡ|; and the mean of ½(w·g)².
    """
    if not (weight.shape == grad_mean.shape == taylor2_mean.shape):
        raise ValueError(
            f"weight, grad_mean and taylor2_mean must share a shape, got {tuple(weight.shape)}, "
            f"{tuple(grad_mean.shape)} and {tuple(taylor2_mean.shape)}"
        )
    w = weight.detach().float()
    g = grad_mean.float()
    magnitude = w.abs()
    avg_magnitude = magnitude / magnitude.mean().clamp_min(_EPS)
    rows_w, rows_g = w.reshape(w.shape[0], -1), g.reshape(g.shape[0], -1)
    dot = (rows_w * rows_g).sum(dim=1)
    cosine_per_filter = dot / (rows_w.norm(dim=1) * rows_g.norm(dim=1)).clamp_min(_EPS) + 1.0
    cosine = cosine_per_filter.reshape((-1,) + (1,) * (w.dim() - 1)).expand_as(w)
    taylor1 = (w * g).abs()
    return torch.stack([magnitude, avg_magnitude, cosine, taylor1, taylor2_mean.float()])


def combine_scores(
    per_tensor_criteria: Mapping[str, torch.Tensor],
    alive: Mapping[str, torch.Tensor],
    alpha: torch.Tensor,
    criteria: Sequence[str | int] | None = None,
) -> dict[str, torch.Tensor]:
    """Globally L2-normalise each criterion over the alive units, then weight them: S = Σ_k α_k ŝ_k.

    Unit-agnostic: a "unit" is one entry of the per-unit shape U (a weight tensor's shape for weight
    granularity, the number of channels of a group for channel granularity).

    Args:
        per_tensor_criteria: name -> float tensor [len(CRITERIA), *U], rows in `CRITERIA` order.
        alive: name -> bool tensor [*U], True for units not pruned yet. Only these enter the norms.
        alpha: [K] criterion weights, one per criterion in use, in the order of `criteria`.
        criteria: names or `CRITERIA` indices of the criteria in use (a subset, K <= 5);
            None uses all five.

    Returns:
        name -> float32 combined score [*U]. Entries of dead units are computed the same way but
        carry no meaning; `select_mask` ignores them.
    """
    indices = criterion_indices(criteria)
    if alpha.dim() != 1 or alpha.numel() != len(indices):
        raise ValueError(
            f"alpha must have one entry per criterion in use ({len(indices)}), got shape {tuple(alpha.shape)}"
        )
    if set(per_tensor_criteria) != set(alive):
        raise ValueError(
            f"per_tensor_criteria and alive must name the same tensors, got {sorted(per_tensor_criteria)} "
            f"and {sorted(alive)}"
        )
    selected = {}
    for name, scores in per_tensor_criteria.items():
        if scores.shape[0] != len(CRITERIA) or scores.shape[1:] != alive[name].shape:
            raise ValueError(
                f"per_tensor_criteria[{name!r}] must have shape [{len(CRITERIA)}, *alive.shape] = "
                f"[{len(CRITERIA)}, {', '.join(map(str, alive[name].shape))}], got {list(scores.shape)}"
            )
        selected[name] = scores[indices].float()

    # float64 for the global sums of squares: millions of terms at ResNet-50 scale.
    sum_squares = torch.zeros(len(indices), dtype=torch.float64)
    for name, scores in selected.items():
        mask = alive[name].to(scores.device)
        alive_scores = scores[:, mask].double()
        sum_squares += alive_scores.square().sum(dim=1).cpu()
    # Folding the normaliser into α gives S = Σ_k (α_k / (‖s_k‖ + eps)) s_k in one contraction per tensor.
    scaled_alpha = (alpha.double().cpu() / (sum_squares.sqrt() + _EPS)).float()
    combined = {}
    for name, scores in selected.items():
        weights = scaled_alpha.to(scores.device).reshape((-1,) + (1,) * (scores.dim() - 1))
        combined[name] = (weights * scores).sum(dim=0)
    return combined
