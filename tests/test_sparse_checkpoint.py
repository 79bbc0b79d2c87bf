import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification, ResNetConfig, ResNetForImageClassification

from ltap_hf.hub import load_sparse_pretrained, save_sparse_pretrained
from ltap_hf.models import LTResNetConfig, LTResNetForImageClassification, sparse_safetensors
from ltap_hf.models.sparse_safetensors import (
    SPARSE_WEIGHTS_NAME,
    decode_tensor,
    encode_state_dict,
    encode_tensor,
    load_sparse_file,
    save_sparse_file,
)
from ltap_hf.pruning import apply_masks, full_masks, prunable_parameters, select_mask


def _pruned_model(preset: str = "resnet20", density: float = 0.3) -> LTResNetForImageClassification:
    """A model pruned by global magnitude to `density` of its prunable weights (pruned entries +0.0),
    with BatchNorm statistics that are not the defaults."""
    torch.manual_seed(0)
    model = LTResNetForImageClassification(LTResNetConfig.from_preset(preset, num_labels=10)).train()
    model(torch.randn(4, 3, 16, 16))
    parameters = prunable_parameters(model)
    masks = select_mask({n: p.detach().abs() for n, p in parameters.items()}, full_masks(parameters), density, 0.0)
    apply_masks(parameters, masks)
    return model.eval()


@pytest.fixture(scope="module")
def pruned_resnet20() -> LTResNetForImageClassification:
    return _pruned_model()


@pytest.fixture
def pruned(pruned_resnet20) -> LTResNetForImageClassification:
    """A fresh copy of the pruned ResNet-20, free to modify."""
    return copy.deepcopy(pruned_resnet20)


def _assert_bit_identical(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name
        if tensor.dtype == torch.float32:  # torch.equal treats -0.0 == +0.0; the bits do not
            assert torch.equal(actual[name].view(torch.int32), tensor.view(torch.int32)), name


def _rewrite(path, edit) -> None:
    """Re-saves the sparse file at `path` after `edit(tensors)` changes its entries (same metadata)."""
    with open(path, "rb") as file:
        metadata = json.loads(file.read(int.from_bytes(file.read(8), "little")))["__metadata__"]
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata=metadata)


def test_bitmask_is_packed_little_endian_and_keeps_negative_zero():
    flat = [0.0] * 20  # shape [2, 10]: 20 bits in 3 bytes, the last 4 bits padding
    flat[0], flat[3], flat[9], flat[11] = 1.5, -0.0, 3.0, -2.0
    tensor = torch.tensor(flat).view(2, 10)
    parts = encode_tensor(tensor)
    # element k is bit k % 8 of byte k // 8; -0.0 (element 3) is stored, +0.0 is not
    assert parts["bitmask"].tolist() == [0b00001001, 0b00001010, 0b00000000]
    assert parts["values"].tolist() == [1.5, -0.0, 3.0, -2.0]
    assert torch.signbit(parts["values"][1])
    assert parts["shape"].tolist() == [2, 10]
    decoded = decode_tensor("w", **parts)
    assert torch.equal(decoded.view(torch.int32), tensor.view(torch.int32))


def test_size_at_30_percent_density_is_at_most_036_of_dense(tmp_path):
    model = _pruned_model("resnet32", density=0.3)
    kept = sum(int(p.count_nonzero()) for p in prunable_parameters(model).values())
    assert kept / sum(p.numel() for p in prunable_parameters(model).values()) == pytest.approx(0.3, abs=1e-4)
    model.save_pretrained(tmp_path / "sparse", sparse=True)
    model.save_pretrained(tmp_path / "dense", sparse=False)
    sparse_bytes = os.path.getsize(tmp_path / "sparse" / SPARSE_WEIGHTS_NAME)
    ratio = sparse_bytes / os.path.getsize(tmp_path / "dense" / "model.safetensors")
    assert ratio <= 0.36, ratio
    assert not (tmp_path / "sparse" / "model.safetensors").exists()
    config = json.loads((tmp_path / "sparse" / "config.json").read_text())
    assert config["sparse_format"] == {"format": "sparse-bitmask", "version": 1}
    assert "sparse_format" not in json.loads((tmp_path / "dense" / "config.json").read_text())


