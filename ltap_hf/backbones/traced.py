"""The fallback adapter for other CNNs: channel groups from Torch-Pruning's dependency graph.

Needs `pip install torch-pruning`. Such a model cannot be slimmed here (its config has no per-layer
widths), so channel pruning refuses it up front; weight pruning works for any model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..pruning.groups import ChannelGroup, GroupSlice
from ..pruning.masks import prunable_parameters
from .base import Backbone


def torch_pruning_groups(model: nn.Module, example_inputs: torch.Tensor) -> list[ChannelGroup]:
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


class TracedBackbone(Backbone):
    """Any other model: Torch-Pruning's dependency graph, traced on one example input."""

    name = "traced"

    def channel_groups(self, model: nn.Module, example_inputs: torch.Tensor | None = None) -> list[ChannelGroup]:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            raise NotImplementedError(
                f"channel groups of {type(model).__name__} need Torch-Pruning (pip install torch-pruning); without it "
                "only the model families of ltap_hf.backbones are supported"
            ) from None
        if example_inputs is None:
            config = getattr(model, "config", None)
            size = getattr(config, "image_size", 224)
            size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
            parameter = next(model.parameters())
            example_inputs = torch.randn(1, getattr(config, "num_channels", 3), *size, device=parameter.device)
        return torch_pruning_groups(model, example_inputs)
