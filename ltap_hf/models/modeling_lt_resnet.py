"""PyTorch long-tail ResNets: CIFAR ResNet-20..110 and ImageNet ResNet-18..152, with per-layer widths.

This file imports only torch, transformers (with its dependency safetensors) and its flat sibling modules
(imported as `from .name import`, which `save_pretrained` copies next to it) so that a saved folder loads with `trust_remote_code=True`
in an environment without `ltap_hf`. That includes sparse checkpoints: `from_pretrained` decodes them.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutput

from .configuration_lt_resnet import LTResNetConfig
from .sparse_loading import from_pretrained_decoding_sparse
from .sparse_safetensors import has_sparse_tensors, save_sparse_folder


class LTResNetConvLayer(nn.Module):
    """Convolution (no bias), BatchNorm and an optional activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, activation: str | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activation = ACT2FN[activation] if activation is not None else nn.Identity()

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn(self.conv(hidden_state)))


class LTResNetPaddingShortcut(nn.Module):
    """Parameter-free shortcut ("option A" of He et al., as in Cao et al. 2019): spatial subsampling, then
    each input channel is copied to one output channel and the others are zero.

    With the default `channel_map` this is the centred zero padding of the reference implementation; a
    channel-pruned network keeps the surviving positions (`-1` drops an input channel).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, channel_map: list[int] | None):
        super().__init__()
        if channel_map is None:
            if out_channels < in_channels:
                raise ValueError(
                    f"a padding shortcut cannot map {in_channels} channels to {out_channels} without an "
                    "explicit `shortcut_channels` entry"
                )
            offset = (out_channels - in_channels) // 2
            channel_map = [offset + i for i in range(in_channels)]
        self.stride = stride
        self.out_channels = out_channels
        self.source = [i for i, j in enumerate(channel_map) if j >= 0]
        self.target = [j for j in channel_map if j >= 0]

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        hidden_state = hidden_state[:, :, :: self.stride, :: self.stride]
        batch, _, height, width = hidden_state.shape
        output = hidden_state.new_zeros(batch, self.out_channels, height, width)
        output[:, self.target] = hidden_state[:, self.source]
        return output


def _make_shortcut(config: LTResNetConfig, stage: int, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    channel_map = config.shortcut_channels[stage] if config.shortcut_channels is not None else None
    if stride == 1 and in_channels == out_channels and channel_map is None:
        return nn.Identity()
    if config.shortcut_type == "A":
        return LTResNetPaddingShortcut(in_channels, out_channels, stride, channel_map)
    return LTResNetConvLayer(in_channels, out_channels, kernel_size=1, stride=stride)


class LTResNetBasicBlock(nn.Module):
    """Two 3x3 convolutions; `widths = [w1]` is the width of the first one."""

    def __init__(self, in_channels: int, out_channels: int, widths: list[int], stride: int, shortcut: nn.Module, activation: str):
        super().__init__()
        self.layer = nn.Sequential(
            LTResNetConvLayer(in_channels, widths[0], 3, stride=stride, activation=activation),
            LTResNetConvLayer(widths[0], out_channels, 3),
        )
        self.shortcut = shortcut
        self.activation = ACT2FN[activation]

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.activation(self.layer(hidden_state) + self.shortcut(hidden_state))


class LTResNetBottleNeckBlock(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's v1.5), 1x1 expand; `widths = [w1, w2]`."""

    def __init__(self, in_channels: int, out_channels: int, widths: list[int], stride: int, shortcut: nn.Module, activation: str):
        super().__init__()
        self.layer = nn.Sequential(
            LTResNetConvLayer(in_channels, widths[0], 1, activation=activation),
            LTResNetConvLayer(widths[0], widths[1], 3, stride=stride, activation=activation),
            LTResNetConvLayer(widths[1], out_channels, 1),
        )
        self.shortcut = shortcut
        self.activation = ACT2FN[activation]

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.activation(self.layer(hidden_state) + self.shortcut(hidden_state))


class LTResNetEmbeddings(nn.Module):
    """The stem: 3x3 conv (CIFAR) or 7x7 stride-2 conv and 3x3 stride-2 max-pool (ImageNet)."""

    def __init__(self, config: LTResNetConfig):
        super().__init__()
        imagenet = config.stem_type == "imagenet"
        self.embedder = LTResNetConvLayer(
            config.num_channels, config.embedding_size, 7 if imagenet else 3, stride=2 if imagenet else 1,
            activation=config.hidden_act,
        )
        self.pooler = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if imagenet else nn.Identity()
        self.num_channels = config.num_channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels but the config expects {self.num_channels}"
            )
        return self.pooler(self.embedder(pixel_values))


