"""Compression engine: one config dataclass per technique, a method registry and one entry point.

>>> result = compress(model, PTQConfig(weight_bits=4, act_bits=8), MethodInputs(calibration=batches))
>>> qmodel = quantize(model, PTQConfig(weight_bits=4, act_bits=8), calibration_batches)
>>> qmodel = apply_quantization(model, "ptq_static", 4, calibration_batches)

This package registers the quantization methods; the mitigations register from :mod:`fairq.mitigation` (a layer
above, never imported from here). :mod:`fairq.methods` loads every shipped method.
"""
from .api import apply_quantization, compress, effective_weights, layer_bits, quantize
from .advanced_ptq import AdvancedPTQConfig, RTNConfig
from .gptq import GPTQConfig
from .smoothing import AWQConfig, SmoothQuantConfig
from .config import DynamicConfig, MixedPrecisionConfig, PTQConfig, QATConfig
from .measure import measure_latency, measure_latency_paired, model_size, model_size_mb
from .mixed_precision import MixedPrecisionPlan
from .pruning import MagnitudePruneConfig, magnitude_prune
from .qat import convert_qat, prepare_qat
from .registry import METHODS, Artifact, MethodInputs, MethodResult, get_method, make_config, register_method
from .structured import ChannelPruneConfig, HeadPruneConfig, channel_prune, head_prune
from .sparsity import count_flops, count_params, load_sparse, save_sparse, sparsity_audit
from .soft_pruning import SoftHeadPruningConfig  # registers soft_head_pruning (head attribution: .heads)


__all__ = [
    "quantize", "apply_quantization", "effective_weights", "layer_bits", "model_size_mb", "model_size",
    "measure_latency", "measure_latency_paired", "PTQConfig", "DynamicConfig", "QATConfig", "MixedPrecisionConfig",
    "MixedPrecisionPlan", "METHODS", "register_method", "make_config", "get_method", "prepare_qat", "convert_qat",
    "compress", "MethodInputs", "MethodResult", "Artifact", "MagnitudePruneConfig", "magnitude_prune",
    "sparsity_audit", "save_sparse", "load_sparse", "count_params", "count_flops", "ChannelPruneConfig",
    "HeadPruneConfig", "channel_prune", "head_prune", "AdvancedPTQConfig", "RTNConfig", "GPTQConfig", "AWQConfig",
    "SmoothQuantConfig", "SoftHeadPruningConfig",
]
