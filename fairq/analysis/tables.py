"""Compact summary tables (overview, flips, findings) shared by the CSV/LaTeX writers and the HTML report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["overview_table", "flips_overview", "findings_overview", "method_table", "write_latex",
           "HEADLINE_METRICS"]

HEADLINE_METRICS = ("accuracy", "worst_group_accuracy", "demographic_parity_difference",
                    "equalized_odds_difference")
_SHORT = {"accuracy": "Acc", "worst_group_accuracy": "WGA", "demographic_parity_difference": "DP gap",
          "equalized_odds_difference": "EO gap"}


_UNICODE = {"Δ": r"$\Delta$", "→": r"$\rightarrow$", "−": "-", "≥": r"$\geq$", "±": r"$\pm$"}


def _fmt(v, digits=3) -> str:
    return "" if pd.isna(v) else f"{v:.{digits}f}"


def _ci(lo, hi, digits=3) -> str:
    return "" if pd.isna(lo) or pd.isna(hi) else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _p(v) -> str:
    return "" if pd.isna(v) else (f"{v:.2g}" if v >= 1e-3 else "<0.001")


def overview_table(deltas: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: headline metrics (intersectional groups) as ``value [CI]`` and ``Δ [CI] (p_adj)``."""
    if deltas.empty:
        return pd.DataFrame()
    primary = deltas.groupby("cell", sort=False)["attributes"].transform("first")
    d = deltas[(deltas["attributes"] == primary) & (deltas["group"] == "all")
               & deltas["metric"].isin(HEADLINE_METRICS)]
    rows = []
    for cid, f in d.groupby("cell", sort=False):
        r = {"dataset": f["dataset"].iloc[0], "model": f["model"].iloc[0], "seed": f["seed"].iloc[0],
             "config": f["config"].iloc[0]}
        for m in HEADLINE_METRICS:
            x = f[f["metric"] == m]
            if x.empty:
                continue
            x = x.iloc[0]
            r[_SHORT[m]] = f"{_fmt(x['value'])} {_ci(x['value_ci_low'], x['value_ci_high'])}"
            if not pd.isna(x["delta"]):
                r[f"Δ {_SHORT[m]}"] = f"{x['delta']:+.3f} {_ci(x['ci_low'], x['ci_high'])} p={_p(x['p_adjusted'])}"
        rows.append(r)
    return pd.DataFrame(rows).fillna("")


#: metrics.csv columns of :func:`method_table` (the seed studies' params / size / accuracy / latency table).
METHOD_TABLE_COLUMNS = ("dataset", "model", "seed", "family", "method", "variant", "weight_bits", "backend", "params",
                        "sparsity", "flops", "size_mb", "size_kind", "accuracy", "worst_group_accuracy",
                        "latency_ms", "latency_batch_size")