class LTResNetStage(nn.Module):
    def __init__(self, config: LTResNetConfig, stage: int, in_channels: int):
        super().__init__()
        block_class = LTResNetBottleNeckBlock if config.layer_type == "bottleneck" else LTResNetBasicBlock
        out_channels = config.hidden_sizes[stage]
        stride = 1 if stage == 0 else 2
        blocks = []
        for index, widths in enumerate(config.block_widths[stage]):
            shortcut = _make_shortcut(config, stage, in_channels, out_channels, stride) if index == 0 else nn.Identity()
            blocks.append(block_class(in_channels, out_channels, widths, stride, shortcut, config.hidden_act))
            in_channels, stride = out_channels, 1
        self.layers = nn.Sequential(*blocks)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.layers(hidden_state)


class LTResNetPreTrainedModel(PreTrainedModel):
    config: LTResNetConfig
    config_class = LTResNetConfig
    base_model_prefix = "resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["LTResNetConvLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            # torch's own nn.Linear initialisation, restated so that re-initialisation reproduces it
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, which also loads sparse checkpoints (see `save_pretrained`)
        bit-identically, with no extra argument."""
        return from_pretrained_decoding_sparse(
            super().from_pretrained, pretrained_model_name_or_path, *model_args, **kwargs
        )

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: dict | None = None,
        *,
        sparse: bool | None = False,
        **kwargs,
    ) -> None:
        """`PreTrainedModel.save_pretrained`, optionally writing a sparse checkpoint.

        Args:
            sparse: `False` (default) writes the usual `model.safetensors`, which Trainer checkpoints,
                resuming and `load_best_model_at_end` read. `True` writes the sparse-bitmask format
                (`sparse_model.safetensors` and a `sparse_format` record in `config.json`, see
                `sparse_safetensors`), atomically. `None` writes it when at least one weight is sparse
                enough for it to save bytes, i.e. for a pruned model (what `push_to_hub` does).
            is_main_process, state_dict, **kwargs: as for `PreTrainedModel.save_pretrained`; a sparse save
                cannot be combined with `push_to_hub=True` (call `push_to_hub`).
        """
        sparse = getattr(self, "_push_sparse", sparse)
        if sparse is None:
            sparse = has_sparse_tensors(state_dict if state_dict is not None else self.state_dict())
        save_dense = super().save_pretrained
        if not sparse or not is_main_process:
            return save_dense(save_directory, is_main_process, state_dict, **kwargs)
        if kwargs.get("push_to_hub"):
            raise ValueError(
                "save_pretrained(push_to_hub=True) cannot publish a sparse checkpoint; call "
                "model.push_to_hub(repo_id) or pass sparse=False"
            )
        save_sparse_folder(lambda folder: save_dense(folder, True, state_dict, **kwargs), save_directory)

    def push_to_hub(self, *args, sparse: bool | None = None, **kwargs) -> str:
        """`PreTrainedModel.push_to_hub`, publishing a pruned model as a sparse checkpoint.

        Args:
            sparse: as for `save_pretrained`, but defaults to `None`: sparse when the weights are.
        """
        # transformers' push_to_hub calls save_pretrained(tmp_dir) with no way to pass `sparse`.
        self._push_sparse = sparse
        try:
            return super().push_to_hub(*args, **kwargs)
        finally:
            del self._push_sparse


class LTResNetModel(LTResNetPreTrainedModel):
    def __init__(self, config: LTResNetConfig):
        super().__init__(config)
        self.embedder = LTResNetEmbeddings(config)
        in_widths = [config.embedding_size] + config.hidden_sizes[:-1]
        self.stages = nn.ModuleList(LTResNetStage(config, s, w) for s, w in enumerate(in_widths))
        self.pooler = nn.AdaptiveAvgPool2d(1)
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        """pixel_values: [batch, num_channels, height, width]. `pooler_output` is [batch, hidden_sizes[-1]]."""
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden_state = self.embedder(pixel_values)
        hidden_states = (hidden_state,)
        for stage in self.stages:
            hidden_state = stage(hidden_state)
            hidden_states += (hidden_state,)
        pooled = self.pooler(hidden_state).flatten(1)
        hidden_states = hidden_states if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (hidden_state, pooled, hidden_states) if v is not None)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden_state, pooler_output=pooled, hidden_states=hidden_states
        )


class LTResNetForImageClassification(LTResNetPreTrainedModel):
    def __init__(self, config: LTResNetConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.resnet = LTResNetModel(config)
        self.classifier = nn.Linear(config.hidden_sizes[-1], config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        """pixel_values: [batch, num_channels, height, width]; labels: [batch] class ids. With labels, the
        loss is the plain cross-entropy (LTAPTrainer applies its long-tail losses to the logits)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.resnet(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = ["LTResNetModel", "LTResNetForImageClassification", "LTResNetPreTrainedModel"]
