"""Analysis phase: reads only the output directory (never trains or evaluates) and writes tables, figures, report."""
from __future__ import annotations

import dataclasses
import logging

from fairq.analysis import AnalysisSettings, run_analysis
from fairq.sections import AnalysisSection, section_of

from .context import MissingPhaseError, RunContext

log = logging.getLogger("fairq")


def run(ctx: RunContext) -> dict:
    section = dataclasses.asdict(section_of(ctx.sections.get("analysis"), AnalysisSection))
    if section["seed"] is None:
        section["seed"] = ctx.seed
    section["progress"] = bool(ctx.evaluation.get("progress", True))
    try:
        out = run_analysis(ctx.store.root, AnalysisSettings(**section))
    except FileNotFoundError as err:
        raise MissingPhaseError(str(err)) from err
    findings = out.get("findings")
    if findings is not None and len(findings):
        cols = [c for c in ("model", "finding", "claim", "estimate", "ci_low", "ci_high", "p_adjusted", "verdict")
                if c in findings.columns]
        log.info("findings (every number computed from this run's stored predictions):\n%s",
                 findings[cols].to_string(index=False, max_colwidth=70))
    log.info("report: %s", out.get("report"))
    return out
