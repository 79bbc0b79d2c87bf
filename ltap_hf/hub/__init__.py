"""Sharing pruned models: sparse safetensors checkpoints, model cards with per-class results, Hub push.

The `lt_accuracy/` folder beside this file is an `evaluate` metric module, loaded by path.
"""

from ..models.sparse_safetensors import SPARSE_FORMAT, SPARSE_WEIGHTS_NAME, load_sparse_file, save_sparse_file
from .model_card import PruningReport, render_model_card, worst_hit_classes
from .push import push_pruned_to_hub
from .sparse import load_sparse_pretrained, save_sparse_pretrained


__all__ = [
    "SPARSE_FORMAT",
    "SPARSE_WEIGHTS_NAME",
    "PruningReport",
    "load_sparse_file",
    "load_sparse_pretrained",
    "push_pruned_to_hub",
    "render_model_card",
    "save_sparse_file",
    "save_sparse_pretrained",
    "worst_hit_classes",
]
