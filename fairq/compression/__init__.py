"""Compression engine: one config dataclass per technique, a method registry and one entry point.

>>> qmodel = quantize(model, PTQConfig(weight_bits=4, act_bits=8), calibration_batches)
>>> qmodel = apply_quantization(model, "ptq_static", 4, calibration_batches)
"""
from .api import apply_quantization, effective_weights, layer_bits, quantize
from .config import DynamicConfig, MixedPrecisionConfig, PTQConfig, QATConfig
from .measure import measure_latency, measure_latency_paired, model_size, model_size_mb
from .mixed_precision import MixedPrecisionPlan
from .qat import convert_qat, prepare_qat
from .registry import METHODS, make_config, register_method


def __getattr__(name: str):
    """``FairnessAwareQuantizer`` lives in :mod:`fairq.mitigation`, which builds on this package (so it cannot be
    imported up front without a cycle); importing it also registers the mitigation methods."""
    if name == "FairnessAwareQuantizer":
        from fairq.mitigation import FairnessAwareQuantizer

        return FairnessAwareQuantizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "quantize", "apply_quantization", "effective_weights", "layer_bits", "model_size_mb", "model_size",
    "measure_latency", "measure_latency_paired", "PTQConfig", "DynamicConfig", "QATConfig", "MixedPrecisionConfig",
    "MixedPrecisionPlan",
    "METHODS", "register_method", "make_config", "prepare_qat", "convert_qat",
]
