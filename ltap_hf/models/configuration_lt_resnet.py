"""Configuration of the long-tail ResNets (CIFAR and ImageNet families, with per-layer widths)."""

from __future__ import annotations

from transformers import PretrainedConfig


# Named variants, as in timm's registry: the recipes refer to models by these names.
# CIFAR ResNets follow He et al. 2016 section 4.2 (6n+2 layers); ImageNet ones follow torchvision.
LT_RESNET_PRESETS: dict[str, dict] = {
    **{
        f"resnet{6 * n + 2}": dict(stem_type="cifar", layer_type="basic", depths=[n, n, n],
                                   embedding_size=16, hidden_sizes=[16, 32, 64], shortcut_type="A")
        for n in (3, 5, 7, 9, 18)
    },
    "resnet18": dict(stem_type="imagenet", layer_type="basic", depths=[2, 2, 2, 2]),
    "resnet34": dict(stem_type="imagenet", layer_type="basic", depths=[3, 4, 6, 3]),
    "resnet50": dict(stem_type="imagenet", layer_type="bottleneck", depths=[3, 4, 6, 3]),
    "resnet101": dict(stem_type="imagenet", layer_type="bottleneck", depths=[3, 4, 23, 3]),
    "resnet152": dict(stem_type="imagenet", layer_type="bottleneck", depths=[3, 8, 36, 3]),
}

_IMAGENET_PLANES = (64, 128, 256, 512)


def _check_widths(field: str, widths) -> None:
    if any(not isinstance(w, int) or w <= 0 for w in widths):
        raise ValueError(f"`{field}` must hold positive integers, got {widths}")


def _check_labels(kwargs: dict) -> None:
    """Rejects inconsistent `num_labels` / `id2label` / `label2id` (transformers only warns) and fills
    `label2id` from `id2label`, which transformers would otherwise leave as None."""
    num_labels, id2label, label2id = kwargs.get("num_labels"), kwargs.get("id2label"), kwargs.get("label2id")
    if num_labels is not None and (not isinstance(num_labels, int) or num_labels < 1):
        raise ValueError(f"`num_labels` must be a positive integer, got {num_labels!r}")
    if id2label is None:
        return
    if num_labels is not None and len(id2label) != num_labels:
        raise ValueError(
            f"`num_labels`={num_labels} disagrees with `id2label`, which names {len(id2label)} classes: "
            "pass one of them, or both consistently"
        )
    if sorted(int(i) for i in id2label) != list(range(len(id2label))):
        raise ValueError(f"`id2label` keys must be 0..{len(id2label) - 1}, got {sorted(id2label)}")
    if label2id is None:
        kwargs["label2id"] = {name: int(i) for i, name in id2label.items()}
    elif {int(v): k for k, v in label2id.items()} != {int(k): v for k, v in id2label.items()}:
        raise ValueError("`label2id` is not the inverse of `id2label`: pass consistent maps or only `id2label`")


