"""Soft head pruning in the analysis: the head attribution each cell recorded, and the bias-vs-utility trade-off
over its α sweep.

Nothing is recomputed here. The attribution is the validation-split table a ``soft_head_pruning`` cell stored
(``heads/<cell>.json``, :mod:`fairq.compression.localize.soft_pruning`); the trade-off points are the rows the analysis
already computed from the cells' test-split predictions — ``deltas.csv`` (classification: bootstrap CIs, paired
tests, BH-adjusted p) or ``text_scores.csv`` (masked LMs: the same for the text metrics) — with the model's
baseline as the point α = 0.

- ``tables/head_attribution.csv``: one row per cell × block × head × category (``delta_bias``: bias change on
  validation when the head is ablated; ``correlation``: its activation vs the per-item bias score; ``selected``);
- ``tables/soft_pruning_tradeoff.csv``: one row per α point × metric (bias metrics and the utility metric);
- ``figures/heads_<dataset>_<model>.png``: layer × head heatmap of the mean ablation effect (selected heads
  boxed) next to the mean |correlation|; ``figures/soft_pruning_<dataset>_<model>.png``: each bias metric against
  the utility metric, one point per α with both CIs, hollow where the BH-adjusted test vs the baseline is not
  significant.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import pyplot, first_attribute_rows, save_figure, slug

__all__ = ["head_attribution_table", "soft_pruning_tradeoff", "write_head_figures", "heads_report_html"]

METHOD = "soft_head_pruning"
#: (bias metrics, utility metric) of the trade-off, per kind of cell.
VISION = (("demographic_parity_difference", "equalized_odds_difference", "worst_group_accuracy"), "accuracy")
TEXT = (("stereoset_intra_ss", "crows_metric", "bbq_norm_bias_ambig", "probe_stereoset_ss"), "stereoset_intra_lms")


def _cells(metrics: pd.DataFrame) -> pd.DataFrame:
    m = metrics.reset_index(drop=True) if "cell" in metrics.columns else metrics.reset_index(names="cell")
    if "method" not in m.columns:
        return m.iloc[0:0]
    return m[m["method"].astype(str).eq(METHOD)]


def head_attribution_table(metrics: pd.DataFrame, output_dir) -> pd.DataFrame:
    """The attribution rows of every ``soft_head_pruning`` cell (read from its ``head_attribution`` JSON)."""
    rows = []
    for _, r in _cells(metrics).iterrows():
        rel = str(r.get("head_attribution", "") or "")
        path = Path(output_dir) / rel
        if not rel or rel == "nan" or not path.is_file():
            continue
        art = json.loads(path.read_text())
        chosen = {(b, int(h)) for b, hs in (art.get("selected") or {}).items() for h in hs}
        for a in art.get("rows", []):
            rows.append({"cell": r["cell"], "dataset": r.get("dataset", ""), "model": r["model"],
                         "seed": r.get("seed", ""), "alpha": art.get("alpha"), "layer": a["layer"],
                         "block": a["block"], "head": a["head"], "category": a["category"],
                         "bias_before": a.get("bias_before"), "bias_ablated": a.get("bias_ablated"),
                         "delta_bias": a["delta_bias"], "delta_utility": a.get("delta_utility"),
                         "correlation": a.get("correlation"), "selected": (a["block"], int(a["head"])) in chosen,
                         "bias_name": art.get("bias_name", ""), "utility_name": art.get("utility_name", "")})
    return pd.DataFrame(rows)


def _alpha_of(variant: str) -> float:
    for part in str(variant).split("_"):
        if part.startswith("alpha="):
            return float(part[len("alpha="):])
    return float("nan")


def _curve(variant: str) -> str:
    rest = "_".join(p for p in str(variant).split("_") if not p.startswith("alpha="))
    return METHOD + (f" [{rest}]" if rest else "")


def soft_pruning_tradeoff(scores: pd.DataFrame, metrics: pd.DataFrame, *, text: bool) -> pd.DataFrame:
    """Trade-off points: the ``soft_head_pruning`` cells' rows of ``scores`` (``deltas`` for classification, group
    ``all`` of the primary attribute scope; ``text_scores`` for text) plus their baselines at α = 0."""
    cols = ["dataset", "model", "seed", "curve", "alpha", "cell", "attributes", "group", "metric", "value", "value_ci_low",
            "value_ci_high", "baseline_value", "delta", "ci_low", "ci_high", "p_adjusted"]
    cells = _cells(metrics)
    if cells.empty or scores is None or scores.empty:
        return pd.DataFrame(columns=cols)
    bias, utility = TEXT if text else VISION
    d = scores if text else first_attribute_rows(scores)
    d = d[d["metric"].isin((*bias, utility))]
    if not text:
        d = d[d["group"].astype(str).eq("all")]
    m = metrics.reset_index(drop=True) if "cell" in metrics.columns else metrics.reset_index(names="cell")
    info = m.set_index("cell")
    frames = []
    for _, c in cells.iterrows():
        pts = d[d["cell"] == c["cell"]].assign(alpha=_alpha_of(c["variant"]), curve=_curve(c["variant"]))
        frames.append(pts)
        base = d[(d["method"] == "baseline") & (d["model"] == c["model"])] if "method" in d.columns else d.iloc[0:0]
        if "seed" in info.columns and len(base):
            base = base[base["cell"].map(lambda x: str(info.at[x, "seed"]) if x in info.index else "")
                        == str(c.get("seed", ""))]
        frames.append(base.assign(alpha=0.0, curve=_curve(c["variant"])))
    out = pd.concat(frames, ignore_index=True)
    for col in ("dataset", "seed"):
        if col not in out.columns:
            out[col] = out["cell"].map(lambda x: info.at[x, col] if x in info.index and col in info.columns else "")
    for col in cols:
        if col not in out.columns:
            out[col] = np.nan
    out = out[cols].drop_duplicates(["curve", "cell", "metric"])
    return out.sort_values(["dataset", "model", "curve", "metric", "alpha"], kind="stable", ignore_index=True)


def _heatmap(ax, grid, title, cmap, chosen, center=None):
    lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    kw = dict(vmin=-lim, vmax=lim) if center == 0 else {}
    im = ax.imshow(grid, cmap=cmap, aspect="auto", **kw)
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7)
    for i, j in chosen:
        ax.add_patch(pyplot().Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, ec="black"))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(im, ax=ax, shrink=0.8)


def write_head_figures(attribution: pd.DataFrame, tradeoff: pd.DataFrame, fig_dir: Path, level: str = "95%"
                       ) -> list[Path]:
    """The heatmap (first cell per dataset × model: every α cell of a sweep holds the same attribution) and the
    trade-off figure."""
    plt = pyplot()
    paths = []
    fig_dir = Path(fig_dir)
    if not attribution.empty:
        fig_dir.mkdir(parents=True, exist_ok=True)
        for (ds, model), f in attribution.groupby(["dataset", "model"], sort=False):
            f = f[f["cell"] == f["cell"].iloc[0]]
            per = f.groupby(["layer", "head"]).agg(effect=("delta_bias", "mean"),
                                                   corr=("correlation", lambda c: np.nanmean(np.abs(c.astype(float)))
                                                         if c.notna().any() else np.nan),
                                                   selected=("selected", "any")).reset_index()
            n_l, n_h = int(per["layer"].max()) + 1, int(per["head"].max()) + 1
            eff, cor = np.full((n_l, n_h), np.nan), np.full((n_l, n_h), np.nan)
            for _, r in per.iterrows():
                eff[int(r["layer"]), int(r["head"])] = r["effect"]
                cor[int(r["layer"]), int(r["head"])] = r["corr"]
            chosen = [(int(r["layer"]), int(r["head"])) for _, r in per.iterrows() if r["selected"]]
            fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * n_h * 2, 1.5 + 0.6 * n_l), layout="constrained")
            _heatmap(axes[0], eff, "ablation: mean Δ bias (< 0: the head carries bias)", "RdBu_r", chosen, center=0)
            _heatmap(axes[1], cor, "mean |r| activation vs per-item bias score", "viridis", chosen)
            fig.suptitle(f"{ds} / {model}: head attribution on validation ({f['bias_name'].iloc[0]}); "
                         f"boxed = selected", fontsize=9)
            paths.append(save_figure(fig, fig_dir / f"{slug('heads', ds, model)}.png"))
    if not tradeoff.empty:
        fig_dir.mkdir(parents=True, exist_ok=True)
        for (ds, model), f in tradeoff.groupby(["dataset", "model"], sort=False):
            f = f[f["seed"].astype(str) == sorted(f["seed"].astype(str).unique())[0]]
            bias = [m for m in (*VISION[0], *TEXT[0]) if m in set(f["metric"])]
            util = VISION[1] if VISION[1] in set(f["metric"]) else TEXT[1]
            if not bias or util not in set(f["metric"]):
                continue
            fig, axes = plt.subplots(1, len(bias), figsize=(4.2 * len(bias), 3.8), layout="constrained", squeeze=False)
            for ax, metric in zip(axes[0], bias):
                for curve, c in f.groupby("curve", sort=False):
                    u = c[c["metric"] == util].set_index("alpha")
                    b = c[c["metric"] == metric].set_index("alpha")
                    alphas = sorted(set(u.index) & set(b.index))
                    if not alphas:
                        continue
                    x, y = u.loc[alphas, "value"].to_numpy(float), b.loc[alphas, "value"].to_numpy(float)
                    xerr = np.abs(np.vstack([x - u.loc[alphas, "value_ci_low"].to_numpy(float),
                                             u.loc[alphas, "value_ci_high"].to_numpy(float) - x]))
                    yerr = np.abs(np.vstack([y - b.loc[alphas, "value_ci_low"].to_numpy(float),
                                             b.loc[alphas, "value_ci_high"].to_numpy(float) - y]))
                    line = ax.errorbar(x, y, xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), marker="",
                                       capsize=2, label=curve, lw=1)
                    sig = (b.loc[alphas, "p_adjusted"].astype(float) < 0.05).to_numpy()
                    color = line[0].get_color()
                    for xi, yi, a, s in zip(x, y, alphas, sig):
                        ax.plot([xi], [yi], "o", ms=6, mfc=color if s else "white", mec=color)
                        ax.annotate(f"α={a:g}", (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
                ax.set_xlabel(f"{util} ({level} CI)")
                ax.set_ylabel(metric)
                ax.set_title(metric, fontsize=9)
            axes[0][0].legend(fontsize=6)
            fig.suptitle(f"{ds} / {model}: soft head pruning, bias vs utility per α on test (filled: BH-adjusted "
                         f"p < 0.05 vs the baseline)", fontsize=9)
            paths.append(save_figure(fig, fig_dir / f"{slug('soft_pruning', ds, model)}.png"))
    return paths


def heads_report_html(attribution: pd.DataFrame, tradeoff: pd.DataFrame, figures: list[Path], table) -> str:
    """The report's soft-head-pruning section: the figures inlined (base64 PNG) and the trade-off table."""
    if attribution.empty and tradeoff.empty:
        return ""
    parts = ["<h2>Soft head pruning: attribution and trade-off</h2>",
             "<p class='note'>Heads are attributed and selected on the validation split (ablation: bias change with "
             "the head's q/k/v scaled to 0; correlation: the head's mean attention-output norm vs the per-item "
             "bias score); each α cell scales the selected heads' q/k/v by 1 − α and is evaluated on the test "
             "split. Trade-off values with bootstrap CIs; Δ vs the baseline with paired tests, p BH-adjusted with "
             "the run's other tests.</p>"]
    for p in figures:
        name = Path(p).name
        if name.startswith(("heads_", "soft_pruning_")) and Path(p).is_file():
            data = base64.b64encode(Path(p).read_bytes()).decode()
            parts.append(f"<p><img alt='{html.escape(name)}' src='data:image/png;base64,{data}' "
                         "style='max-width:100%'></p>")
    if not tradeoff.empty:
        parts += ["<h3>Bias vs utility per α (test split)</h3>",
                  table(tradeoff.drop(columns=["cell"]).round(4))]
    if not attribution.empty:
        first = attribution[attribution["cell"].isin(attribution.groupby(["dataset", "model"])["cell"].transform(
            "first"))]
        parts += ["<h3>Head attribution (validation split)</h3>",
                  table(first[["dataset", "model", "layer", "head", "category", "bias_before", "delta_bias",
                               "delta_utility", "correlation", "selected"]].round(4), max_rows=400)]
    return "".join(parts)
