"""Dynamic quantization (``ptq_dynamic``) of Linear layers: real INT8 kernels or simulated k-bit."""
from __future__ import annotations

from torch import nn

from fairq.compression.core.backend import load_int8, resolve_backend, tag_model
from fairq.compression.core.config import DynamicConfig
from fairq.compression.core.registry import MethodInputs, MethodResult, register_method
from fairq.compression.quant.simulate import quantize_layers, uniform_layer_bits


def quantize_dynamic(model: nn.Module, config: DynamicConfig) -> nn.Module:
    """Quantize the Linear layers of ``model`` (in place); no calibration data is needed."""
    model.eval()
    backend = resolve_backend(config.backend, config.bits == 8, model)
    if backend == "int8":
        model = load_int8().convert_dynamic_int8(model, config)
        return tag_model(model, weight_bits=8, act_bits=8, backend="int8")
    quantize_layers(
        model, uniform_layer_bits(model, config.bits, config.skip_modules, types=(nn.Linear,)),
        per_channel=config.per_channel, symmetric=config.symmetric, act_bits=config.act_bits,
        act_mode="dynamic",
    )
    return tag_model(model, weight_bits=config.bits, act_bits=config.act_bits, backend="simulated")


def handle_dynamic(model: nn.Module, config: DynamicConfig, inputs: MethodInputs) -> MethodResult:
    return MethodResult(quantize_dynamic(model, config))


register_method("ptq_dynamic", DynamicConfig, handle_dynamic)
