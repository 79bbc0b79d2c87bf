"""Coupled channel groups: what `granularity="channel"` prunes, how it is scored, selected and masked.

A `ChannelGroup` is a set of channels that must be removed together: the output channels of the
convolutions that produce them (their weight rows, bias and BatchNorm entries) and the input columns
of every layer that consumes them. Channels added together by a residual connection form one group
per residual stream. Channel j of a group is one pruning *unit*; its parameters x are the j-th slice
of every tensor in the group, concatenated.

Groups are derived from the structure of `LTResNet*` (both shortcut types) and of transformers'
`ResNet*`; other models go through Torch-Pruning's dependency graph when it is installed.

Parameter-free "option A" shortcuts (`LTResNetPaddingShortcut`) copy the channels of one residual
stream into chosen channels of the next. They are not a coupling: both streams are separate groups,
and a channel copy is recorded on the receiving group (`ChannelGroup.copies`). Pruning a stream
channel removes it entirely, including the value the shortcut copies into it; `apply_group_masks`
therefore also drops those copies from the shortcut (and from `config.shortcut_channels`, so a saved
masked model stays consistent), which is exactly what the slimmed network computes. Every pruned
channel is then exactly zero in the masked model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..cost import model_cost
from ..models.modeling_lt_resnet import (
    LTResNetConvLayer,
    LTResNetForImageClassification,
    LTResNetModel,
    LTResNetPaddingShortcut,
)
from .criteria import _EPS, ScoreAccumulator
from .masks import _layer_floor, apply_masks, prunable_parameters, select_mask


@dataclass(frozen=True)
class GroupSlice:
    """One tensor's share of a group: channel j of the group is entry `index[j]` of `tensor` along `dim`.

    Attributes:
        tensor: key in `model.state_dict()` (e.g. `resnet.stages.1.layers.0.layer.0.conv.weight`).
        dim: 0 for a producer's output rows and per-channel vectors, 1 for a consumer's input columns.
        index: position along `dim` of each channel of the group.
        is_parameter: False for BatchNorm running statistics: sliced when slimming, never scored or zeroed.
    """

    tensor: str
    dim: int
    index: tuple[int, ...]
    is_parameter: bool = True


@dataclass(frozen=True)
class ChannelCopy:
    """A parameter-free shortcut (`module`) that copies channels of group `source` into this group."""

    module: str
    source: str


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are pruned together, with every tensor slice tied to them.

    Attributes:
        name: unique key. A residual stream is named after the stage module where it starts (or the
            stem, for the stream the stem starts), a block-internal group after its producing conv.
        slices: the tied tensor slices, all of length `num_channels`.
        copies: channel copies into this group by parameter-free shortcuts (see the module docstring).
    """

    name: str
    slices: tuple[GroupSlice, ...]
    copies: tuple[ChannelCopy, ...] = ()

    def __post_init__(self) -> None:
        lengths = {len(s.index) for s in self.slices}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(f"group {self.name!r} needs non-empty slices of one length, got lengths {sorted(lengths)}")

    @property
    def num_channels(self) -> int:
        return len(self.slices[0].index)


# ---------------------------------------------------------------------------------------------------
# Discovery


@dataclass(frozen=True)
class _ConvNorm:
    """A convolution followed by a BatchNorm over its output channels (module names)."""

    conv: str
    norm: str


@dataclass(frozen=True)
class _Block:
    """A residual block: main path of conv/norm pairs, and its shortcut: a conv/norm pair, the name of
    a parameter-free padding shortcut, or None for the identity."""

    layers: tuple[_ConvNorm, ...]
    shortcut: _ConvNorm | str | None


