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
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import LABELS, _plt, _primary, _save, slug

__all__ = ["CURVE_METRICS", "sparsity_curves", "write_sparsity_figures"]

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


def sparsity_curves(deltas: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Curve points of every ``family == "pruning"`` cell and its baselines (sparsity 0), from ``deltas``.

    ``metrics``: ``metrics.csv`` (indexed by cell or with a ``cell`` column) for ``family``, ``sparsity``,
    ``target_sparsity`` and ``then_method``. Baseline rows are repeated under every curve of their model so that
    each curve starts at its dense point.
    """
    m = metrics.reset_index() if "cell" not in metrics.columns else metrics.copy()
    if "family" not in m.columns or not m["family"].astype(str).eq("pruning").any():
        return pd.DataFrame(columns=_KEEP)
    for col in ("sparsity", "target_sparsity", "then_method"):
        if col not in m.columns:
            m[col] = np.nan
    m["curve"] = m.apply(_curve_label, axis=1)
    pruned = m[m["family"].astype(str).eq("pruning")]
    d = _primary(deltas)
    headline = d["metric"].isin(CURVE_METRICS) & d["group"].eq("all")
    d = d[headline | (d["metric"].eq("accuracy") & ~d["group"].eq("all"))]
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


def write_sparsity_figures(curves: pd.DataFrame, fig_dir: Path, level: str = "95%") -> list[Path]:
    """One figure per (dataset, model) with pruned cells; the lowest seed."""
    if curves.empty:
        return []
    plt = _plt()
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (ds, model), f in curves.groupby(["dataset", "model"], sort=False):
        f = f[f["seed"].astype(str) == sorted(f["seed"].astype(str).unique())[0]]
        fig, axes = plt.subplots(1, len(CURVE_METRICS) + 1, figsize=(4.0 * (len(CURVE_METRICS) + 1), 3.8),
                                 layout="constrained")
        for ax, metric in zip(axes, CURVE_METRICS):
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
        groups = unstructured[(unstructured["metric"] == "accuracy") & (unstructured["group"] != "all")]
        for group, g in groups.groupby("group", sort=False):
            g = g.sort_values("sparsity")
            ax.plot(g["sparsity"], g["value"], marker=".", label=f"{group} (n={int(g['n'].iloc[0])})")
        ax.set_title("per-group accuracy (magnitude_prune)", fontsize=9)
        ax.set_xlabel("measured sparsity")
        if len(groups):
            ax.legend(fontsize=5)
        fig.suptitle(f"{ds} / {model}: sparsity curves", fontsize=10)
        paths.append(_save(fig, fig_dir / f"{slug('sparsity', ds, model)}.png"))
    return paths
