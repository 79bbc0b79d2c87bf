"""Saving and loading sparse (weight-pruned) checkpoints for any transformers model.

The format itself is `ltap_hf.models.sparse_safetensors` (it travels with our models' remote code).
Our `LTResNet*` models need none of this: their `save_pretrained` writes the sparse format for a
pruned model and their `from_pretrained` reads it. For other backbones (transformers' ResNet, ConvNeXt,
ViT ...), whose classes we do not own, `save_sparse_pretrained` writes beside the weights a few lines
of remote code, a subclass of the model's class whose `from_pretrained` decodes them, and points the
config's `auto_map` at it: `from_pretrained(..., trust_remote_code=True)` and `pipeline(...,
trust_remote_code=True)` then load the folder or repo anywhere, without ltap_hf. With ltap_hf,
`load_sparse_pretrained` loads it into the model's own class, no remote code run.
"""

from __future__ import annotations

import json
import os
import shutil

import torch
import transformers
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel
from transformers.image_processing_utils import BaseImageProcessor

from ..models import sparse_loading, sparse_safetensors
from ..models.sparse_loading import DOWNLOAD_KWARGS, from_pretrained_decoding_sparse
from ..models.sparse_safetensors import CONFIG_NAME, save_sparse_folder


REMOTE_CODE_NAME = "modeling_ltap_sparse.py"

_REMOTE_CODE = '''"""Written by ltap_hf: transformers' {base} reading this folder's sparse weights (sparse_model.safetensors)."""

from transformers import {base}

from .sparse_loading import from_pretrained_decoding_sparse


class LTAPSparse{base}({base}):
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        return from_pretrained_decoding_sparse(super().from_pretrained, pretrained_model_name_or_path, *model_args, **kwargs)
'''


def _write_remote_code(model: PreTrainedModel, folder: str) -> None:
    """For a transformers model whose class does not decode the format itself: the wrapper class, the two
    modules it imports, and the config's `auto_map` entry that makes the Auto class (and `pipeline`) use it."""
    base = type(model).__name__
    if getattr(transformers, base, None) is not type(model):
        return  # not a public transformers class: load_sparse_pretrained is the way in
    auto_class = "AutoModelForImageClassification" if base.endswith("ForImageClassification") else "AutoModel"
    with open(os.path.join(folder, REMOTE_CODE_NAME), "w", encoding="utf-8") as file:
        file.write(_REMOTE_CODE.format(base=base))
    for module in (sparse_loading, sparse_safetensors):
        shutil.copy(module.__file__, folder)
    config_path = os.path.join(folder, CONFIG_NAME)
    with open(config_path, encoding="utf-8") as file:
        config = json.load(file)
    config["auto_map"] = {**config.get("auto_map", {}), auto_class: f"{REMOTE_CODE_NAME[:-3]}.LTAPSparse{base}"}
    with open(config_path, "w", encoding="utf-8") as file:
        file.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_sparse_pretrained(
    model: PreTrainedModel,
    save_directory: str | os.PathLike,
    image_processor: BaseImageProcessor | None = None,
    **save_kwargs,
) -> None:
    """Saves `model` with its weights in the sparse-bitmask format, whatever its density.

    Writes what `model.save_pretrained` writes (config, remote code), with the weights in
    `sparse_model.safetensors` instead of `model.safetensors` and the format recorded in
    `config.json`; for a transformers class that cannot decode the format itself, the remote code that
    does (see the module docstring); then the image processor's config, if given. The weights are
    written atomically: a failure midway leaves an earlier checkpoint in `save_directory` loadable.

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
    def save_dense(folder: str) -> None:
        PreTrainedModel.save_pretrained(model, folder, **save_kwargs)
        if type(model).from_pretrained.__func__ is PreTrainedModel.from_pretrained.__func__:
            _write_remote_code(model, folder)  # its class cannot decode the format itself

    save_sparse_folder(save_dense, save_directory)
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
