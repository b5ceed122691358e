"""Mixed precision (``mixed_precision``): measured per-layer sensitivity → bit allocation under a budget.

The allocation is greedy, like HAWQ-style "sensitivity per bit saved": start every searched layer at the widest
candidate and repeatedly narrow the layer whose next step costs the least sensitivity per budget unit saved until
the budget holds; then widen layers again, most useful first, while the budget still holds.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from fairq.errors import InfeasibleError

from fairq.compression.core.config import MixedPrecisionConfig
from fairq.compression.core.measure import MB, packed_weight_bytes, state_bytes
from fairq.compression.core.modules import matches, quantizable_layers
from fairq.compression.core.registry import Artifact, MethodInputs, MethodResult, register_method
from fairq.compression.quant.sensitivity import layer_sensitivity
from fairq.compression.quant.simulate import quantize_layers

FP32_BITS = 32

log = logging.getLogger(__name__)


def _width(b: int | None) -> int:
    return FP32_BITS if b is None else b


@dataclass
class MixedPrecisionPlan:
    """Per-layer bits (``None`` = FP32) with the measured sensitivities and the budget they satisfy."""

    rows: list[dict]
    candidate_bits: tuple
    metric: str | None
    budget_kind: str | None
    budget: float | None
    avg_bits: float
    size_mb: float
    act_bits: int | None
    extra: dict = field(default_factory=dict)

    @property
    def bits(self) -> dict[str, int | None]:
        """``{layer: bits or None}`` — also usable as ``MixedPrecisionConfig(plan=...)``."""
        return {r["layer"]: r["bits"] for r in self.rows}

    def to_dict(self) -> dict:
        """Plain types only (JSON/YAML ready)."""
        return dict(candidate_bits=list(self.candidate_bits), metric=self.metric, budget_kind=self.budget_kind,
                    budget=self.budget, avg_bits=self.avg_bits, size_mb=self.size_mb, act_bits=self.act_bits,
                    layers=[{**r, "sensitivity": {str(b): v for b, v in r["sensitivity"].items()}}
                            for r in self.rows], **self.extra)

    def to_frame(self):
        """One row per layer: ``layer, params, sensitivity`` (at the lowest width), ``bits, policy`` and
        ``sensitivity_<b>`` per measured width."""
        import pandas as pd

        low = min((b for b in self.candidate_bits if b is not None), default=None)
        recs = []
        for r in self.rows:
            rec = dict(layer=r["layer"], params=r["params"], sensitivity=r["sensitivity"].get(low, math.nan),
                       bits=r["bits"], policy=r["policy"])
            rec.update({f"sensitivity_{b}": v for b, v in sorted(r["sensitivity"].items())})
            recs.append(rec)
        frame = pd.DataFrame(recs)
        frame["bits"] = pd.Series([r["bits"] for r in self.rows], dtype=object)  # None = FP32, ints stay ints
        return frame

    def __str__(self) -> str:
        budget = "explicit plan" if self.budget_kind is None else f"budget {self.budget_kind} ≤ {self.budget:g}"
        head = (f"MixedPrecisionPlan: {len(self.rows)} layers, {self.avg_bits:.2f} avg weight bits, "
                f"{self.size_mb:.4f} MiB packed ({budget}; sensitivity={self.metric}, act_bits={self.act_bits})")
        frame = self.to_frame()
        frame["bits"] = frame["bits"].map(lambda b: "fp32" if b is None else str(b))
        return head + "\n" + frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


class _Costs:
    """Budget measures of an allocation over all quantizable layers (fixed FP32 ones included)."""

    def __init__(self, model: nn.Module, layers: dict[str, nn.Module], symmetric: bool, act_bits: int | None):
        self.params = {n: m.weight.numel() for n, m in layers.items()}
        self.channels = {n: m.weight.shape[0] for n, m in layers.items()}
        self.symmetric, self.act_bits = symmetric, act_bits
        self.rest = state_bytes(model, {f"{n}.weight" for n in layers})
        self.total_params = sum(self.params.values())

    def avg_bits(self, alloc: dict[str, int | None]) -> float:
        return sum(self.params[n] * _width(b) for n, b in alloc.items()) / self.total_params

    def size_mb(self, alloc: dict[str, int | None]) -> float:
        qparams = 8 if self.act_bits is not None else 0  # act scale (fp32) + zero point (int32)
        weights = sum(packed_weight_bytes(self.params[n], self.channels[n], b, self.symmetric)
                      + (qparams if b is not None else 0) for n, b in alloc.items())
        return (self.rest + weights) / MB


#: significant digits the greedy allocation compares sensitivities and costs at (see :func:`allocate_bits`).
SIGNIFICANT_DIGITS = 6


def _rounded(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` to ``digits`` significant digits (infinities and zero unchanged)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def allocate_bits(sensitivity: dict[str, dict[int, float]], candidates, cost: Callable[[dict], float],
                  budget: float, fixed: dict[str, int | None] | None = None) -> dict[str, int | None]:
    """Greedy allocation of ``candidates`` (``None`` = FP32) to the layers of ``sensitivity`` with
    ``cost(full allocation) ≤ budget``; ``fixed`` layers keep their bits and count in the cost.

    Every choice compares sensitivities and cost ratios rounded to :data:`SIGNIFICANT_DIGITS` significant digits,
    and equal keys are broken by the larger saving, then by layer name: two measurements that differ only in float
    noise (another reduction order) give the same plan, and so does any order of ``sensitivity``'s keys."""
    fixed = dict(fixed or {})
    levels = sorted(candidates, key=_width, reverse=True)
    alloc = {n: levels[0] for n in sensitivity}

    def sens(n, b):
        return 0.0 if b is None else _rounded(max(sensitivity[n].get(b, math.inf), 0.0))

    def total(a):
        return cost({**fixed, **a})

    floor = total({n: levels[-1] for n in sensitivity})
    if floor > budget * (1 + 1e-9):
        raise InfeasibleError(f"budget {budget:g} is infeasible: even every searched layer at {levels[-1]} bits "
                         f"costs {floor:.4g} (FP32-kept layers included); raise the budget or allow fewer bits")
    while total(alloc) > budget * (1 + 1e-9):
        now, best = total(alloc), None
        for n, b in alloc.items():
            i = levels.index(b)
            if i + 1 == len(levels):
                continue
            nb = levels[i + 1]
            saved = now - total({**alloc, n: nb})
            if saved <= 0:
                continue
            key = (_rounded(max(sens(n, nb) - sens(n, b), 0.0) / saved), -_rounded(saved), n)
            best = min(best, (key, n, nb)) if best else (key, n, nb)
        alloc[best[1]] = best[2]
    while True:  # widen again where the budget leaves room, most sensitivity regained per unit first
        now, best = total(alloc), None
        for n, b in alloc.items():
            i = levels.index(b)
            if i == 0:
                continue
            wb = levels[i - 1]
            gain, after = sens(n, b) - sens(n, wb), total({**alloc, n: wb})
            if gain <= 0 or after > budget * (1 + 1e-9):
                continue
            key = (-_rounded(gain / max(after - now, 1e-12)), n)
            best = min(best, (key, n, wb)) if best else (key, n, wb)
        if best is None:
            return alloc
        alloc[best[1]] = best[2]


