"""Long-tail ResNets as transformers models, registered with the Auto classes on import."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_lt_resnet import LT_RESNET_PRESETS, LTResNetConfig
from .modeling_lt_resnet import LTResNetForImageClassification, LTResNetModel, LTResNetPreTrainedModel


AutoConfig.register(LTResNetConfig.model_type, LTResNetConfig, exist_ok=True)
AutoModel.register(LTResNetConfig, LTResNetModel, exist_ok=True)
AutoModelForImageClassification.register(LTResNetConfig, LTResNetForImageClassification, exist_ok=True)
# Saved folders carry the code and an `auto_map`, so they load with trust_remote_code=True anywhere.
LTResNetConfig.register_for_auto_class()
LTResNetModel.register_for_auto_class("AutoModel")
LTResNetForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "LT_RESNET_PRESETS",
    "LTResNetConfig",
    "LTResNetForImageClassification",
    "LTResNetModel",
    "LTResNetPreTrainedModel",
]
