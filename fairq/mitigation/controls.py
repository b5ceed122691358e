"""Control cells that make a mitigation's comparison like for like.

A mitigation built on the per-layer-input simulation (sensitive-layer preservation, fairness fine-tuning's fake-quant
layers) is judged against plain PTQ computed the same way: ``ptq_static`` with ``simulation="layer_input"`` at the
same widths, stored next to it. (Plain ``ptq_static`` simulates the deployed graph by default, and runs real INT8
kernels at W8A8 — other models; analysis only pairs cells of one backend and one simulation.)
"""
from __future__ import annotations

from fairq.compression.core.config import PTQConfig


def layer_input_ptq(config) -> PTQConfig:
    """Plain static PTQ on the per-layer-input simulation with ``config``'s widths and quantizer options."""
    opts = {k: getattr(config, k) for k in ("per_channel", "symmetric", "observer") if hasattr(config, k)}
    return PTQConfig(weight_bits=config.weight_bits, act_bits=config.act_bits, backend="simulated",
                     simulation="layer_input", **opts)
