"""LTAP (Adaptive Pruner for Long-tailed Data) for the Hugging Face ecosystem.

Importing the package registers the long-tail ResNets with transformers' Auto classes.
"""

from .cost import ModelCost, model_cost
from .models import LT_RESNET_PRESETS, LTResNetConfig, LTResNetForImageClassification, LTResNetModel


__version__ = "0.1.0"

__all__ = [
    "LT_RESNET_PRESETS",
    "LTResNetConfig",
    "LTResNetForImageClassification",
    "LTResNetModel",
    "ModelCost",
    "model_cost",
]
