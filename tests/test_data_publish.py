"""Publishing a long-tailed dataset: push with `python -m ltap_hf.data.publish` / `push_lt_dataset`
to the loopback Hub (tests/hub_server.py), then `datasets.load_dataset("user/repo", config)` in a
fresh process that cannot import ltap_hf: same labels, class counts and image bytes.

`HF_ENDPOINT` is read when `huggingface_hub` and `datasets` are imported, so every client runs in a
fresh process pointed at the server, which runs in a thread of the test process.
"""

import hashlib
import json
import subprocess
import sys

import datasets
import numpy as np
import pytest
import yaml
from hub_server import HubServer
from huggingface_hub import HfApi
from test_data_splits import write_traced_cifar

from ltap_hf.data import class_counts, load_lt_dataset, read_lt_metadata
from ltap_hf.data.publish import render_card_text


REPO = "user/digits-lt"

PUSH_SECOND_CONFIG = """
import sys
from ltap_hf.data import load_lt_dataset, push_lt_dataset
out, repo = sys.argv[1], sys.argv[2]
dataset = load_lt_dataset("digits_lt", imbalance_ratio=20, val_per_class=5, cache_dir=out + "/push-cache")
print("commit", push_lt_dataset(dataset, repo).oid)
"""

PULL = """
import hashlib, json, sys
sys.modules["ltap_hf"] = None  # the published dataset must load without this package
import datasets
import numpy as np

out, repo = sys.argv[1], sys.argv[2]
pulled = {}
for config in ("ir10", "ir20"):
    ds = datasets.load_dataset(repo, config, cache_dir=out + "/pull-cache")
    pulled[config] = {
        split: {
            "labels": ds[split]["label"][:],
            "names": ds[split].features["label"].names,
            "sha1": [hashlib.sha1(item["bytes"]).hexdigest()
                     for item in ds[split].cast_column("image", datasets.Image(decode=False))["image"]],
            "first_pixels": np.asarray(ds[split][0]["image"]).tolist(),
        }
        for split in ds
    }
json.dump(pulled, open(out + "/pulled.json", "w"))
print("pulled")
"""


@pytest.fixture(scope="module")
def hub_server():
    with HubServer() as server:
        yield server


