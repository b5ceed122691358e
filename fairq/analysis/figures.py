"""Static figures (matplotlib, Agg) and the tidy data behind them (shared with the plotly report).

- ``heatmaps_<dataset>.png``: model × configuration heatmaps of accuracy, worst-group accuracy, DP and EO gaps
  (mean over seeds, intersectional groups);
- ``group_accuracy_<dataset>_<model>.png``: per-group accuracy with 95% bootstrap CIs, one bar per configuration
  (lowest seed);
- ``flips_uncertainty_<dataset>.png``: flip rate vs the baseline per uncertainty bin (pooled over seeds);
- ``pareto_<dataset>.png``: accuracy against model size and against the EO gap; the Pareto frontier over
  (accuracy, EO gap, size) is marked.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .flips import UNCERTAINTY_BINS
from .tables import HEADLINE_METRICS

__all__ = ["LABELS", "config_order", "slug", "heatmap_data", "group_accuracy_data", "flip_bin_data",
           "pareto_plot_data", "write_figures", "deltas_figures", "flip_figures", "pareto_figures",
           "PARETO_OBJECTIVES"]

PARETO_OBJECTIVES = ("accuracy", "equalized_odds_difference", "size_mb")
LABELS = {"accuracy": "accuracy", "worst_group_accuracy": "worst-group accuracy",
          "demographic_parity_difference": "demographic-parity gap", "equalized_odds_difference": "equalized-odds gap",
          "size_mb": "size (MB)", "latency_ms": "latency (ms)"}


def slug(*parts) -> str:
    """Filename-safe join of ``parts``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(str(p) for p in parts if str(p))).strip("_")


def first_attribute_rows(deltas: pd.DataFrame) -> pd.DataFrame:
    first = deltas.groupby("cell", sort=False)["attributes"].transform("first")
    return deltas[deltas["attributes"] == first]


def config_order(frame: pd.DataFrame) -> list[str]:
    """Baseline first, then configurations in the order they appear."""
    configs = list(dict.fromkeys(frame["config"]))
    return sorted(configs, key=lambda c: (c != "baseline", configs.index(c)))


def heatmap_data(deltas: pd.DataFrame) -> dict[str, dict[str, pd.DataFrame]]:
    """``{dataset: {metric: model × config table}}`` of headline metric values (mean over seeds)."""
    d = first_attribute_rows(deltas)
    d = d[(d["group"] == "all") & d["metric"].isin(HEADLINE_METRICS)]
    out = {}
    for ds, f in d.groupby("dataset", sort=False):
        order = config_order(f)
        out[str(ds)] = {m: f[f["metric"] == m].pivot_table(index="model", columns="config", values="value",
                                                           aggfunc="mean").reindex(columns=order)
                        for m in HEADLINE_METRICS}
    return out


