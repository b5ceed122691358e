"""Quantization phase: every baseline checkpoint × every configured method and bit width → one stored cell.

Config section (YAML ``quantization:``)::

    calibration_samples: 256      # natural (uniformly drawn) training samples for calibration
    methods:                      # each entry: method, bits, and any field of that method's config dataclass
      - {method: ptq_static, bits: 8}
      - {method: ptq_static, bits: 4, observer: percentile}
      - {method: qat, bits: 4, epochs: 1}
      - {method: mixed_precision, bits: 4}   # bits = average-bits budget

Every option that is not a default of the method's config becomes the cell's ``variant`` tag, so two entries of the
same method and bit width are two cells. QAT training runs through the same Lightning module and trainer as the
baseline. Resumable: cells already in ``metrics.csv`` are skipped.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from fairq.compression import make_config, quantize
from fairq.lit import FairClassifier

from .context import RunContext

log = logging.getLogger("fairq")

DEFAULT_METHODS: list[dict[str, Any]] = [
    {"method": "ptq_static", "bits": 8},
    {"method": "ptq_static", "bits": 4},
    {"method": "ptq_dynamic", "bits": 8},
    {"method": "qat", "bits": 8, "epochs": 1},
    {"method": "qat", "bits": 4, "epochs": 1},
    {"method": "mixed_precision", "bits": 4},
]


def variant_of(config) -> str:
    """``key=value`` pairs of the config fields that differ from the defaults (bit fields excluded)."""
    skip = {getattr(type(config), "bits_field", ""), "plan"}
    parts = []
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(config, f.name)
        if f.name in skip or value == default:
            continue
        value = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        parts.append(f"{f.name}={value}")
    return "_".join(parts)


def parse_entry(entry: dict[str, Any]):
    """``{method, bits, **options}`` → (method name, config)."""
    entry = dict(entry)
    try:
        method = entry.pop("method")
    except KeyError:
        raise ValueError(f"quantization entry {entry} has no 'method'") from None
    bits = entry.pop("bits", entry.pop("bit_width", None))
    return method, make_config(method, bits, **entry)


def lightning_train_fn(ctx: RunContext, run_name: str, epochs: int, lr: float, max_steps: int | None = None):
    """A ``train_fn(model)`` that fine-tunes a (fake-quantised) model with fairq's Lightning module and trainer."""

    def train(model):
        module = FairClassifier(model, lr=lr, weight_decay=ctx.optim.get("weight_decay", 0.0))
        overrides = {"max_epochs": int(epochs)}
        if max_steps:
            overrides["max_steps"] = int(max_steps)
        trainer = ctx.make_trainer(run_name, **overrides)
        trainer.fit(module, datamodule=ctx.data())
        return module.model

    return train


def run(ctx: RunContext) -> list[dict]:
    section = ctx.sections.get("quantization") or {}
    entries = section.get("methods") or DEFAULT_METHODS
    n_calib = int(section.get("calibration_samples", 256))
    dm = ctx.data()
    rows = []
    for model_name in ctx.models:
        baseline = None
        for entry in entries:
            method, config = parse_entry(entry)
            bits = getattr(config, type(config).bits_field)
            act_bits = getattr(config, "act_bits", None)
            variant = variant_of(config)
            cell = ctx.cell(model_name, method, bits, act_bits, variant)
            if ctx.store.has_cell(cell):
                log.info("quantization: %s already done, skipping", cell)
                continue
            if baseline is None:
                baseline = ctx.load_baseline(model_name)
            torch.manual_seed(ctx.seed)
            calib = dm.calibration_dataloader(n_calib, balanced=False, seed=ctx.seed)
            extra = {}
            qctx = {}
            if method == "qat":
                qctx["train_fn"] = lightning_train_fn(ctx, f"{model_name.replace('/', '-')}_{cell.split('__', 2)[2]}",
                                                      config.epochs, config.lr, config.max_steps)
            if method == "mixed_precision":
                qctx["val_data"] = dm.val_dataloader()
            log.info("quantization: %s (%s)", cell, config)
            qmodel = quantize(baseline, config, calib, **qctx)
            plan = getattr(qmodel, "fairq_plan", None)
            if plan is not None:
                path = ctx.store.write_json(f"plans/{cell}.json", plan.to_dict())
                log.info("mixed-precision plan for %s (saved to %s):\n%s", cell, path, plan)
                extra["plan"] = f"plans/{cell}.json"
                extra["avg_weight_bits"] = plan.avg_bits
            extra["config"] = _json(config.to_dict())
            rows.append(ctx.evaluate_cell(qmodel, model_name=model_name, method=method,
                                          weight_bits=getattr(qmodel, "fairq_weight_bits", bits),
                                          act_bits=getattr(qmodel, "fairq_act_bits", act_bits),
                                          variant=variant, extra=extra, cell=cell, reference=baseline))
    return rows


def _json(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True, default=str)
