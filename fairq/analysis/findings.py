"""Findings: directional claims generated from the cells that exist, each decided by a rule written here.

Claims (only generated when the cells they need exist; seeds are averaged and stay paired):

- ``worst_vs_best`` — per compressed configuration: *it lowers the accuracy of the worst baseline group more
  than that of the best* (groups = intersectional, eligible ones, ranked by the baseline's accuracy averaged over
  seeds). Estimate ``Δacc(worst) − Δacc(best)``, Δ = compressed − baseline; hypothesis: < 0.
- ``fewer_bits`` — per method/variant with several weight widths (across backends: real INT8 vs simulated INT4
  is the usual pair): *the lowest width loses more (worst-group)
  accuracy than the highest*: ``metric(low) − metric(high)`` on the same samples; hypothesis: < 0.
- ``mitigation_vs_ptq`` — per mitigation configuration with a plain PTQ cell at the same weight/activation bits
  (``ptq_static``, else ``ptq_dynamic``; the one with the same options, e.g. ``observer=percentile``, when it
  exists, else the default one): *it reduces the DP gap / the EO gap / raises worst-group accuracy vs
  plain PTQ*: ``metric(mitigated) − metric(ptq)``; hypotheses < 0, < 0, > 0.
- ``flips_uncertain`` — per compressed configuration: *flips concentrate on samples the baseline is unsure of*:
  flip rate in the high minus the low uncertainty bin (pooled over seeds; score test and Newcombe interval of
  two independent proportions, statsmodels); hypothesis: > 0.
- ``exemplars_worst_group`` — per model: *compression-identified exemplars over-represent the worst baseline
  group*: its share of exemplars minus its share of the test set (exact binomial test and Wilson interval,
  scipy); hypothesis: > 0.

Paired claims use :func:`stats.paired_comparison` (stratified bootstrap CI, paired permutation p).

**Rule** (:func:`verdict`), with ``p`` the BH-adjusted p-value across all tests of the run:
*supported* if ``p < alpha`` and the CI lies entirely on the hypothesised side of 0; *not supported* if
``p < alpha`` and the CI lies entirely on the other side, or if the whole CI lies inside ``±margin``
(``EQUIVALENCE_MARGIN`` = 1 percentage point: any effect is negligible); *inconclusive* otherwise.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from fairq.metrics import DEFAULT_MIN_GROUP_SIZE, group_rates, scalar_metrics_from_counts

from .deltas import derive_seed, seed_samples
from .flips import UNCERTAINTY_BINS
from .load import CONFIG_COLUMNS, Store, is_mitigation
from .pairs import Paired, align, encode_scope, scopes
from .stats import SharedSamples, paired_comparison

__all__ = ["EQUIVALENCE_MARGIN", "verdict", "compute_findings", "apply_rules", "FINDING_COLUMNS"]

EQUIVALENCE_MARGIN = 0.01
FINDING_COLUMNS = ["finding", "claim", "dataset", "model", "target", "config", "reference", "statistic",
                   "hypothesis", "estimate", "ci_low", "ci_high", "p_value", "p_adjusted", "test", "n_seeds",
                   "verdict"]


def verdict(estimate: float, ci_low: float, ci_high: float, p_adjusted: float, hypothesis: str, *,
            alpha: float = 0.05, margin: float = EQUIVALENCE_MARGIN) -> str:
    """``"supported"`` / ``"not supported"`` / ``"inconclusive"`` for ``hypothesis`` ``"< 0"`` or ``"> 0"``."""
    if hypothesis not in ("< 0", "> 0"):
        raise ValueError(f"hypothesis must be '< 0' or '> 0'; got {hypothesis!r}")
    if any(pd.isna(v) for v in (estimate, ci_low, ci_high)):
        return "inconclusive"
    sign = 1.0 if hypothesis == "> 0" else -1.0
    lo, hi = sorted((sign * ci_low, sign * ci_high))  # now the hypothesis reads "> 0"
    significant = not pd.isna(p_adjusted) and p_adjusted < alpha
    if significant and lo > 0:
        return "supported"
    if (significant and hi < 0) or (-margin < ci_low and ci_high < margin):
        return "not supported"
    return "inconclusive"


def apply_rules(findings: pd.DataFrame, *, alpha: float = 0.05, margin: float = EQUIVALENCE_MARGIN) -> pd.DataFrame:
    """Fill ``verdict`` from the estimate, CI, ``p_adjusted`` and hypothesis of every finding."""
    out = findings.copy()
    out["verdict"] = [verdict(r.estimate, r.ci_low, r.ci_high, r.p_adjusted, r.hypothesis, alpha=alpha,
                              margin=margin) for r in out.itertuples()]
    return out


# ---------------------------------------------------------------------------------------------------- helpers
def _configs(store: Store) -> pd.DataFrame:
    m = store.metrics.copy()
    for c in CONFIG_COLUMNS:
        # missing → "" first: pandas ≥ 3 keeps NaN through astype(str), and groupby would then drop every cell
        # without activation quantization (pruned, distilled, weight-only) from the findings
        m[c] = _text(m[c])
    return m


def _text(values: pd.Series) -> pd.Series:
    """Strings with missing values as ``""`` (``fillna("")`` on an all-missing float column is deprecated)."""
    return values.where(values.notna(), "").astype(str)


def _worst_best(pairs: list[Paired], min_group_size: int) -> tuple[list[np.ndarray], list[str], int, int] | None:
    """Intersectional joints per seed plus the worst and best eligible groups by mean baseline accuracy."""
    attrs = list(pairs[0].sensitive.columns)
    joints, labels = seed_samples(pairs, scopes(attrs)[0])
    per_seed = joints.joints() if isinstance(joints, SharedSamples) else np.stack(joints)
    base = per_seed.sum(axis=-1)                                           # [S, G, C, C]
    r = group_rates(base, pairs[0].pos_index)
    eligible = (r["n"] >= min_group_size).all(axis=0)
    if eligible.sum() < 2:
        return None
    acc = np.where(eligible, r["accuracy"].mean(axis=0), np.nan)
    return joints, labels, int(np.nanargmin(acc)), int(np.nanargmax(acc))


def _tag(frame: pd.DataFrame) -> str:
    """A cell configuration as claims name it: its label and, always, its backend (real INT8 kernels and a
    simulation of the same width are different models)."""
    backend = str(frame["backend"].iloc[0] or "")
    return f"{frame['config'].iloc[0]} [{backend}]" if backend else str(frame["config"].iloc[0])


def _row(**kw) -> dict:
    return {c: kw.get(c, np.nan) for c in FINDING_COLUMNS}


def _comparison_joints(store: Store, a_ids: list[str], b_ids: list[str]) -> list[Paired]:
    return [align(store.cells[a], store.cells[b]) for a, b in zip(a_ids, b_ids)]


def _by_seed(frame: pd.DataFrame) -> dict[str, str]:
    return {str(s): c for s, c in zip(frame["seed"], frame.index)}


def _scalar_stat(metric: str, pos_index, min_group_size):
    def stat(a, b):
        sa = scalar_metrics_from_counts(a, pos_index=pos_index, min_group_size=min_group_size)[metric]
        sb = scalar_metrics_from_counts(b, pos_index=pos_index, min_group_size=min_group_size)[metric]
        return (np.asarray(sb, float) - np.asarray(sa, float))[..., None]
    return stat


def _paired_claim(store, a_cells: dict, b_cells: dict, metric: str, *, n_bootstrap, n_permutations, seed,
                  min_group_size, confidence, tag) -> dict | None:
    seeds = sorted(set(a_cells) & set(b_cells))
    if not seeds:
        return None
    pairs = _comparison_joints(store, [a_cells[s] for s in seeds], [b_cells[s] for s in seeds])
    joints, _ = seed_samples(pairs, scopes(list(pairs[0].sensitive.columns))[0])
    res = paired_comparison(joints, _scalar_stat(metric, pairs[0].pos_index, min_group_size),
                            n_bootstrap=n_bootstrap, n_permutations=n_permutations, confidence=confidence,
                            seed=derive_seed(seed, *tag))
    return {"estimate": res["estimate"][0], "ci_low": res["ci_low"][0], "ci_high": res["ci_high"][0],
            "p_value": res["p_value"][0], "test": "permutation", "n_seeds": len(seeds)}


# ---------------------------------------------------------------------------------------------------- claims
def _worst_vs_best(m, pairs, *, n_bootstrap, n_permutations, seed, min_group_size, confidence):
    rows = []
    comp = m[m["method"] != "baseline"]
    for cfg, frame in comp.groupby(list(CONFIG_COLUMNS), sort=False):
        ps = [pairs[c] for c in frame.index if c in pairs]
        if not ps:
            continue
        wb = _worst_best(ps, min_group_size)
        if wb is None:
            continue
        joints, labels, w, b = wb

        def stat(a_counts, b_counts, w=w, b=b):
            ra = group_rates(a_counts, None)["accuracy"]
            rb = group_rates(b_counts, None)["accuracy"]
            return ((rb[..., w] - ra[..., w]) - (rb[..., b] - ra[..., b]))[..., None]

        res = paired_comparison(joints, stat, n_bootstrap=n_bootstrap, n_permutations=n_permutations,
                                confidence=confidence, seed=derive_seed(seed, "worst_vs_best", *cfg))
        config = frame["config"].iloc[0]
        rows.append(_row(
            finding="worst_vs_best", dataset=cfg[0], model=cfg[1], target=cfg[2], config=config,
            reference="baseline",
            claim=f"{_tag(frame)} lowers the accuracy of the worst baseline group ({labels[w]}) more than that of "
                  f"the best ({labels[b]})",
            statistic="Δacc(worst group) − Δacc(best group)", hypothesis="< 0", test="permutation",
            estimate=res["estimate"][0], ci_low=res["ci_low"][0], ci_high=res["ci_high"][0],
            p_value=res["p_value"][0], n_seeds=len(ps)))
    return rows


def _fewer_bits(store, m, *, n_bootstrap, n_permutations, seed, min_group_size, confidence):
    rows = []
    comp = m[(m["method"] != "baseline")].copy()
    comp["_wb"] = pd.to_numeric(comp["weight_bits"], errors="coerce")
    # Widths are compared across backends: 8-bit PTQ runs real INT8 kernels while 4-bit is simulated, and that
    # pair is the comparison a user asks for. One backend per width is kept when a width has several.
    keys = ["dataset", "model", "target", "method", "variant"]
    for key, frame in comp.groupby(keys, sort=False):
        widths = sorted(frame["_wb"].dropna().unique())
        if len(widths) < 2:
            continue
        lo_f, hi_f = frame[frame["_wb"] == widths[0]], frame[frame["_wb"] == widths[-1]]
        # Same activation bits when possible, else the first of each.
        common_act = sorted(set(lo_f["act_bits"]) & set(hi_f["act_bits"]))
        if common_act:
            lo_f, hi_f = lo_f[lo_f["act_bits"] == common_act[0]], hi_f[hi_f["act_bits"] == common_act[0]]
        else:
            lo_f = lo_f[lo_f["act_bits"] == lo_f["act_bits"].iloc[0]]
            hi_f = hi_f[hi_f["act_bits"] == hi_f["act_bits"].iloc[0]]
        lo_f, hi_f = lo_f[lo_f["backend"] == lo_f["backend"].iloc[0]], hi_f[hi_f["backend"] == hi_f["backend"].iloc[0]]
        for metric in ("accuracy", "worst_group_accuracy"):
            res = _paired_claim(store, _by_seed(hi_f), _by_seed(lo_f), metric, n_bootstrap=n_bootstrap,
                                n_permutations=n_permutations, seed=seed, min_group_size=min_group_size,
                                confidence=confidence, tag=("fewer_bits", metric) + key)
            if res is None:
                continue
            lo_c, hi_c = lo_f["config"].iloc[0], hi_f["config"].iloc[0]
            what = "accuracy" if metric == "accuracy" else "worst-group accuracy"
            rows.append(_row(finding="fewer_bits", dataset=key[0], model=key[1], target=key[2], config=lo_c,
                             reference=hi_c, claim=f"{_tag(lo_f)} has lower {what} than {_tag(hi_f)}",
                             statistic=f"{metric}(low bits) − {metric}(high bits)", hypothesis="< 0", **res))
    return rows


_MITIGATION_CLAIMS = (("demographic_parity_difference", "< 0", "reduces the demographic-parity gap"),
                      ("equalized_odds_difference", "< 0", "reduces the equalized-odds gap"),
                      ("worst_group_accuracy", "> 0", "raises worst-group accuracy"))


def _reference_cells(m: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """The plain-PTQ cells (one configuration, all its seeds) a mitigation configuration ``frame`` is judged
    against, from the run's metrics table ``m`` (as :func:`_configs` gives it); empty when there is none.

    Candidates share the dataset, model, target, weight and activation bits, the method the mitigation recorded
    as its ``reference_method``, the backend (a simulated mitigation is never judged against real INT8 kernels)
    and the simulation (deployed graph vs per-layer input; missing = missing); a setting is never its own
    reference. Among them: the control cell the setting named (``reference_config``, e.g. gptq's natural-draw
    twin of a balanced draw) when stored; else (older stores) the one with the same options (``variant``, e.g.
    balanced calibration with a percentile observer vs plain PTQ with that observer); else the default PTQ cell
    (or its backend-pinned twin, the control a simulated mitigation stores next to real INT8 PTQ); else the
    first candidate.
    """
    sel = np.ones(len(m), dtype=bool)
    for k in ("dataset", "model", "target", "weight_bits", "act_bits"):
        sel &= m[k].to_numpy() == frame[k].iloc[0]
    backend = frame["backend"].iloc[0]
    cand = m[sel & (m["method"].to_numpy() == frame["reference_method"].iloc[0])
             & (m["backend"].to_numpy() == backend)]
    if "simulation" in m.columns:
        sim = _text(m["simulation"])
        cand = cand[sim.loc[cand.index].to_numpy() == _text(frame["simulation"]).iloc[0]]
    cand = cand[cand["config"].to_numpy() != frame["config"].iloc[0]]
    if cand.empty:
        return cand
    same = cand[cand["variant"] == frame["variant"].iloc[0]]
    plain = cand[cand["variant"].isin(["", f"backend={backend}", "backend=simulated_simulation=layer_input"])]
    named = str(frame["reference_config"].iloc[0]) if "reference_config" in m.columns else ""
    exact = cand[cand["config"].to_numpy() == named] if named else cand.iloc[:0]
    cand = exact if not exact.empty else same if not same.empty else (plain if not plain.empty else cand)
    return cand[cand["config"] == cand["config"].iloc[0]]


def _mitigation_vs_ptq(store, m, *, n_bootstrap, n_permutations, seed, min_group_size, confidence):
    rows = []
    for cfg, frame in m[is_mitigation(m)].groupby(list(CONFIG_COLUMNS), sort=False):
        ref = _reference_cells(m, frame)
        if ref.empty:
            continue
        for metric, hyp, verb in _MITIGATION_CLAIMS:
            res = _paired_claim(store, _by_seed(ref), _by_seed(frame), metric, n_bootstrap=n_bootstrap,
                                n_permutations=n_permutations, seed=seed, min_group_size=min_group_size,
                                confidence=confidence, tag=("mitigation", metric) + cfg)
            if res is None:
                continue
            config, rconf = frame["config"].iloc[0], ref["config"].iloc[0]
            rows.append(_row(finding="mitigation_vs_ptq", dataset=cfg[0], model=cfg[1], target=cfg[2],
                             config=config, reference=rconf, claim=f"{_tag(frame)} {verb} vs {_tag(ref)}",
                             statistic=f"{metric}(mitigated) − {metric}(plain PTQ)", hypothesis=hyp, **res))
    return rows


def _flips_uncertain(flips: pd.DataFrame, confidence: float):
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

    rows = []
    if flips.empty or "flips_high" not in flips.columns:
        return rows
    overall = flips[flips["group"] == "all"].copy()
    for c in CONFIG_COLUMNS:
        overall[c] = overall[c].astype(str)
    for cfg, frame in overall.groupby(list(CONFIG_COLUMNS), sort=False):
        hi_k, hi_n = frame["flips_high"].sum(), frame["n_high"].sum()
        lo_k, lo_n = frame["flips_low"].sum(), frame["n_low"].sum()
        if not (hi_n > 0 and lo_n > 0) or pd.isna(hi_n):
            continue
        est = hi_k / hi_n - lo_k / lo_n
        if hi_k + lo_k == 0:
            p, (lo, hi) = 1.0, (np.nan, np.nan)
        else:
            with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)  # statsmodels' ratio/odds side outputs with a 0 count
                p = float(test_proportions_2indep(hi_k, hi_n, lo_k, lo_n, method="score").pvalue)
                # Newcombe's hybrid score interval: stays defined with zero counts (score inversion may not).
                lo, hi = confint_proportions_2indep(hi_k, hi_n, lo_k, lo_n, compare="diff", method="newcomb",
                                                    alpha=1 - confidence)
        config = frame["config"].iloc[0]
        rows.append(_row(finding="flips_uncertain", dataset=cfg[0], model=cfg[1], target=cfg[2], config=config,
                         reference="baseline",
                         claim=f"{_tag(frame)} flips baseline predictions more often where the baseline is uncertain "
                               f"(high vs low normalized entropy)",
                         statistic=f"flip rate ({UNCERTAINTY_BINS[-1]}) − flip rate ({UNCERTAINTY_BINS[0]})",
                         hypothesis="> 0", estimate=est, ci_low=float(lo), ci_high=float(hi), p_value=p,
                         test="two-proportion score", n_seeds=frame["seed"].nunique()))
    return rows


def _exemplars_worst(store, m, exemplars: pd.DataFrame, min_group_size, confidence):
    from scipy.stats import binomtest

    rows = []
    if exemplars.empty:
        return rows
    for key, frame in exemplars.groupby(["dataset", "model", "target"], sort=False):
        base_ids = [c for c in m.index if m.at[c, "method"] == "baseline" and
                    (m.at[c, "dataset"], m.at[c, "model"], m.at[c, "target"]) == key]
        attrs = [a for a in store.cells[base_ids[0]].sensitive]
        # Worst group by the (modal) baseline's accuracy on the exemplar table's samples.
        gid, _, glabels = encode_scope(frame[attrs].astype(str).reset_index(drop=True), tuple(attrs))
        sizes = np.bincount(gid, minlength=len(glabels))
        hits = np.bincount(gid, weights=(frame["baseline_label"] == frame["y_true"]).to_numpy(),
                           minlength=len(glabels))
        acc = np.where(sizes >= min_group_size, hits / np.maximum(sizes, 1), np.nan)
        n_ex = int(frame["exemplar"].sum())
        if (~np.isnan(acc)).sum() < 2 or n_ex == 0:
            continue
        w = int(np.nanargmin(acc))
        worst = glabels[w]
        k = int(frame["exemplar"].to_numpy()[gid == w].sum())
        share_test = float(sizes[w] / len(frame))
        res = binomtest(k, n_ex, p=share_test)
        ci = res.proportion_ci(confidence_level=confidence, method="wilson")
        rows.append(_row(finding="exemplars_worst_group", dataset=key[0], model=key[1], target=key[2],
                         config="all compressed cells", reference="baseline",
                         claim=f"compression-identified exemplars over-represent the worst baseline group ({worst})",
                         statistic="share of exemplars − share of test set", hypothesis="> 0",
                         estimate=k / n_ex - share_test, ci_low=ci.low - share_test, ci_high=ci.high - share_test,
                         p_value=float(res.pvalue), test="exact binomial",
                         n_seeds=len(base_ids)))
    return rows


def compute_findings(store: Store, pairs: dict[str, Paired], flips: pd.DataFrame, exemplars: pd.DataFrame, *,
                     n_bootstrap: int = 1000, n_permutations: int = 1000, seed: int = 0, confidence: float = 0.95,
                     min_group_size: int = DEFAULT_MIN_GROUP_SIZE) -> pd.DataFrame:
    """Every claim the cells allow, with estimate, CI and raw p (``p_adjusted`` / ``verdict`` filled later)."""
    m = _configs(store)
    kw = dict(n_bootstrap=n_bootstrap, n_permutations=n_permutations, seed=seed, min_group_size=min_group_size,
              confidence=confidence)
    rows = (_worst_vs_best(m, pairs, **kw) + _fewer_bits(store, m, **kw)
            + _mitigation_vs_ptq(store, m, **kw) + _flips_uncertain(flips, confidence)
            + _exemplars_worst(store, m, exemplars, min_group_size, confidence))
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)