def group_accuracy_data(deltas: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """``{(dataset, model): rows}`` per-group accuracy with CI, lowest seed, intersectional groups."""
    d = first_attribute_rows(deltas)
    d = d[(d["metric"] == "accuracy") & (d["group"] != "all")]
    out = {}
    for (ds, model), f in d.groupby(["dataset", "model"], sort=False):
        seed = sorted(f["seed"].unique(), key=str)[0]
        f = f[f["seed"] == seed]
        out[(str(ds), str(model))] = f[["config", "group", "n", "value", "value_ci_low", "value_ci_high", "seed"]]
    return out


def flip_bin_data(flips: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{dataset: rows}`` flip rate per configuration × uncertainty bin (pooled over seeds and models)."""
    if flips.empty or "flips_low" not in flips.columns:
        return {}
    f = flips[flips["group"] == "all"]
    if f[[f"n_{b}" for b in UNCERTAINTY_BINS]].isna().all().all():
        return {}
    out = {}
    for ds, g in f.groupby("dataset", sort=False):
        rows = []
        for (model, config), h in g.groupby(["model", "config"], sort=False):
            for b in UNCERTAINTY_BINS:
                n, k = h[f"n_{b}"].sum(), h[f"flips_{b}"].sum()
                rows.append({"model": model, "config": config, "bin": b, "n": n,
                             "flip_rate": k / n if n else np.nan})
        out[str(ds)] = pd.DataFrame(rows)
    return out


def pareto_plot_data(pareto: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{dataset: rows}`` for the plotted objective triple (accuracy, EO gap, size)."""
    if pareto.empty:
        return {}
    acc, gap, cost = PARETO_OBJECTIVES
    p = pareto[(pareto["accuracy_metric"] == acc) & (pareto["gap_metric"] == gap) & (pareto["cost_metric"] == cost)]
    return {str(ds): f for ds, f in p.groupby("dataset", sort=False)}


# ------------------------------------------------------------------------------------------------ matplotlib
def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as PNG (atomically) and free it."""
    import io

    from fairq.store import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _heatmaps(data, fig_dir: Path) -> list[Path]:
    plt = pyplot()
    paths = []
    for ds, tables in data.items():
        first = next(iter(tables.values()))
        n_models, n_cfg = first.shape
        fig, axes = plt.subplots(1, len(tables), figsize=(3.0 + len(tables) * (1.4 + 0.9 * n_models),
                                                          1.8 + 0.38 * n_cfg),
                                 squeeze=False, layout="constrained")
        for k, (ax, (metric, t)) in enumerate(zip(axes.ravel(), tables.items())):
            vals = t.to_numpy(dtype=float).T  # rows = configurations, columns = models
            cmap = plt.get_cmap("viridis" if "accuracy" in metric else "magma_r")
            im = ax.imshow(vals, cmap=cmap, aspect="auto")
            ax.set_xticks(range(n_models), t.index, rotation=30, ha="right", fontsize=8)
            ax.set_yticks(range(n_cfg), t.columns if k == 0 else [""] * n_cfg, fontsize=8)
            finite = vals[~np.isnan(vals)]
            lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
            for i in range(vals.shape[0]):
                for j in range(vals.shape[1]):
                    if not np.isnan(vals[i, j]):
                        r, g, b, _ = cmap((vals[i, j] - lo) / (hi - lo) if hi > lo else 0.5)
                        ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                        ax.text(j, i, f"{vals[i, j]:.3f}", ha="center", va="center", fontsize=7, color=ink)
            ax.set_title(LABELS[metric], fontsize=10)
            fig.colorbar(im, ax=ax, shrink=0.9)
        fig.suptitle(f"{ds}: method × model (mean over seeds, intersectional groups)")
        paths.append(save_figure(fig, fig_dir / f"{slug('heatmaps', ds)}.png"))
    return paths


def _group_bars(data, fig_dir: Path, level: str = "95%") -> list[Path]:
    plt = pyplot()
    paths = []
    for (ds, model), f in data.items():
        groups = list(dict.fromkeys(f["group"]))
        configs = config_order(f)
        width = 0.8 / max(1, len(configs))
        fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(groups) * max(1, len(configs)) ** 0.5 + 3), 4.5),
                               layout="constrained")
        x = np.arange(len(groups))
        for k, cfg in enumerate(configs):
            h = f[f["config"] == cfg].set_index("group").reindex(groups)
            v = h["value"].to_numpy(float)
            err = np.vstack([v - h["value_ci_low"].to_numpy(float), h["value_ci_high"].to_numpy(float) - v])
            ax.bar(x + (k - (len(configs) - 1) / 2) * width, v, width, yerr=np.nan_to_num(err), capsize=2,
                   label=cfg)
        ax.set_xticks(x, groups, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"accuracy ({level} bootstrap CI)")
        lo = np.nanmin(f["value_ci_low"].to_numpy(float)) if len(f) else 0.0
        ax.set_ylim(max(0.0, lo - 0.05), 1.0)
        ax.set_title(f"{ds} / {model}: per-group accuracy (seed {f['seed'].iloc[0]})")
        ax.legend(fontsize=7, ncol=2)
        paths.append(save_figure(fig, fig_dir / f"{slug('group_accuracy', ds, model)}.png"))
    return paths


def _flip_bins(data, fig_dir: Path) -> list[Path]:
    plt = pyplot()
    paths = []
    for ds, f in data.items():
        f = f.assign(label=f["model"].astype(str) + " · " + f["config"].astype(str))
        labels = list(dict.fromkeys(f["label"]))
        width = 0.8 / max(1, len(labels))
        fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
        x = np.arange(len(UNCERTAINTY_BINS))
        for k, lab in enumerate(labels):
            h = f[f["label"] == lab].set_index("bin").reindex(list(UNCERTAINTY_BINS))
            ax.bar(x + (k - (len(labels) - 1) / 2) * width, h["flip_rate"].to_numpy(float), width, label=lab)
        ax.set_xticks(x, [f"{b}\n(normalized entropy)" for b in UNCERTAINTY_BINS])
        ax.set_ylabel("flip rate vs baseline")
        ax.set_title(f"{ds}: flips by baseline uncertainty")
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, fig_dir / f"{slug('flips_uncertainty', ds)}.png"))
    return paths


def _pareto(data, fig_dir: Path) -> list[Path]:
    plt = pyplot()
    paths = []
    for ds, f in data.items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
        for ax, xcol, xlabel in ((axes[0], "cost_value", LABELS[PARETO_OBJECTIVES[2]]),
                                 (axes[1], "gap_value", LABELS[PARETO_OBJECTIVES[1]])):
            for k, (kind, part) in enumerate(f.groupby("cost_kind", sort=False)):  # one frontier per kind
                on = part["on_frontier"].to_numpy(bool)
                marker = "os^D"[k % 4]
                ax.scatter(part[xcol][~on], part["accuracy_value"][~on], c="0.6", marker=marker,
                           label=f"{kind}: dominated")
                ax.scatter(part[xcol][on], part["accuracy_value"][on], c=f"C{3 + k}", marker=marker, s=90,
                           edgecolors="k", label=f"{kind}: Pareto frontier")
            for _, r in f.iterrows():
                ax.annotate(f"{r['model']} · {r['config']}", (r[xcol], r["accuracy_value"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("accuracy")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{ds}: Pareto frontiers over (accuracy ↑, EO gap ↓, size ↓), one per size kind "
                     "(serialized bytes vs packed k-bit estimate)")
        paths.append(save_figure(fig, fig_dir / f"{slug('pareto', ds)}.png"))
    return paths


def deltas_figures(deltas: pd.DataFrame, fig_dir: Path, level: str = "95%") -> list[Path]:
    """Heatmaps and per-group accuracy bars (CIs labelled at ``level``) under ``fig_dir``."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    return _heatmaps(heatmap_data(deltas), fig_dir) + _group_bars(group_accuracy_data(deltas), fig_dir, level)


def flip_figures(flips: pd.DataFrame, fig_dir: Path) -> list[Path]:
    """Flip rate by baseline uncertainty under ``fig_dir``."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    return _flip_bins(flip_bin_data(flips), fig_dir)


def pareto_figures(pareto: pd.DataFrame, fig_dir: Path) -> list[Path]:
    """Pareto frontiers under ``fig_dir``."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    return _pareto(pareto_plot_data(pareto), fig_dir)


def write_figures(deltas: pd.DataFrame, flips: pd.DataFrame, pareto: pd.DataFrame, fig_dir: Path,
                  level: str = "95%") -> list[Path]:
    """Write every static figure under ``fig_dir`` (CIs labelled at ``level``); returns their paths."""
    return deltas_figures(deltas, fig_dir, level) + flip_figures(flips, fig_dir) + pareto_figures(pareto, fig_dir)