@dataclass(frozen=True)
class _ResidualLayout:
    stem: _ConvNorm
    stages: tuple[tuple[str, tuple[_Block, ...]], ...]
    head: str | None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _lt_resnet_layout(model: nn.Module) -> _ResidualLayout:
    base = model.resnet if isinstance(model, LTResNetForImageClassification) else model
    prefix = "resnet" if base is not model else ""

    def conv_norm(name: str) -> _ConvNorm:
        return _ConvNorm(_join(name, "conv"), _join(name, "bn"))

    stages = []
    for s, stage in enumerate(base.stages):
        blocks = []
        for b, block in enumerate(stage.layers):
            name = _join(prefix, f"stages.{s}.layers.{b}")
            if isinstance(block.shortcut, LTResNetConvLayer):
                shortcut = conv_norm(f"{name}.shortcut")
            elif isinstance(block.shortcut, LTResNetPaddingShortcut):
                shortcut = f"{name}.shortcut"
            else:
                shortcut = None
            blocks.append(_Block(tuple(conv_norm(f"{name}.layer.{i}") for i in range(len(block.layer))), shortcut))
        stages.append((_join(prefix, f"stages.{s}"), tuple(blocks)))
    head = "classifier" if base is not model else None
    return _ResidualLayout(conv_norm(_join(prefix, "embedder.embedder")), tuple(stages), head)


def _hf_resnet_layout(model: nn.Module) -> _ResidualLayout:
    from transformers import ResNetForImageClassification

    base = model.resnet if isinstance(model, ResNetForImageClassification) else model
    prefix = "resnet" if base is not model else ""

    def conv_norm(name: str) -> _ConvNorm:
        return _ConvNorm(_join(name, "convolution"), _join(name, "normalization"))

    stages = []
    for s, stage in enumerate(base.encoder.stages):
        blocks = []
        for b, block in enumerate(stage.layers):
            name = _join(prefix, f"encoder.stages.{s}.layers.{b}")
            shortcut = None if isinstance(block.shortcut, nn.Identity) else conv_norm(f"{name}.shortcut")
            blocks.append(_Block(tuple(conv_norm(f"{name}.layer.{i}") for i in range(len(block.layer))), shortcut))
        stages.append((_join(prefix, f"encoder.stages.{s}"), tuple(blocks)))
    head = None
    if base is not model and isinstance(model.classifier[-1], nn.Linear):
        head = f"classifier.{len(model.classifier) - 1}"
    return _ResidualLayout(conv_norm(_join(prefix, "embedder.embedder")), tuple(stages), head)


def _groups_from_layout(layout: _ResidualLayout, model: nn.Module) -> list[ChannelGroup]:
    """Walks the residual network once, closing a stream group wherever a shortcut is not the identity."""
    modules = dict(model.named_modules())

    def full(module: str, dim: int) -> tuple[int, ...]:
        return tuple(range(modules[module].weight.shape[dim]))

    def producer(pair: _ConvNorm) -> list[GroupSlice]:
        index = full(pair.conv, 0)
        slices = [GroupSlice(f"{pair.conv}.weight", 0, index)]
        if modules[pair.conv].bias is not None:
            slices.append(GroupSlice(f"{pair.conv}.bias", 0, index))
        slices += [GroupSlice(f"{pair.norm}.{p}", 0, index) for p in ("weight", "bias")]
        statistics = ("running_mean", "running_var")
        slices += [GroupSlice(f"{pair.norm}.{b}", 0, index, is_parameter=False) for b in statistics]
        return slices

    def consumer(module: str) -> GroupSlice:
        return GroupSlice(f"{module}.weight", 1, full(module, 1))

    groups: list[ChannelGroup] = []
    stream_name, stream, copies = layout.stem.conv.rsplit(".", 2)[0], producer(layout.stem), ()
    for stage_name, blocks in layout.stages:
        for block in blocks:
            stream.append(consumer(block.layers[0].conv))
            for inner, following in zip(block.layers, block.layers[1:]):
                groups.append(ChannelGroup(inner.conv, tuple(producer(inner) + [consumer(following.conv)])))
            if isinstance(block.shortcut, _ConvNorm):
                stream.append(consumer(block.shortcut.conv))
            if block.shortcut is not None:
                groups.append(ChannelGroup(stream_name, tuple(stream), copies))
                copies = (ChannelCopy(block.shortcut, stream_name),) if isinstance(block.shortcut, str) else ()
                stream_name = stage_name
                stream = producer(block.shortcut) if isinstance(block.shortcut, _ConvNorm) else []
            stream += producer(block.layers[-1])
    if layout.head is not None:
        stream.append(consumer(layout.head))
    groups.append(ChannelGroup(stream_name, tuple(stream), copies))
    return groups