def test_auto_from_pretrained_is_bit_identical(tmp_path, pruned):
    model = pruned
    with torch.no_grad():  # a -0.0 and a NaN that were not pruned must come back as they were
        model.resnet.stages[0].layers[0].layer[0].conv.weight[0, 0, 0, 0] = -0.0
        model.resnet.stages[1].layers[0].layer[0].conv.weight[0, 0, 0, 0] = float("nan")
    model.save_pretrained(tmp_path, sparse=True)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert isinstance(loaded, LTResNetForImageClassification)
    expected = model.state_dict()
    nan_weight = "resnet.stages.1.layers.0.layer.0.conv.weight"
    assert torch.isnan(loaded.state_dict()[nan_weight][0, 0, 0, 0])
    with torch.no_grad():
        model.resnet.stages[1].layers[0].layer[0].conv.weight[0, 0, 0, 0] = 1.0
        loaded.resnet.stages[1].layers[0].layer[0].conv.weight[0, 0, 0, 0] = 1.0
    _assert_bit_identical(expected, loaded.state_dict())
    assert loaded.config.name_or_path == str(tmp_path)
    assert not hasattr(loaded.config, "sparse_format")
    pixels = torch.randn(4, 3, 32, 32)
    assert torch.equal(model(pixels).logits, loaded(pixels).logits)


def test_bfloat16_weights_round_trip_in_their_dtype(tmp_path, pruned):
    model = pruned.to(torch.bfloat16)
    model.save_pretrained(tmp_path, sparse=True)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    _assert_bit_identical(model.state_dict(), loaded.state_dict())


def test_save_pretrained_is_dense_by_default_and_sparse_on_request(tmp_path, pruned):
    torch.manual_seed(0)
    unpruned = LTResNetForImageClassification(LTResNetConfig.from_preset("resnet20", num_labels=10)).eval()
    cases = [
        (pruned, {}, "model.safetensors"),  # the default, which Trainer checkpoints and resuming read
        (pruned, {"sparse": None}, SPARSE_WEIGHTS_NAME),  # None: sparse when the weights are
        (unpruned, {"sparse": None}, "model.safetensors"),
    ]
    for index, (model, kwargs, weights_file) in enumerate(cases):
        model.save_pretrained(tmp_path / str(index), **kwargs)
        assert sorted(p.name for p in (tmp_path / str(index)).iterdir() if p.suffix == ".safetensors") == [weights_file]
        loaded = AutoModelForImageClassification.from_pretrained(tmp_path / str(index))
        _assert_bit_identical(model.state_dict(), loaded.state_dict())


