"""Compression engine: one config dataclass per technique, a method registry and one entry point.

>>> result = compress(model, PTQConfig(weight_bits=4, act_bits=8), MethodInputs(calibration=batches))
>>> qmodel = quantize(model, PTQConfig(weight_bits=4, act_bits=8), calibration_batches)
>>> qmodel = apply_quantization(model, "ptq_static", 4, calibration_batches)

Sub-packages by job: ``core`` (the contract: registry, configs, entry points, measurement), ``quant``
(quantization and its simulations), ``backends`` (real INT8 / INT4 kernels), ``prune``, ``distill`` and
``localize`` (head attribution, soft head pruning). This package registers the quantization methods; the mitigations register from :mod:`fairq.mitigation` (a layer
above, never imported from here). :mod:`fairq.methods` loads every shipped method.
"""
# import order = registration order (quantizers, advanced PTQ, pruning, soft head pruning), as METHODS lists them
from fairq.compression.api import apply_method, apply_quantization, compress, effective_weights, layer_bits, quantize
from fairq.compression.quant.advanced_ptq import AdvancedPTQConfig, RTNConfig
from fairq.compression.quant.gptq import GPTQConfig
from fairq.compression.quant.smoothing import AWQConfig, SmoothQuantConfig
from fairq.compression.quant.mixed_precision import MixedPrecisionPlan
from fairq.compression.quant.qat import convert_qat, prepare_qat
from fairq.compression.core.config import DynamicConfig, MixedPrecisionConfig, PTQConfig, QATConfig
from fairq.compression.core.measure import measure_latency, measure_latency_paired, model_size, model_size_mb
from fairq.compression.core.registry import (METHODS, Artifact, MethodInputs, MethodResult, get_method, make_config,
                                             register_method)
from fairq.compression.core.sparsity import count_flops, count_params, load_sparse, save_sparse, sparsity_audit
from fairq.compression.prune.pruning import MagnitudePruneConfig, magnitude_prune
from fairq.compression.prune.structured import ChannelPruneConfig, HeadPruneConfig, channel_prune, head_prune
from fairq.compression.localize.soft_pruning import SoftHeadPruningConfig  # registers soft_head_pruning

__all__ = [
    "quantize", "apply_quantization", "apply_method", "effective_weights", "layer_bits", "model_size_mb", "model_size",
    "measure_latency", "measure_latency_paired", "PTQConfig", "DynamicConfig", "QATConfig", "MixedPrecisionConfig",
    "MixedPrecisionPlan", "METHODS", "register_method", "make_config", "get_method", "prepare_qat", "convert_qat",
    "compress", "MethodInputs", "MethodResult", "Artifact", "MagnitudePruneConfig", "magnitude_prune",
    "sparsity_audit", "save_sparse", "load_sparse", "count_params", "count_flops", "ChannelPruneConfig",
    "HeadPruneConfig", "channel_prune", "head_prune", "AdvancedPTQConfig", "RTNConfig", "GPTQConfig", "AWQConfig",
    "SmoothQuantConfig", "SoftHeadPruningConfig",
]
