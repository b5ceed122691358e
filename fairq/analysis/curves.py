"""Sparsity curves (the Hooker et al. figure): accuracy, worst-group accuracy and the DP / EO gaps against the
measured sparsity of every pruned cell, per group, with the bootstrap CIs and paired tests of ``deltas.csv``.

The x axis is the ``sparsity`` each pruning cell recorded (measured from the weights: the zero fraction for
unstructured pruning, the share of parameters removed for structured pruning); the model's baseline is the
point at 0. One curve per (model, method, weight bits): magnitude pruning alone and magnitude pruning followed
by k-bit PTQ are separate curves. Nothing is recomputed here — the values, CIs and adjusted p-values are the
rows of ``deltas.csv``.

- ``tables/sparsity_curves.csv``: one row per curve point × metric × group;
- ``figures/sparsity_<dataset>_<model>.png``: four panels (headline metrics, group ``all``) plus one panel of
  per-group accuracy for the unstructured curve.

Text cells (masked LMs) get the same curves from ``tables/text_scores.csv`` (:func:`text_sparsity_curves`): LMS,
SS, ICAT, CrowS, BBQ and the planted-bias probes' SS against sparsity with their bootstrap CIs and paired deltas; the StereoSet domains are the
groups (``stereoset_intra_ss_gender`` → metric ``stereoset_intra_ss``, group ``gender``) —
``tables/text_sparsity_curves.csv`` and the per-domain SS panel of ``figures/text_sparsity_<dataset>_<model>.png``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import LABELS, pyplot, first_attribute_rows, save_figure, slug

__all__ = ["CURVE_METRICS", "sparsity_curves", "text_sparsity_curves", "write_sparsity_figures"]

CURVE_METRICS = ("accuracy", "worst_group_accuracy", "demographic_parity_difference", "equalized_odds_difference")

_KEEP = ["dataset", "model", "target", "seed", "curve", "method", "weight_bits", "sparsity", "target_sparsity",
         "cell", "attributes", "group", "metric", "n", "value", "value_ci_low", "value_ci_high", "baseline_value",
         "delta", "ci_low", "ci_high", "p_adjusted"]


def _curve_label(row) -> str:
    """Method + its settings other than the x axis (scope, fine-tuning, …) + the chained method and width."""
    if row["method"] == "baseline":
        return "baseline"
    variant = str(row.get("variant", "") or "")
    variant = re.sub(r"(^|_)(sparsity|ratio)=[^_]+", "", variant)
    variant = re.sub(r"(^|_)then=.*$", "", variant).strip("_")
    label = str(row["method"]) + (f" [{variant}]" if variant else "")
    then = str(row.get("then_method", "") or "")
    if then and then != "nan":
        label += f" + {then} w{int(float(row['weight_bits']))}"
    return label


def sparsity_curves(deltas: pd.DataFrame, metrics: pd.DataFrame, curve_metrics=CURVE_METRICS,
                    group_metric: str = "accuracy") -> pd.DataFrame:
    """Curve points of every ``family == "pruning"`` cell and its baselines (sparsity 0), from ``deltas``.

    ``metrics``: ``metrics.csv`` (indexed by cell or with a ``cell`` column) for ``family``, ``sparsity``,
    ``target_sparsity`` and ``then_method``. Baseline rows are repeated under every curve of their model so that
    each curve starts at its dense point. ``curve_metrics`` are kept for group ``all``, ``group_metric`` for every
    group.
    """
    m = metrics.reset_index() if "cell" not in metrics.columns else metrics.copy()
    if "family" not in m.columns or not m["family"].astype(str).eq("pruning").any():
        return pd.DataFrame(columns=_KEEP)
    for col in ("sparsity", "target_sparsity", "then_method"):
        if col not in m.columns:
            m[col] = np.nan
    m["curve"] = m.apply(_curve_label, axis=1)
    pruned = m[m["family"].astype(str).eq("pruning")]
    d = first_attribute_rows(deltas)
    headline = d["metric"].isin(curve_metrics) & d["group"].eq("all")
    d = d[headline | (d["metric"].eq(group_metric) & ~d["group"].eq("all"))]
    info = m.set_index("cell")[["curve", "sparsity", "target_sparsity"]]
    d = d.drop(columns=[c for c in ("sparsity", "target_sparsity", "curve") if c in d.columns]).join(info, on="cell")
    pts = d[d["cell"].isin(pruned["cell"])]
    base = d[d["method"].eq("baseline")].copy()
    base["sparsity"], base["target_sparsity"] = 0.0, 0.0
    frames = [pts]
    for (ds, model), curves in pts.groupby(["dataset", "model"], sort=False)["curve"]:
        b = base[(base["dataset"] == ds) & (base["model"] == model)]
        for curve in dict.fromkeys(curves):
            frames.append(b.assign(curve=curve))
    out = pd.concat(frames, ignore_index=True)
    for col in _KEEP:
        if col not in out.columns:
            out[col] = np.nan
    out["sparsity"] = out["sparsity"].astype(float)
    return out[_KEEP].sort_values(["dataset", "model", "curve", "metric", "group", "sparsity"], kind="stable",
                                  ignore_index=True)


_DOMAIN_METRIC = re.compile(r"^(stereoset_intra_(?:ss|lms|icat))_(\w+)$")


def text_sparsity_curves(scores: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """:func:`sparsity_curves` of text cells, from the text analysis's ``scores`` (``tables/text_scores.csv``):
    :func:`fairq.text.benchmarks.curve_metrics` overall, and the StereoSet SS per domain as the groups."""
    if scores.empty or "metric" not in scores.columns:
        return pd.DataFrame(columns=_KEEP)
    m = metrics.reset_index() if "cell" not in metrics.columns else metrics
    d = scores.copy()
    split = d["metric"].astype(str).str.extract(_DOMAIN_METRIC)
    dom = split[0].notna()
    d.loc[dom, "metric"], d["group"] = split.loc[dom, 0], np.where(dom, split[1], "all")
    info = m.set_index("cell")[[c for c in ("dataset", "seed", "target") if c in m.columns]]
    d = d.drop(columns=[c for c in info.columns if c in d.columns]).join(info, on="cell")
    d["attributes"], d["n"] = "domain", np.nan
    from fairq.text.benchmarks import curve_metrics

    return sparsity_curves(d, metrics, curve_metrics=curve_metrics(), group_metric="stereoset_intra_ss")


def write_sparsity_figures(curves: pd.DataFrame, fig_dir: Path, level: str = "95%", *,
                           curve_metrics=CURVE_METRICS, group_metric: str = "accuracy",
                           prefix: str = "sparsity") -> list[Path]:
    """One figure per (dataset, model) with pruned cells; the lowest seed. ``curve_metrics``: one panel each
    (group ``all``); ``group_metric``: the last panel, per group, for the unstructured curve."""
    if curves.empty:
        return []
    plt = pyplot()
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (ds, model), f in curves.groupby(["dataset", "model"], sort=False):
        f = f[f["seed"].astype(str) == sorted(f["seed"].astype(str).unique())[0]]
        fig, axes = plt.subplots(1, len(curve_metrics) + 1, figsize=(4.0 * (len(curve_metrics) + 1), 3.8),
                                 layout="constrained")
        for ax, metric in zip(axes, curve_metrics):
            for curve, c in f[(f["metric"] == metric) & (f["group"] == "all")].groupby("curve", sort=False):
                c = c.sort_values("sparsity")
                v = c["value"].to_numpy(float)
                err = np.vstack([v - c["value_ci_low"].to_numpy(float), c["value_ci_high"].to_numpy(float) - v])
                ax.errorbar(c["sparsity"], v, yerr=np.nan_to_num(np.abs(err)), marker="o", ms=3, capsize=2,
                            label=curve)
            ax.set_xlabel("measured sparsity")
            ax.set_title(LABELS.get(metric, metric), fontsize=9)
        axes[0].set_ylabel(f"value ({level} bootstrap CI)")
        axes[0].legend(fontsize=6)
        ax = axes[-1]
        unstructured = f[f["curve"] == "magnitude_prune"]
        groups = unstructured[(unstructured["metric"] == group_metric) & (unstructured["group"] != "all")]
        for group, g in groups.groupby("group", sort=False):
            g = g.sort_values("sparsity")
            n = g["n"].iloc[0]
            ax.plot(g["sparsity"], g["value"], marker=".", label=f"{group}" + (f" (n={int(n)})" if pd.notna(n) else ""))
        ax.set_title(f"per-group {LABELS.get(group_metric, group_metric)} (magnitude_prune)", fontsize=9)
        ax.set_xlabel("measured sparsity")
        if len(groups):
            ax.legend(fontsize=5)
        fig.suptitle(f"{ds} / {model}: sparsity curves", fontsize=10)
        paths.append(save_figure(fig, fig_dir / f"{slug(prefix, ds, model)}.png"))
    return paths
