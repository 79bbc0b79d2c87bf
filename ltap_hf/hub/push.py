"""Publishing a pruned model on the Hub: sparse checkpoint, image processor, model card and its plots."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence

from huggingface_hub import CommitInfo, HfApi, ModelCard
from transformers import PreTrainedModel
from transformers.image_processing_utils import BaseImageProcessor

from .sparse import save_sparse_pretrained


def push_pruned_to_hub(
    model: PreTrainedModel,
    repo_id: str,
    image_processor: BaseImageProcessor | None = None,
    card: ModelCard | None = None,
    plots: Sequence[str | os.PathLike] = (),
    *,
    commit_message: str = "Upload pruned model",
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Creates `repo_id` if needed and uploads, in one commit, the model as a sparse checkpoint
    (`save_sparse_pretrained`), the image processor, the card as `README.md` and the plot files at
    the repo's root (where the card's image links point).

    The Hub endpoint is `huggingface_hub`'s (`HF_ENDPOINT`). Files already in the repo and not written
    here are kept.

    Returns:
        The commit's `CommitInfo` (its `oid`, `commit_url` ...).
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        save_sparse_pretrained(model, folder, image_processor)
        if card is not None:
            card.save(os.path.join(folder, "README.md"))
        for plot in plots:
            shutil.copy(plot, folder)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
        )
