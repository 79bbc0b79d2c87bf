"""Saving and loading sparse (weight-pruned) checkpoints for any transformers model.

The format itself is `ltap_hf.models.sparse_safetensors` (it travels with our models' remote code).
Our `LTResNet*` models need none of this: their `save_pretrained` writes the sparse format for a
pruned model and their `from_pretrained` reads it. For other backbones (transformers' ResNet, ConvNeXt,
ViT ...), whose classes we do not own, `save_sparse_pretrained` and `load_sparse_pretrained` are the
two calls.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel
from transformers.image_processing_utils import BaseImageProcessor

from ..models.modeling_lt_resnet import DOWNLOAD_KWARGS, from_pretrained_decoding_sparse
from ..models.sparse_safetensors import save_sparse_folder


def save_sparse_pretrained(
    model: PreTrainedModel,
    save_directory: str | os.PathLike,
    image_processor: BaseImageProcessor | None = None,
    **save_kwargs,
) -> None:
    """Saves `model` with its weights in the sparse-bitmask format, whatever its density.

    Writes what `model.save_pretrained` writes (config, remote code), with the weights in
    `sparse_model.safetensors` instead of `model.safetensors` and the format recorded in
    `config.json`; then the image processor's config, if given. The weights are written atomically:
    a failure midway leaves an earlier checkpoint in `save_directory` loadable.

    Args:
        model: any `PreTrainedModel`; tensors with enough exact +0.0 entries are stored sparse.
        save_directory: the folder to write, created if needed.
        image_processor: saved beside the model, so that `pipeline(..., model=save_directory)` works.
        save_kwargs: passed to `PreTrainedModel.save_pretrained` (e.g. `state_dict=`); not `push_to_hub`
            (use `ltap_hf.hub.push_pruned_to_hub`).
    """
    if save_kwargs.get("push_to_hub"):
        raise ValueError("save_sparse_pretrained does not push; use ltap_hf.hub.push_pruned_to_hub(model, repo_id)")
    # The base implementation writes the dense folder that the sparse writer re-encodes; an override
    # (ours chooses sparse or dense by itself) must not run here.
    save_sparse_folder(lambda folder: PreTrainedModel.save_pretrained(model, folder, **save_kwargs), save_directory)
    if image_processor is not None:
        image_processor.save_pretrained(save_directory)


def load_sparse_pretrained(
    pretrained_model_name_or_path: str | os.PathLike,
    auto_class: type = AutoModelForImageClassification,
    **kwargs,
) -> PreTrainedModel:
    """Loads a checkpoint, sparse or dense, from a folder or a Hub repo into the model class that
    `auto_class` maps its config to.

    For a sparse checkpoint every tensor is decoded and checked before the model is built; the model's
    weights are bit-identical to the saved ones, and a weight missing from the file (or a key the
    model does not have) raises `ValueError` rather than being re-initialised. A dense checkpoint loads
    exactly as `auto_class.from_pretrained` would load it.

        model = load_sparse_pretrained("user/pruned-convnext")  # AutoModelForImageClassification
        model = load_sparse_pretrained(folder, auto_class=AutoModel, dtype=torch.bfloat16)

    Args:
        pretrained_model_name_or_path: a folder or a Hub repo id.
        auto_class: a transformers Auto class (`AutoModelForImageClassification`, `AutoModel` ...).
        kwargs: as for `from_pretrained` (`revision`, `cache_dir`, `token`, `local_files_only`, `dtype`,
            `trust_remote_code` ...).
    """
    download_kwargs = {name: kwargs[name] for name in DOWNLOAD_KWARGS if name in kwargs}
    trust_remote_code = kwargs.get("trust_remote_code")
    config = AutoConfig.from_pretrained(
        pretrained_model_name_or_path, trust_remote_code=trust_remote_code, **download_kwargs
    )
    # The Auto class cannot take a `state_dict` with a path; its concrete class can. Building the model
    # on the meta device costs nothing and finds that class through public API only.
    with torch.device("meta"):
        model_class = type(auto_class.from_config(config, trust_remote_code=trust_remote_code))
    return from_pretrained_decoding_sparse(model_class.from_pretrained, pretrained_model_name_or_path, **kwargs)
