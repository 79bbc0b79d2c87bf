"""Sparse checkpoints: pruned weights stored in safetensors as their kept values and a packed bitmask.

Format "sparse-bitmask", version 1 (after compressed-tensors' legacy layout of the same name):

- The weights live in `sparse_model.safetensors`, not `model.safetensors`: a loader that does not know
  the format then fails with "no file named model.safetensors" instead of silently re-initialising
  weights whose keys it does not recognise.
- A sparse tensor `<name>` is three entries:
  - `<name>.values`: 1-D, the tensor's dtype, its stored elements in row-major order;
  - `<name>.bitmask`: 1-D uint8 of ceil(numel / 8) bytes; element `k` of the flattened tensor is stored
    iff bit `k % 8` of byte `k // 8` is set, bit 0 being the least significant ("little" bit order,
    as `numpy.packbits(..., bitorder="little")`); the padding bits of the last byte are 0;
  - `<name>.shape`: 1-D int64, the tensor's shape.
- Every other tensor is stored as it is.
- Header metadata: `format="pt"`, `sparse_format="sparse-bitmask"`, `sparse_format_version="1"`, and
  `sparse_tensors`, the JSON list of the sparse tensors' names (so a dense tensor whose name ends
  in `.values` is never mistaken for a part).
- `config.json` carries `"sparse_format": {"format": "sparse-bitmask", "version": 1}`; it is what
  tells a loader to decode.

An element is stored unless it is +0.0 (`x != 0 or signbit(x)`): -0.0 and NaN are kept, and a decoded
tensor is bit-identical to the encoded one when its dropped elements were +0.0, which is what
pruning writes.

Which tensors are sparse: floating-point tensors of at least two dimensions (convolution and linear
kernels; biases and normalisation vectors stay dense) whose encoding is smaller than their dense
bytes. In float32 that is below about 97% density, so an unpruned model is stored densely.

This module imports only torch, safetensors and the standard library: it is copied next to the
modeling file of a saved model and must work without `ltap_hf` installed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


SPARSE_FORMAT = "sparse-bitmask"
SPARSE_FORMAT_VERSION = 1
SPARSE_WEIGHTS_NAME = "sparse_model.safetensors"
CONFIG_NAME = "config.json"
# The files in which `PreTrainedModel.save_pretrained` writes dense weights.
DENSE_WEIGHTS_NAME = "model.safetensors"
DENSE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

_PARTS = ("values", "bitmask", "shape")
_BIT_VALUES = torch.tensor([1 << bit for bit in range(8)], dtype=torch.uint8)
# Integer dtypes to view a float tensor's bits with, by element size.
_BITS_DTYPE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """[numel] integers holding the bit patterns of `tensor`'s elements: +0.0 is the only float whose
    pattern is 0, so `bits != 0` is "not +0.0" (-0.0 and NaN included) in one pass."""
    return tensor.detach().cpu().contiguous().view(-1).view(_BITS_DTYPE[tensor.element_size()])


def should_store_sparse(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is stored sparse: a floating-point tensor of >= 2 dims whose encoding is smaller."""
    if not tensor.is_floating_point() or tensor.dim() < 2:
        return False
    num_stored = int(torch.count_nonzero(_bits(tensor)))
    sparse_bytes = num_stored * tensor.element_size() + (tensor.numel() + 7) // 8 + 8 * tensor.dim()
    return sparse_bytes < tensor.numel() * tensor.element_size()


