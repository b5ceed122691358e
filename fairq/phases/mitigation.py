"""Mitigation phase: every baseline checkpoint × bit width × configured mitigation → one stored cell.

Config section (YAML ``mitigation:``)::

    bits: [4, 8]                 # default: the ptq_static widths of the quantization phase
    calibration_samples: 256     # default: the quantization phase's (same size for natural and balanced draws)
    methods:                     # each entry: method, any field of its config dataclass, optional bits
      - {method: bias_aware_calibration}                         # + its natural-draw ptq_static control
      - {method: fairness_finetune, lam: [0.0, 1.0], max_steps: 20}   # a list of λ = a sweep, one cell each
      - {method: sensitive_layer_preservation}
      - {method: fairness_aware_quantizer, max_eo_gap: 0.1, bits: 4}

Cells are written exactly like the quantization phase's (``ctx.evaluate_cell``: per-sample predictions + one
metrics row), with the nominal ``weight_bits``/``act_bits`` of the plain-PTQ cell they mitigate, so baseline,
plain PTQ and each mitigation compare directly. Side records: ``plans/<cell>.json`` (preserved layers),
``mitigation/<cell>.json`` (fairness-aware quantizer history, calibration group counts, fine-tune stats).
Resumable: cells already in ``metrics.csv`` are skipped before any work.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import torch

import fairq.mitigation  # noqa: F401  (registers the mitigation methods)
from fairq.compression import PTQConfig, make_config, quantize
from fairq.compression.registry import METHODS

from .context import RunContext
from .quantization import DEFAULT_METHODS as QUANT_DEFAULTS
from .quantization import variant_of

log = logging.getLogger("fairq")

DEFAULT_METHODS: list[dict[str, Any]] = [
    {"method": "bias_aware_calibration"},
    {"method": "fairness_finetune", "lam": [1.0], "max_steps": 20},
    {"method": "sensitive_layer_preservation"},
]
#: config fields that are run context, not part of a cell's identity.
_NOT_VARIANT = {"seed", "lam"}


def default_bits(ctx: RunContext) -> list[int]:
    """The ``ptq_static`` widths the quantization phase is configured with (INT4 and INT8 by default)."""
    entries = (ctx.sections.get("quantization") or {}).get("methods") or QUANT_DEFAULTS
    bits = sorted({int(e.get("bits", e.get("bit_width", 8))) for e in entries if e.get("method") == "ptq_static"})
    return bits or [4, 8]


def expand(entry: dict[str, Any], bits: list[int]) -> list[tuple[str, Any]]:
    """``(method, config)`` for each bit width (an entry's own ``bits`` restricts them) and each λ of a sweep."""
    entry = dict(entry)
    try:
        method = entry.pop("method")
    except KeyError:
        raise ValueError(f"mitigation entry {entry} has no 'method'") from None
    if method not in METHODS:
        raise ValueError(f"unknown mitigation method {method!r}; registered: {', '.join(sorted(METHODS))}")
    own = entry.pop("bits", entry.pop("bit_width", None))
    widths = bits if own is None else ([own] if isinstance(own, int) else list(own))
    lams = entry.pop("lam", None)
    sweep = [None] if lams is None else (list(lams) if isinstance(lams, (list, tuple)) else [lams])
    out = []
    for b in widths:
        for lam in sweep:
            opts = dict(entry) if lam is None else {**entry, "lam": float(lam)}
            config = make_config(method, int(b), **opts)
            if hasattr(config, "quantizer"):  # the fairness-aware quantizer: check its constraint now
                config.quantizer()
            out.append((method, config))
    return out


def variant(config) -> str:
    """The cell's variant tag: ``lambda=…`` first for fine-tuning, then the non-default fields."""
    fields = {f.name for f in dataclasses.fields(config)}
    reset = {k: getattr(type(config)(), k) for k in _NOT_VARIANT & fields}
    rest = variant_of(dataclasses.replace(config, **reset))
    if "lam" in fields:
        return "_".join(p for p in (f"lambda={config.lam:g}", rest) if p)
    return rest


def _natural_control(config) -> PTQConfig:
    """The plain ``ptq_static`` config a bias-aware config is compared with (same fields, natural draw)."""
    names = {f.name for f in dataclasses.fields(PTQConfig)}
    return PTQConfig(**{k: v for k, v in dataclasses.asdict(config).items() if k in names})


class _Cells:
    """Builds and stores the cells of one model (loads the baseline once, on first need)."""

    def __init__(self, ctx: RunContext, model_name: str, section: dict):
        self.ctx, self.model_name = ctx, model_name
        self.dm = ctx.data()
        self.n_calib = int(section.get("calibration_samples")
                           or (ctx.sections.get("quantization") or {}).get("calibration_samples", 256))
        self._baseline = None
        self.rows: list[dict] = []

    @property
    def baseline(self):
        if self._baseline is None:
            self._baseline = self.ctx.load_baseline(self.model_name)
        return self._baseline

    def calibration(self, balanced: bool):
        return self.dm.calibration_dataloader(self.n_calib, balanced=balanced, seed=self.ctx.seed)

    def store(self, qmodel, method: str, config, cell: str, extra: dict) -> None:
        extra = {**extra, "config": json.dumps(config.to_dict(), sort_keys=True, default=str)}
        act_bits = getattr(config, "act_bits", None)
        self.rows.append(self.ctx.evaluate_cell(qmodel, model_name=self.model_name, method=method,
                                                weight_bits=getattr(config, type(config).bits_field),
                                                act_bits=act_bits, variant=variant(config), extra=extra, cell=cell,
                                                reference=self.baseline))

    def run(self, method: str, config) -> None:
        bits = getattr(config, type(config).bits_field)
        cell = self.ctx.cell(self.model_name, method, bits, getattr(config, "act_bits", None), variant(config))
        if method == "bias_aware_calibration":
            self.control(config)
        if self.ctx.store.has_cell(cell):
            log.info("mitigation: %s already done, skipping", cell)
            return
        log.info("mitigation: %s (%s)", cell, config)
        torch.manual_seed(self.ctx.seed)
        handler = getattr(self, f"_{method}", None)
        if handler is None:
            raise ValueError(f"the mitigation phase does not know how to run {method!r}")
        qmodel, extra = handler(config, cell)
        self.store(qmodel, method, config, cell, extra)

    def control(self, config) -> None:
        """Store the natural-draw ``ptq_static`` cell with the same settings, unless it is there already."""
        ptq = _natural_control(config)
        cell = self.ctx.cell(self.model_name, "ptq_static", ptq.weight_bits, ptq.act_bits, variant_of(ptq))
        if self.ctx.store.has_cell(cell):
            return
        log.info("mitigation: natural-calibration control %s", cell)
        torch.manual_seed(self.ctx.seed)
        qmodel = quantize(self.baseline, ptq, self.calibration(balanced=False))
        self.rows.append(self.ctx.evaluate_cell(
            qmodel, model_name=self.model_name, method="ptq_static", weight_bits=ptq.weight_bits,
            act_bits=ptq.act_bits, variant=variant_of(ptq), cell=cell, reference=self.baseline,
            extra={"config": json.dumps(ptq.to_dict(), sort_keys=True, default=str)}))

    def _trainer_factory(self, cell: str):
        run_name = f"{self.model_name.replace('/', '-')}_{cell.split('__', 2)[2]}"

        def make(**overrides):
            return self.ctx.make_trainer(run_name, enable_checkpointing=False, limit_val_batches=0, **overrides)

        return make

    # --- one handler per method: (quantized model, extra metrics-row columns) -------------------------------
    def _bias_aware_calibration(self, config, cell):
        config = dataclasses.replace(config, seed=self.ctx.seed, calibration_samples=None)
        qmodel = quantize(self.baseline, config, self.calibration(balanced=True))
        record = qmodel.fairq_calibration
        self.ctx.store.write_json(f"mitigation/{cell}.json", {"calibration": record})
        return qmodel, {"calibration_groups": json.dumps(record["drawn_groups"], sort_keys=True),
                        "calibration_unique": record["unique_samples"]}

    def _fairness_finetune(self, config, cell):
        qmodel = quantize(self.baseline, config, self.calibration(balanced=False),
                          datamodule=self.dm, make_trainer=self._trainer_factory(cell))
        stats = qmodel.fairq_finetune
        self.ctx.store.write_json(f"mitigation/{cell}.json", {"finetune": stats})
        return qmodel, {"lambda": config.lam, "penalty": config.fairness, "finetune_steps": stats["steps"]}

    def _sensitive_layer_preservation(self, config, cell):
        qmodel = quantize(self.baseline, config, self.calibration(balanced=False), val_data=self.dm.val_dataloader())
        plan = qmodel.fairq_plan
        path = self.ctx.store.write_json(f"plans/{cell}.json", plan.to_dict())
        log.info("sensitive-layer preservation plan for %s (saved to %s):\n%s", cell, path, plan)
        return qmodel, {"plan": f"plans/{cell}.json", "avg_weight_bits": plan.avg_bits,
                        "preserved_layers": ";".join(qmodel.fairq_preserved)}

    def _fairness_aware_quantizer(self, config, cell):
        qmodel = quantize(self.baseline, config, self.calibration(balanced=False), val_data=self.dm.val_dataloader(),
                          train_loader=self.dm.train_dataloader(), datamodule=self.dm,
                          balanced_calibration_data=self.calibration(True),
                          attribute_names=list(self.dm.sensitive_names), make_trainer=self._trainer_factory(cell))
        report = qmodel.fairq_mitigation
        self.ctx.store.write_json(f"mitigation/{cell}.json", report)
        return qmodel, {"constraint_met": report["constraint_met"], "chosen_method": report["chosen"]["method"],
                        "chosen_options": json.dumps(report["chosen"]["options"], sort_keys=True, default=str),
                        "val_dp_gap": report["final_dp_gap"], "val_eo_gap": report["final_eo_gap"],
                        "mitigation_record": f"mitigation/{cell}.json"}

def run(ctx: RunContext) -> list[dict]:
    section = ctx.sections.get("mitigation") or {}
    bits = [int(b) for b in (section.get("bits") or default_bits(ctx))]
    entries = section.get("methods") or DEFAULT_METHODS
    plan = [item for entry in entries for item in expand(entry, bits)]  # bad entries fail before any work
    rows = []
    for model_name in ctx.models:
        cells = _Cells(ctx, model_name, section)
        for method, config in plan:
            cells.run(method, config)
        rows += cells.rows
    return rows
