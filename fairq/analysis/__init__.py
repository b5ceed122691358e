"""Analysis: turn the store's per-sample predictions into statistics, flips, Pareto fronts, findings and a report.

Reads only ``<output_dir>/metrics.csv`` and ``<output_dir>/predictions/*.parquet``; never trains or evaluates.
Entry point: :func:`run_analysis`, a loop over the registered analysis *products*
(:mod:`fairq.analysis.products`: each says when it applies, what it computes, its figures and its report section;
fairq's own are in :mod:`fairq.analysis.builtin`), told what to do by one :class:`AnalysisSettings`.
Modules: ``load`` (store reader), ``pairs`` (baseline pairing, scopes), ``stats`` (paired tests, BH), ``deltas``,
``flips``, ``pareto``, ``findings``, ``tables``, ``figures``, ``curves`` (sparsity curves of pruned cells),
``heads`` (soft head pruning: attribution, α trade-off), ``text`` (masked-LM cells), ``report``, ``products``
(the registry), ``builtin`` (fairq's products).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from . import builtin  # noqa: F401  (registers fairq's own products)
from .load import load_store
from .products import (AnalysisContext, AnalysisSettings, compute_products, load_products, registered_products,
                       register_product, unregister_product)

__all__ = ["run_analysis", "AnalysisSettings", "register_product", "unregister_product", "registered_products"]


def _split_text(store):
    """``(classification store or None, text store or None)``: masked-LM cells (``task`` column) get the text
    products; every other cell the classification ones."""
    from .text import TEXT_TASK

    task = store.metrics["task"] if "task" in store.metrics.columns else None
    if task is None or not task.eq(TEXT_TASK).any():
        return store, None
    is_text = task.eq(TEXT_TASK)

    def part(mask):
        if not mask.any():
            return None
        ids = list(store.metrics.index[mask])
        return dataclasses.replace(store, metrics=store.metrics.loc[ids], cells={c: store.cells[c] for c in ids})

    return part(~is_text), part(is_text)


def _header(ctx: AnalysisContext) -> str:
    from .report import report_header

    s = ctx.settings
    meta = {"output_dir": ctx.output_dir, "n_cells": ctx.n_cells, "n_bootstrap": s.n_bootstrap, "seed": s.seed,
            "alpha": s.alpha}
    if ctx.store is not None:  # classification cells: one BH family over every test of the run
        meta.update(n_permutations=s.n_perm, n_tests=ctx.results.get("n_tests", 0))
    return report_header(meta)


def run_analysis(output_dir, settings: AnalysisSettings | None = None, **options) -> dict:
    """Run every analysis product that applies on a store and write ``tables/``, ``figures/`` and ``report.html``
    into it.

    Parameters
    ----------
    output_dir : path
        A run's output directory (``metrics.csv`` + ``predictions/``).
    settings : AnalysisSettings, optional
        What to compute and write (default: ``AnalysisSettings()``).
    **options
        Fields of :class:`AnalysisSettings` (``n_bootstrap``, ``seed``, ``alpha``, ``n_permutations``,
        ``min_group_size``, ``margin``, ``figures``, ``report``, ``progress``), replacing those of ``settings``.

    Returns
    -------
    dict
        ``tables`` (name → path), ``figures`` (list of paths), ``report`` (path or None), ``findings``
        (DataFrame), ``deltas`` (DataFrame; a text-only run: the text scores), ``seconds``; a text-only run also
        ``text`` (the text product's ``{"scores", "flips"}``).

    Raises
    ------
    FileNotFoundError, ValueError
        When ``metrics.csv``, a predictions file or the baseline rows are missing (naming the phase to run).
    fairq.errors.ConfigError
        When a setting is out of range (e.g. ``alpha`` not in (0, 1)).
    """
    t0 = time.perf_counter()
    settings = settings if settings is not None else AnalysisSettings()
    if options:
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(AnalysisSettings)})
        if unknown:
            raise TypeError(f"run_analysis got unknown options {unknown}; AnalysisSettings has "
                            f"{[f.name for f in dataclasses.fields(AnalysisSettings)]}")
        settings = dataclasses.replace(settings, **options)
    load_products()
    out = Path(output_dir)
    ctx = AnalysisContext(out, settings, *_split_text(load_store(out, progress=settings.progress)))
    ran = compute_products(ctx)
    if settings.figures:
        for p in ran:
            if p.figures is not None:
                ctx.figures += list(p.figures(ctx, ctx.fig_dir) or [])
    report_path = None
    if settings.report:
        from .report import write_report

        sections = [p.report(ctx) or "" for p in ran if p.report is not None]
        report_path = write_report(out / "report.html", _header(ctx), sections)
    res = {"tables": ctx.tables, "figures": ctx.figures, "report": report_path,
           "findings": ctx.results.get("findings", pd.DataFrame()), "deltas": ctx.results.get("deltas"),
           "seconds": 0.0}
    if ctx.store is None and "text" in ctx.results:  # a text-only run: its scores stand in for the deltas
        res.update(deltas=ctx.results["text"]["scores"], text=ctx.results["text"])
    res["seconds"] = time.perf_counter() - t0
    return res