def test_sparse_save_removes_dense_weights_of_an_earlier_save(tmp_path, pruned):
    model = pruned
    model.save_pretrained(tmp_path, sparse=False)
    model.save_pretrained(tmp_path, sparse=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors") == [SPARSE_WEIGHTS_NAME]
    _assert_bit_identical(model.state_dict(), AutoModelForImageClassification.from_pretrained(tmp_path).state_dict())


def test_loads_without_ltap_hf_through_remote_code(tmp_path, pruned):
    model = pruned
    model.save_pretrained(tmp_path / "model", sparse=True)
    pixels = torch.randn(2, 3, 32, 32)
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    np.save(tmp_path / "logits.npy", model(pixels).logits.detach().numpy())
    torch.save(model.state_dict(), tmp_path / "expected.pt")
    script = f"""
import sys
sys.modules["ltap_hf"] = None  # any import of ltap_hf now raises ImportError
import numpy as np, torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
expected = torch.load({str(tmp_path / "expected.pt")!r})
actual = model.state_dict()
assert expected.keys() == actual.keys()
for name, tensor in expected.items():
    assert torch.equal(actual[name], tensor) and actual[name].dtype == tensor.dtype, name
    if tensor.dtype == torch.float32:
        assert torch.equal(actual[name].view(torch.int32), tensor.view(torch.int32)), name
logits = model(torch.from_numpy(np.load({str(tmp_path / "pixels.npy")!r}))).logits.detach().numpy()
assert np.array_equal(logits, np.load({str(tmp_path / "logits.npy")!r}))
print("remote-sparse-ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-sparse-ok" in result.stdout


def test_truncated_file_names_the_tensor_cut_off(tmp_path, pruned):
    pruned.save_pretrained(tmp_path, sparse=True)
    path = tmp_path / SPARSE_WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match=r"truncated: tensor '[\w.]+'"):
        AutoModelForImageClassification.from_pretrained(tmp_path)
    path.write_bytes(data[:20])
    with pytest.raises(ValueError, match="truncated"):
        AutoModelForImageClassification.from_pretrained(tmp_path)


def test_bitmask_that_disagrees_with_the_shape_names_the_tensor(tmp_path, pruned):
    pruned.save_pretrained(tmp_path, sparse=True)
    name = "resnet.stages.1.layers.2.layer.0.conv.weight"
    _rewrite(tmp_path / SPARSE_WEIGHTS_NAME, lambda t: t.update({f"{name}.bitmask": t[f"{name}.bitmask"][:-1].clone()}))
    with pytest.raises(ValueError, match=rf"'{name}'.*bits but shape"):
        AutoModelForImageClassification.from_pretrained(tmp_path)


def test_value_count_that_disagrees_with_the_bitmask_names_the_tensor(tmp_path, pruned):
    pruned.save_pretrained(tmp_path, sparse=True)
    name = "resnet.stages.2.layers.0.layer.1.conv.weight"
    _rewrite(tmp_path / SPARSE_WEIGHTS_NAME, lambda t: t.update({f"{name}.values": t[f"{name}.values"][1:].clone()}))
    with pytest.raises(ValueError, match=rf"'{name}'.*marks \d+ stored elements but"):
        AutoModelForImageClassification.from_pretrained(tmp_path)


def test_record_of_an_unknown_format_version_raises(tmp_path, pruned):
    pruned.save_pretrained(tmp_path, sparse=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["sparse_format"]["version"] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="upgrade the code"):
        AutoModelForImageClassification.from_pretrained(tmp_path)


def test_missing_part_names_the_tensor(tmp_path, pruned):
    pruned.save_pretrained(tmp_path, sparse=True)
    name = "resnet.embedder.embedder.conv.weight"
    _rewrite(tmp_path / SPARSE_WEIGHTS_NAME, lambda t: t.pop(f"{name}.shape"))
    with pytest.raises(ValueError, match=rf"'{name}' is incomplete"):
        load_sparse_file(tmp_path / SPARSE_WEIGHTS_NAME)


@pytest.mark.parametrize("edit", ["drop_weight", "extra_key"])
def test_keys_that_do_not_match_the_model_raise_instead_of_reinitialising(tmp_path, edit, pruned):
    model = pruned
    model.save_pretrained(tmp_path, sparse=True)
    state_dict = model.state_dict()
    if edit == "drop_weight":
        del state_dict["classifier.weight"]
    else:
        state_dict["resnet.extra.weight"] = torch.zeros(4, 4)
    save_sparse_file(state_dict, tmp_path / SPARSE_WEIGHTS_NAME)
    expected = "missing \\['classifier.weight'\\]" if edit == "drop_weight" else "unexpected \\['resnet.extra.weight'\\]"
    with pytest.raises(ValueError, match=expected):
        AutoModelForImageClassification.from_pretrained(tmp_path)


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, pruned):
    first = copy.deepcopy(pruned)
    first.save_pretrained(tmp_path, sparse=True)
    with torch.no_grad():
        pruned.classifier.weight.mul_(2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as file:  # a partial write, then the failure
            file.write(b"\x00" * 64)
        raise OSError("disk full")

    monkeypatch.setattr(sparse_safetensors, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        pruned.save_pretrained(tmp_path, sparse=True)
    with pytest.raises(OSError, match="disk full"):
        save_sparse_file(pruned.state_dict(), tmp_path / SPARSE_WEIGHTS_NAME)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no staging or temporary file left
    monkeypatch.undo()
    _assert_bit_identical(first.state_dict(), AutoModelForImageClassification.from_pretrained(tmp_path).state_dict())


def test_dense_tensor_named_like_a_part_is_refused():
    with pytest.raises(ValueError, match="collides"):
        encode_state_dict({"w": torch.zeros(4, 8), "w.values": torch.ones(3)})


def test_other_backbones_round_trip_with_load_sparse_pretrained(tmp_path):
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(num_labels=3, embedding_size=16, hidden_sizes=[16, 32, 64, 128]))
    with torch.no_grad():
        for weight in prunable_parameters(model).values():
            weight.masked_fill_(torch.rand_like(weight) > 0.3, 0.0)
    # a small shard size makes save_pretrained write shards, which the sparse writer merges into one file
    save_sparse_pretrained(model, tmp_path, max_shard_size="100KB")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "modeling_ltap_sparse.py", "sparse_loading.py", SPARSE_WEIGHTS_NAME, "sparse_safetensors.py"
    ]
    loaded = load_sparse_pretrained(tmp_path)
    assert type(loaded) is ResNetForImageClassification
    _assert_bit_identical(model.state_dict(), loaded.state_dict())
    # the remote code written beside the weights decodes them for the Auto class (and pipelines) ...
    remote = AutoModelForImageClassification.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(remote).__name__ == "LTAPSparseResNetForImageClassification"
    _assert_bit_identical(model.state_dict(), remote.state_dict())
    # ... and without it the stock loader finds no weights it knows and fails, instead of initialising them at random
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModelForImageClassification.from_pretrained(tmp_path, trust_remote_code=False)
