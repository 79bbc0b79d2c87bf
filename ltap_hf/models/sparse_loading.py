"""`from_pretrained` for sparse checkpoints: fetch, decode and check the weights, then build the model.

Imports only transformers, torch and its flat sibling `sparse_safetensors`, so that it travels as remote
code: next to our models' modeling files, and next to the small wrapper class that `ltap_hf.hub.
save_sparse_pretrained` writes for any other transformers model.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from transformers import PreTrainedModel
from transformers.utils import cached_file

from .sparse_safetensors import CONFIG_NAME, SPARSE_WEIGHTS_NAME, check_complete_load, load_sparse_file, read_sparse_record


# The keyword arguments of `from_pretrained` that say where and how to fetch a checkpoint's files.
DOWNLOAD_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


def from_pretrained_decoding_sparse(
    from_pretrained: Callable[..., PreTrainedModel],
    pretrained_model_name_or_path: str | os.PathLike | None,
    *model_args,
    **kwargs,
) -> PreTrainedModel | tuple[PreTrainedModel, dict]:
    """Runs a concrete class's `from_pretrained`, first decoding the checkpoint if it is a sparse one.

    A dense checkpoint (no `sparse_format` record in its `config.json`) goes to `from_pretrained` with
    the arguments unchanged. A sparse one is fetched (folder or Hub repo, honouring `cache_dir`,
    `revision`, `token`, `local_files_only` ...), decoded and checked in full, then handed over as
    `state_dict=`; a key the model lacks or a weight the file lacks raises instead of being
    re-initialised. The model's `config.name_or_path` is the checkpoint's, as for a dense load.
    """
    if pretrained_model_name_or_path is None or kwargs.get("state_dict") is not None or kwargs.get("gguf_file"):
        return from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
    download_kwargs = {name: kwargs[name] for name in DOWNLOAD_KWARGS if name in kwargs}
    config_file = cached_file(
        pretrained_model_name_or_path, CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **download_kwargs
    )
    if read_sparse_record(config_file) is None:
        return from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
    weights_file = cached_file(pretrained_model_name_or_path, SPARSE_WEIGHTS_NAME, **download_kwargs)
    state_dict = load_sparse_file(weights_file)
    kwargs.setdefault("config", pretrained_model_name_or_path)
    output_loading_info = kwargs.pop("output_loading_info", False)
    model, loading_info = from_pretrained(None, *model_args, state_dict=state_dict, output_loading_info=True, **kwargs)
    check_complete_load(loading_info, str(pretrained_model_name_or_path))
    model.config.name_or_path = str(pretrained_model_name_or_path)
    # The record describes the file, not the model: a later dense save must not carry it.
    if hasattr(model.config, "sparse_format"):
        del model.config.sparse_format
    return (model, loading_info) if output_loading_info else model
