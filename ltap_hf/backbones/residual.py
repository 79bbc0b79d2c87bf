"""Channel groups of a residual network read from its structure: stem, stages of blocks, shortcuts, head.

An adapter describes its family as a `ResidualLayout` of module names; `groups_from_layout` walks it once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..pruning.groups import ChannelCopy, ChannelGroup, GroupSlice


@dataclass(frozen=True)
class ConvNorm:
    """A convolution followed by a BatchNorm over its output channels (module names)."""

    conv: str
    norm: str


@dataclass(frozen=True)
class Block:
    """A residual block: main path of conv/norm pairs, and its shortcut: a conv/norm pair, the name of
    a parameter-free padding shortcut, or None for the identity."""

    layers: tuple[ConvNorm, ...]
    shortcut: ConvNorm | str | None


@dataclass(frozen=True)
class ResidualLayout:
    """Stem, then (stage module name, its blocks) per stage, then the classifier head (a Linear's name)."""

    stem: ConvNorm
    stages: tuple[tuple[str, tuple[Block, ...]], ...]
    head: str | None


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def layout_of(
    stem: str,
    stages: Sequence[tuple[str, nn.Module]],
    conv: str,
    norm: str,
    shortcut_kind: Callable[[nn.Module], str | None],
    head: str | None,
) -> ResidualLayout:
    """The layout of a ResNet whose blocks hold `layer` (a list of conv/norm modules) and `shortcut`.

    Args:
        stem: the stem's conv/norm module. stages: (name, module) of each stage, its blocks in `.layers`.
        conv, norm: the attribute names of the conv and the norm inside a conv/norm module.
        shortcut_kind: a block's shortcut module -> "conv" (a conv/norm pair), "copy" (parameter-free
            channel copies) or None (the identity).
        head: the classifier Linear's name, or None.
    """

    def conv_norm(name: str) -> ConvNorm:
        return ConvNorm(join(name, conv), join(name, norm))

    layout = []
    for stage_name, stage in stages:
        blocks = []
        for b, block in enumerate(stage.layers):
            name = f"{stage_name}.layers.{b}"
            kind = shortcut_kind(block.shortcut)
            shortcut = conv_norm(f"{name}.shortcut") if kind == "conv" else f"{name}.shortcut" if kind == "copy" else None
            blocks.append(Block(tuple(conv_norm(f"{name}.layer.{i}") for i in range(len(block.layer))), shortcut))
        layout.append((stage_name, tuple(blocks)))
    return ResidualLayout(conv_norm(stem), tuple(layout), head)


def groups_from_layout(layout: ResidualLayout, model: nn.Module) -> list[ChannelGroup]:
    """Walks the residual network once, closing a stream group wherever a shortcut is not the identity."""
    modules = dict(model.named_modules())

    def full(module: str, dim: int) -> tuple[int, ...]:
        return tuple(range(modules[module].weight.shape[dim]))

    def producer(pair: ConvNorm) -> list[GroupSlice]:
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
            if isinstance(block.shortcut, ConvNorm):
                stream.append(consumer(block.shortcut.conv))
            if block.shortcut is not None:
                groups.append(ChannelGroup(stream_name, tuple(stream), copies))
                copies = (ChannelCopy(block.shortcut, stream_name),) if isinstance(block.shortcut, str) else ()
                stream_name = stage_name
                stream = producer(block.shortcut) if isinstance(block.shortcut, ConvNorm) else []
            stream += producer(block.layers[-1])
    if layout.head is not None:
        stream.append(consumer(layout.head))
    groups.append(ChannelGroup(stream_name, tuple(stream), copies))
    return groups
