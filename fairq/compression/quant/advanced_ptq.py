"""Advanced post-training quantization: the shared config of ``rtn``, ``gptq``, ``awq`` and ``smoothquant``, the
calibration-draw option they share, and ``rtn`` itself (a registration of ``ptq_static``'s round-to-nearest).

The four differ only in how the k-bit weights are chosen: ``rtn`` rounds each weight to its nearest level,
``gptq`` (:mod:`fairq.compression.quant.gptq`) compensates each column's rounding error on the columns not yet
quantized, ``awq`` / ``smoothquant`` (:mod:`fairq.compression.quant.smoothing`) first rescale input channels (a
function-preserving transform) and then round. All of them end in the same simulated INT-k layers (or, at W8A8
on CPU for ``rtn`` / ``awq`` / ``smoothquant``, the same real INT8 kernels) as ``ptq_static``, so the level audit
(:func:`~fairq.compression.effective_weights`) and the size measure hold unchanged.

Defaults are the like-for-like comparison of the post-training bias benchmark: weight-only (``act_bits=None``;
SmoothQuant: 8-bit activations) on the per-layer-input simulation (``simulation="layer_input"``: GPTQ's codes
are set per layer, which the deployed-graph simulation — BatchNorm folded and re-quantized — cannot take).

``calibration="balanced"`` computes the statistics an algorithm uses (RTN: activation ranges; GPTQ: the
Hessians; AWQ / SmoothQuant: per-channel activation magnitudes) from the run's group-balanced calibration draw
instead of the natural one; such a cell stores its natural-draw twin as a control and is judged against it
(``reference_method`` is the method itself). A text run has no groups to balance: both draws are the same.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from fairq.errors import UserError

from fairq.compression.core.config import PTQConfig, check_choice
from fairq.compression.quant.ptq import ptq_result
from fairq.compression.core.registry import MethodInputs, MethodResult, method_of, register_method

CALIBRATIONS = ("natural", "balanced")


@dataclass
class AdvancedPTQConfig(PTQConfig):
    """:class:`~fairq.compression.PTQConfig` with the advanced-PTQ defaults (weight-only, per-layer-input
    simulation) and ``calibration``: ``"natural"`` (the run's uniform draw) or ``"balanced"`` (the same number
    drawn equally per intersectional group; stored with its natural control cell)."""

    act_bits: int | None = None
    simulation: str = "layer_input"
    calibration: str = "natural"

    def __post_init__(self):
        super().__post_init__()
        check_choice("calibration", self.calibration, CALIBRATIONS)

    @property
    def reference_method(self) -> str:  # type: ignore[override]  (per setting, not per class)
        """A balanced-draw cell is judged against the same method on the natural draw; a natural cell against
        nothing (it is a plain quantization cell)."""
        return method_of(self).name if self.calibration == "balanced" else ""

    def controls(self) -> list["AdvancedPTQConfig"]:
        """The natural-draw twin of a balanced-draw setting (only the draw differs)."""
        return [dataclasses.replace(self, calibration="natural")] if self.calibration == "balanced" else []


def calibration_for(config: AdvancedPTQConfig, inputs: MethodInputs):
    """The calibration batches ``config.calibration`` asks for."""
    if config.calibration == "natural":
        return inputs.calibration
    if inputs.balanced_calibration is None:
        raise UserError(f"{method_of(config).name} with calibration='balanced' needs a group-balanced draw: pass "
                        "balanced_calibration_data=… (a run's phases draw it from the datamodule)")
    return inputs.balanced_calibration


def calibration_record(config: AdvancedPTQConfig) -> dict:
    return {"calibration_draw": config.calibration}


@dataclass
class RTNConfig(AdvancedPTQConfig):
    """Round-to-nearest: ``ptq_static``'s min-max weight quantization under the advanced-PTQ defaults.

    Its only calibration statistics are activation ranges, so ``calibration="balanced"`` needs ``act_bits``.
    """

    def __post_init__(self):
        super().__post_init__()
        if self.calibration == "balanced" and self.act_bits is None:
            raise ValueError("rtn with act_bits=None uses no calibration statistics, so calibration='balanced' "
                             "would change nothing; set act_bits (e.g. 8) or use gptq/awq/smoothquant")


def handle_rtn(model: nn.Module, config: RTNConfig, inputs: MethodInputs) -> MethodResult:
    """``ptq_static`` itself (:func:`~fairq.compression.quant.ptq.quantize_ptq`) on the chosen calibration draw."""
    return ptq_result(model, config, calibration_for(config, inputs)).replace(record=calibration_record(config))


NEEDS = {"calibration", "balanced_calibration"}
register_method("rtn", RTNConfig, handle_rtn, needs=NEEDS)
