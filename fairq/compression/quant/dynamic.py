"""Dynamic quantization (``ptq_dynamic``) of Linear layers: real INT8 kernels or simulated k-bit."""
from __future__ import annotations

from torch import nn

from fairq.compression.core.backend import load_int8, resolve_backend
from fairq.compression.core.config import DynamicConfig
from fairq.compression.core.registry import MethodInputs, MethodResult, register_method
from fairq.compression.quant.simulate import quantize_layers, uniform_layer_bits


def dynamic_result(model: nn.Module, config: DynamicConfig) -> MethodResult:
    """Quantize the Linear layers of ``model`` (in place, or a converted copy for real INT8); the quantized model
    with what it computes with."""
    model.eval()
    backend = resolve_backend(config.backend, config.bits == 8, model)
    if backend == "int8":
        int8 = load_int8()
        return MethodResult(int8.convert_dynamic_int8(model, config), weight_bits=8, act_bits=8, backend="int8",
                            act_qrange=int8.DYNAMIC_ACT_QRANGE, engine=int8.ENGINE_DYNAMIC)
    quantize_layers(
        model, uniform_layer_bits(model, config.bits, config.skip_modules, types=(nn.Linear,)),
        per_channel=config.per_channel, symmetric=config.symmetric, act_bits=config.act_bits,
        act_mode="dynamic",
    )
    return MethodResult(model, weight_bits=config.bits, act_bits=config.act_bits, backend="simulated",
                        simulation="layer_input")


def quantize_dynamic(model: nn.Module, config: DynamicConfig) -> nn.Module:
    """Quantize the Linear layers of ``model`` (in place); no calibration data is needed."""
    return dynamic_result(model, config).model


def handle_dynamic(model: nn.Module, config: DynamicConfig, inputs: MethodInputs) -> MethodResult:
    return dynamic_result(model, config)


register_method("ptq_dynamic", DynamicConfig, handle_dynamic)