def method_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per cell, straight from ``metrics.csv``: method, params, size (with its kind), accuracy,
    worst-group accuracy and latency — every model, baseline first (columns a store lacks are left out)."""
    if metrics.empty:
        return pd.DataFrame()
    m = metrics.reset_index(drop=True)
    cols = [c for c in METHOD_TABLE_COLUMNS if c in m.columns]
    order = m["method"].astype(str).ne("baseline")
    return m.assign(_o=order)[cols + ["_o"]].sort_values(["dataset", "model", "seed", "_o"], kind="stable") \
        .drop(columns="_o").reset_index(drop=True)


#: metrics.csv columns of :func:`text_method_table` (``worst_domain_lms`` / ``worst_domain`` are derived there).
TEXT_METHOD_TABLE_COLUMNS = ("dataset", "model", "seed", "family", "method", "variant", "weight_bits", "backend",
                             "params", "sparsity", "flops", "size_mb", "size_kind", "stereoset_intra_lms",
                             "worst_domain_lms", "worst_domain", "stereoset_intra_ss", "stereoset_intra_icat",
                             "crows_metric", "bbq_norm_accuracy_disambig", "latency_ms", "latency_batch_size",
                             "item_latency_ms")


def text_method_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """:func:`method_table` for masked-LM cells: LMS stands for accuracy and the lowest per-domain StereoSet LMS
    (``worst_domain_lms``, the domain named in ``worst_domain``) for worst-group accuracy; SS, ICAT, CrowS and
    BBQ beside them. Every value is the cell's ``metrics.csv`` row (the per-domain LMS columns included)."""
    if metrics.empty:
        return pd.DataFrame()
    m = metrics.reset_index(drop=True).copy()
    lms = m[[c for c in m.columns if c.startswith("stereoset_intra_lms_")]].apply(pd.to_numeric, errors="coerce")
    has = lms.notna().any(axis=1)
    m["worst_domain_lms"] = lms.min(axis=1)
    m["worst_domain"] = pd.Series(pd.NA, index=m.index, dtype=object)
    if has.any():
        m.loc[has, "worst_domain"] = lms[has].idxmin(axis=1).str.replace("stereoset_intra_lms_", "", regex=False)
    cols = [c for c in TEXT_METHOD_TABLE_COLUMNS if c in m.columns]
    order = m["method"].astype(str).ne("baseline")
    return m.assign(_o=order)[cols + ["_o"]].sort_values(["dataset", "model", "seed", "_o"], kind="stable") \
        .drop(columns="_o").reset_index(drop=True)


def flips_overview(flips: pd.DataFrame) -> pd.DataFrame:
    """One row per compressed cell: overall flip rate, directions and rate per uncertainty bin."""
    if flips.empty:
        return pd.DataFrame()
    f = flips[flips["group"] == "all"]
    out = pd.DataFrame({"dataset": f["dataset"], "model": f["model"], "seed": f["seed"], "config": f["config"],
                        "n": f["n"],
                        "flip rate": [f"{v:.3f} {_ci(lo, hi)}" for v, lo, hi in
                                      zip(f["flip_rate"], f["flip_rate_ci_low"], f["flip_rate_ci_high"])],
                        "correct→wrong": f["correct_to_wrong"], "wrong→correct": f["wrong_to_correct"]})
    for b in ("low", "medium", "high"):
        out[f"flips {b} unc."] = [_fmt(v) for v in f.get(f"flip_rate_{b}", pd.Series(np.nan, index=f.index))]
    return out.reset_index(drop=True)


def findings_overview(findings: pd.DataFrame, level: str = "95%") -> pd.DataFrame:
    """Findings as readable strings: claim, estimate [CI], adjusted p, verdict."""
    if findings.empty:
        return pd.DataFrame(columns=["claim", f"estimate [{level} CI]", "p (BH)", "verdict"])
    return pd.DataFrame({
        "dataset": findings["dataset"], "model": findings["model"], "claim": findings["claim"],
        "statistic": findings["statistic"], "H1": findings["hypothesis"],
        f"estimate [{level} CI]": [f"{e:+.3f} {_ci(lo, hi)}" if not pd.isna(e) else "" for e, lo, hi in
                              zip(findings["estimate"], findings["ci_low"], findings["ci_high"])],
        "p (BH)": [_p(v) for v in findings["p_adjusted"]], "verdict": findings["verdict"]})


def write_latex(frame: pd.DataFrame, path: Path, caption: str) -> Path:
    """Write ``frame`` as a booktabs LaTeX table (pandas ``Styler.to_latex``, LaTeX-escaped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if frame.empty:
        frame = pd.DataFrame({"note": ["no rows"]})
    styler = frame.style.hide(axis="index").format(escape="latex", na_rep="")
    styler = styler.format_index(escape="latex", axis=1)
    tex = styler.to_latex(hrules=True, caption=caption.replace("_", r"\_"), position_float="centering")
    for uni, latex in _UNICODE.items():  # keep the .tex pdflatex-safe
        tex = tex.replace(uni, latex)
    from fairq.store import atomic_write_text

    atomic_write_text(path, tex)
    return path