def plan_mixed_precision(model: nn.Module, config: MixedPrecisionConfig, data=None) -> MixedPrecisionPlan:
    """Measure sensitivities on ``data`` (unless ``config.plan`` is given) and allocate bits."""
    layers = quantizable_layers(model)
    if not layers:
        raise InfeasibleError(f"{type(model).__name__} has no Conv2d/Linear layers for mixed precision")
    explicit = config.plan or {}  # an explicit plan overrides the first/last-layer policy for the layers it names
    policy = {n: "keep_fp32" for n in layers if matches(n, config.keep_fp32) and n not in explicit}
    if config.keep_first and next(iter(layers)) not in explicit:
        policy.setdefault(next(iter(layers)), "first")
    costs = _Costs(model, layers, config.symmetric, config.act_bits)
    sens: dict[str, dict[int, float]] = {}
    if config.plan is not None:
        unknown = sorted(set(config.plan) - set(layers))
        if unknown:
            raise KeyError(f"plan names unknown layers {unknown}; quantizable layers: {list(layers)}")
        alloc = {n: config.plan.get(n) for n in layers if n not in policy}
        policy.update({n: "plan" for n in alloc})
    else:
        if data is None:
            raise ValueError(f"mixed precision with sensitivity={config.sensitivity!r} needs val_data (batches with "
                             "targets: fairq dicts with image/target or (x, y) tuples)")
        searched = {n: m for n, m in layers.items() if n not in policy}
        widths = tuple(b for b in config.candidate_bits if b is not None)
        sens = layer_sensitivity(model, searched, widths, data, metric=config.sensitivity, limit=config.val_batches,
                                 per_channel=config.per_channel, symmetric=config.symmetric)
        kind = "avg_bits" if config.budget_avg_bits is not None else "mb"
        cost = costs.avg_bits if kind == "avg_bits" else costs.size_mb
        budget = config.budget_avg_bits if kind == "avg_bits" else config.budget_mb
        alloc = allocate_bits(sens, config.candidate_bits, cost, budget, {n: None for n in policy})
        policy.update({n: "searched" for n in alloc})
    full = {n: alloc.get(n) for n in layers}
    rows = [dict(layer=n, params=costs.params[n], channels=costs.channels[n], bits=full[n], policy=policy[n],
                 sensitivity=sens.get(n, {})) for n in layers]
    kind = None if config.plan is not None else ("avg_bits" if config.budget_avg_bits is not None else "mb")
    budget = None if kind is None else (config.budget_avg_bits if kind == "avg_bits" else config.budget_mb)
    return MixedPrecisionPlan(rows=rows, candidate_bits=tuple(config.candidate_bits),
                              metric=None if config.plan is not None else config.sensitivity, budget_kind=kind,
                              budget=budget, avg_bits=costs.avg_bits(full), size_mb=costs.size_mb(full),
                              act_bits=config.act_bits)


