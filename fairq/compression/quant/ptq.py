"""Static post-training quantization (``ptq_static``): real INT8 for W8A8 on CPU, simulated INT-k otherwise
(the deployed graph at k bits by default, ``simulation="layer_input"`` for the per-layer-input fake-quant)."""
from __future__ import annotations

from torch import nn

from fairq.compression.core.backend import load_int8, resolve_backend
from fairq.compression.core.config import PTQConfig
from fairq.compression.core.registry import MethodInputs, MethodResult, register_method
from fairq.compression.quant.simulate import quantize_layers, uniform_layer_bits


def ptq_result(model: nn.Module, config: PTQConfig, calibration_data=None) -> MethodResult:
    """Quantize ``model`` (modified in place, or replaced by a converted program) per ``config``; the quantized
    model with what it computes with (backend, widths, simulation, activation codes, engine)."""
    model.eval()
    if config.backend == "int4":
        from fairq.compression.backends import int4

        model = int4.convert_weight_only_int4(model, config)
        return MethodResult(model, weight_bits=4, act_bits=None, backend="int4",
                            simulated_layers=int4.simulated_layers(model), engine=int4.ENGINE)
    capable = config.weight_bits == 8 and config.act_bits == 8
    backend = resolve_backend(config.backend, capable, model)
    if backend == "int8":
        if calibration_data is None:
            raise ValueError("static INT8 quantization needs calibration_data")
        model = load_int8().convert_static_int8(model, config, calibration_data)
        return program_result(model, backend="int8")
    if config.simulation == "graph":
        from fairq.compression.quant.graph_sim import convert_static_simulated

        return program_result(convert_static_simulated(model, config, calibration_data), backend="simulated")
    quantize_layers(
        model, uniform_layer_bits(model, config.weight_bits, config.skip_modules),
        per_channel=config.per_channel, symmetric=config.symmetric, act_bits=config.act_bits,
        act_mode="static", observer=config.observer, percentile=config.percentile,
        act_symmetric=config.act_symmetric, calibration_data=calibration_data,
        calibration_batches=config.calibration_batches,
    )
    return MethodResult(model, weight_bits=config.weight_bits, act_bits=config.act_bits, backend="simulated",
                        simulation="layer_input")


def program_result(model: nn.Module, *, backend: str, **fields) -> MethodResult:
    """The result of a converted program (real INT8 :class:`~fairq.compression.backends.int8.Int8Model` or the
    graph simulation's :class:`~fairq.compression.quant.graph_sim.SimulatedProgram`), read off its fields."""
    return MethodResult(model, weight_bits=model.weight_bits, act_bits=model.act_bits, backend=backend,
                        simulation=model.simulation, act_qrange=model.act_qrange, engine=model.engine, **fields)


def quantize_ptq(model: nn.Module, config: PTQConfig, calibration_data=None) -> nn.Module:
    """Quantize ``model`` (modified in place) per ``config``; see :class:`PTQConfig` (:func:`ptq_result` also
    says what the model computes with)."""
    return ptq_result(model, config, calibration_data).model


def handle_ptq(model: nn.Module, config: PTQConfig, inputs: MethodInputs) -> MethodResult:
    return ptq_result(model, config, inputs.calibration)


register_method("ptq_static", PTQConfig, handle_ptq, needs={"calibration"})
