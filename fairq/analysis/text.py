"""The text section of the analysis: masked-LM cells (``task == "masked_lm_bias"``) versus their FP32 baseline.

From the per-item rows of each cell (``predictions/<cell>.parquet``, see :mod:`fairq.text.task`):

- ``tables/text_scores.csv`` — every headline text metric per cell with a cluster-bootstrap CI and, for compressed
  cells, the paired delta vs the FP32 baseline: the same resamples applied to both cells, percentile CI, a
  two-sided bootstrap p-value and its Benjamini–Hochberg adjustment over every text test of the run
  (``stats.benjamini_hochberg``);
- ``tables/text_flips.csv`` — items whose preferred option changes under compression, per benchmark and domain:
  flip rate with a Wilson 95% interval, direction (StereoSet / CrowS: to the stereotype / to the anti-stereotype;
  BBQ: correct → wrong / wrong → correct) and McNemar's test of the two directions (``stats.mcnemar_test``),
  BH-adjusted together with the deltas;
- an HTML section for ``report.html``.

**What is resampled.** Items are not independent: StereoSet's SS / LMS are averaged over target terms, BBQ's items
come from shared templates (both name orders, ambiguous / disambiguated twins, negative / non-negative questions),
so resampling single items understates the variance. The bootstrap resamples the units the metrics are built from
(:func:`fairq.text.task.resampling_units`: StereoSet target terms, BBQ templates, CrowS-Pairs pairs), stratified by
benchmark × domain (the benchmarks' fixed design), and every item of a drawn unit gets the unit's weight. Within a
stratum of ``G`` units it is Rao & Wu's (1988) rescaled bootstrap: ``G − 1`` units drawn with replacement,
weights × ``G / (G − 1)`` — the plain bootstrap's variance is ``(G − 1) / G`` too small, which matters for strata
of a few units (StereoSet religion: 3 terms); a stratum of a single unit keeps weight 1 (it contributes no
variance). Measured by ``benchmarks/validate_findings.py --claim text``.

Metrics are recomputed from these per-item resampling *weights* in closed form by each registered benchmark's own
``metrics`` function (:mod:`fairq.text.benchmarks`; per-term weighted counts for SS / LMS, each term counted by the
mean weight of its items; weighted ratios for CrowS / BBQ): the one implementation whose unit-weight values are the
cell's ``metrics.csv`` values (:func:`fairq.text.task.text_metrics`).
"""
from __future__ import annotations

import html

import numpy as np
import pandas as pd

from fairq.text.benchmarks import benchmarks, get_benchmark, report_metrics
from fairq.text.task import resampling_units

from .flips import wilson_interval
from .stats import benjamini_hochberg, mcnemar_test

TEXT_TASK = "masked_lm_bias"
__all__ = ["TEXT_TASK", "metric_draws", "cluster_weights", "paired_draws", "analyze_text", "text_report_html"]


