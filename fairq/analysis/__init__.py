"""Analysis: turn the store's per-sample predictions into statistics, flips, Pareto fronts, findings and a report.

Reads only ``<output_dir>/metrics.csv`` and ``<output_dir>/predictions/*.parquet``; never trains or evaluates.
Entry point: :func:`run_analysis`. Modules: ``load`` (store reader), ``pairs`` (baseline pairing, scopes),
``stats`` (paired tests, BH), ``deltas``, ``flips``, ``pareto``, ``findings``, ``tables``, ``figures``,
``curves`` (sparsity curves of pruned cells), ``heads`` (soft head pruning: attribution, α trade-off), ``report``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from fairq.metrics import DEFAULT_MIN_GROUP_SIZE

from .curves import sparsity_curves
from .deltas import compute_deltas, summarize_seeds
from .findings import EQUIVALENCE_MARGIN, apply_rules, compute_findings
from .flips import compression_exemplars, compute_flips, exemplar_makeup
from .load import load_store
from .pareto import compute_pareto
from .stats import benjamini_hochberg

__all__ = ["run_analysis"]


def _adjust_all(deltas: pd.DataFrame, summary: pd.DataFrame, findings: pd.DataFrame) -> int:
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


def _split_text(store):
    """``(classification store or None, text store or None)``: masked-LM cells (``task`` column) get the text
    section; every other cell the classification analysis."""
    from dataclasses import replace

    from .text import TEXT_TASK

    task = store.metrics["task"] if "task" in store.metrics.columns else None
    if task is None or not task.eq(TEXT_TASK).any():
        return store, None
    is_text = task.eq(TEXT_TASK)

    def part(mask):
        if not mask.any():
            return None
        ids = list(store.metrics.index[mask])
        return replace(store, metrics=store.metrics.loc[ids], cells={c: store.cells[c] for c in ids})

    return part(~is_text), part(is_text)


def _soft_pruning(out: Path, store, scores: pd.DataFrame, *, text: bool, figures: bool, level: str):
    """Head attribution + α trade-off tables and figures of ``soft_head_pruning`` cells (:mod:`.heads`); returns
    ``(tables {name: frame}, figure paths, report html)``, all empty without such cells."""
    from .heads import head_attribution_table, heads_report_html, soft_pruning_tradeoff, write_head_figures
    from .report import html_table

    attribution = head_attribution_table(store.metrics, out)
    tradeoff = soft_pruning_tradeoff(scores, store.metrics, text=text)
    if attribution.empty and tradeoff.empty:
        return {}, [], ""
    figs = write_head_figures(attribution, tradeoff, out / "figures", level) if figures else []
    tables = {"head_attribution": attribution, "soft_pruning_tradeoff": tradeoff}
    return tables, figs, heads_report_html(attribution, tradeoff, figs, html_table)


def _text_tables(text, result: dict) -> dict[str, pd.DataFrame]:
    """``tables/text_*.csv`` frames: scores, flips, the methods table and the sparsity curves (pruned cells)."""
    from .curves import text_sparsity_curves
    from .tables import text_method_table

    frames = {f"text_{name}": frame for name, frame in result.items()}
    frames["text_methods"] = text_method_table(text.metrics)
    curves = text_sparsity_curves(result["scores"], text.metrics)
    if not curves.empty:
        frames["text_sparsity_curves"] = curves
    return frames


def _text_figures(frames: dict, fig_dir: Path, level: str) -> list[Path]:
    from .curves import TEXT_CURVE_METRICS, write_sparsity_figures

    curves = frames.get("text_sparsity_curves")
    if curves is None:
        return []
    present = set(curves["metric"])  # e.g. no probe panel when the run did not score the probes
    return write_sparsity_figures(curves, fig_dir, level, curve_metrics=[m for m in TEXT_CURVE_METRICS if m in present],
                                  group_metric="stereoset_intra_ss", prefix="text_sparsity")


def _finish_text_only(out: Path, text, result: dict, *, report: bool, figures: bool, t0: float, meta: dict) -> dict:
    frames = _text_tables(text, result)
    tables = {name.removeprefix("text_"): text.write_csv(f"tables/{name}.csv", frame) for name, frame in frames.items()}
    fig_paths = _text_figures(frames, out / "figures", meta["level"]) if figures else []
    extra_tables, heads_figs, heads_html = _soft_pruning(out, text, result["scores"], text=True, figures=figures,
                                                         level=meta["level"])
    tables.update({name: text.write_csv(f"tables/{name}.csv", frame) for name, frame in extra_tables.items()})
    fig_paths += heads_figs
    report_path = None
    if report:
        import html

        from fairq.store import atomic_write_text

        from .report import REPORT_CSS, html_table
        from .text import text_report_html

        head = (f"<h1>fairq analysis report</h1><p class='note'>{html.escape(str(out))} · {len(text.cells)} cells · "
                f"{meta['n_bootstrap']} bootstrap resamples, seed {meta['seed']}, alpha {meta['alpha']} · "
                "p-values Benjamini–Hochberg adjusted across the text tests of the run.</p>")
        body = head + text_report_html(result, text.metrics, html_table, methods=frames["text_methods"]) + heads_html
        report_path = out / "report.html"
        atomic_write_text(report_path, "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>fairq "
                          f"analysis report</title><style>{REPORT_CSS}</style></head><body>{body}</body></html>")
    return {"tables": tables, "figures": fig_paths, "report": report_path, "findings": pd.DataFrame(),
            "deltas": result["scores"], "text": result, "seconds": time.perf_counter() - t0}


def run_analysis(output_dir, *, n_bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05,
                 progress: bool = True, n_permutations: int | None = None,
                 min_group_size: int = DEFAULT_MIN_GROUP_SIZE, margin: float = EQUIVALENCE_MARGIN,
                 figures: bool = True, report: bool = True) -> dict:
    """Run the whole analysis on a store and write ``tables/``, ``figures/`` and ``report.html`` into it.

    Parameters
    ----------
    output_dir : path
        A run's output directory (``metrics.csv`` + ``predictions/``).
    n_bootstrap : int, default 1000
        Bootstrap resamples for every CI.
    seed : int, default 0
        Seeds every resampling (results do not depend on the order cells are listed in).
    alpha : float, default 0.05
        Level of the findings' decision rule (on BH-adjusted p-values); CIs are ``1 − alpha``.
    progress : bool, default True
        tqdm bars.
    n_permutations : int, optional
        Permutations of the paired permutation tests (default: ``n_bootstrap``).
    min_group_size : int
        Groups smaller than this are left out of gaps (as in :func:`fairq.metrics.fairness_metrics`).
    margin : float
        Equivalence margin of the findings rule.
    figures, report : bool
        Write the PNG figures / the HTML report.

    Returns
    -------
    dict
        ``tables`` (name → path), ``figures`` (list of paths), ``report`` (path or None), ``findings``
        (DataFrame), ``deltas`` (DataFrame), ``seconds``.

    Raises
    ------
    FileNotFoundError, ValueError
        When ``metrics.csv``, a predictions file or the baseline rows are missing (naming the phase to run).
    """
    t0 = time.perf_counter()
    out = Path(output_dir)
    n_perm = int(n_permutations if n_permutations is not None else n_bootstrap)
    conf = 1.0 - float(alpha)
    store = load_store(out, progress=progress)
    store, text = _split_text(store)
    text_result = None
    if text is not None:
        from .text import analyze_text

        text_result = analyze_text(text, n_bootstrap=n_bootstrap, seed=seed, confidence=conf)
    if store is None:  # a text-only run: its own tables and report section
        return _finish_text_only(out, text, text_result, report=report, figures=figures, t0=t0,
                                 meta={"n_bootstrap": n_bootstrap, "seed": seed, "alpha": alpha,
                                       "level": f"{conf * 100:g}%"})
    deltas, pairs = compute_deltas(store, n_bootstrap=n_bootstrap, n_permutations=n_perm, seed=seed,
                                   confidence=conf, min_group_size=min_group_size, progress=progress)
    summary = summarize_seeds(deltas, pairs, n_bootstrap=n_bootstrap, n_permutations=n_perm, seed=seed,
                              confidence=conf, min_group_size=min_group_size)
    flips = compute_flips(store, pairs)
    exemplars = compression_exemplars(store)
    sens = {(r["dataset"], r["model"], r["target"]): store.cells[c].sensitive for c, r in store.metrics.iterrows()}
    makeup = exemplar_makeup(exemplars, sens)
    pareto = compute_pareto(store.metrics)
    findings = compute_findings(store, pairs, flips, exemplars, n_bootstrap=n_bootstrap, n_permutations=n_perm,
                                seed=seed, confidence=conf, min_group_size=min_group_size)
    n_tests = _adjust_all(deltas, summary, findings)
    findings = apply_rules(findings, alpha=alpha, margin=margin)

    from .tables import findings_overview, flips_overview, method_table, overview_table, write_latex

    tdir = out / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    tables = {}
    csvs = {"deltas": deltas, "summary": summary, "flips": flips, "findings": findings, "pareto": pareto,
            "exemplars": makeup, "methods": method_table(store.metrics)}
    curves = sparsity_curves(deltas, store.metrics)
    if not curves.empty:  # pruned cells: metrics vs measured sparsity (tables/sparsity_curves.csv + figures)
        csvs["sparsity_curves"] = curves
        # pruning-identified exemplars (Hooker et al.): the same make-up table, from the pruned cells only
        csvs["pruning_exemplars"] = exemplar_makeup(compression_exemplars(store, families=("pruning",)), sens)
    if not exemplars.empty:
        csvs["exemplar_samples"] = exemplars[exemplars["exemplar"]]
    text_frames = _text_tables(text, text_result) if text_result is not None else {}
    csvs.update(text_frames)
    level = f"{conf * 100:g}%"
    heads_tables, heads_figs, heads_html = _soft_pruning(out, store, deltas, text=False, figures=figures,
                                                         level=level)
    csvs.update(heads_tables)
    for name, frame in csvs.items():
        tables[name] = store.write_csv(f"tables/{name}.csv", frame)
    level = f"{conf * 100:g}%"
    for name, frame, caption in (("overview", overview_table(deltas), f"Headline metrics with {level} CIs and deltas vs "
                                  "the baseline (BH-adjusted p)"),
                                 ("flips", flips_overview(flips), "Prediction flips vs the baseline"),
                                 ("findings", findings_overview(findings, level), "Findings decided by rule")):
        tables[f"{name}_tex"] = write_latex(frame, tdir / f"{name}.tex", caption)
    fig_paths = []
    if figures:
        from .figures import write_figures

        from .curves import write_sparsity_figures

        fig_paths = write_figures(deltas, flips, pareto, out / "figures", level)
        fig_paths += write_sparsity_figures(curves, out / "figures", level)
        fig_paths += _text_figures(text_frames, out / "figures", level)
        fig_paths += heads_figs
    report_path = None
    if report:
        from .report import write_report

        meta = {"output_dir": out, "n_cells": len(store.cells), "n_bootstrap": n_bootstrap, "n_permutations": n_perm,
                "seed": seed, "alpha": alpha, "margin": margin, "n_tests": n_tests}
        extra = ""
        if text_result is not None:
            from .report import html_table
            from .text import text_report_html

            extra = text_report_html(text_result, text.metrics, html_table, methods=text_frames["text_methods"])
        extra = heads_html + extra
        report_path = write_report(out / "report.html", deltas=deltas, flips=flips, findings=findings,
                                   pareto=pareto, makeup=makeup, meta=meta, extra_html=extra)
    return {"tables": tables, "figures": fig_paths, "report": report_path, "findings": findings, "deltas": deltas,
            "seconds": time.perf_counter() - t0}
