"""The entry point: ``quantize(model, config)``, its familiar wrapper and the weight audit."""
from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from . import dynamic, mixed_precision, ptq, qat  # noqa: F401  (each registers its method)
from .backend import TAGS, load_int8
from .fakequant import FakeQuantLayer
from .qat import qat_layers
from .registry import lookup, make_config

#: keyword arguments of ``apply_quantization`` that are run context (passed to the handler), not config fields.
CONTEXT_KEYS = {"train_fn", "train_loader", "val_data"}


def quantize(model: nn.Module, config, calibration_data=None, **ctx) -> nn.Module:
    """Return a quantized deep copy of ``model`` per ``config`` (a registered config, e.g. ``PTQConfig``).

    ``calibration_data``: any iterable of batches (see :func:`fairq.compression.data.iter_model_inputs`).
    ``ctx``: what a method needs beyond that — ``val_data`` (mixed precision), ``train_fn`` / ``train_loader``
    (QAT). The result carries ``fairq_method``, ``fairq_weight_bits``, ``fairq_act_bits``, ``fairq_backend``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize expects an nn.Module, got {type(model).__name__}")
    name, handler = lookup(config)
    out = handler(copy.deepcopy(model), config, calibration_data, **ctx)
    out.fairq_method = name
    out.fairq_config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None
    missing = [t for t in TAGS if not hasattr(out, t)]
    if missing:
        raise RuntimeError(f"handler for {name!r} did not set {missing} on the model")
    return out


def apply_quantization(model: nn.Module, method: str, bit_width=None, calibration_data=None, **options) -> nn.Module:
    """``quantize(model, make_config(method, bit_width, **fields), calibration_data, **ctx)``.

    ``bit_width`` fills the method's bits field (weights; for ``mixed_precision`` the average-bits budget).
    ``options`` are config fields, except ``train_fn``/``train_loader``/``val_data`` which go to the handler.
    """
    ctx = {k: options.pop(k) for k in list(options) if k in CONTEXT_KEYS}
    return quantize(model, make_config(method, bit_width, **options), calibration_data, **ctx)


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
