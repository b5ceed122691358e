"""Quantization phase: every baseline checkpoint × every setting of the ``quantization`` config section.

The section (:class:`fairq.sections.QuantizationSection`) lists method entries ``{method, bits, **fields of the
method's config}``; :func:`fairq.phases.methods.run_section` runs them — the same loop as the mitigation phase.
"""
from __future__ import annotations

from .context import RunContext
from .methods import run_section


def run(ctx: RunContext) -> list[dict]:
    return run_section(ctx, "quantization")
