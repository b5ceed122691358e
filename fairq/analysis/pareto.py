"""Pareto frontiers over (accuracy or worst-group accuracy) × (fairness gap) × (size or latency).

Point estimates come from ``metrics.csv`` (mean over seeds per configuration). A configuration is on the
frontier when no other configuration of the same dataset and target is at least as good on all three
objectives and strictly better on one (accuracy up; gap, size, latency down). The non-dominated filter is a
few lines of numpy for a handful of points, so no extra dependency is used for it.

Costs of different kinds never share a frontier (``cost_kind``): sizes are ``serialized`` (bytes ``torch.save``
wrote) or ``packed_estimate`` (the bytes a simulated k-bit model's codes and scales would take); latencies are
``kernels`` (the model as it runs: FP32, real INT8) or ``simulation`` (a simulated INT-k cell times its fake-quant
FP32 simulation, not k-bit inference). Each kind gets its own frontier.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from .load import CONFIG_COLUMNS

__all__ = ["ACCURACY_OBJECTIVES", "GAP_OBJECTIVES", "COST_OBJECTIVES", "pareto_mask", "compute_pareto"]

ACCURACY_OBJECTIVES = ("accuracy", "worst_group_accuracy")
GAP_OBJECTIVES = ("equalized_odds_difference", "demographic_parity_difference")
COST_OBJECTIVES = ("size_mb", "latency_ms")
#: the column saying what kind of number each cost is; a frontier never mixes kinds.
KIND_OF = {"size_mb": "size_kind", "latency_ms": "latency_kind"}


def pareto_mask(values: np.ndarray, maximize: list[bool]) -> np.ndarray:
    """Boolean mask of non-dominated rows of ``values [n, k]`` (NaN rows are never on the frontier)."""
    v = np.asarray(values, dtype=float).copy()
    v[:, ~np.asarray(maximize)] *= -1  # now every objective is "higher is better"
    ok = ~np.isnan(v).any(axis=1)
    mask = np.zeros(len(v), dtype=bool)
    for i in np.flatnonzero(ok):
        others = v[ok]
        dominated = ((others >= v[i]).all(axis=1) & (others > v[i]).any(axis=1)).any()
        mask[i] = not dominated
    return mask


def compute_pareto(metrics: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per configuration × objective triple with its values and ``on_frontier``."""
    cols = [c for c in ACCURACY_OBJECTIVES + GAP_OBJECTIVES + COST_OBJECTIVES if c in metrics.columns]
    m = metrics.copy()
    for c in cols:
        m[c] = pd.to_numeric(m[c], errors="coerce")
    keys = list(CONFIG_COLUMNS) + ["config"]
    for c in keys:
        m[c] = m[c].astype(str)
    m["size_kind"] = m["size_kind"].astype(str) if "size_kind" in m.columns else "serialized"
    m["latency_kind"] = np.where(m["backend"].astype(str).eq("simulated"), "simulation", "kernels")
    conf = m.groupby(keys, sort=False).agg(n_seeds=("seed", "nunique"), size_kind=("size_kind", "first"),
                                           latency_kind=("latency_kind", "first"),
                                           **{c: (c, "mean") for c in cols}).reset_index()
    out = []
    for (ds, target), frame in conf.groupby(["dataset", "target"], sort=False):
        for acc, gap, cost in itertools.product(ACCURACY_OBJECTIVES, GAP_OBJECTIVES, COST_OBJECTIVES):
            if not {acc, gap, cost} <= set(cols):
                continue
            kind_col = KIND_OF[cost]
            for kind, part in frame.groupby(kind_col, sort=False):
                vals = part[[acc, gap, cost]].to_numpy(dtype=float)
                rows = part[keys + ["n_seeds"]].copy()
                rows["accuracy_metric"], rows["gap_metric"], rows["cost_metric"] = acc, gap, cost
                rows["cost_kind"] = kind
                rows["accuracy_value"], rows["gap_value"], rows["cost_value"] = vals[:, 0], vals[:, 1], vals[:, 2]
                rows["on_frontier"] = pareto_mask(vals, [True, False, False])
                out.append(rows)
    if not out:
        return pd.DataFrame(columns=keys + ["accuracy_metric", "gap_metric", "cost_metric", "cost_kind",
                                            "on_frontier"])
    return pd.concat(out, ignore_index=True)