def metric_draws(frame: pd.DataFrame, weights: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Text metrics of a per-item frame under per-benchmark item weights ``{benchmark: [B, n_b]}`` (resample
    counts; ``None`` = unit weights, i.e. the cell's own values, shape ``[1]``): each registered benchmark's
    ``metrics`` (:mod:`fairq.text.benchmarks`) — the very function its ``metrics.csv`` values come from."""
    out: dict[str, np.ndarray] = {}
    for name, bench in benchmarks().items():
        sub = frame[frame["benchmark"] == name]
        if sub.empty:
            continue
        out.update(bench.metrics(sub, None if weights is None else weights[name]))
    return out


def cluster_weights(units: np.ndarray, strata: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, len(units)]`` per-item weights of ``n`` cluster-bootstrap draws: within each stratum of ``G ≥ 2``
    clusters, ``G − 1`` clusters drawn with replacement and their counts × ``G / (G − 1)`` (Rao–Wu rescaling; see
    the module doc); every item takes its cluster's weight. A cluster belongs to the stratum of its first item."""
    codes, uniq = pd.factorize(pd.Series(units, dtype=str), sort=True)
    first = np.unique(codes, return_index=True)[1]
    cl_stratum = np.asarray(strata, dtype=str)[first]
    w = np.ones((n, len(uniq)))
    for s in sorted(set(cl_stratum)):
        members = np.flatnonzero(cl_stratum == s)
        g = len(members)
        if g >= 2:
            w[:, members] = rng.multinomial(g - 1, np.full(g, 1.0 / g), size=n) * (g / (g - 1))
    return w[:, codes]


def _resample_weights(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Cluster-bootstrap weights of the items, per benchmark: :func:`cluster_weights` over the units of
    :func:`~fairq.text.task.resampling_units`, stratified by domain (columns in the benchmark's row order)."""
    units = resampling_units(frame)
    bench = frame["benchmark"].astype(str).to_numpy()
    dom = frame["domain"].astype(str).to_numpy()
    return {b: cluster_weights(units[bench == b], dom[bench == b], n, rng) for b in sorted(set(bench))}


def _aligned(base: pd.DataFrame, other: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    common = np.intersect1d(base["sample_id"].to_numpy(str), other["sample_id"].to_numpy(str))
    b = base.set_index("sample_id").loc[common].reset_index()
    o = other.set_index("sample_id").loc[common].reset_index()
    return b, o


def _flip_rows(cell_row, base: pd.DataFrame, other: pd.DataFrame) -> list[dict]:
    rows = []
    for (bench, dom), idx in base.groupby(["benchmark", "domain"], sort=True).groups.items():
        for scope_dom, ii in ((dom, idx),):
            rows.append(_one_flip(cell_row, bench, scope_dom, base.loc[ii], other.loc[ii]))
    for bench, idx in base.groupby("benchmark", sort=True).groups.items():
        rows.append(_one_flip(cell_row, bench, "all", base.loc[idx], other.loc[idx]))
    return rows


def _one_flip(cell_row, bench, dom, b, o) -> dict:
    a, c = b["y_pred"].to_numpy(int), o["y_pred"].to_numpy(int)
    flips = int((a != c).sum())
    kind = getattr(get_benchmark(bench), "flips", "stereotype")
    if kind == "answer":  # a multiple-choice benchmark: the gold answer
        t = b["y_true"].to_numpy(int)
        dir1, dir2 = int(((a == t) & (c != t)).sum()), int(((a != t) & (c == t)).sum())
        names = ("correct_to_wrong", "wrong_to_correct")
    else:  # 1 = stereotype preferred, 0 = anti-stereotype, 2 = tie (CrowS)
        dir1, dir2 = int(((a != 1) & (c == 1)).sum()), int(((a == 1) & (c != 1)).sum())
        names = ("to_stereotype", "to_anti_or_tie")
    p, _, method = mcnemar_test(dir1, dir2)
    lo, hi = wilson_interval(np.array([flips]), np.array([len(a)]))
    return {"cell": cell_row["cell"], "model": cell_row["model"], "method": cell_row["method"],
            "config": cell_row.get("config", cell_row["method"]), "benchmark": bench, "domain": dom,
            "n": len(a), "flips": flips, "flip_rate": flips / len(a) if len(a) else np.nan,
            "flip_rate_ci_low": float(lo[0]), "flip_rate_ci_high": float(hi[0]), "direction_1": names[0],
            "count_1": dir1, "direction_2": names[1], "count_2": dir2, "p_value": p, "test": method}


def _q(x: np.ndarray, q: float) -> float:
    x = x[np.isfinite(x)]
    return float(np.quantile(x, q)) if len(x) else np.nan


def paired_draws(base: pd.DataFrame, other: pd.DataFrame, *, n_bootstrap: int, rng: np.random.Generator,
                 confidence: float = 0.95) -> dict[str, dict]:
    """Per metric: ``other``'s value and CI, the baseline's value, the delta ``other − base`` with its paired
    cluster-bootstrap percentile CI and two-sided bootstrap p (the same resampling weights on both frames, drawn
    from ``base``'s units). The frames hold the same items in the same order (:func:`_aligned`)."""
    q = (1 - confidence) / 2
    w = _resample_weights(base, n_bootstrap, rng)
    bd, od = metric_draws(base, w), metric_draws(other, w)
    bp, op = metric_draws(base), metric_draws(other)
    out = {}
    for m in op:
        if m not in bp:
            continue
        d = od[m] - bd[m]
        ok = np.isfinite(d)
        delta = float(op[m][0] - bp[m][0])
        p = (min(1.0, 2 * min((d[ok] <= 0).mean(), (d[ok] >= 0).mean())) if ok.any() and np.isfinite(delta)
             else np.nan)
        out[m] = {"value": float(op[m][0]), "value_ci_low": _q(od[m], q), "value_ci_high": _q(od[m], 1 - q),
                  "baseline_value": float(bp[m][0]), "delta": delta,
                  "ci_low": np.quantile(d[ok], q) if ok.any() else np.nan,
                  "ci_high": np.quantile(d[ok], 1 - q) if ok.any() else np.nan, "p_value": p}
    return out


def analyze_text(store, *, n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95
                 ) -> dict[str, pd.DataFrame]:
    """``{"scores": …, "flips": …}`` for the text cells of an analysis :class:`~fairq.analysis.load.Store`."""
    from .deltas import derive_seed

    q = (1 - confidence) / 2
    score_rows, flip_rows = [], []
    for cid, row in store.metrics.iterrows():
        frame = store.cells[cid].frame
        base_id = store.baseline_of(cid)
        rng = np.random.default_rng(derive_seed(seed, "text", cid))
        if base_id is None:
            draws = metric_draws(frame, _resample_weights(frame, n_bootstrap, rng))
            point = metric_draws(frame)
            for m, v in point.items():
                score_rows.append({"cell": cid, "model": row["model"], "method": row["method"],
                                   "config": row.get("config", ""), "metric": m, "value": float(v[0]),
                                   "value_ci_low": _q(draws[m], q), "value_ci_high": _q(draws[m], 1 - q)})
            continue
        base, other = _aligned(store.cells[base_id].frame, frame)
        for m, r in paired_draws(base, other, n_bootstrap=n_bootstrap, rng=rng, confidence=confidence).items():
            score_rows.append({"cell": cid, "model": row["model"], "method": row["method"],
                               "config": row.get("config", ""), "metric": m, **r, "test": "paired_bootstrap"})
        flip_rows += _flip_rows(row, base, other)
    scores, flips = pd.DataFrame(score_rows), pd.DataFrame(flip_rows)
    p = np.concatenate([scores["p_value"].to_numpy(float) if "p_value" in scores else np.zeros(0),
                        flips["p_value"].to_numpy(float) if "p_value" in flips else np.zeros(0)])
    if len(p):
        adj = benjamini_hochberg(p)
        if "p_value" in scores:
            scores["p_adjusted"] = adj[:len(scores)]
        if "p_value" in flips:
            flips["p_adjusted"] = adj[len(scores) if "p_value" in scores else 0:]
    return {"scores": scores, "flips": flips}


def _fmt(v, lo, hi) -> str:
    if pd.isna(v):
        return ""
    return f"{v:.1f} [{lo:.1f}, {hi:.1f}]" if pd.notna(lo) else f"{v:.1f}"


def headline_table(scores: pd.DataFrame, metrics=None) -> pd.DataFrame:
    """One row per cell: ``value [CI]`` and ``Δ [CI] (p_adj)`` for the given metrics (default: every registered
    benchmark's ``report`` metrics)."""
    if scores.empty:
        return pd.DataFrame()
    metrics = report_metrics() if metrics is None else metrics
    rows = []
    multi = _several_models(scores)
    for cid, g in scores.groupby("cell", sort=False):
        r = {"model": g["model"].iloc[0]} if multi else {}  # a run of several masked LMs: whose cell it is
        r["config"] = g["config"].iloc[0] or g["method"].iloc[0]
        by = g.set_index("metric")
        for m in metrics:
            if m not in by.index:
                continue
            x = by.loc[m]
            cell = _fmt(x["value"], x["value_ci_low"], x["value_ci_high"])
            if "delta" in x and pd.notna(x.get("delta")):
                cell += f"; Δ {x['delta']:+.1f} [{x['ci_low']:+.1f}, {x['ci_high']:+.1f}] (p_adj {x['p_adjusted']:.2g})"
            r[m] = cell
        rows.append(r)
    return pd.DataFrame(rows)


def _several_models(frame: pd.DataFrame) -> bool:
    return "model" in frame.columns and frame["model"].nunique() > 1


def text_report_html(result: dict, metrics: pd.DataFrame, table, methods: pd.DataFrame | None = None,
                     level: str = "95%") -> str:
    """The report's text section (``table``: the report's HTML table writer; ``methods``: the text methods table,
    :func:`fairq.analysis.tables.text_method_table`; ``level``: the run's confidence level, e.g. ``"90%"``)."""
    scores, flips = result["scores"], result["flips"]
    present = sorted(set(scores.get("metric", [])))
    sections = [part for title, select in (s for b in benchmarks().values() for s in b.sections)
                for part in (f"<h3>{html.escape(title)}</h3>", table(headline_table(scores, select(present))))]
    notes = ("<p class='note'>Masked-LM cells. StereoSet intrasentence by the official rule (SS, LMS per target "
             "term, averaged; ICAT from those averages); CrowS-Pairs: Nangia metric (not bias-bench's variant); "
             "BBQ: zero-shot pseudo-log-likelihood multiple choice (Salazar et al. 2020 scoring), not comparable "
             "with QA-head numbers; bbq_norm_* choose the answer of highest mean log-probability per word piece "
             "(the headline), bbq_* the highest sum (which favours the shorter 'unknown' answers); bias targets "
             "and scores by the BBQ authors' analysis scripts (items with a target, names apart); CrowS scores "
             "compared at 3 decimals; accuracies 0–100, bias scores −100…100, context influence = mean total-"
             "variation distance between the disambiguated and ambiguous answer distributions ×100. "
             f"Values with cluster-bootstrap {level} CIs (resampled units: StereoSet target terms, BBQ templates, "
             "CrowS pairs, within domains); Δ vs the FP32 baseline with paired cluster-bootstrap CIs and "
             "BH-adjusted p. probe_* are the embedded default's planted-bias probes. The embedded default is a tiny model "
             "trained on a generated corpus: its real-benchmark numbers describe that tiny model only.</p>")
    inter = ""
    if "stereoset_inter_reason" in metrics.columns:
        reasons = metrics["stereoset_inter_reason"].dropna().astype(str).unique()
        if len(reasons):
            inter = f"<p class='note'>StereoSet intersentence: {html.escape('; '.join(reasons))}</p>"
    parts = ["<h2>Text: StereoSet, CrowS-Pairs, BBQ</h2>", notes, inter,
             "<h3>Headline metrics</h3>", table(headline_table(scores)), *sections,
             *(["<h3>Methods: params, size, LMS, worst-domain LMS, latency</h3>",
                "<p class='note'>One row per cell from metrics.csv: sparsity measured from the weights (unstructured) "
                "or the share of parameters removed (structured); size from the bytes written (size_kind); "
                "worst_domain_lms = the lowest StereoSet LMS over the domains. Pruned cells against sparsity: "
                "tables/text_sparsity_curves.csv.</p>", table(methods)] if methods is not None else []),
             "<h3>Flips vs the FP32 baseline</h3>",
             table(flips[["model"] * _several_models(flips) + [
                 "config", "benchmark", "domain", "n", "flips", "flip_rate", "flip_rate_ci_low", "flip_rate_ci_high",
                 "direction_1", "count_1", "direction_2", "count_2", "p_adjusted"]] if len(flips) else flips)]
    return "".join(parts)
