"""Long-tail ResNets and slimmed ConvNeXts as transformers models, registered with the Auto classes on import."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_lt_resnet import LT_RESNET_PRESETS, LTResNetConfig
from .configuration_ltap_convnext import LTAPConvNextConfig
from .modeling_lt_resnet import LTResNetForImageClassification, LTResNetModel, LTResNetPreTrainedModel
from .modeling_ltap_convnext import LTAPConvNextForImageClassification, LTAPConvNextModel


for _config, _model, _classifier in (
    (LTResNetConfig, LTResNetModel, LTResNetForImageClassification),
    (LTAPConvNextConfig, LTAPConvNextModel, LTAPConvNextForImageClassification),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForImageClassification.register(_config, _classifier, exist_ok=True)
    # Saved folders carry the code and an `auto_map`, so they load with trust_remote_code=True anywhere.
    _config.register_for_auto_class()
    _model.register_for_auto_class("AutoModel")
    _classifier.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "LT_RESNET_PRESETS",
    "LTAPConvNextConfig",
    "LTAPConvNextForImageClassification",
    "LTAPConvNextModel",
    "LTResNetConfig",
    "LTResNetForImageClassification",
    "LTResNetModel",
    "LTResNetPreTrainedModel",
]
