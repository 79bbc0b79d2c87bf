"""Publish a built long-tailed dataset on the Hub, loadable with `datasets.load_dataset` alone.

    python -m ltap_hf.data.publish --dataset_name cifar10_lt --imbalance_ratio 100 \\
        --data_dir path/to/cifar10 --repo_id user/cifar10-lt

then, anywhere, without this package: ``datasets.load_dataset("user/cifar10-lt", "ir100")``.

The splits go up through `datasets`' own `DatasetDict.push_to_hub` (Parquet with the image bytes
embedded, one config per call: ``ir100/train-*.parquet`` ...), which writes the card's YAML
(``configs``, ``dataset_info``). A second commit adds the card's text (source, class counts per
split, imbalance ratio, selection rule, seed and fingerprint, how to load it) and the config's
metadata as ``{config}/lt_metadata.json`` (what `read_lt_metadata` returns). Pushing another config
to the same repository adds its section to the card and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub import CommitInfo, CommitOperationAdd, DatasetCard, HfApi
from huggingface_hub.errors import EntryNotFoundError

from .loading import LT_BUILDERS, METADATA_FILE, load_lt_dataset
from .metadata import read_lt_metadata


# Classes beyond which the card gives the count range instead of one table row per class
# (iNaturalist has 8,142); the full counts are in lt_metadata.json either way.
MAX_TABLE_CLASSES = 200
SPLIT_ORDER = ("train", "validation", "test")
_SECTION = re.compile(r"<!-- ltap-hf config (?P<name>\S+) -->\n.*?<!-- /ltap-hf config (?P=name) -->\n", re.DOTALL)


def push_lt_dataset(
    dataset: datasets.DatasetDict,
    repo_id: str,
    config_name: str | None = None,
    *,
    set_default: bool | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    max_shard_size: int | str | None = None,
) -> CommitInfo:
    """Push a `DatasetDict` built by `load_lt_dataset` as config `config_name` of dataset repo `repo_id`.

    Args:
        dataset: splits built by this package (their metadata is read with `read_lt_metadata`).
        repo_id: ``"user/name"`` of a dataset repository (created if needed).
        config_name: the config to load it by; ``None``: the one it was built as (``"ir100"``;
            ``"default"`` for ImageNet-LT and iNaturalist).
        set_default: make it the repository's default config (`DatasetDict.push_to_hub`).
        private, token, max_shard_size: passed to `DatasetDict.push_to_hub`.
        commit_message: of the data commit (default ``"Upload {config} of {dataset}"``).

    Returns:
        The `CommitInfo` of the last commit (the card and ``{config}/lt_metadata.json``).
    """
    metadata = read_lt_metadata(dataset)
    config_name = config_name or metadata["config"]
    data_dir = config_name if config_name != "default" else "data"  # where push_to_hub puts the config
    dataset.push_to_hub(
        repo_id,
        config_name=config_name,
        set_default=set_default,
        data_dir=data_dir,
        commit_message=commit_message or f"Upload {config_name} of {metadata['dataset']}",
        private=private,
        token=token,
        max_shard_size=max_shard_size,
    )
    api = HfApi(endpoint=datasets.config.HF_ENDPOINT, token=token)
    repo_id = api.repo_info(repo_id, repo_type="dataset").id
    try:
        card_path = api.hf_hub_download(repo_id, "README.md", repo_type="dataset")
        card = DatasetCard(Path(card_path).read_text(encoding="utf-8"))
    except EntryNotFoundError:
        card = DatasetCard("")
    first = next(iter(dataset.values()))
    card.data.pretty_name = card.data.get("pretty_name") or _pretty_name(metadata)
    card.data.task_categories = sorted({*(card.data.get("task_categories") or []), "image-classification"})
    card.data.tags = sorted({*(card.data.get("tags") or []), "long-tailed", "ltap-hf"})
    card.text = render_card_text(card.text, repo_id, config_name, data_dir, metadata, first)
    metadata_json = json.dumps(metadata, indent=2, sort_keys=True).encode()
    return api.create_commit(
        repo_id,
        repo_type="dataset",
        operations=[
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()),
            CommitOperationAdd(path_in_repo=f"{data_dir}/{METADATA_FILE}", path_or_fileobj=metadata_json),
        ],
        commit_message=f"Dataset card and {METADATA_FILE} of {config_name}",
    )


def _classes(number: int) -> str:
    return f"{number} class" if number == 1 else f"{number} classes"


def _pretty_name(metadata: dict[str, Any]) -> str:
    summary = metadata.get("summary") or metadata["dataset"]
    return summary.split(":", 1)[0]


def _source(metadata: dict[str, Any]) -> str:
    """Where the images came from, without local paths (the card is public)."""
    source = metadata.get("source")
    if isinstance(source, dict):  # official split files over a local image root
        files = ", ".join(f"`{Path(path).name}`" for path in source.get("split_files", {}).values())
        return f"the official split files ({files}) over a local copy of the images"
    source = str(source)
    if source.startswith("hub: "):
        return f"the Hub dataset `{source[5:]}`"
    if source.startswith("parquet: "):
        files = sorted({Path(path).name for path in source[len("parquet: "):].split(", ")})
        return "local Parquet files of the source (" + ", ".join(f"`{name}`" for name in files) + ")"
    if source.startswith("pickle: "):
        return "the source's python release archive"
    return f"`{source}`"


def _load_snippet(repo_id: str, config_name: str) -> list[str]:
    """The card's lines that load one config with `datasets` alone."""
    return ["```python", "from datasets import load_dataset", "", f'ds = load_dataset("{repo_id}", "{config_name}")', "```"]


