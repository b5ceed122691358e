"""Choosing between real INT8 kernels and simulated INT-k."""
from __future__ import annotations

import importlib
from types import ModuleType

from torch import nn

from fairq.compression.core.data import model_device

def load_int8() -> ModuleType:
    """``fairq.compression.backends.int8`` (real INT8 conversion), imported on first use: it pulls in torchao's PT2E
    stack, which simulated INT-k work never needs."""
    return importlib.import_module("fairq.compression.backends.int8")


def resolve_backend(requested: str, int8_capable: bool, model: nn.Module) -> str:
    """``"int8"`` or ``"simulated"`` for a ``backend`` setting ("auto", "int8", "simulated").

    ``auto`` picks real INT8 when the widths allow it (``int8_capable``) and the model is on CPU (the INT8
    kernels are CPU ones; a CUDA model is simulated); ``int8`` insists and raises a clear error otherwise.
    """
    if requested == "simulated" or (requested == "auto" and not int8_capable):
        return "simulated"
    on_cpu = model_device(model).type == "cpu"
    if requested == "int8":
        if not int8_capable:
            raise ValueError("backend='int8' needs 8-bit weights and activations")
        if not on_cpu:
            raise ValueError(f"real INT8 kernels run on CPU; the model is on {model_device(model)} "
                             "(move it with .cpu() or use backend='simulated')")
        return "int8"
    return "int8" if on_cpu else "simulated"

