"""The entry point: ``quantize(model, config)``, its familiar wrapper and the weight audit."""
from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from . import dynamic, mixed_precision, ptq, qat  # noqa: F401  (each registers its method)
from .backend import load_int8
from .fakequant import FakeQuantLayer
from .qat import qat_layers
from .registry import MethodInputs, MethodResult, make_config, method_of


def compress(model: nn.Module, config, inputs: MethodInputs | None = None) -> MethodResult:
    """Run the registered method of ``config`` on a deep copy of ``model``; the engine's one entry point.

    ``inputs``: what the run provides (:class:`~fairq.compression.registry.MethodInputs`). Returns the handler's
    :class:`~fairq.compression.registry.MethodResult` (model, widths, backend, record, artifacts).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress expects an nn.Module, got {type(model).__name__}")
    method = method_of(config)
    result = method.handler(copy.deepcopy(model), config, inputs or MethodInputs())
    if not isinstance(result, MethodResult):
        raise TypeError(f"the handler of {method.name!r} returned {type(result).__name__}, not a MethodResult")
    return result


def quantize(model: nn.Module, config, calibration_data=None, **inputs) -> nn.Module:
    """Return a quantized deep copy of ``model`` per ``config`` (a registered config, e.g. ``PTQConfig``).

    ``calibration_data``: any iterable of batches (see :func:`fairq.compression.data.iter_model_inputs`).
    ``inputs``: what a method needs beyond that — ``val_data`` (mixed precision), ``train_fn`` / ``train_loader``
    (QAT), … (the fields of :class:`~fairq.compression.registry.MethodInputs`). :func:`compress` also returns the
    method's record and artifacts.
    """
    return compress(model, config, MethodInputs.from_kwargs(calibration_data, **inputs)).model


def apply_quantization(model: nn.Module, method: str, bit_width=None, calibration_data=None, **options) -> nn.Module:
    """``quantize(model, make_config(method, bit_width, **fields), calibration_data, **inputs)``.

    ``bit_width`` fills the method's bits field (weights; for ``mixed_precision`` the average-bits budget).
    ``options`` are config fields, except run inputs (``train_fn``, ``train_loader``, ``val_data``, … — the
    :class:`~fairq.compression.registry.MethodInputs` names), which go to the handler.
    """
    names = {f.name for f in dataclasses.fields(MethodInputs)} | set(MethodInputs.ALIASES)
    inputs = {k: options.pop(k) for k in list(options) if k in names}
    return quantize(model, make_config(method, bit_width, **options), calibration_data, **inputs)


def effective_weights(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """``{module name: weight}`` the model actually computes with: dequantized codes for simulated INT-k layers,
    fake-quantized weights for QAT-prepared layers, the stored weights of FP32 Conv2d/Linear layers; real INT8
    models and graph-simulated ones (``simulation="graph"``) report through ``int8_effective_weights``."""
    if getattr(qmodel, "fairq_backend", None) == "int8" or getattr(qmodel, "fairq_simulation", None) == "graph":
        return load_int8().int8_effective_weights(qmodel)
    qat = qat_layers(qmodel)
    out = {}
    for name, mod in qmodel.named_modules():
        if isinstance(mod, FakeQuantLayer) or hasattr(mod, "packed_weight"):  # simulated / real int4 layers
            out[name] = mod.weight.detach().clone()
        elif name in qat:
            with torch.no_grad():
                out[name] = mod.weight_fake_quant(mod.weight.detach()).clone()
        elif isinstance(mod, (nn.Linear, nn.Conv2d)):
            out[name] = mod.weight.detach().clone()
    return out


def layer_bits(qmodel: nn.Module) -> dict[str, int | None]:
    """``{module name: weight bits}`` (``None`` = FP32) for the layers :func:`effective_weights` reports."""
    if getattr(qmodel, "fairq_backend", None) == "int8":
        return {name: 8 for name in effective_weights(qmodel)}
    if getattr(qmodel, "fairq_simulation", None) == "graph":
        from .graph_sim import program_layer_bits

        return program_layer_bits(qmodel)
    qat_cfg = getattr(qmodel, "fairq_qat_config", None)
    qat = qat_layers(qmodel)
    out = {}
    for name, mod in qmodel.named_modules():
        if isinstance(mod, FakeQuantLayer) or hasattr(mod, "packed_weight"):
            out[name] = mod.weight_bits
        elif name in qat:
            out[name] = qat_cfg.weight_bits if qat_cfg is not None else None
        elif isinstance(mod, (nn.Linear, nn.Conv2d)):
            out[name] = None
    return out
