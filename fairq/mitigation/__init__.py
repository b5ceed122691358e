"""Fairness mitigations for quantization, each a registered compression method with its config dataclass.

* ``bias_aware_calibration`` — :class:`BiasAwareCalibrationConfig`: static PTQ calibrated on a group-balanced draw.
* ``fairness_finetune`` — :class:`FairnessFinetuneConfig`: fake-quant fine-tuning with a group-gap penalty.
* ``sensitive_layer_preservation`` — :class:`SensitiveLayerPreservationConfig`: the layers that hurt the worst
  group most stay at higher precision under a size budget.
* ``fairness_aware_quantizer`` — :class:`FairnessAwareQuantizerConfig` / :class:`FairnessAwareQuantizer`: the
  cheapest of the above that meets a DP/EO-gap constraint on validation data.

Importing this package registers them, so ``fairq.compression.apply_quantization(model, "fairness_finetune", 4,
calib, train_loader=...)`` works like any other method.
"""
from fairq.compression import apply_quantization  # re-exported: ``fairq.apply_quantization`` knows these methods

from .bias_aware_calibration import BiasAwareCalibrationConfig, balanced_draw
from .fairness_finetune import FairnessFinetuneConfig
from .penalties import group_gap_penalty, make_penalty
from .sensitive_layer_preservation import SensitiveLayerPreservationConfig, group_layer_sensitivity
from .fairness_aware import (  # noqa: I001  (registers last: its ladder names the methods above)
    ConstraintNotMetWarning, FairnessAwareQuantizer, FairnessAwareQuantizerConfig,
)

from fairq.compression.core.registry import registered_methods  # noqa: E402

#: the registered methods of the ``mitigation`` family (read from the registry, not listed by hand).
MITIGATION_METHODS = tuple(registered_methods("mitigation"))

__all__ = [
    "apply_quantization",    "BiasAwareCalibrationConfig", "FairnessFinetuneConfig", "SensitiveLayerPreservationConfig",
    "FairnessAwareQuantizerConfig", "FairnessAwareQuantizer", "ConstraintNotMetWarning", "MITIGATION_METHODS",
    "balanced_draw", "group_gap_penalty", "make_penalty", "group_layer_sensitivity",
]
