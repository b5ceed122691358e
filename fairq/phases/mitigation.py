"""Mitigation phase: every baseline checkpoint × every setting of the ``mitigation`` config section.

The section (:class:`fairq.sections.MitigationSection`) lists method entries like the quantization section; an
entry without ``bits`` runs at the widths its reference method runs at in the quantization section. Settings that
name control cells (bias-aware calibration: plain PTQ with the same options) store those too. Side records go to
``plans/<cell>.json`` and ``mitigation/<cell>.json``. Same loop as the quantization phase
(:func:`fairq.phases.methods.run_section`).
"""
from __future__ import annotations

from .context import RunContext
from .methods import run_section


def run(ctx: RunContext) -> list[dict]:
    return run_section(ctx, "mitigation")