def has_sparse_tensors(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether at least one tensor of `state_dict` would be stored sparse (e.g. the model was pruned)."""
    return any(should_store_sparse(tensor) for tensor in state_dict.values())


def encode_tensor(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encodes `tensor` [*S] as `{"values": [nnz], "bitmask": [ceil(numel / 8)] uint8, "shape": [len(S)] int64}`."""
    stored = _bits(tensor) != 0
    padded = torch.zeros(-(-stored.numel() // 8) * 8, dtype=torch.uint8)
    padded[: stored.numel()] = stored
    return {
        "values": tensor.detach().cpu().reshape(-1)[stored],
        "bitmask": (padded.view(-1, 8) * _BIT_VALUES).sum(dim=1, dtype=torch.uint8),
        "shape": torch.tensor(tensor.shape, dtype=torch.int64),
    }


def decode_tensor(name: str, values: torch.Tensor, bitmask: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_tensor`; checks that the three parts agree and names `name` when they do not."""
    if shape.dtype != torch.int64 or shape.dim() != 1 or bool((shape < 0).any()):
        raise ValueError(f"sparse tensor {name!r}: `{name}.shape` must be 1-D non-negative int64, got {shape.tolist()}")
    size = torch.Size(shape.tolist())
    if bitmask.dtype != torch.uint8 or bitmask.dim() != 1:
        raise ValueError(
            f"sparse tensor {name!r}: `{name}.bitmask` must be 1-D uint8, got {bitmask.dtype} {tuple(bitmask.shape)}"
        )
    if bitmask.numel() != (size.numel() + 7) // 8:
        raise ValueError(
            f"sparse tensor {name!r}: the bitmask holds {8 * bitmask.numel()} bits but shape {tuple(size)} needs "
            f"{size.numel()} ({(size.numel() + 7) // 8} bytes); the checkpoint is corrupt, save it again"
        )
    bits = (bitmask.unsqueeze(1) & _BIT_VALUES).ne(0).view(-1)
    stored, padding = bits[: size.numel()], bits[size.numel():]
    if bool(padding.any()):
        raise ValueError(
            f"sparse tensor {name!r}: the bitmask sets padding bits past element {size.numel()}; the checkpoint is corrupt"
        )
    num_stored = int(torch.count_nonzero(stored))
    if values.dim() != 1 or values.numel() != num_stored:
        raise ValueError(
            f"sparse tensor {name!r}: the bitmask marks {num_stored} stored elements but `{name}.values` holds "
            f"{values.numel()} (shape {tuple(values.shape)}); the checkpoint is corrupt, save it again"
        )
    if not values.is_floating_point():
        raise ValueError(f"sparse tensor {name!r}: `{name}.values` must be floating point, got {values.dtype}")
    return torch.zeros(size.numel(), dtype=values.dtype).masked_scatter_(stored, values).view(size)


def encode_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of a sparse file holding `state_dict`."""
    tensors: dict[str, torch.Tensor] = {}
    sparse_names = [name for name, tensor in state_dict.items() if should_store_sparse(tensor)]
    for name in sparse_names:
        tensors.update({f"{name}.{part}": value for part, value in encode_tensor(state_dict[name]).items()})
    for name, tensor in state_dict.items():
        if name in tensors:
            raise ValueError(f"tensor {name!r} collides with a part of a sparse tensor; rename it before saving")
        if name in sparse_names:
            continue
        tensors[name] = tensor.detach().cpu().contiguous()
    metadata = {
        "format": "pt",
        "sparse_format": SPARSE_FORMAT,
        "sparse_format_version": str(SPARSE_FORMAT_VERSION),
        "sparse_tensors": json.dumps(sparse_names),
    }
    return tensors, metadata


def _read_header(path: str) -> dict:
    """The safetensors header of `path`, after checking that every tensor's bytes are in the file
    (safetensors' own error on a truncated file names no tensor)."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as file:
        prefix = file.read(8)
        header_size = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
        if header_size is None or 8 + header_size > file_size:
            raise ValueError(
                f"{path} is truncated: its {file_size} bytes do not hold the safetensors header; download or save it again"
            )
        try:
            header = json.loads(file.read(header_size))
            entries = sorted((entry["data_offsets"][1], name) for name, entry in header.items() if name != "__metadata__")
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise ValueError(f"{path} has a corrupt safetensors header ({error!r}); download or save it again") from None
    for end, name in entries:
        if 8 + header_size + end > file_size:
            raise ValueError(
                f"{path} is truncated: tensor {name!r} ends at byte {8 + header_size + end} but the file has "
                f"{file_size} bytes; download or save it again"
            )
    return header


def load_sparse_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads and decodes a sparse-bitmask safetensors file into a dense state dict.

    Every tensor is decoded and checked before anything is returned, so a corrupt file never yields
    a partial state dict. Raises `ValueError` naming the file or the tensor at fault.
    """
    path = os.fspath(path)
    metadata = _read_header(path).get("__metadata__") or {}
    if metadata.get("sparse_format") != SPARSE_FORMAT:
        raise ValueError(
            f"{path} is not a {SPARSE_FORMAT} file: its metadata has sparse_format={metadata.get('sparse_format')!r}"
        )
    version = int(metadata.get("sparse_format_version", -1))
    if version != SPARSE_FORMAT_VERSION:
        raise ValueError(
            f"{path} has sparse_format_version={version}, but this code reads version {SPARSE_FORMAT_VERSION}; "
            "upgrade the code that loads it"
        )
    try:
        tensors = load_file(path)
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error}); download or save it again") from None
    sparse_names = json.loads(metadata.get("sparse_tensors", "[]"))
    state_dict = {}
    for name in sparse_names:
        missing = [f"{name}.{part}" for part in _PARTS if f"{name}.{part}" not in tensors]
        if missing:
            raise ValueError(f"sparse tensor {name!r} is incomplete: {path} lacks {missing}; save the checkpoint again")
        state_dict[name] = decode_tensor(name, *(tensors.pop(f"{name}.{part}") for part in _PARTS))
    state_dict.update(tensors)
    return state_dict


def save_sparse_file(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Writes `state_dict` to `path` in the sparse-bitmask layout, atomically.

    The file is written under a temporary name in the same folder and renamed over `path` once
    complete: a failure midway leaves any previous file at `path` as it was.
    """
    path = os.fspath(path)
    tensors, metadata = encode_state_dict(state_dict)
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".", suffix=".safetensors.tmp")
    os.close(descriptor)
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, path)
    except BaseException:
        os.remove(temporary)
        raise


def _load_dense_weights(folder: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict saved in `folder` by `save_pretrained`, from one file or from its shards."""
    index_path = os.path.join(folder, DENSE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as file:
            shards = sorted(set(json.load(file)["weight_map"].values()))
        files = [DENSE_WEIGHTS_INDEX_NAME, *shards]
    elif os.path.isfile(os.path.join(folder, DENSE_WEIGHTS_NAME)):
        shards = files = [DENSE_WEIGHTS_NAME]
    else:
        raise ValueError(
            f"save_pretrained wrote no {DENSE_WEIGHTS_NAME} (variant and adapter saves cannot be made sparse); "
            "save without `variant` or adapters"
        )
    state_dict: dict[str, torch.Tensor] = {}
    for shard in shards:
        state_dict.update(load_file(os.path.join(folder, shard)))
    return state_dict, files


def _stale_dense_weights(folder: str) -> list[str]:
    """The dense weight files of an earlier save in `folder`, which a loader would otherwise prefer."""
    stale = [name for name in (DENSE_WEIGHTS_NAME, DENSE_WEIGHTS_INDEX_NAME) if os.path.isfile(os.path.join(folder, name))]
    if DENSE_WEIGHTS_INDEX_NAME in stale:
        with open(os.path.join(folder, DENSE_WEIGHTS_INDEX_NAME), encoding="utf-8") as file:
            stale += sorted(set(json.load(file)["weight_map"].values()))
    return stale


def save_sparse_folder(save_dense: Callable[[str], object], save_directory: str | os.PathLike) -> None:
    """Saves a model folder whose weights are in the sparse-bitmask format.

    Args:
        save_dense: writes the ordinary `save_pretrained` folder into the directory it is given (config,
            dense weights, remote code); its weights are then re-encoded, so whatever it saves (a
            `state_dict=`, tied weights removed, shards) is what the sparse file holds.
        save_directory: the target folder, created if needed.

    Everything is first written to a staging folder inside `save_directory`, then renamed into place,
    weights before `config.json` (whose record makes loaders decode them). A failure before the renames
    leaves an earlier checkpoint in `save_directory` untouched. Dense weight files of an earlier save are
    removed last, so that the folder holds a single checkpoint.
    """
    save_directory = os.fspath(save_directory)
    os.makedirs(save_directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=save_directory, prefix=".sparse-staging-") as staging:
        save_dense(staging)
        state_dict, dense_files = _load_dense_weights(staging)
        save_sparse_file(state_dict, os.path.join(staging, SPARSE_WEIGHTS_NAME))
        del state_dict
        for name in dense_files:
            os.remove(os.path.join(staging, name))
        config_path = os.path.join(staging, CONFIG_NAME)
        with open(config_path, encoding="utf-8") as file:
            config = json.load(file)
        config["sparse_format"] = {"format": SPARSE_FORMAT, "version": SPARSE_FORMAT_VERSION}
        with open(config_path, "w", encoding="utf-8") as file:
            file.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
        staged = sorted(os.listdir(staging), key=lambda name: (name == CONFIG_NAME, name != SPARSE_WEIGHTS_NAME, name))
        stale = [name for name in _stale_dense_weights(save_directory) if name not in staged]
        for name in staged:
            os.replace(os.path.join(staging, name), os.path.join(save_directory, name))
    for name in stale:
        os.remove(os.path.join(save_directory, name))


def read_sparse_record(config_path: str | os.PathLike | None) -> dict | None:
    """The `sparse_format` record of a saved `config.json`, or None for a dense checkpoint (or no file).

    Raises `ValueError` for a format or version this code cannot decode.
    """
    if config_path is None:
        return None
    with open(config_path, encoding="utf-8") as file:
        record = json.load(file).get("sparse_format")
    if record is None:
        return None
    readable = (SPARSE_FORMAT, SPARSE_FORMAT_VERSION)
    if not isinstance(record, dict) or (record.get("format"), record.get("version")) != readable:
        raise ValueError(
            f"{config_path} records sparse_format={record!r}, but this code reads "
            f"{{'format': {SPARSE_FORMAT!r}, 'version': {SPARSE_FORMAT_VERSION}}}; upgrade the code that loads it"
        )
    return record


def check_complete_load(loading_info: Mapping[str, object], source: str) -> None:
    """Raises if loading a sparse checkpoint left weights missing or keys unused (transformers would only
    warn and re-initialise those weights at random)."""
    missing, unexpected = sorted(loading_info.get("missing_keys", ())), sorted(loading_info.get("unexpected_keys", ()))
    mismatched = sorted(str(key) for key in loading_info.get("mismatched_keys", ()))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"the sparse checkpoint {source} does not match the model: missing {missing}, unexpected {unexpected}, "
            f"mismatched {mismatched}; refusing to re-initialise weights at random: load it into the architecture "
            "it was saved from"
        )
