"""The weight audit: the weights a compressed model actually computes with, and their widths, whatever the method
(simulated INT-k, QAT, real INT8 / INT4, graph-simulated programs)."""
from __future__ import annotations

import torch
from torch import nn

from fairq.compression.core.backend import load_int8
from fairq.compression.core.fakequant import FakeQuantLayer
from fairq.compression.quant.qat import qat_layers


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
        from fairq.compression.quant.graph_sim import program_layer_bits

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
