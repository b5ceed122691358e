"""The one phase loop behind ``quantization`` and ``mitigation``: every baseline × every planned method setting of
a config section → one stored cell (plus the control cells a setting asks for).

The loop knows no method by name. For each setting it builds the inputs the method declared it needs
(:data:`fairq.compression.core.registry.NEEDS`: natural or group-balanced calibration draws, the validation split, the
training split with a Lightning trainer factory; a setting may use less, ``config.uses(needs)``), on the models
its entry names (``models:``, default all), runs :func:`fairq.compression.compress` and stores the
:class:`~fairq.compression.core.registry.MethodResult`: per-sample predictions and the metrics row (the result's record
columns, its artifacts' paths, the config as JSON, the phase, the method's family and reference method).
Resumable: cells already in ``metrics.csv`` are skipped before any work.

A control cell (e.g. the plain PTQ a bias-aware calibration is judged against) that the quantization section also
plans for the model *is* that quantization cell: it is stored with ``phase="quantization"`` and the quantization
section's calibration draw, whichever section happens to reach it first. Under Ray a mitigation task may start
before the quantization task of the same cell, so the row must not depend on that order.
"""
from __future__ import annotations

import json
import logging
import time

import torch

from fairq.compression import compress
from fairq.compression.core.registry import MethodInputs, method_of
from fairq.sections import calibration_samples, check_entry_models, plan_run

from .context import RunContext

log = logging.getLogger("fairq")


class _ModelCells:
    """Runs and stores the cells of one model (loads its baseline once, on first need)."""

    def __init__(self, ctx: RunContext, phase: str, model_name: str, n_calib: int, baselines: dict | None = None):
        self.ctx, self.phase, self.model_name, self.n_calib = ctx, phase, model_name, n_calib
        self._baselines = {} if baselines is None else baselines  # (model, seed) → loaded baseline
        self.rows: list[dict] = []

    @property
    def baseline(self):
        key = (self.model_name, self.ctx.seed)
        if key not in self._baselines:
            self._baselines[key] = self.ctx.load_baseline(self.model_name)
        return self._baselines[key]

    def inputs(self, needs, cell: str, n_calib: int) -> MethodInputs:
        """Exactly what the method declared, built from the run's datamodule (calibration draws of ``n_calib``)."""
        ctx, dm = self.ctx, self.ctx.data()
        kw = {"seed": ctx.seed, "sensitive_names": list(dm.sensitive_names), "optim": dict(ctx.optim),
              "model_name": self.model_name}
        if "calibration" in needs:
            kw["calibration"] = dm.calibration_dataloader(n_calib, balanced=False, seed=ctx.seed)
        if "balanced_calibration" in needs:
            kw["balanced_calibration"] = dm.calibration_dataloader(n_calib, balanced=True, seed=ctx.seed)
        if "validation" in needs:
            kw["validation"] = dm.val_dataloader()
        if "training" in needs:
            run_name = f"{self.model_name.replace('/', '-')}_{cell.split('__', 2)[2]}"
            kw.update(train_loader=dm.train_dataloader(), datamodule=dm,
                      make_trainer=lambda **overrides: ctx.make_trainer(run_name, **overrides))
        return MethodInputs(**kw)

    def cell_of(self, config) -> str:
        return self.ctx.cell(self.model_name, method_of(config).name, config.bits, getattr(config, "act_bits", None),
                             config.variant())

    def owner(self, cell: str) -> tuple[str, int]:
        """The phase a control cell is stored under and the calibration draw it uses: the quantization section's
        when that section plans the same cell for this model (module docstring), else this section's."""
        if self.phase != "quantization":
            planned = plan_run(self.ctx.sections)["quantization"]
            if any(p.runs_on(self.model_name) and self.cell_of(p.config) == cell for p in planned):
                return "quantization", calibration_samples(self.ctx.sections, "quantization")
        return self.phase, self.n_calib

    def run(self, config, *, control: bool = False) -> None:
        method = method_of(config)
        for c in config.controls():
            self.run(c, control=True)
        cell = self.cell_of(config)
        if self.ctx.store.has_cell(cell):
            log.info("%s: %s already done, skipping", self.phase, cell)
            return
        phase, n_calib = self.owner(cell) if control else (self.phase, self.n_calib)
        log.info("%s: %s%s (%s)", self.phase, f"control ({phase}) " if control else "", cell, config)
        torch.manual_seed(self.ctx.seed)
        needs = config.uses(method.needs) if hasattr(config, "uses") else method.needs  # a setting may need less
        baseline = self.baseline  # loaded (or cached) before the clock starts
        t0 = time.perf_counter()
        result = compress(baseline, config, self.inputs(needs, cell, n_calib))
        extra = dict(result.record)
        extra["compress_seconds"] = round(time.perf_counter() - t0, 3)  # the method's own cost (a sweep's planning)
        for art in result.artifacts:
            rel = f"{art.folder}/{cell}.json"
            self.ctx.store.write_json(rel, art.content)
            if art.column:
                extra[art.column] = rel
        extra.update(config=_config_json(config), phase=phase, family=method.family,
                     reference_method=config.reference_method)
        # the control cell this setting is judged against, exactly (analysis falls back to matching variants)
        ref = [c for c in config.controls() if method_of(c).name == config.reference_method]
        if config.reference_method and ref:
            extra["reference_config"] = _config_json(ref[0])
        self.rows.append(self.ctx.evaluate_cell(result, model_name=self.model_name, method=method.name,
                                                variant=config.variant(), extra=extra, cell=cell,
                                                reference=self.baseline))


def _config_json(config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


def run_one(ctx: RunContext, phase: str, model_name: str, index: int, baselines: dict | None = None) -> list[dict]:
    """Run the ``index``-th planned setting of section ``phase`` on one model (one task of a distributed sweep);
    ``baselines`` (a dict the caller keeps) caches loaded baselines by ``(model, seed)`` across calls."""
    planned = plan_run(ctx.sections)[phase]
    cells = _ModelCells(ctx, phase, model_name, calibration_samples(ctx.sections, phase), baselines)
    if planned[index].runs_on(model_name):
        cells.run(planned[index].config)
    return cells.rows


def run_section(ctx: RunContext, phase: str) -> list[dict]:
    """Run every planned setting of the ``phase`` config section on every configured model."""
    planned = plan_run(ctx.sections)[phase]  # validated at startup too; bad entries fail before any work
    n_calib = calibration_samples(ctx.sections, phase)
    check_entry_models({phase: planned}, ctx.models)  # a typo in an entry's models: raises (the CLI logs skips)
    rows = []
    for model_name in ctx.models:
        cells = _ModelCells(ctx, phase, model_name, int(n_calib))
        for p in planned:
            if p.runs_on(model_name):  # an entry's `models:` list restricts it
                cells.run(p.config)
        rows += cells.rows
    return rows
