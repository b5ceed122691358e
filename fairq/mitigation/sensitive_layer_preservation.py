"""Sensitive-layer preservation (``sensitive_layer_preservation``): keep the layers whose quantization hurts the
worst-off group most at higher precision, under a size budget.

Per-group sensitivity is the mixed-precision sensitivity (:func:`fairq.compression.quant.sensitivity.layer_sensitivity`:
the validation loss increase / accuracy drop when only that layer's weights are quantized) measured on each
intersectional group's validation samples separately. Because loss and accuracy are sample means, the overall
change is the size-weighted mean of the group changes, so no extra pass is needed. A layer's score is

* ``worst_group`` — the largest change over the groups (how much it hurts the group it hurts most), or
* ``disparity`` — that largest group change minus the overall change (how unevenly it hurts).

Allocation reuses the mixed-precision greedy allocator (:func:`fairq.compression.quant.mixed_precision.allocate_bits`)
with two widths — ``weight_bits`` for every layer and ``keep_bits`` (``None`` = FP32) for preserved ones — and
the parameter-weighted average weight width as the budget; ``max_layers`` caps how many layers are preserved.
Groups with fewer than ``min_group_size`` validation samples are left out (their estimate is noise).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fairq.errors import InfeasibleError
from fairq.compression.core.config import OBSERVERS, check_bits, check_choice, check_positive, MethodConfig
from fairq.compression.core.measure import model_size
from fairq.compression.quant.mixed_precision import FP32_BITS, MixedPrecisionPlan, allocate_bits
from fairq.compression.core.modules import quantizable_layers
from fairq.compression.core.registry import Artifact, MethodInputs, MethodResult, register_method
from fairq.compression.quant.sensitivity import layer_sensitivity
from fairq.compression.quant.simulate import quantize_layers

from .batches import gather, group_ids, take

log = logging.getLogger(__name__)

SCORES = ("worst_group", "disparity")


@dataclass
class SensitiveLayerPreservationConfig(MethodConfig):
    """Uniform ``weight_bits`` (``act_bits`` static inputs) except the most group-sensitive layers, kept at
    ``keep_bits`` (``None`` = FP32) while the parameter-weighted mean weight width stays ≤ ``budget_avg_bits``
    (default ``weight_bits + 1``) and at most ``max_layers`` layers are kept. ``sensitivity``: ``loss`` or
    ``accuracy``; ``score``: ``worst_group`` or ``disparity`` (module docstring); ``val_batches``: validation
    batches read; ``min_group_size``: smallest group (validation samples) measured.
    """

    reference_method: ClassVar[str] = "ptq_static"

    weight_bits: int = 4
    act_bits: int | None = 8
    keep_bits: int | None = None
    budget_avg_bits: float | None = None
    max_layers: int | None = None
    sensitivity: str = "loss"
    score: str = "worst_group"
    min_group_size: int = 10
    val_batches: int | None = 4
    per_channel: bool = True
    symmetric: bool = True
    observer: str = "minmax"
    calibration_batches: int | None = 32

    def controls(self) -> list:
        """Plain PTQ on the same (per-layer-input) simulation at the same widths (:mod:`.controls`)."""
        from .controls import layer_input_ptq

        return [layer_input_ptq(self)]

    def __post_init__(self):
        check_bits("weight_bits", self.weight_bits)
        check_bits("act_bits", self.act_bits, allow_none=True)
        check_bits("keep_bits", self.keep_bits, allow_none=True)
        if self.keep_bits is not None and self.keep_bits <= self.weight_bits:
            raise ValueError(f"keep_bits ({self.keep_bits}) must be wider than weight_bits ({self.weight_bits}), "
                             "or None (FP32)")
        check_positive("budget_avg_bits", self.budget_avg_bits, allow_none=True)
        if self.budget_avg_bits is not None and self.budget_avg_bits < self.weight_bits:
            raise ValueError(f"budget_avg_bits ({self.budget_avg_bits}) is below weight_bits ({self.weight_bits}): "
                             "no layer could be kept at higher precision")
        check_positive("max_layers", self.max_layers, allow_none=True, integer=True)
        check_choice("sensitivity", self.sensitivity, ("loss", "accuracy"))
        check_choice("score", self.score, SCORES)
        check_positive("min_group_size", self.min_group_size, integer=True)
        check_positive("val_batches", self.val_batches, allow_none=True, integer=True)
        check_choice("observer", self.observer, OBSERVERS)
        check_positive("calibration_batches", self.calibration_batches, allow_none=True, integer=True)

    @property
    def budget(self) -> float:
        return self.budget_avg_bits if self.budget_avg_bits is not None else self.weight_bits + 1.0


def group_layer_sensitivity(model: nn.Module, layers: dict[str, nn.Module], bits: int, data, *,
                            metric: str = "loss", limit: int | None = 4, min_group_size: int = 10,
                            per_channel: bool = True, symmetric: bool = True, batch_size: int = 256) -> dict:
    """Per-group :func:`~fairq.compression.quant.sensitivity.layer_sensitivity` at ``bits``.

    Returns ``dict(groups=[code rows], n=[samples per group], per_group={layer: [change per group]},
    overall={layer: change}, worst={layer: max change}, worst_group={layer: index of that group})``.
    """
    pool = gather(data, limit)
    ids, rows = group_ids(pool["sensitive"])
    counts = torch.bincount(ids, minlength=len(rows))
    kept = [g for g in range(len(rows)) if counts[g] >= min_group_size]
    if not kept:
        raise InfeasibleError(f"no group has ≥ {min_group_size} validation samples (sizes {counts.tolist()}); "
                         "give more validation batches or lower min_group_size")
    skipped = [rows[g].tolist() for g in range(len(rows)) if g not in kept]
    if skipped:
        log.warning("per-group sensitivity: groups %s have < %d validation samples and are left out",
                    skipped, min_group_size)
    per_group = {}
    for g in kept:
        index = torch.nonzero(ids == g).flatten()
        per_group[g] = layer_sensitivity(model, layers, (bits,), take(pool, index, batch_size), metric=metric,
                                         limit=None, per_channel=per_channel, symmetric=symmetric)
    n = [int(counts[g]) for g in kept]
    out = dict(groups=[rows[g].tolist() for g in kept], n=n, per_group={}, overall={}, worst={}, worst_group={})
    for name in layers:
        changes = [per_group[g][name][bits] for g in kept]
        out["per_group"][name] = changes
        finite = all(math.isfinite(c) for c in changes)
        out["overall"][name] = sum(c * k for c, k in zip(changes, n)) / sum(n) if finite else math.inf
        worst = max(range(len(changes)), key=lambda i: changes[i])
        out["worst"][name], out["worst_group"][name] = changes[worst], worst
    return out


def choose_layers(scores: dict[str, float], params: dict[str, int], weight_bits: int, keep_bits: int | None,
                  budget_avg_bits: float, max_layers: int | None = None) -> list[str]:
    """Layers to keep at ``keep_bits`` (most useful first): the mixed-precision greedy allocation over the two
    widths with ``scores`` as the sensitivity of the narrow one, then at most ``max_layers`` by score."""
    total = sum(params.values())

    def width(b):
        return FP32_BITS if b is None else b

    def avg_bits(alloc):
        return sum(params[n] * width(b) for n, b in alloc.items()) / total

    sens = {n: {weight_bits: s, **({keep_bits: 0.0} if keep_bits is not None else {})} for n, s in scores.items()}
    alloc = allocate_bits(sens, (weight_bits, keep_bits), avg_bits, budget_avg_bits)
    kept = sorted((n for n, b in alloc.items() if b == keep_bits and scores[n] > 0), key=lambda n: -scores[n])
    return kept[:max_layers] if max_layers is not None else kept


def plan_preservation(model: nn.Module, config: SensitiveLayerPreservationConfig, val_data) -> MixedPrecisionPlan:
    """Measure per-group sensitivities on ``val_data`` and choose the preserved layers (a mixed-precision plan)."""
    if val_data is None:
        raise ValueError("sensitive_layer_preservation needs val_data (fairq batches with image, target, sensitive)")
    model.eval()
    layers = quantizable_layers(model)
    if not layers:
        raise InfeasibleError(f"{type(model).__name__} has no Conv2d/Linear layers to quantize")
    sens = group_layer_sensitivity(model, layers, config.weight_bits, val_data, metric=config.sensitivity,
                                   limit=config.val_batches, min_group_size=config.min_group_size,
                                   per_channel=config.per_channel, symmetric=config.symmetric)
    scores = {n: sens["worst"][n] - (sens["overall"][n] if config.score == "disparity" else 0.0) for n in layers}
    params = {n: m.weight.numel() for n, m in layers.items()}
    kept = choose_layers(scores, params, config.weight_bits, config.keep_bits, config.budget, config.max_layers)
    bits = {n: (config.keep_bits if n in kept else config.weight_bits) for n in layers}
    rows = [dict(layer=n, params=params[n], channels=m.weight.shape[0], bits=bits[n],
                 policy="preserved" if n in kept else "quantized", sensitivity={config.weight_bits: scores[n]},
                 overall_change=sens["overall"][n], worst_group_change=sens["worst"][n],
                 worst_group=sens["groups"][sens["worst_group"][n]], group_changes=sens["per_group"][n])
            for n, m in layers.items()]
    avg = sum(params[n] * (FP32_BITS if b is None else b) for n, b in bits.items()) / sum(params.values())
    extra = dict(method="sensitive_layer_preservation", score=config.score, groups=sens["groups"],
                 group_sizes=sens["n"], preserved=kept, keep_bits=config.keep_bits, weight_bits=config.weight_bits)
    return MixedPrecisionPlan(rows=rows, candidate_bits=(config.weight_bits, config.keep_bits),
                              metric=config.sensitivity, budget_kind="avg_bits", budget=config.budget,
                              avg_bits=avg, size_mb=math.nan, act_bits=config.act_bits, extra=extra)


def quantize_preserving(model: nn.Module, config: SensitiveLayerPreservationConfig, calibration_data=None, *,
                        val_data=None) -> tuple[nn.Module, MixedPrecisionPlan]:
    """Plan on ``val_data``, then quantize every layer to its width with ``act_bits`` inputs calibrated on
    ``calibration_data``. Returns the model and the plan (``plan.extra["preserved"]``: the kept layers)."""
    plan = plan_preservation(model, config, val_data)
    layer_bits = {n: b for n, b in plan.bits.items() if b is not None}
    quantize_layers(model, layer_bits, per_channel=config.per_channel, symmetric=config.symmetric,
                    act_bits=config.act_bits, act_mode="static", observer=config.observer,
                    calibration_data=calibration_data if calibration_data is not None else val_data,
                    calibration_batches=config.calibration_batches)
    plan.size_mb = model_size(model)[0]
    log.info("sensitive-layer preservation kept %s at %s (avg %.2f weight bits ≤ %.2f)", plan.extra["preserved"],
             "fp32" if config.keep_bits is None else f"{config.keep_bits} bits", plan.avg_bits, config.budget)
    return model, plan


def handle_preserving(model: nn.Module, config: SensitiveLayerPreservationConfig, inputs: MethodInputs
                      ) -> MethodResult:
    """The cell keeps the nominal ``weight_bits`` of the plain PTQ cell it mitigates; the real average is
    ``avg_weight_bits``. The plan goes to ``plans/<cell>.json``."""
    qmodel, plan = quantize_preserving(model, config, inputs.calibration, val_data=inputs.validation)
    log.info("sensitive-layer preservation plan:\n%s", plan)
    return MethodResult(qmodel, weight_bits=config.weight_bits, act_bits=config.act_bits, backend="simulated",
                        simulation="layer_input", record={"avg_weight_bits": plan.avg_bits,
                                                          "preserved_layers": ";".join(plan.extra["preserved"])},
                        artifacts=[Artifact("plans", plan.to_dict(), column="plan")], info={"plan": plan})


register_method("sensitive_layer_preservation", SensitiveLayerPreservationConfig, handle_preserving,
                needs={"calibration", "validation"}, family="mitigation")
