"""Compression engine: one config dataclass per technique, a method registry and one entry point.

>>> qmodel = quantize(model, PTQConfig(weight_bits=4, act_bits=8), calibration_batches)
>>> qmodel = apply_quantization(model, "ptq_static", 4, calibration_batches)
"""
from .api import apply_quantization, effective_weights, layer_bits, quantize
from .config import DynamicConfig, MixedPrecisionConfig, PTQConfig, QATConfig
from .measure import measure_latency, model_size, model_size_mb
from .mixed_precision import MixedPrecisionPlan
from .qat import convert_qat, prepare_qat
from .registry import METHODS, make_config, register_method

# FairnessAwareQuantizer (mitigation issue) will be re-exported from here as well.

__all__ = [
    "quantize", "apply_quantization", "effective_weights", "layer_bits", "model_size_mb", "model_size",
    "measure_latency", "PTQConfig", "DynamicConfig", "QATConfig", "MixedPrecisionConfig", "MixedPrecisionPlan",
    "METHODS", "register_method", "make_config", "prepare_qat", "convert_qat",
]
