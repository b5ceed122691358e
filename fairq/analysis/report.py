"""``report.html``: one self-contained interactive file (plotly.js inlined once, no CDN, no external styles)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import (PARETO_OBJECTIVES, LABELS, config_order, flip_bin_data, group_accuracy_data, heatmap_data,
                      pareto_plot_data)
from .flips import UNCERTAINTY_BINS, UNCERTAINTY_EDGES
from .tables import findings_overview, flips_overview, overview_table

__all__ = ["write_report", "report_header", "html_table", "plotly_html", "figure_section", "findings_section",
           "deltas_section", "flips_section", "pareto_section", "exemplars_section"]

REPORT_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1250px;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}
table.t{border-collapse:collapse;font-size:12px;margin:8px 0}
table.t th,table.t td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
table.t th{background:#f3f3f3;position:sticky;top:0}
.scroll{max-height:480px;overflow:auto;border:1px solid #eee}
.supported{background:#d9f2d9} .not-supported{background:#f8dada} .inconclusive{background:#f4f4f4}
.note{color:#555;font-size:13px} details{margin:8px 0}
"""


def html_table(frame: pd.DataFrame, *, verdict_col: str | None = None, max_rows: int | None = None) -> str:
    """Plain HTML table (escaped); rows tinted by verdict when ``verdict_col`` is given."""
    if frame is None or frame.empty:
        return "<p class='note'>No rows.</p>"
    note = ""
    if max_rows is not None and len(frame) > max_rows:
        note = f"<p class='note'>First {max_rows} of {len(frame)} rows; the full table is in the CSV.</p>"
        frame = frame.head(max_rows)
    if verdict_col is None:  # large tables: pandas' own (escaping) writer is much faster than a row loop
        body = frame.to_html(index=False, escape=True, na_rep="", classes="t", border=0,
                             float_format=lambda v: f"{v:.4g}")
        return f"{note}<div class='scroll'>{body}</div>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for _, r in frame.iterrows():
        cls = f" class='{str(r[verdict_col]).replace(' ', '-')}'"
        cells = "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r)
        body.append(f"<tr{cls}>{cells}</tr>")
    return (f"{note}<div class='scroll'><table class='t'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if np.isnan(v) else f"{v:.4g}"
    return str(v)


def _heatmap_figs(deltas):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figs = []
    for ds, tables in heatmap_data(deltas).items():
        n = len(tables)
        fig = make_subplots(rows=1, cols=n, subplot_titles=[LABELS[m] for m in tables], horizontal_spacing=0.07,
                            shared_yaxes=True)
        for k, (metric, t) in enumerate(tables.items()):
            x_end = fig.layout[f"xaxis{k + 1 if k else ''}"].domain[1]
            fig.add_trace(go.Heatmap(z=t.to_numpy(float).T, x=list(t.index), y=list(t.columns),
                                     colorscale="Viridis" if "accuracy" in metric else "Magma",
                                     reversescale="accuracy" not in metric, texttemplate="%{z:.3f}",
                                     colorbar=dict(len=0.9, x=x_end + 0.002, thickness=8),
                                     hovertemplate="%{y}<br>model %{x}<br>" + metric + " %{z:.4f}<extra></extra>"),
                          row=1, col=k + 1)
        fig.update_yaxes(autorange="reversed")
        n_cfg = next(iter(tables.values())).shape[1]
        fig.update_layout(title=f"{ds}: method × model (mean over seeds, intersectional groups)",
                          height=220 + 40 * n_cfg, margin=dict(l=260))
        figs.append(fig)
    return figs


def _group_figs(deltas, level: str = "95%"):
    import plotly.graph_objects as go

    figs = []
    for (ds, model), f in group_accuracy_data(deltas).items():
        fig = go.Figure()
        for cfg in config_order(f):
            h = f[f["config"] == cfg]
            fig.add_trace(go.Bar(name=cfg, x=h["group"], y=h["value"], customdata=h[["n"]],
                                 error_y=dict(type="data", symmetric=False,
                                              array=(h["value_ci_high"] - h["value"]).to_numpy(float),
                                              arrayminus=(h["value"] - h["value_ci_low"]).to_numpy(float)),
                                 hovertemplate="%{x}<br>accuracy %{y:.4f}<br>n %{customdata[0]}<extra>" + cfg
                                               + "</extra>"))
        fig.update_layout(barmode="group", title=f"{ds} / {model}: per-group accuracy with {level} CI "
                                                 f"(seed {f['seed'].iloc[0]})",
                          yaxis_title="accuracy", height=480)
        figs.append(fig)
    return figs


def _flip_figs(flips):
    import plotly.graph_objects as go

    figs = []
    for ds, f in flip_bin_data(flips).items():
        fig = go.Figure()
        for (model, cfg), h in f.groupby(["model", "config"], sort=False):
            h = h.set_index("bin").reindex(list(UNCERTAINTY_BINS))
            fig.add_trace(go.Bar(name=f"{model} · {cfg}", x=list(UNCERTAINTY_BINS), y=h["flip_rate"],
                                 customdata=h[["n"]],
                                 hovertemplate="%{x}: flip rate %{y:.4f} (n %{customdata[0]})<extra></extra>"))
        fig.update_layout(barmode="group", title=f"{ds}: flip rate by baseline uncertainty",
                          xaxis_title="baseline normalized entropy bin", yaxis_title="flip rate", height=440)
        figs.append(fig)
    return figs


def _pareto_figs(pareto):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figs = []
    for ds, f in pareto_plot_data(pareto).items():
        fig = make_subplots(rows=1, cols=2, shared_yaxes=True,
                            subplot_titles=[LABELS[PARETO_OBJECTIVES[2]], LABELS[PARETO_OBJECTIVES[1]]])
        text = (f["model"].astype(str) + " · " + f["config"].astype(str)).tolist()
        for col, xcol in ((1, "cost_value"), (2, "gap_value")):
            for k, kind in enumerate(f["cost_kind"].unique()):  # one frontier per size kind, never mixed
                symbol = ("circle", "square", "triangle-up", "diamond")[k % 4]
                for on, name, color in ((False, "dominated", "#999"), (True, "Pareto frontier", "#d62728")):
                    sel = (f["on_frontier"] == on) & (f["cost_kind"] == kind)
                    h = f[sel]
                    fig.add_trace(go.Scatter(x=h[xcol], y=h["accuracy_value"], mode="markers",
                                             name=f"{kind}: {name}",
                                             marker=dict(color=color, size=12 if on else 9, symbol=symbol),
                                             text=[t for t, o in zip(text, sel) if o],
                                             hovertemplate="%{text}<br>x %{x:.4g}<br>accuracy %{y:.4f}"
                                                           "<extra></extra>",
                                             showlegend=col == 1),
                                  row=1, col=col)
        fig.update_yaxes(title_text="accuracy", row=1, col=1)
        fig.update_layout(title=f"{ds}: Pareto frontiers over (accuracy ↑, EO gap ↓, size ↓), one per size kind",
                          height=460)
        figs.append(fig)
    return figs


def plotly_html(fig) -> str:
    """A plotly figure as a report fragment (plotly.js is inlined once, by :func:`write_report`)."""
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def figure_section(title: str, figs, note: str = "") -> str:
    """``<h2>title</h2>``, an optional note, then the figures (or a note that there are none)."""
    parts = [f"<h2>{html.escape(title)}</h2>", note]
    if not figs:
        parts.append("<p class='note'>Not enough cells for this figure.</p>")
    parts += [plotly_html(fig) for fig in figs]
    return "".join(parts)


def findings_section(findings: pd.DataFrame, alpha: float, margin: float) -> str:
    """The findings, each decided by the rule the section states."""
    level = f"{(1 - alpha) * 100:g}%"
    return (f"<h2>Findings</h2><p class='note'>Rule: supported if the BH-adjusted p &lt; {alpha:g} and the "
            f"{level} CI is entirely on the hypothesised side of 0; not supported if it is significant the other way "
            f"or the CI lies within ±{margin * 100:g} percentage point(s); inconclusive otherwise.</p>"
            + html_table(findings_overview(findings, level), verdict_col="verdict"))


def deltas_section(deltas: pd.DataFrame, level: str) -> str:
    """Overview table, heatmaps, per-group accuracy and (folded) every delta."""
    return ("<h2>Overview (intersectional groups)</h2>" + html_table(overview_table(deltas))
            + figure_section("Heatmaps", _heatmap_figs(deltas))
            + figure_section("Per-group accuracy", _group_figs(deltas, level))
            + "<details><summary><b>All deltas</b> (tables/deltas.csv)</summary>"
            + html_table(deltas, max_rows=2000) + "</details>")


def flips_section(flips: pd.DataFrame) -> str:
    """Flip rates by baseline uncertainty (figure) and the flips overview."""
    edges = ", ".join(f"{e:.3g}" for e in UNCERTAINTY_EDGES)
    note = (f"<p class='note'>Normalized entropy of the baseline's probabilities, bin edges {edges} "
            f"(low / medium / high).</p>")
    return (figure_section("Flips by baseline uncertainty", _flip_figs(flips), note)
            + "<h2>Flips</h2>" + html_table(flips_overview(flips)))


def pareto_section(pareto: pd.DataFrame) -> str:
    """Pareto frontiers (figure) and the Pareto table."""
    return figure_section("Pareto frontier", _pareto_figs(pareto)) + "<h2>Pareto table</h2>" + html_table(
        pareto, max_rows=300)


def exemplars_section(makeup: pd.DataFrame) -> str:
    return "<h2>Compression-identified exemplars: group make-up</h2>" + html_table(makeup, max_rows=200)


def report_header(meta: dict) -> str:
    """The report's title and run line (``meta``: output_dir, n_cells, n_bootstrap, n_permutations, seed, alpha,
    n_tests; without ``n_tests`` the p-values are said to be adjusted across the text tests)."""
    where = (f"<h1>fairq analysis report</h1><p class='note'>{html.escape(str(meta.get('output_dir', '')))} · "
             f"{meta.get('n_cells', 0)} cells · {meta.get('n_bootstrap')} bootstrap resamples, ")
    if "n_tests" not in meta:
        return (where + f"seed {meta.get('seed')}, alpha {meta.get('alpha')} · "
                "p-values Benjamini–Hochberg adjusted across the text tests of the run.</p>")
    return (where + f"{meta.get('n_permutations')} permutations, seed {meta.get('seed')}, alpha {meta.get('alpha')} · "
            f"p-values Benjamini–Hochberg adjusted across all {meta.get('n_tests', 0)} tests of the run.</p>")


def write_report(path: Path, header: str, sections: list[str]) -> Path:
    """Write the report: ``header`` then each product's section; plotly.js is inlined once when a section has a
    plotly figure."""
    body = header + "".join(sections)
    script = ""
    if "Plotly.newPlot" in body:
        from plotly.offline import get_plotlyjs

        script = f"<script>window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script><script>{get_plotlyjs()}</script>"
    doc = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>fairq analysis report</title>"
           f"<style>{REPORT_CSS}</style>{script}</head><body>{body}</body></html>")
    from fairq.store import atomic_write_text

    atomic_write_text(path, doc)
    return Path(path)