class LTResNetConfig(PretrainedConfig):
    r"""
    Configuration of [`LTResNetModel`]: a CIFAR-style (3x3 stem) or ImageNet-style (7x7 stem + max-pool)
    ResNet whose every convolution may have its own width, so that a channel-pruned network is an
    ordinary config.

    Args:
        num_channels (`int`, defaults to 3): channels of the input images.
        stem_type (`str`, defaults to `"cifar"`): `"cifar"` (3x3 conv, stride 1) or `"imagenet"`
            (7x7 conv stride 2, then 3x3 max-pool stride 2).
        layer_type (`str`, defaults to `"basic"`): `"basic"` (two 3x3 convs) or `"bottleneck"`
            (1x1, 3x3, 1x1).
        depths (`list[int]`): number of blocks per stage. Stage 0 has stride 1, the others stride 2.
        embedding_size (`int`): output channels of the stem.
        hidden_sizes (`list[int]`): width of the residual stream of each stage (block output channels).
        block_widths (`list[list[list[int]]]`, *optional*): inner widths of every block,
            `block_widths[stage][block]` is `[w1]` for a basic block or `[w1, w2]` for a bottleneck.
            Defaults to the stage width (basic) or a quarter of it (bottleneck).
        shortcut_type (`str`, defaults to `"B"`): `"A"` parameter-free shortcut (stride-2 subsampling
            and zero channels, Cao et al. 2019) or `"B"` (1x1 conv + BatchNorm) where the shape changes.
        shortcut_channels (`list[list[int] | None]`, *optional*): for type "A" only; for each stage, the
            output channel that each input channel of its first block is copied to, `-1` to drop it.
            Defaults to the centred zero padding of Cao et al.; a channel-pruned network stores the
            surviving positions here.
        hidden_act (`str`, defaults to `"relu"`): activation name.
    """

    model_type = "lt_resnet"

    def __init__(
        self,
        num_channels: int = 3,
        stem_type: str = "cifar",
        layer_type: str = "basic",
        depths: list[int] | None = None,
        embedding_size: int | None = None,
        hidden_sizes: list[int] | None = None,
        block_widths: list[list[list[int]]] | None = None,
        shortcut_type: str = "B",
        shortcut_channels: list[list[int] | None] | None = None,
        hidden_act: str = "relu",
        **kwargs,
    ):
        if stem_type not in ("cifar", "imagenet"):
            raise ValueError(f"`stem_type` must be 'cifar' or 'imagenet', got {stem_type!r}")
        if layer_type not in ("basic", "bottleneck"):
            raise ValueError(f"`layer_type` must be 'basic' or 'bottleneck', got {layer_type!r}")
        if shortcut_type not in ("A", "B"):
            raise ValueError(f"`shortcut_type` must be 'A' or 'B', got {shortcut_type!r}")
        depths = list(depths) if depths is not None else [5, 5, 5]
        if not depths or any(not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"`depths` must be a non-empty list of positive integers, got {depths}")
        imagenet = stem_type == "imagenet"
        expansion = 4 if layer_type == "bottleneck" else 1
        if hidden_sizes is None:
            planes = _IMAGENET_PLANES if imagenet else (16, 32, 64)
            hidden_sizes = [planes[min(i, len(planes) - 1)] * expansion for i in range(len(depths))]
        hidden_sizes = list(hidden_sizes)
        if len(hidden_sizes) != len(depths):
            raise ValueError(
                f"`hidden_sizes` needs one width per stage ({len(depths)}), got {len(hidden_sizes)}"
            )
        _check_widths("hidden_sizes", hidden_sizes)
        embedding_size = embedding_size if embedding_size is not None else (64 if imagenet else 16)
        _check_widths("embedding_size", [embedding_size])
        inner = 2 if layer_type == "bottleneck" else 1
        if block_widths is None:
            block_widths = [[[h // expansion] * inner for _ in range(d)] for h, d in zip(hidden_sizes, depths)]
        block_widths = [[list(block) for block in stage] for stage in block_widths]
        if [len(stage) for stage in block_widths] != depths or any(
            len(block) != inner for stage in block_widths for block in stage
        ):
            raise ValueError(
                f"`block_widths` must have shape depths={depths} x {inner} inner width(s) per block"
            )
        _check_widths("block_widths", [w for stage in block_widths for block in stage for w in block])
        if shortcut_channels is not None:
            if shortcut_type != "A":
                raise ValueError("`shortcut_channels` is only used with shortcut_type='A'")
            if len(shortcut_channels) != len(depths):
                raise ValueError(f"`shortcut_channels` needs one entry (or None) per stage ({len(depths)})")
            in_widths = [embedding_size] + hidden_sizes[:-1]
            for stage, (index, n_in, n_out) in enumerate(zip(shortcut_channels, in_widths, hidden_sizes)):
                if index is not None and (len(index) != n_in or any(not -1 <= i < n_out for i in index)):
                    raise ValueError(
                        f"`shortcut_channels[{stage}]` must map each of {n_in} input channels to an output "
                        f"channel in [0, {n_out}) or -1, got {index}"
                    )
        self.num_channels = num_channels
        self.stem_type = stem_type
        self.layer_type = layer_type
        self.depths = depths
        self.embedding_size = embedding_size
        self.hidden_sizes = hidden_sizes
        self.block_widths = block_widths
        self.shortcut_type = shortcut_type
        self.shortcut_channels = shortcut_channels
        self.hidden_act = hidden_act
        _check_labels(kwargs)
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "LTResNetConfig":
        """Builds the config of a named variant (`resnet20/32/44/56/110`, `resnet18/34/50/101/152`).

        Keyword arguments override the preset (e.g. `num_labels=100`, `shortcut_type="B"`).
        """
        if name not in LT_RESNET_PRESETS:
            raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(LT_RESNET_PRESETS)}")
        return cls(**{**LT_RESNET_PRESETS[name], **kwargs})