def _torch_pruning_groups(model: nn.Module, example_inputs: torch.Tensor) -> list[ChannelGroup]:
    """Groups from Torch-Pruning's dependency graph, for models whose structure is not known here."""
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    parameter_names = {p: n for n, p in model.named_parameters()}
    prunable = {id(p) for p in prunable_parameters(model).values()}
    # Layers whose outputs must keep their width: the classifier head (what `prunable_parameters` leaves out).
    heads = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m.weight) not in prunable]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    groups = []
    for tp_group in graph.get_all_groups(ignored_layers=heads, root_module_types=(nn.Conv2d, nn.Linear)):
        root = names[tp_group[0].dep.target.module]
        slices = []
        for item in tp_group.items:
            target, handler = item.dep.target, item.dep.handler
            if len(item.idxs) != len(set(item.root_idxs)) or sorted(item.root_idxs) != list(range(len(item.idxs))):
                raise NotImplementedError(
                    f"channel group of {root!r} maps its channels onto {names.get(target.module, target.module)!r} "
                    "other than one to one (e.g. through a flatten); such groups are not supported"
                )
            order = sorted(range(len(item.idxs)), key=lambda k: item.root_idxs[k])
            index = tuple(int(item.idxs[k]) for k in order)
            out_channels = graph.is_out_channel_pruning_fn(handler)
            slices += _module_slices(target.module, names, parameter_names, out_channels, index, target.pruning_dim)
        groups.append(ChannelGroup(root, tuple(slices)))
    return groups


def _module_slices(
    module: nn.Module | nn.Parameter,
    names: Mapping[nn.Module, str],
    parameter_names: Mapping[nn.Parameter, str],
    out_channels: bool,
    index: tuple[int, ...],
    pruning_dim: int,
) -> list[GroupSlice]:
    """The slices that one Torch-Pruning group item ties to the group's channels."""
    if isinstance(module, nn.Parameter):
        return [GroupSlice(parameter_names[module], pruning_dim % module.dim(), index)]
    if module not in names:
        # Torch-Pruning's own graph nodes (element-wise ops, reshapes, concatenations) hold no tensors.
        return []
    name = names[module]
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        depthwise = isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not depthwise:
            raise NotImplementedError(f"grouped convolution {name!r} (groups={module.groups}) is not supported")
        if out_channels or depthwise:
            slices = [GroupSlice(f"{name}.weight", 0, index)]
            return slices + ([GroupSlice(f"{name}.bias", 0, index)] if module.bias is not None else [])
        return [GroupSlice(f"{name}.weight", 1, index)]
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        slices = [GroupSlice(f"{name}.{p}", 0, index) for p in ("weight", "bias") if getattr(module, p) is not None]
        return slices + [
            GroupSlice(f"{name}.{b}", 0, index, is_parameter=False)
            for b in ("running_mean", "running_var")
            if getattr(module, b) is not None
        ]
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return [GroupSlice(f"{name}.{p}", 0, index) for p in ("weight", "bias") if getattr(module, p) is not None]
    if any(True for _ in module.parameters(recurse=False)):
        raise NotImplementedError(
            f"channel groups through {type(module).__name__} ({name!r}) are not supported; supported layers are "
            "Conv1d/2d/3d (ungrouped or depthwise), Linear, BatchNorm and 1-D LayerNorm"
        )
    return []


def _is_hf_resnet(model: nn.Module) -> bool:
    from transformers import ResNetForImageClassification, ResNetModel

    return isinstance(model, (ResNetForImageClassification, ResNetModel))


def find_channel_groups(model: nn.Module, example_inputs: torch.Tensor | None = None) -> list[ChannelGroup]:
    """The coupled channel groups of `model`, each output channel of every conv in exactly one group.

    `LTResNetForImageClassification`/`LTResNetModel` and transformers' `ResNetForImageClassification`/
    `ResNetModel` are read from their structure. Any other model needs Torch-Pruning
    (`pip install torch-pruning`), traced on `example_inputs` (default: one random image of
    `config.num_channels` x `config.image_size`²). The classifier head keeps its output width.

    Returns:
        The groups, in a deterministic order (a block's internal groups before the stream it feeds).
    """
    if isinstance(model, (LTResNetForImageClassification, LTResNetModel)):
        return _groups_from_layout(_lt_resnet_layout(model), model)
    if _is_hf_resnet(model):
        return _groups_from_layout(_hf_resnet_layout(model), model)
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        raise NotImplementedError(
            f"channel groups of {type(model).__name__} need Torch-Pruning (pip install torch-pruning); without it "
            "only LTResNet* and transformers' ResNet* models are supported"
        ) from None
    if example_inputs is None:
        config = getattr(model, "config", None)
        size = getattr(config, "image_size", 224)
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        parameter = next(model.parameters())
        example_inputs = torch.randn(1, getattr(config, "num_channels", 3), *size, device=parameter.device)
    return _torch_pruning_groups(model, example_inputs)