def plan_simulation(plan: MixedPrecisionPlan) -> str | None:
    """``"layer_input"`` when the plan quantizes a layer (per-layer-input simulation), None when it keeps all FP32."""
    return "layer_input" if any(b is not None for b in plan.bits.values()) else None


def quantize_mixed(model: nn.Module, config: MixedPrecisionConfig, calibration_data=None, *,
                   val_data=None) -> tuple[nn.Module, MixedPrecisionPlan]:
    """Plan (sensitivity on ``val_data``; ``kl`` may use ``calibration_data``), then quantize each layer to its
    bits with ``act_bits`` inputs calibrated on ``calibration_data`` (or ``val_data``). Returns the model and the plan
    (``plan.avg_bits``: the parameter-weighted average weight width, the cell's ``weight_bits``)."""
    model.eval()
    data = val_data if val_data is not None or config.sensitivity != "kl" else calibration_data
    plan = plan_mixed_precision(model, config, data)
    layer_bits = {n: b for n, b in plan.bits.items() if b is not None}
    if layer_bits:
        quantize_layers(model, layer_bits, per_channel=config.per_channel, symmetric=config.symmetric,
                        act_bits=config.act_bits, act_mode="static", observer=config.observer,
                        calibration_data=calibration_data if calibration_data is not None else val_data,
                        calibration_batches=config.calibration_batches)
    return model, plan


def handle_mixed(model: nn.Module, config: MixedPrecisionConfig, inputs: MethodInputs) -> MethodResult:
    """The plan goes to ``plans/<cell>.json`` (its path in the ``plan`` column) and ``info["plan"]``."""
    model, plan = quantize_mixed(model, config, inputs.calibration, val_data=inputs.validation)
    log.info("mixed-precision plan:\n%s", plan)
    return MethodResult(model, weight_bits=round(plan.avg_bits, 3), act_bits=config.act_bits, backend="simulated",
                        simulation=plan_simulation(plan), record={"avg_weight_bits": plan.avg_bits},
                        artifacts=[Artifact("plans", plan.to_dict(), column="plan")], info={"plan": plan})


register_method("mixed_precision", MixedPrecisionConfig, handle_mixed, needs={"calibration", "validation"})