def _run(args: list[str], hub_server: HubServer, tmp_path, hf_home: str) -> subprocess.CompletedProcess:
    env = {
        "HF_ENDPOINT": hub_server.url,
        "HF_HOME": str(tmp_path / hf_home),
        "HF_DATASETS_CACHE": str(tmp_path / hf_home / "datasets"),
        "HF_TOKEN": "hf_test_token",
        "HF_HUB_DISABLE_XET": "1",  # the test Hub speaks LFS, not Xet
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def sha1s(split: datasets.Dataset) -> list[str]:
    return [hashlib.sha1(item["bytes"]).hexdigest() for item in split.cast_column("image", datasets.Image(decode=False))["image"]]


def test_pushed_dataset_loads_by_id_without_ltap_hf(hub_server, tmp_path):
    # one config through the command line, a second one through the Python call, into the same repo
    pushed = _run(["-m", "ltap_hf.data.publish", "--dataset_name", "digits_lt", "--repo_id", REPO,
                   "--cache_dir", str(tmp_path / "push-cache")], hub_server, tmp_path, "hf-push")
    assert f"pushed digits_lt to {REPO}" in pushed.stdout
    _run(["-c", PUSH_SECOND_CONFIG, str(tmp_path), REPO], hub_server, tmp_path, "hf-push")
    files = hub_server.files(REPO, repo_type="dataset")
    for config in ("ir10", "ir20"):
        for split in ("train", "validation", "test"):
            assert f"{config}/{split}-00000-of-00001.parquet" in files, sorted(files)

    local = {
        "ir10": load_lt_dataset("digits_lt", cache_dir=str(tmp_path / "local")),
        "ir20": load_lt_dataset("digits_lt", 20, val_per_class=5, cache_dir=str(tmp_path / "local")),
    }
    for config, dataset in local.items():
        assert json.loads(files[f"{config}/lt_metadata.json"]) == read_lt_metadata(dataset)

    # the card: datasets' YAML for both configs, and a section per config with what was selected
    card = files["README.md"].decode()
    _, front_matter, text = card.split("---\n", 2)
    card_data = yaml.safe_load(front_matter)
    assert sorted(c["config_name"] for c in card_data["configs"]) == ["ir10", "ir20"]
    assert "image-classification" in card_data["task_categories"]
    for config, dataset in local.items():
        metadata = read_lt_metadata(dataset)
        assert f"## Config `{config}`" in text
        assert f'load_dataset("{REPO}", "{config}")' in text
        assert metadata["fingerprint"] in text
        assert f"| imbalance ratio | {metadata['imbalance_ratio']} |" in text
        assert "sklearn.datasets.load_digits" in text
    counts = read_lt_metadata(local["ir20"])["class_counts"]
    assert f"| 9 | 9 | {counts['train'][9]} | 5 | 50 |" in text  # label, class, train, validation, test
    assert "| 0 | 0 | 110 | 10 | 50 |" in text  # ir10's table

    pulled = _run(["-c", PULL, str(tmp_path), REPO], hub_server, tmp_path, "hf-pull")
    assert "pulled" in pulled.stdout
    pulled = json.loads((tmp_path / "pulled.json").read_text())
    for config, dataset in local.items():
        assert list(pulled[config]) == ["train", "validation", "test"]
        for split in dataset:
            got = pulled[config][split]
            assert got["labels"] == dataset[split]["label"][:]
            assert class_counts(got["labels"], 10) == read_lt_metadata(dataset)["class_counts"][split]
            assert got["names"] == dataset[split].features["label"].names
            assert got["sha1"] == sha1s(dataset[split])  # the very image bytes
            assert got["first_pixels"] == np.asarray(dataset[split][0]["image"]).tolist()

    # what HfFileSystem and get_paths_info see of the repository (the test Hub's listings)
    api = HfApi(endpoint=hub_server.url, token="hf_test_token")
    infos = api.get_paths_info(REPO, ["ir10", "ir10/lt_metadata.json", "nowhere"], repo_type="dataset")
    assert [(type(i).__name__, i.path) for i in infos] == [("RepoFolder", "ir10"), ("RepoFile", "ir10/lt_metadata.json")]
    tree = {entry.path for entry in api.list_repo_tree(REPO, repo_type="dataset", recursive=True)}
    assert set(files) | {"ir10", "ir20"} == tree
    parquet = next(e for e in api.list_repo_tree(REPO, "ir10", repo_type="dataset") if e.path.endswith(".parquet"))
    assert parquet.lfs.sha256 == hashlib.sha256(files[parquet.path]).hexdigest()  # went up through LFS


def test_card_names_the_source_without_local_paths(tmp_path):
    source = tmp_path / "private-folder"
    write_traced_cifar(source, per_class=30)
    dataset = load_lt_dataset("cifar10_lt", 10, data_dir=str(source), cache_dir=str(tmp_path / "c"), val_per_class=8)
    metadata = read_lt_metadata(dataset)
    text = render_card_text("", "user/cifar10-lt", "ir10", "ir10", metadata, dataset["train"])
    assert "private-folder" not in text and str(tmp_path) not in text
    assert "local Parquet files of the source (`test-00000-of-00001.parquet`, `train-00000-of-00001.parquet`)" in text
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in text and "krizhevsky2009cifar" in text
    assert f"| 0 | airplane | {metadata['class_counts']['train'][0]} | 8 | 2 |" in text
    assert "Validation images taken from the selected training images (too few left over): airplane: 8" in text
    # a later push of another config keeps this section
    again = render_card_text(text, "user/cifar10-lt", "ir1", "ir1", metadata, dataset["train"])
    assert again.count("## Config `ir10`") == 1 and "## Config `ir1`" in again