def _config_section(
    repo_id: str, config_name: str, data_dir: str, metadata: dict[str, Any], split: datasets.Dataset
) -> str:
    counts: dict[str, list[int]] = metadata["class_counts"]
    splits = sorted(counts, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
    names = split.features["label"].names
    rows = [
        f"<!-- ltap-hf config {config_name} -->",
        f"## Config `{config_name}`",
        "",
        *_load_snippet(repo_id, config_name),
        "",
        "| | |",
        "|---|---|",
        f"| built by | `ltap_hf.data.load_lt_dataset({metadata['dataset']!r}, ...)`, config `{metadata['config']}` |",
        f"| source | {_source(metadata)} |",
        f"| imbalance ratio | {metadata.get('imbalance_ratio')} |",
        f"| selection | {metadata.get('selection')} |",
    ]
    for key in ("profile", "n_max", "seed", "val_per_class", "val_shortfall"):
        if metadata.get(key) is not None:
            rows.append(f"| {key.replace('_', ' ')} | {metadata[key]} |")
    rows += [
        f"| fingerprint (SHA-256 of the selected rows) | `{metadata['fingerprint']}` |",
        "| images per split | " + ", ".join(f"{s}: {sum(counts[s]):,}" for s in splits) + " |",
        "",
    ]
    if metadata.get("validation_from_train"):
        moved = ", ".join(f"{names[int(c)]}: {n}" for c, n in metadata["validation_from_train"].items())
        rows += [f"Validation images taken from the selected training images (too few left over): {moved}.", ""]
    if metadata.get("validation_short_classes"):
        short = ", ".join(f"{names[int(c)]}: {n}" for c, n in metadata["validation_short_classes"].items())
        rows += [f"Classes with fewer than val_per_class validation images: {short}.", ""]
    groups = metadata.get("groups", {})
    rows += [
        "Many / medium / few (more than 100, 20 to 100, fewer than 20 training images): "
        + " / ".join(_classes(len(groups.get(g, []))) for g in ("many", "medium", "few")) + ".",
        "",
    ]
    if len(names) <= MAX_TABLE_CLASSES:
        rows += ["| label | class | " + " | ".join(splits) + " |", "|---|---|" + "---|" * len(splits)]
        rows += [f"| {c} | {name} | " + " | ".join(str(counts[s][c]) for s in splits) + " |" for c, name in enumerate(names)]
    else:
        rows += [
            f"Training images per class: {max(counts['train'])} down to {min(counts['train'])} "
            f"({len(names):,} classes).",
        ]
    rows += ["", f"Every count, the groups and the selection: `{data_dir}/{METADATA_FILE}`.",
             f"<!-- /ltap-hf config {config_name} -->", ""]
    return "\n".join(rows)


def render_card_text(
    previous: str,
    repo_id: str,
    config_name: str,
    data_dir: str,
    metadata: dict[str, Any],
    split: datasets.Dataset,
) -> str:
    """The card's Markdown: a header, one section per config (this one replaced or added, those of
    earlier pushes kept from `previous`), the citation."""
    sections = {match["name"]: match[0] for match in _SECTION.finditer(previous or "")}
    sections[config_name] = _config_section(repo_id, config_name, data_dir, metadata, split)
    homepage = split.info.homepage
    header = [
        f"# {_pretty_name(metadata)}",
        "",
        metadata.get("summary") or "",
        "",
        f"Source: {homepage}" if homepage else "",
        "",
        "Columns: `image` (`Image`) and `label` (`ClassLabel`). Splits `train`, `validation` and `test` "
        "are disjoint; `validation` is the balanced split for model selection and LTAP's class vote, "
        "`test` the one to report. Load a config with `datasets` alone (configs: "
        + ", ".join(f"`{name}`" for name in sorted(sections)) + "):",
        "",
        *_load_snippet(repo_id, config_name),
        "",
        "Published with ltap-hf (`ltap_hf.data.push_lt_dataset`); `ltap_hf.data.load_lt_dataset` rebuilds "
        "the same rows from the source (same fingerprint).",
        "",
    ]
    citation = split.info.citation
    footer = ["## Citation", "", "```bibtex", citation.strip(), "```", ""] if citation else []
    return "\n".join(header) + "\n" + "".join(sections[name] + "\n" for name in sorted(sections)) + "\n".join(footer)


def main(argv: Sequence[str] | None = None) -> CommitInfo:
    """``python -m ltap_hf.data.publish``: build (or reuse from the cache) and push one config."""
    parser = argparse.ArgumentParser(
        prog="python -m ltap_hf.data.publish", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset_name", required=True, choices=sorted(LT_BUILDERS))
    parser.add_argument("--repo_id", required=True, help="user/name of the dataset repository")
    parser.add_argument("--imbalance_ratio", type=float, help="CIFAR-LT and digits-LT (default: the builder's)")
    parser.add_argument("--data_dir", help="local source, as for load_lt_dataset")
    parser.add_argument("--split_dir", help="folder of the official split files (ImageNet-LT, iNaturalist)")
    parser.add_argument("--cache_dir", help="where the built dataset is cached")
    parser.add_argument("--val_per_class", type=int, help="validation images per class (default: the builder's)")
    parser.add_argument("--val_shortfall", choices=("from_train", "leave_short"))
    parser.add_argument("--seed", type=int, help="seed of the selection (default: 0)")
    parser.add_argument("--config_name", help="config name on the Hub (default: the built one, e.g. ir100)")
    parser.add_argument("--set_default", action="store_true", help="make it the repository's default config")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--max_shard_size", help="e.g. 500MB")
    args = parser.parse_args(argv)
    dataset = load_lt_dataset(
        args.dataset_name, args.imbalance_ratio, data_dir=args.data_dir, cache_dir=args.cache_dir,
        val_per_class=args.val_per_class, val_shortfall=args.val_shortfall, seed=args.seed, split_dir=args.split_dir,
    )
    commit = push_lt_dataset(
        dataset, args.repo_id, args.config_name, set_default=args.set_default or None,
        private=args.private or None, max_shard_size=args.max_shard_size,
    )
    print(f"pushed {args.dataset_name} to {args.repo_id}: {commit.commit_url}")
    return commit


if __name__ == "__main__":
    main()
