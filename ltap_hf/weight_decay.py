"""Which weight decay an optimizer adds to the gradient, so that the criteria see the gradient it steps with.

ALGORITHM.md counts the term λw as part of g where the optimizer *couples* the decay (adds λw to the
gradient before its update: SGD, Adam, Adagrad, RMSprop), and not where it *decouples* it (shrinks the
weights apart from the gradient: AdamW, Adafactor, Lion). The optimizer actually built decides: the
nearest class in its MRO that is known here (a subclass of SGD counts as SGD) or, for the torch Adam
family, the `decoupled_weight_decay` entry of its parameter groups. Classes are known by name, so that
the optional packages of the optimizers TrainingArguments names need not be installed.
"""

from __future__ import annotations

from torch.optim import Optimizer


# Classes whose `weight_decay` is added to the gradient before the update.
COUPLED_DECAY = frozenset({
    "SGD", "Adagrad", "RMSprop", "Adamax", "ASGD", "Adadelta",  # torch.optim
    "RMSprop8bit", "RMSprop32bit", "Adagrad8bit", "Adagrad32bit",  # bitsandbytes (`rmsprop_bnb*`)
    "SGDScheduleFree",  # schedulefree (`schedule_free_sgd`)
})

# Classes that shrink the weights themselves, apart from the gradient.
DECOUPLED_DECAY = frozenset({
    "AdamW", "Adafactor",  # torch.optim (`adamw_torch*`), transformers (`adafactor`)
    "AdamW8bit", "AdamW32bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit",  # bitsandbytes
    "Lion", "Lion8bit", "Lion32bit", "PagedLion", "PagedLion8bit", "PagedLion32bit",
    "AdEMAMix", "AdEMAMix8bit", "AdEMAMix32bit", "PagedAdEMAMix", "PagedAdEMAMix8bit", "PagedAdEMAMix32bit",
    "AdamW4bit", "_AdamW",  # torchao (`adamw_torch_4bit`, `adamw_torch_8bit`)
    "AnyPrecisionAdamW", "GaLoreAdamW", "GaLoreAdamW8bit", "GaLoreAdafactor", "GrokAdamW", "StableAdamW",
    "AdamWScheduleFree", "RAdamScheduleFree", "APOLLOAdamW",
})

# Classes with a per-group switch between the two (torch >= 2.6 for Adam; NAdam and RAdam earlier).
SWITCHED_DECAY = frozenset({"Adam", "NAdam", "RAdam"})

# Fused optimizers that update inside backward: there is no gradient left to score.
NO_GRADIENT = frozenset({"Lomo", "AdaLomo"})


def coupled_weight_decay(optimizer: Optimizer) -> dict[int, float]:
    """`id(parameter)` -> λ that the optimizer adds to that parameter's gradient (0.0 where it decouples
    the decay or applies none).

    Args:
        optimizer: the optimizer as built (not Accelerate's wrapper around it).

    Raises:
        ValueError: for an optimizer that leaves no gradient to score (LOMO), or one with a non-zero
            `weight_decay` whose kind of decay this module does not know.
    """
    known = COUPLED_DECAY | DECOUPLED_DECAY | SWITCHED_DECAY | NO_GRADIENT
    name = next((c.__name__ for c in type(optimizer).__mro__ if c.__name__ in known), type(optimizer).__name__)
    if name in NO_GRADIENT:
        raise ValueError(f"{name} updates the weights inside backward and leaves no gradient for LTAP's criteria; "
                         "use another optimizer (e.g. optim='sgd' or 'adamw_torch')")
    decay = {}
    for group in optimizer.param_groups:
        weight_decay = float(group.get("weight_decay", 0.0) or 0.0)
        if name in SWITCHED_DECAY:
            coupled = not group.get("decoupled_weight_decay", False)
        elif name in COUPLED_DECAY or name in DECOUPLED_DECAY or weight_decay == 0:
            coupled = name in COUPLED_DECAY
        else:
            raise ValueError(
                f"LTAP cannot tell whether {type(optimizer).__module__}.{type(optimizer).__name__} adds its weight decay to the gradient "
                f"(which the criteria must then include) or applies it to the weights apart from it; set "
                "weight_decay=0, or use an optimizer TrainingArguments names (e.g. optim='sgd' or 'adamw_torch')"
            )
        decay.update({id(p): weight_decay if coupled else 0.0 for p in group["params"]})
    return decay
