"""Prediction flips versus the baseline and compression-identified exemplars (Hooker et al. 2020).

- A *flip* is a sample whose compressed prediction differs from the baseline's. Per cell × group:
  ``flip_rate`` (with a Wilson 95% interval, statsmodels), by direction — ``correct_to_wrong`` (baseline right,
  compressed wrong), ``wrong_to_correct`` and ``wrong_to_wrong`` (multiclass: a different wrong class) — and by
  the baseline's uncertainty.
- *Uncertainty* is the normalized entropy of the baseline's class probabilities, ``H(p) / log C`` in [0, 1],
  binned with the fixed edges ``UNCERTAINTY_EDGES``: low [0, 1/3), medium [1/3, 2/3), high [2/3, 1]. (For a
  binary model: low ⇔ max prob ≳ 0.94, high ⇔ max prob ≲ 0.83.) Without stored probabilities the bins are NaN.
- A *compression-identified exemplar* (CIE) is a sample whose modal label across all compressed cells of a model
  (all methods, bit widths and seeds) differs from the modal label of that model's baselines (across seeds); a
  tie with the baseline label does not count. ``exemplar_makeup`` compares each group's share of the exemplars
  with its share of the test set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .load import ID_COLUMNS, Store
from .pairs import Paired, class_list, encode, encode_scope, scope_name, scopes

__all__ = ["UNCERTAINTY_EDGES", "UNCERTAINTY_BINS", "normalized_entropy", "uncertainty_bin", "compute_flips",
           "compression_exemplars", "exemplar_makeup"]

UNCERTAINTY_EDGES = (0.0, 1 / 3, 2 / 3, 1.0)
UNCERTAINTY_BINS = ("low", "medium", "high")


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """``H(p) / log C`` per row of ``probs [n, C]`` (rows renormalised; 0·log 0 = 0)."""
    p = np.clip(np.asarray(probs, dtype=float), 0.0, None)
    s = p.sum(axis=1, keepdims=True)
    p = np.divide(p, s, out=np.full_like(p, 1.0 / p.shape[1]), where=s > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return np.clip(h / np.log(p.shape[1]), 0.0, 1.0)


def uncertainty_bin(entropy: np.ndarray) -> np.ndarray:
    """Bin index 0/1/2 (low/medium/high) per value, edges ``UNCERTAINTY_EDGES`` (right edge 1 inclusive)."""
    return np.clip(np.digitize(entropy, UNCERTAINTY_EDGES[1:-1], right=False), 0, len(UNCERTAINTY_BINS) - 1)


def wilson_interval(k: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from statsmodels.stats.proportion import proportion_confint

    k, n = np.asarray(k, float), np.asarray(n, float)
    lo, hi = np.full(k.shape, np.nan), np.full(k.shape, np.nan)
    ok = n > 0
    if ok.any():
        lo[ok], hi[ok] = proportion_confint(k[ok], n[ok], alpha=0.05, method="wilson")
    return lo, hi


def _flip_rows(pair: Paired, gid: np.ndarray, labels: list[str]) -> pd.DataFrame:
    # columns gathered in a dict and framed once: assigning them one by one to a DataFrame was most of the
    # analysis phase's time on a sweep of many cells
    g = len(labels)
    t, a, b = pair.y_true, pair.y_base, pair.y_pred
    flip = a != b

    def rate(k, n):
        return np.divide(k, n, out=np.full(g, np.nan), where=n > 0)

    n = np.bincount(gid, minlength=g)
    flips = np.bincount(gid, weights=flip, minlength=g).astype(int)
    out = {"group": labels, "n": n, "flips": flips, "flip_rate": rate(flips, n)}
    out["flip_rate_ci_low"], out["flip_rate_ci_high"] = wilson_interval(flips, n)
    kinds = {"correct_to_wrong": flip & (a == t), "wrong_to_correct": flip & (b == t),
             "wrong_to_wrong": flip & (a != t) & (b != t)}
    base_ok = np.bincount(gid, weights=a == t, minlength=g)
    for name, mask in kinds.items():
        out[name] = np.bincount(gid, weights=mask, minlength=g).astype(int)
        out[f"{name}_rate"] = rate(out[name], n)
    # Conditional rates: how often a baseline-correct sample breaks, how often a baseline error gets fixed.
    out["p_wrong_given_base_correct"] = rate(out["correct_to_wrong"], base_ok)
    out["p_correct_given_base_wrong"] = rate(out["wrong_to_correct"], n - base_ok)
    if pair.base_probs is not None:
        bins = uncertainty_bin(normalized_entropy(pair.base_probs))
        for k, name in enumerate(UNCERTAINTY_BINS):
            m = bins == k
            nb = np.bincount(gid, weights=m, minlength=g).astype(int)
            fb = np.bincount(gid, weights=m & flip, minlength=g).astype(int)
            out[f"n_{name}"], out[f"flips_{name}"], out[f"flip_rate_{name}"] = nb, fb, rate(fb, nb)
    else:
        for name in UNCERTAINTY_BINS:
            for col in (f"n_{name}", f"flips_{name}", f"flip_rate_{name}"):
                out[col] = np.full(g, np.nan)
    return pd.DataFrame(out)


def compute_flips(store: Store, pairs: dict[str, Paired]) -> pd.DataFrame:
    """``flips.csv``: one row per non-baseline cell × scope × group (plus ``attributes == group == "all"``)."""
    frames = []
    for cid, pair in pairs.items():
        row = store.metrics.loc[cid]
        all_rows = _flip_rows(pair, np.zeros(len(pair.y_true), dtype=np.int64), ["all"])
        all_rows.insert(0, "attributes", "all")
        parts = [all_rows]
        for scope in scopes(list(pair.sensitive.columns)):
            gid, _, labels = encode_scope(pair.sensitive, scope)
            r = _flip_rows(pair, gid, labels)
            r.insert(0, "attributes", scope_name(scope))
            parts.append(r)
        f = pd.concat(parts, ignore_index=True)
        for col in reversed(list(ID_COLUMNS) + ["config"]):
            f.insert(0, col, row[col])  # every store has them (load fills missing ones with "")
        frames.append(f)
    if not frames:
        return pd.DataFrame(columns=list(ID_COLUMNS) + ["config", "attributes", "group", "n", "flips", "flip_rate"])
    return pd.concat(frames, ignore_index=True)


def _check_same_meaning(cells, common: np.ndarray) -> None:
    """Votes pooled across cells (and seeds) must be about the same samples: a shared id has one label and one set
    of sensitive attributes everywhere (a dataset regenerated per seed would reuse ids for other images)."""
    ref = cells[0]
    cols = ["y_true", *ref.sensitive]
    want = ref.frame.iloc[np.searchsorted(ref.ids, common)][cols].astype(str).to_numpy()
    for c in cells[1:]:
        got = c.frame.iloc[np.searchsorted(c.ids, common)][cols].astype(str).to_numpy()
        bad = (got != want).any(axis=1)
        if bad.any():
            raise ValueError(f"cells {ref.id!r} and {c.id!r} give {int(bad.sum())} of {len(common)} shared sample ids "
                             f"different labels or sensitive attributes (e.g. {common[bad][:3].tolist()}): they were not "
                             "evaluated on the same samples. Keep the data seed fixed across training seeds "
                             "(data.init_args.seed).")


def compression_exemplars(store: Store, families=None) -> pd.DataFrame:
    """Per model (dataset, model, target): every common test sample with its baseline and compressed modal labels.

    ``families``: only compressed cells of these method families (e.g. ``("pruning",)`` for Hooker et al.'s
    pruning-identified exemplars); default every compressed cell.

    Columns: ``dataset, model, target, sample_id, y_true, baseline_label, compressed_label, n_compressed,
    compressed_agreement`` (share of compressed cells voting the modal label), ``exemplar`` (bool) and the
    sensitive attributes. Models without compressed cells are skipped.
    """
    m = store.metrics
    out = []
    for (ds, model, target), rows in m.groupby(["dataset", "model", "target"], sort=False):
        base_ids = [c for c in rows.index if rows.at[c, "method"] == "baseline"]
        comp_ids = [c for c in rows.index if rows.at[c, "method"] != "baseline"
                    and (families is None or str(rows.at[c, "family"] if "family" in rows.columns else "")
                         in families)]
        if not base_ids or not comp_ids:
            continue
        cells = [store.cells[c] for c in base_ids + comp_ids]
        classes = class_list(*cells)
        common = cells[0].ids
        for c in cells[1:]:
            common = np.intersect1d(common, c.ids, assume_unique=True)
        if len(common) == 0:
            continue
        _check_same_meaning(cells, common)

        def votes(ids):
            v = np.zeros((len(common), len(classes)), dtype=np.int64)
            for cid in ids:
                cell = store.cells[cid]
                idx = np.searchsorted(cell.ids, common)
                _, p, _ = encode(cell, classes)
                v[np.arange(len(common)), p[idx]] += 1
            return v

        vb, vc = votes(base_ids), votes(comp_ids)
        base_label = vb.argmax(axis=1)
        comp_label = vc.argmax(axis=1)
        rows_idx = np.arange(len(common))
        exemplar = vc[rows_idx, comp_label] > vc[rows_idx, base_label]
        first = store.cells[base_ids[0]]
        idx = np.searchsorted(first.ids, common)
        t, _, _ = encode(first, classes)
        frame = pd.DataFrame({"dataset": ds, "model": model, "target": target, "sample_id": common,
                              "y_true": t[idx], "baseline_label": base_label, "compressed_label": comp_label,
                              "n_compressed": len(comp_ids),
                              "compressed_agreement": vc[rows_idx, comp_label] / len(comp_ids),
                              "exemplar": exemplar})
        for a in first.sensitive:
            frame[a] = first.frame[a].to_numpy()[idx]
        out.append(frame)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def exemplar_makeup(exemplars: pd.DataFrame, sensitive: dict[tuple, list[str]]) -> pd.DataFrame:
    """Per model × scope × group: test-set share vs exemplar share (``representation`` = their ratio).

    ``sensitive`` maps ``(dataset, model, target)`` to the model's sensitive attribute names.
    """
    if exemplars.empty:
        return pd.DataFrame()
    out = []
    for key, frame in exemplars.groupby(["dataset", "model", "target"], sort=False):
        attrs = sensitive[key]
        n_ex = int(frame["exemplar"].sum())
        for scope in scopes(attrs):
            gid, _, labels = encode_scope(frame[attrs].astype(str).reset_index(drop=True), scope)
            n = np.bincount(gid, minlength=len(labels))
            k = np.bincount(gid, weights=frame["exemplar"].to_numpy(), minlength=len(labels)).astype(int)
            share_test = n / n.sum()
            share_ex = k / n_ex if n_ex else np.full(len(labels), np.nan)
            out.append(pd.DataFrame({
                "dataset": key[0], "model": key[1], "target": key[2], "attributes": scope_name(scope),
                "group": labels, "n_test": n, "share_test": share_test, "n_exemplars": k,
                "share_exemplars": share_ex, "representation": share_ex / share_test,
                "exemplar_rate": k / np.maximum(n, 1), "n_exemplars_total": n_ex}))
    return pd.concat(out, ignore_index=True)
