"""fairq's own analysis products (:mod:`fairq.analysis.products`), in report order.

=================  =====================================================================  ======================
product            tables                                                                 applies to
=================  =====================================================================  ======================
findings           ``findings`` (and the run-wide BH adjustment of deltas / summary)      classification cells
deltas             ``deltas``, ``summary`` (+ heatmaps, per-group accuracy)               classification cells
flips              ``flips`` (+ flip rate by baseline uncertainty)                        classification cells
pareto             ``pareto`` (+ Pareto frontiers)                                        classification cells
exemplars          ``exemplars`` (group make-up), ``exemplar_samples``                    classification cells
methods            ``methods``                                                            classification cells
sparsity_curves    ``sparsity_curves``, ``pruning_exemplars`` (+ figures)                 pruned cells
latex              ``overview.tex``, ``flips.tex``, ``findings.tex``                      classification cells
text               ``text_scores``, ``text_flips``, ``text_methods``,                     masked-LM cells
                   ``text_sparsity_curves`` (+ figures)
soft_head_pruning  ``head_attribution``, ``soft_pruning_tradeoff`` (+ figures)            soft_head_pruning cells
=================  =====================================================================  ======================

Each function here only wires a product to the module that computes it; the maths lives there.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .curves import sparsity_curves, text_sparsity_curves, write_sparsity_figures
from .deltas import compute_deltas, summarize_seeds
from .figures import deltas_figures, flip_figures, pareto_figures
from .findings import apply_rules, compute_findings
from .flips import compression_exemplars, compute_flips, exemplar_makeup
from .heads import (METHOD as SOFT_HEAD_PRUNING, head_attribution_table, heads_report_html, soft_pruning_tradeoff,
                    write_head_figures)
from .pareto import compute_pareto
from .products import AnalysisContext, register_product
from .report import deltas_section, exemplars_section, findings_section, flips_section, html_table, pareto_section
from .stats import benjamini_hochberg
from .tables import findings_overview, flips_overview, method_table, overview_table, text_method_table, write_latex

__all__ = ["adjust_all"]


def _classification(ctx: AnalysisContext) -> bool:
    return ctx.store is not None


# ------------------------------------------------------------------------------------ deltas and seed summary
def _deltas(ctx: AnalysisContext) -> dict:
    s = ctx.settings
    deltas, pairs = compute_deltas(ctx.store, n_bootstrap=s.n_bootstrap, n_permutations=s.n_perm, seed=s.seed,
                                   confidence=s.confidence, min_group_size=s.min_group_size, progress=s.progress)
    summary = summarize_seeds(deltas, pairs, n_bootstrap=s.n_bootstrap, n_permutations=s.n_perm, seed=s.seed,
                              confidence=s.confidence, min_group_size=s.min_group_size)
    ctx.results["pairs"] = pairs
    return {"deltas": deltas, "summary": summary}


register_product("deltas", _deltas, applies=_classification, order=20,
                 figures=lambda ctx, d: deltas_figures(ctx.results["deltas"], d, ctx.settings.level),
                 report=lambda ctx: deltas_section(ctx.results["deltas"], ctx.settings.level))

# ------------------------------------------------------------------------------------ flips
register_product("flips", lambda ctx: {"flips": compute_flips(ctx.store, ctx.results["pairs"])}, order=30,
                 requires=("deltas",),
                 figures=lambda ctx, d: flip_figures(ctx.results["flips"], d),
                 report=lambda ctx: flips_section(ctx.results["flips"]))

# ------------------------------------------------------------------------------------ Pareto fronts
register_product("pareto", lambda ctx: {"pareto": compute_pareto(ctx.store.metrics)}, applies=_classification,
                 order=40, figures=lambda ctx, d: pareto_figures(ctx.results["pareto"], d),
                 report=lambda ctx: pareto_section(ctx.results["pareto"]))


# ------------------------------------------------------------------------------------ compression-identified exemplars
def _sensitive(store) -> dict:
    return {(r["dataset"], r["model"], r["target"]): store.cells[c].sensitive for c, r in store.metrics.iterrows()}


def _exemplars(ctx: AnalysisContext) -> dict:
    exemplars = compression_exemplars(ctx.store)
    ctx.results["compression_exemplars"] = exemplars
    tables = {"exemplars": exemplar_makeup(exemplars, _sensitive(ctx.store))}
    if not exemplars.empty:
        tables["exemplar_samples"] = exemplars[exemplars["exemplar"]]
    return tables


register_product("exemplars", _exemplars, applies=_classification, order=50,
                 report=lambda ctx: exemplars_section(ctx.results["exemplars"]))


# ------------------------------------------------------------------------------------ findings (+ run-wide BH)
def adjust_all(deltas: pd.DataFrame, summary: pd.DataFrame, findings: pd.DataFrame) -> int:
    """Benjamini–Hochberg over every test of the run (in place); returns the number of tests."""
    new = summary["new_test"].to_numpy(bool)
    p = np.concatenate([deltas["p_value"].to_numpy(float), summary.loc[new, "p_value"].to_numpy(float),
                        findings["p_value"].to_numpy(float)])
    adj = benjamini_hochberg(p)
    n1, n2 = len(deltas), int(new.sum())
    deltas["p_adjusted"] = adj[:n1]
    summary["p_adjusted"] = np.nan
    summary.loc[new, "p_adjusted"] = adj[n1:n1 + n2]
    findings["p_adjusted"] = adj[n1 + n2:]
    # Single-seed summary rows carry their cell's (already counted) test and adjusted p.
    single = ~new & summary["p_value"].notna()
    if single.any():
        key = ["dataset", "model", "target", "method", "variant", "weight_bits", "act_bits", "backend",
               "attributes", "group", "metric"]
        left = summary.loc[single, key].astype(str)
        right = deltas[key].astype(str).assign(p_adjusted=deltas["p_adjusted"].to_numpy())
        merged = left.merge(right.drop_duplicates(key), on=key, how="left")
        summary.loc[single, "p_adjusted"] = merged["p_adjusted"].to_numpy()
    return int((~np.isnan(p)).sum())


def _findings(ctx: AnalysisContext) -> dict:
    s, r = ctx.settings, ctx.results
    findings = compute_findings(ctx.store, r["pairs"], r["flips"], r["compression_exemplars"],
                                n_bootstrap=s.n_bootstrap, n_permutations=s.n_perm, seed=s.seed,
                                confidence=s.confidence, min_group_size=s.min_group_size)
    r["n_tests"] = adjust_all(r["deltas"], r["summary"], findings)  # the tables are written after this
    return {"findings": apply_rules(findings, alpha=s.alpha, margin=s.margin)}


register_product("findings", _findings, order=10, requires=("deltas", "flips", "exemplars"),
                 report=lambda ctx: findings_section(ctx.results["findings"], ctx.settings.alpha,
                                                     ctx.settings.margin))

# ------------------------------------------------------------------------------------ methods table
register_product("methods", lambda ctx: {"methods": method_table(ctx.store.metrics)}, applies=_classification,
                 order=60)


# ------------------------------------------------------------------------------------ sparsity curves (pruned cells)
def _sparsity(ctx: AnalysisContext) -> dict:
    curves = sparsity_curves(ctx.results["deltas"], ctx.store.metrics)
    if curves.empty:
        return {}
    # pruning-identified exemplars (Hooker et al.): the exemplars' make-up table, from the pruned cells only
    pruned = compression_exemplars(ctx.store, families=("pruning",))
    return {"sparsity_curves": curves, "pruning_exemplars": exemplar_makeup(pruned, _sensitive(ctx.store))}


def _sparsity_figures(ctx: AnalysisContext, fig_dir) -> list:
    curves = ctx.results.get("sparsity_curves")
    return [] if curves is None else write_sparsity_figures(curves, fig_dir, ctx.settings.level)


register_product("sparsity_curves", _sparsity, order=70, requires=("deltas",),
                 figures=_sparsity_figures)


# ------------------------------------------------------------------------------------ LaTeX tables
def _latex(ctx: AnalysisContext) -> dict:
    r, level, tdir = ctx.results, ctx.settings.level, ctx.output_dir / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    return {f"{name}_tex": write_latex(frame, tdir / f"{name}.tex", caption) for name, frame, caption in (
        ("overview", overview_table(r["deltas"]), f"Headline metrics with {level} CIs and deltas vs the baseline "
         "(BH-adjusted p)"),
        ("flips", flips_overview(r["flips"]), "Prediction flips vs the baseline"),
        ("findings", findings_overview(r["findings"], level), "Findings decided by rule"))}


register_product("latex", lambda ctx: {}, order=80, requires=("findings",), files=_latex)


# ------------------------------------------------------------------------------------ text (masked-LM cells)
def _text(ctx: AnalysisContext) -> dict:
    from .text import analyze_text

    s = ctx.settings
    result = analyze_text(ctx.text, n_bootstrap=s.n_bootstrap, seed=s.seed, confidence=s.confidence)
    ctx.results["text"] = result
    tables = {f"text_{name}": frame for name, frame in result.items()}
    tables["text_methods"] = text_method_table(ctx.text.metrics)
    curves = text_sparsity_curves(result["scores"], ctx.text.metrics)
    if not curves.empty:
        tables["text_sparsity_curves"] = curves
    return tables


def _text_figures(ctx: AnalysisContext, fig_dir) -> list:
    curves = ctx.results.get("text_sparsity_curves")
    if curves is None:
        return []
    from fairq.text.benchmarks import curve_metrics

    present = set(curves["metric"])  # e.g. no probe panel when the run did not score the probes
    return write_sparsity_figures(curves, fig_dir, ctx.settings.level,
                                  curve_metrics=[m for m in curve_metrics() if m in present],
                                  group_metric="stereoset_intra_ss", prefix="text_sparsity")


def _text_report(ctx: AnalysisContext) -> str:
    from .text import text_report_html

    return text_report_html(ctx.results["text"], ctx.text.metrics, html_table, methods=ctx.results["text_methods"],
                            level=ctx.settings.level)


register_product("text", _text, applies=lambda ctx: ctx.text is not None, order=90, figures=_text_figures,
                 report=_text_report)


# ------------------------------------------------------------------------------------ soft head pruning
def _soft_cells(ctx: AnalysisContext):
    """The store the head analysis reads: the classification cells when there are any (their deltas hold the
    trade-off points), else the text cells (their scores)."""
    return ctx.store if ctx.store is not None else ctx.text


def _has_soft_cells(ctx: AnalysisContext) -> bool:
    store = _soft_cells(ctx)
    return (store is not None and "method" in store.metrics.columns
            and store.metrics["method"].astype(str).eq(SOFT_HEAD_PRUNING).any())


def _soft_pruning(ctx: AnalysisContext) -> dict:
    store, text = _soft_cells(ctx), ctx.store is None
    attribution = head_attribution_table(store.metrics, ctx.output_dir)
    scores = ctx.results["text_scores" if text else "deltas"]
    tradeoff = soft_pruning_tradeoff(scores, store.metrics, text=text)
    if attribution.empty and tradeoff.empty:
        return {}
    return {"head_attribution": attribution, "soft_pruning_tradeoff": tradeoff}


def _soft_figures(ctx: AnalysisContext, fig_dir) -> list:
    if "head_attribution" not in ctx.results:
        return []
    return write_head_figures(ctx.results["head_attribution"], ctx.results["soft_pruning_tradeoff"], fig_dir,
                              ctx.settings.level)


def _soft_report(ctx: AnalysisContext) -> str:
    if "head_attribution" not in ctx.results:
        return ""
    return heads_report_html(ctx.results["head_attribution"], ctx.results["soft_pruning_tradeoff"], ctx.figures,
                             html_table)


register_product("soft_head_pruning", _soft_pruning, applies=_has_soft_cells, order=100, after=("deltas", "text"),
                 figures=_soft_figures, report=_soft_report)
