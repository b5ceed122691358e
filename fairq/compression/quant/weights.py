"""The weight audit: the weights a compressed model actually computes with, and their widths, whatever the method
(simulated INT-k, QAT, real INT8 / INT4, graph-simulated programs)."""
from __future__ import annotations

import sys

import torch
from torch import nn

from fairq.compression.core.backend import load_int8
from fairq.compression.core.fakequant import FakeQuantLayer
from fairq.compression.quant.qat import qat_layers


def _int8_held(qmodel: nn.Module) -> tuple[bool, bool]:
    """``(holds INT8 codes the int8 backend reads, holds a graph-simulated program)``: a converted program
    (real INT8 or the graph simulation) or dynamic INT8 Linear layers anywhere in ``qmodel``."""
    from torch.ao.nn.quantized import dynamic as nnqd

    int8 = sys.modules.get("fairq.compression.backends.int8")  # programs exist only once it is imported
    graph = sys.modules.get("fairq.compression.quant.graph_sim")
    kinds = (nnqd.Linear,) + ((int8.ProgramModel,) if int8 is not None else ())
    mods = list(qmodel.modules())
    return (any(isinstance(m, kinds) for m in mods),
            graph is not None and any(isinstance(m, graph.SimulatedProgram) for m in mods))


def effective_weights(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """``{module name: weight}`` the model actually computes with: dequantized codes for simulated INT-k layers,
    fake-quantized weights for QAT-prepared layers, the stored weights of FP32 Conv2d/Linear layers; real INT8
    models and graph-simulated ones (``simulation="graph"``) report through ``int8_effective_weights``."""
    if _int8_held(qmodel)[0]:
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
    int8_held, graph = _int8_held(qmodel)
    if graph:
        from fairq.compression.quant.graph_sim import program_layer_bits

        return program_layer_bits(qmodel)
    if int8_held:
        return {name: 8 for name in effective_weights(qmodel)}
    qat = qat_layers(qmodel)
    out = {}
    for name, mod in qmodel.named_modules():
        if isinstance(mod, FakeQuantLayer) or hasattr(mod, "packed_weight"):
            out[name] = mod.weight_bits
        elif name in qat:
            out[name] = getattr(mod, "weight_bits", None)
        elif isinstance(mod, (nn.Linear, nn.Conv2d)):
            out[name] = None
    return out