def group_parameters(model: nn.Module, groups: Sequence[ChannelGroup]) -> dict[str, nn.Parameter]:
    """Every parameter a group slices (conv, BatchNorm and classifier weights ...), in the model's order:
    the tensors to accumulate gradients of, to score and to mask."""
    wanted = {s.tensor for g in groups for s in g.slices if s.is_parameter}
    return {n: p for n, p in model.named_parameters() if n in wanted}


# ---------------------------------------------------------------------------------------------------
# Scoring


def _sum_except(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """[tensor.shape[dim]]: `tensor` summed over every other dimension."""
    others = tuple(d for d in range(tensor.dim()) if d != dim)
    return tensor.sum(dim=others) if others else tensor


def _parameter_slices(
    groups: Sequence[ChannelGroup], device: Mapping[str, torch.device]
) -> dict[tuple[str, int], list[tuple[str, torch.Tensor]]]:
    """(tensor, dim) -> [(group name, index tensor on the tensor's device)] over the parameter slices."""
    slices = defaultdict(list)
    for group in groups:
        for s in group.slices:
            if s.is_parameter:
                index = torch.tensor(s.index, dtype=torch.long, device=device[s.tensor])
                slices[(s.tensor, s.dim)].append((group.name, index))
    return dict(slices)


def _group_sums(
    groups: Sequence[ChannelGroup],
    slices: Mapping[tuple[str, int], list[tuple[str, torch.Tensor]]],
    values: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """group -> float32 [C_g]: for each channel, the sum of `values` over its parameter slices."""
    sums = {g.name: None for g in groups}
    for (tensor, dim), targets in slices.items():
        reduced = _sum_except(values[tensor], dim)
        for group, index in targets:
            part = reduced.index_select(0, index).float()
            sums[group] = part if sums[group] is None else sums[group] + part.to(sums[group].device)
    return sums


def _check_parameters(groups: Sequence[ChannelGroup], tensors: Mapping[str, torch.Tensor], field: str) -> None:
    missing = sorted({s.tensor for g in groups for s in g.slices if s.is_parameter} - set(tensors))
    if missing:
        raise ValueError(
            f"{field} lacks tensors the groups slice: {missing}; pass every tensor of group_parameters(model, groups)"
        )


def _first_parameter(group: ChannelGroup) -> str:
    return next(s.tensor for s in group.slices if s.is_parameter)


class GroupScoreAccumulator(ScoreAccumulator):
    """`ScoreAccumulator` for channel groups: the per-tensor sum of gradients (for ḡ) and, per group
    channel, the sum over steps of ½⟨x, g⟩², with x and g the channel's concatenated slices.

    Same interface: `update(weights, grads)` once per optimizer step, `mean_grad()` (tensor name ->
    ḡ, shape of the tensor), `taylor2_mean()` (group name -> float32 [C_g]), `reset()`,
    `state_dict()` (`grad_sum.<tensor>`, `taylor2_sum.<group>`, `num_steps`), `load_state_dict()`.

    Args:
        groups: the channel groups.
        parameters: tensor name -> tensor, every parameter the groups slice (`group_parameters`).
    """

    def __init__(self, groups: Sequence[ChannelGroup], parameters: Mapping[str, torch.Tensor]) -> None:
        _check_parameters(groups, parameters, "parameters")
        super().__init__(parameters)
        self.groups = tuple(groups)
        self._slices = _parameter_slices(groups, {n: p.device for n, p in parameters.items()})
        # The weight accumulator's per-weight Taylor sums become one float32 vector per group.
        self._taylor2_sum = {
            g.name: torch.zeros(g.num_channels, dtype=torch.float32, device=parameters[_first_parameter(g)].device)
            for g in groups
        }

    @torch.no_grad()
    def update(self, weights: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> None:
        """Add one optimizer step: `grad_sum += g` per tensor and `taylor2_sum += ½⟨x, g⟩²` per group channel.

        Args:
            weights: tensor name -> weight at this step (before the optimizer moves it), any float dtype.
            grads: tensor name -> synchronised gradient, weight-decay term included, same shape.
        """
        for name in self.names:
            if name not in weights or name not in grads:
                raise ValueError(f"update() needs a weight and a gradient for {name!r}; pass zeros for an unused tensor")
            self._scratch[name].copy_(weights[name]).mul_(grads[name])
            self._grad_sum[name].add_(grads[name])
        inner = _group_sums(self.groups, self._slices, self._scratch)
        for group, value in inner.items():
            self._taylor2_sum[group].addcmul_(value, value, value=0.5)
        self.num_steps += 1


def group_criteria(
    groups: Sequence[ChannelGroup],
    weights: Mapping[str, torch.Tensor],
    grad_mean: Mapping[str, torch.Tensor],
    taylor2_mean: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The five criteria of every group channel (ALGORITHM.md, "channel group" column).

    With x the channel's concatenated parameter slices and ḡ the same slices of the mean gradient:
    ‖x‖₂; ‖x‖₂ / size(x) (size counts every entry of the slices, pruned zeros included);
    ⟨x, ḡ⟩ / (‖x‖‖ḡ‖) + 1; |⟨x, ḡ⟩|; and the mean over steps of ½⟨x, g⟩².

    Args:
        groups: the channel groups.
        weights: tensor name -> current weight, every tensor the groups slice as parameters.
        grad_mean: tensor name -> ḡ (`GroupScoreAccumulator.mean_grad()`).
        taylor2_mean: group name -> [C_g] (`GroupScoreAccumulator.taylor2_mean()`).

    Returns:
        group name -> float32 [len(CRITERIA), C_g], rows in `CRITERIA` order: the per-unit scores that
        `combine_scores` takes.
    """
    _check_parameters(groups, weights, "weights")
    _check_parameters(groups, grad_mean, "grad_mean")
    slices = _parameter_slices(groups, {n: w.device for n, w in weights.items()})
    w = {n: weights[n].detach().float() for n, _ in slices}
    g = {n: grad_mean[n].float() for n, _ in slices}
    norm = _group_sums(groups, slices, {n: t.square() for n, t in w.items()})
    grad_norm = _group_sums(groups, slices, {n: t.square() for n, t in g.items()})
    dot = _group_sums(groups, slices, {n: w[n] * g[n] for n in w})
    scores = {}
    for group in groups:
        size = sum(w[s.tensor].numel() // w[s.tensor].shape[s.dim] for s in group.slices if s.is_parameter)
        magnitude = norm[group.name].sqrt()
        cosine = dot[group.name] / (magnitude * grad_norm[group.name].sqrt()).clamp_min(_EPS) + 1.0
        taylor2 = taylor2_mean[group.name].float().to(magnitude.device)
        scores[group.name] = torch.stack([magnitude, magnitude / size, cosine, dot[group.name].abs(), taylor2])
    return scores


# ---------------------------------------------------------------------------------------------------
# Masks and density


def full_group_masks(groups: Sequence[ChannelGroup], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """All-alive bool masks [C_g], one per group (the state before any pruning stage)."""
    return {g.name: torch.ones(g.num_channels, dtype=torch.bool, device=device) for g in groups}


def kept_per_dim(
    groups: Sequence[ChannelGroup],
    group_alive: Mapping[str, torch.Tensor],
    shapes: Mapping[str, torch.Size],
    include_buffers: bool = False,
) -> dict[str, dict[int, torch.Tensor]]:
    """tensor -> {dim: bool [shape[dim]]}: which entries along each sliced dim of the tensors in `shapes`
    survive (parameters, and with `include_buffers` the BatchNorm statistics too). A tensor entry
    survives when it survives along every dim, so its mask is the outer AND of these vectors."""
    kept: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    for group in groups:
        dead = ~group_alive[group.name].cpu()
        for s in group.slices:
            if s.tensor not in shapes or not (s.is_parameter or include_buffers):
                continue
            if s.dim not in kept[s.tensor]:
                kept[s.tensor][s.dim] = torch.ones(shapes[s.tensor][s.dim], dtype=torch.bool)
            kept[s.tensor][s.dim][torch.tensor(s.index)[dead]] = False
    return dict(kept)


def _alive_count(shape: torch.Size, kept: Mapping[int, torch.Tensor]) -> int:
    return math.prod(int(kept[d].sum()) if d in kept else size for d, size in enumerate(shape))


def parameter_density(
    groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor], parameters: Mapping[str, torch.Tensor]
) -> float:
    """Fraction of the entries of `parameters` (e.g. `prunable_parameters(model)`) that the alive
    channels keep: a pruned channel removes its rows, its consumers' columns and its BatchNorm entries."""
    shapes = {n: p.shape for n, p in parameters.items()}
    kept = kept_per_dim(groups, group_alive, shapes)
    total = sum(math.prod(shape) for shape in shapes.values())
    return sum(_alive_count(shape, kept.get(n, {})) for n, shape in shapes.items()) / total


def _round_up_widths(
    selected: Mapping[str, torch.Tensor],
    previous: Mapping[str, torch.Tensor],
    scores: Mapping[str, torch.Tensor],
    multiple: int,
) -> dict[str, torch.Tensor]:
    """Keeps, in each group, the best-scored channels this stage dropped until its width is a multiple
    of `multiple` (or all previously alive channels): masks still only shrink."""
    rounded = {}
    for name, mask in selected.items():
        kept, before = int(mask.sum()), int(previous[name].sum())
        extra = min(before, math.ceil(kept / multiple) * multiple) - kept
        mask = mask.clone()
        if extra > 0:
            dropped = (previous[name] & ~mask).nonzero().squeeze(1)
            best = torch.sort(scores[name][dropped].float(), descending=True, stable=True).indices[:extra]
            mask[dropped[best]] = True
        rounded[name] = mask
    return rounded


def _restore_tensor_floors(
    groups: Sequence[ChannelGroup],
    selected: Mapping[str, torch.Tensor],
    previous: Mapping[str, torch.Tensor],
    scores: Mapping[str, torch.Tensor],
    parameters: Mapping[str, torch.Tensor],
    min_tensor_density: float,
) -> dict[str, torch.Tensor]:
    """Gives back, one channel at a time, the best-scored channel this stage dropped from the groups of
    the first tensor of `parameters` under its floor, until no tensor is (or none can be): masks still
    only shrink against `previous`."""
    shapes = {n: p.shape for n, p in parameters.items()}
    floors = {n: _layer_floor(math.prod(shape), min_tensor_density) for n, shape in shapes.items()}
    groups_of = defaultdict(list)
    for group in groups:
        for s in group.slices:
            if s.tensor in shapes and s.is_parameter and group.name not in groups_of[s.tensor]:
                groups_of[s.tensor].append(group.name)
    masks = {name: mask.clone() for name, mask in selected.items()}
    while True:
        kept = kept_per_dim(groups, masks, shapes)
        restorable = []
        for tensor, shape in shapes.items():
            if _alive_count(shape, kept.get(tensor, {})) >= floors[tensor]:
                continue
            restorable = [(name, (previous[name] & ~masks[name]).nonzero().squeeze(1)) for name in groups_of[tensor]]
            restorable = [(name, dropped) for name, dropped in restorable if dropped.numel()]
            if restorable:
                break
        if not restorable:
            return masks
        _, name, channel = max(
            (float(scores[name][dropped].float().max()), name, dropped[scores[name][dropped].float().argmax()])
            for name, dropped in restorable
        )
        masks[name][channel] = True


CHANNEL_ALLOCATIONS = ("global", "uniform")


def _keep_best_per_group(
    scores: Mapping[str, torch.Tensor], alive: Mapping[str, torch.Tensor], num_kept: int, total: int
) -> dict[str, torch.Tensor]:
    """Every group keeps its best-scored alive channels, ceil(num_kept / total · C_g) of them (at least
    one, at most what is alive); ties go as in `select_mask` (the earlier channel first)."""
    masks = {}
    for name, mask in alive.items():
        positions = mask.nonzero().squeeze(1)
        alive_scores = scores[name][positions].float()
        if torch.isnan(alive_scores).any():
            raise ValueError(f"scores[{name!r}] has NaN for alive channels; check the gradients and criteria")
        channels = mask.numel()
        keep = min(positions.numel(), max(1, -(-num_kept * channels // total)))
        ascending = torch.sort(alive_scores, stable=True).indices
        kept = torch.zeros_like(mask)
        kept[positions[ascending[positions.numel() - keep:]]] = True
        masks[name] = kept
    return masks


def select_channel_groups(
    groups: Sequence[ChannelGroup],
    scores: Mapping[str, torch.Tensor],
    alive: Mapping[str, torch.Tensor],
    density: float,
    parameters: Mapping[str, torch.Tensor],
    min_tensor_density: float = 0.02,
    round_to: int = 1,
    allocation: str = "global",
) -> dict[str, torch.Tensor]:
    """Prune the lowest-scored alive channels, ranked globally over all groups (or within each group,
    see `allocation`), until the density of `parameters` (counted in parameters, not channels) is at
    most `density`.

    The ranking and tie-breaking are `select_mask`'s, with one group as one "tensor". Floors: no group
    loses its last channel, and every tensor of `parameters` keeps at least max(1, ceil(min_tensor_density
    · numel)) of its entries (a conv between two groups keeps the product of their fractions, so a floor
    per group would not hold per tensor): a tensor under its floor gets back, one at a time, the
    best-scored channels this stage dropped from its groups. When the floors make the target unreachable
    the result is denser than asked.

    Args:
        groups: the channel groups.
        scores: group -> combined score [C_g] (`combine_scores` over `group_criteria`); low goes first.
        alive: group -> bool [C_g], the current masks (only shrink).
        density: target fraction of `parameters` entries to keep, in (0, 1].
        parameters: the tensors the density counts (`prunable_parameters(model)`); only shapes are read.
        min_tensor_density: per-tensor floor as a fraction of its entries, in [0, 1].
        round_to: keep each group's width a multiple of this (>= 1) by keeping the best-scored of the
            channels this stage would drop, counted in the density; widths that are multiples of 8 run
            faster on CPU than odd widths of similar cost.
        allocation: "global" ranks all alive channels together (ALGORITHM.md); "uniform" keeps the same
            fraction of channels in every group, the best-scored ones of each. A global ranking thins
            the layers whose scores are low as a whole, often the parameter-heavy last stage, which
            leaves most multiply-adds; a uniform one makes multiply-adds and latency fall with the
            parameters.

    Returns:
        group -> new bool mask [C_g].
    """
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
    if allocation not in CHANNEL_ALLOCATIONS:
        raise ValueError(f"allocation must be one of {CHANNEL_ALLOCATIONS}, got {allocation!r}")

    def select(num_kept: int) -> dict[str, torch.Tensor]:
        if allocation == "global":
            masks = select_mask(scores, alive, num_kept / total, min_layer_density=0.0)
        else:
            masks = _keep_best_per_group(scores, alive, num_kept, total)
        masks = _restore_tensor_floors(groups, masks, alive, scores, parameters, min_tensor_density)
        return _round_up_widths(masks, alive, scores, round_to) if round_to > 1 else masks

    def meets_target(masks: Mapping[str, torch.Tensor]) -> bool:
        return parameter_density(groups, masks, parameters) <= density

    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    total = sum(g.num_channels for g in groups)
    # Fewer kept channels (or a smaller share of every group) never raise the parameter density, so
    # bisect `num_kept` for the largest one that meets the target: the fewest channels pruned.
    # select(total) keeps everything alive, which does not meet it.
    low, high = 1, total
    if meets_target(alive):
        return {name: mask.clone() for name, mask in alive.items()}
    best = select(low)
    if not meets_target(best):
        return best
    while high - low > 1:
        middle = (low + high) // 2
        candidate = select(middle)
        if meets_target(candidate):
            low, best = middle, candidate
        else:
            high = middle
    return best


def group_tensor_masks(
    model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per-parameter bool masks (shape and device of each sliced parameter, True = kept) for
    `masks.apply_masks`: a pruned channel clears its producers' rows, BatchNorm entries and
    consumers' columns."""
    parameters = group_parameters(model, groups)
    kept = kept_per_dim(groups, group_alive, {n: p.shape for n, p in parameters.items()})
    masks = {}
    for name, parameter in parameters.items():
        mask = torch.ones(parameter.shape, dtype=torch.bool)
        for dim, keep in kept[name].items():
            mask &= keep.reshape([-1 if d == dim else 1 for d in range(parameter.dim())])
        masks[name] = mask.to(parameter.device)
    return masks


def padding_channel_map(
    shortcut: LTResNetPaddingShortcut, num_inputs: int, source_alive: torch.Tensor, target_alive: torch.Tensor
) -> list[int]:
    """The shortcut's channel map (input channel -> output channel, -1 = dropped) restricted to copies
    whose source and target channels are both alive."""
    channel_map = [-1] * num_inputs
    for source, target in zip(shortcut.source, shortcut.target):
        if bool(source_alive[source]) and bool(target_alive[target]):
            channel_map[source] = target
    return channel_map


def _drop_dead_copies(
    model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]
) -> None:
    """Stops padding shortcuts from copying into or out of pruned channels, in the modules and in the
    config (`shortcut_channels`), so that a saved masked model reloads with the same function."""
    copies = {c.module: (c.source, g.name) for g in groups for c in g.copies}
    if not copies:
        return
    base = model.resnet if isinstance(model, LTResNetForImageClassification) else model
    prefix = "resnet." if base is not model else ""
    shortcut_channels = list(base.config.shortcut_channels or [None] * len(base.stages))
    for s, stage in enumerate(base.stages):
        name = f"{prefix}stages.{s}.layers.0.shortcut"
        if name not in copies:
            continue
        shortcut, source = stage.layers[0].shortcut, copies[name][0]
        channel_map = padding_channel_map(
            shortcut, stage.layers[0].layer[0].conv.in_channels, group_alive[source], group_alive[copies[name][1]]
        )
        shortcut.source = [i for i, j in enumerate(channel_map) if j >= 0]
        shortcut.target = [j for j in channel_map if j >= 0]
        shortcut_channels[s] = channel_map
    # The base model shares the config object of the classification model that holds it.
    base.config.shortcut_channels = shortcut_channels


@torch.no_grad()
def apply_group_masks(
    model: nn.Module, groups: Sequence[ChannelGroup], group_alive: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Zero every pruned channel in place (+0.0) and drop the padding-shortcut copies into and out of
    pruned channels. Call it whenever the group masks change (each pruning stage, after loading).

    Returns:
        The per-parameter masks (`group_tensor_masks`): after every optimizer step,
        `masks.apply_masks(group_parameters(model, groups), returned_masks)` keeps the groups at zero.
    """
    masks = group_tensor_masks(model, groups, group_alive)
    apply_masks(group_parameters(model, groups), masks)
    _drop_dead_copies(model, groups, group_alive)
    return masks


def group_density_report(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    group_alive: Mapping[str, torch.Tensor],
    input_size: tuple[int, int, int] | None = None,
) -> dict:
    """Densities and cost of a channel-masked model, for logs and the model card.

    Returns:
        dict with `prunable_density` (kept / prunable weights, `prunable_parameters(model)`),
        `overall_density` (kept / all parameters, BatchNorm and classifier slices included),
        `prunable_parameters`, `total_parameters`, `pruned_parameters`, `channel_density` (kept /
        all group channels), `per_group`: group -> fraction of its channels kept; and with
        `input_size` = (channels, height, width), `macs` (dense) and `macs_kept` (multiply-adds of
        the kept weights, i.e. of the slimmed network; the masks must have been applied).
    """
    all_parameters = dict(model.named_parameters())
    prunable = prunable_parameters(model)
    kept = kept_per_dim(groups, group_alive, {n: p.shape for n, p in all_parameters.items()})
    total = sum(p.numel() for p in all_parameters.values())
    pruned = total - sum(_alive_count(p.shape, kept.get(n, {})) for n, p in all_parameters.items())
    report = {
        "prunable_density": parameter_density(groups, group_alive, prunable),
        "overall_density": 1.0 - pruned / total,
        "prunable_parameters": sum(p.numel() for p in prunable.values()),
        "total_parameters": total,
        "pruned_parameters": pruned,
        "channel_density": sum(int(m.sum()) for m in group_alive.values()) / sum(g.num_channels for g in groups),
        "per_group": {g.name: int(group_alive[g.name].sum()) / g.num_channels for g in groups},
    }
    if input_size is not None:
        cost = model_cost(model, input_size)
        report.update(macs=cost.macs, macs_kept=cost.macs_nonzero)
    return report
