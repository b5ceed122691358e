"""Per-cell metrics with CIs and paired deltas versus the same model's baseline (``tables/deltas.csv``).

For every cell and every group scope (all sensitive attributes intersected, then each attribute alone):

- ``value`` and its stratified-bootstrap CI (``value_ci_low/high``) for every metric of
  :func:`fairq.metrics.fairness_metrics`, overall (``group == "all"``) and per group (accuracy; binary targets
  also selection rate, TPR, FPR) — :func:`fairq.metrics.bootstrap_ci_from_counts`;
- for a non-baseline cell: ``baseline_value``, ``delta`` and the paired-bootstrap CI of the delta
  (``ci_low/high``) — :func:`fairq.metrics.paired_bootstrap_ci_from_counts`;
- a paired test for the metrics of ``TESTED_METRICS``: McNemar for accuracy (overall and per group), the paired
  permutation test of :mod:`.stats` for worst-group accuracy and the DP / EO gaps; BH adjustment happens later,
  across every test of the run (:func:`fairq.analysis.run_analysis`);
- ``effect_size``: Cohen's h for proportions (accuracy, worst-group accuracy, per-group rates); NaN for gaps and
  ratios, whose delta is already on the proportion scale.

Several seeds: :func:`summarize_seeds` gives mean ± sd across seeds with a CI and permutation test of the mean
delta that keep each seed paired with its own baseline.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fairq.metrics import (DEFAULT_MIN_GROUP_SIZE, bootstrap_ci_from_counts, encode_groups, group_confusion,
                           group_labels, paired_bootstrap_ci_from_counts, scalar_metrics_from_counts)

from .load import CONFIG_COLUMNS, ID_COLUMNS, Cell, Store
from .pairs import (PROPORTION_METRICS, Paired, align, class_list, delta_vector, encode, encode_scope,
                    metric_keys, scope_name, scopes)
from .stats import cohens_h, joint_counts, mcnemar_test, paired_comparison, permutation_p

__all__ = ["TESTED_METRICS", "PERMUTATION_METRICS", "cell_deltas", "compute_deltas", "summarize_seeds",
           "derive_seed", "seed_joints", "seed_samples", "check_same_samples"]

#: Metrics whose delta gets a paired test (per the analysis issue): accuracy (McNemar, overall and per group)
#: and the permutation-tested scalars below.
PERMUTATION_METRICS = ("worst_group_accuracy", "demographic_parity_difference", "equalized_odds_difference")
TESTED_METRICS = ("accuracy",) + PERMUTATION_METRICS


def derive_seed(seed: int, *parts) -> int:
    """Deterministic per-task seed from the run seed and names (independent of the order cells are processed)."""
    key = zlib.crc32("|".join(map(str, parts)).encode())
    return int(np.random.SeedSequence([int(seed), key]).generate_state(1)[0])


def _id_values(cell: Cell) -> dict:
    out = {c: cell.row.get(c, "") for c in ID_COLUMNS}
    out["config"] = cell.row.get("config", "")
    return out


def _value_rows(counts: np.ndarray, groups: pd.DataFrame, pos_index, *, n_bootstrap, seed, confidence,
                min_group_size) -> pd.DataFrame:
    ci = bootstrap_ci_from_counts(counts, groups, pos_index=pos_index, n_resamples=n_bootstrap,
                                  confidence=confidence, seed=seed, min_group_size=min_group_size)
    ci = ci.rename(columns={"ci_low": "value_ci_low", "ci_high": "value_ci_high"}).drop(columns="n_valid")
    n_group = dict(zip(group_labels(groups), counts.sum(axis=(1, 2))))
    ci["n"] = [int(counts.sum()) if g == "all" else int(n_group[g]) for g in ci["group"]]
    return ci


def _mcnemar_rows(joint: np.ndarray, labels: list[str]) -> dict[tuple[str, str], tuple[float, int, str]]:
    """McNemar p per group and overall for accuracy, from joint counts [G, t, base, pred]."""
    c = joint.shape[-1]
    eye = np.eye(c, dtype=bool)
    base_ok = eye[None, :, :, None]    # a == t
    pred_ok = eye[None, :, None, :]    # b == t
    only_base = (joint * (base_ok & ~pred_ok)).sum(axis=(1, 2, 3))
    only_pred = (joint * (~base_ok & pred_ok)).sum(axis=(1, 2, 3))
    out = {("accuracy", "all"): mcnemar_test(only_base.sum(), only_pred.sum())}
    for g, lab in enumerate(labels):
        out[("accuracy", lab)] = mcnemar_test(only_base[g], only_pred[g])
    return out


def _permutation_pvalues(joint: np.ndarray, pos_index, min_group_size, observed: np.ndarray, n_permutations,
                         seed) -> np.ndarray:
    def stat(a, b):
        sa = scalar_metrics_from_counts(a, pos_index=pos_index, min_group_size=min_group_size)
        sb = scalar_metrics_from_counts(b, pos_index=pos_index, min_group_size=min_group_size)
        return np.stack([np.asarray(sb[m], float) - np.asarray(sa[m], float) for m in PERMUTATION_METRICS], -1)

    return permutation_p([joint], stat, observed, n_permutations, np.random.default_rng(seed))


def cell_deltas(cell: Cell, paired: Paired | None, *, n_bootstrap: int = 1000, n_permutations: int = 1000,
                seed: int = 0, confidence: float = 0.95,
                min_group_size: int = DEFAULT_MIN_GROUP_SIZE) -> pd.DataFrame:
    """Rows of ``deltas.csv`` for one cell (values only when ``paired`` is None, e.g. for a baseline)."""
    frames = []
    if paired is None:
        classes = class_list(cell)
        t, p, pos_index = encode(cell, classes)
        sens = cell.frame[cell.sensitive]
        attrs = list(cell.sensitive)
    else:
        t, p, pos_index, sens = paired.y_true, paired.y_pred, paired.pos_index, paired.sensitive
        classes = paired.classes
        attrs = list(sens.columns)
    c = len(classes)
    for k, scope in enumerate(scopes(attrs)):
        gid, groups, labels = encode_scope(sens, scope)
        sname = scope_name(scope)
        counts = group_confusion(t, p, gid, len(groups), c)
        rows = _value_rows(counts, groups, pos_index, n_bootstrap=n_bootstrap, confidence=confidence,
                           min_group_size=min_group_size, seed=derive_seed(seed, cell.id, sname, "value"))
        if paired is not None:
            joint = joint_counts(t, paired.y_base, p, gid, len(groups), c)
            d = paired_bootstrap_ci_from_counts(joint, groups, pos_index=pos_index, n_resamples=n_bootstrap,
                                                confidence=confidence, min_group_size=min_group_size,
                                                seed=derive_seed(seed, cell.id, sname, "delta"))
            rows = rows.merge(d.drop(columns=["value", "n_valid"]), on=["metric", "group"], how="left")
            prop = rows["metric"].isin(PROPORTION_METRICS)
            rows["effect_size"] = np.where(prop, cohens_h(rows["value"], rows["baseline_value"]), np.nan)
            tests = {key: (pv, disc, how) for key, (pv, disc, how) in _mcnemar_rows(joint, labels).items()}
            scal = rows[rows["group"].eq("all") & rows["metric"].isin(PERMUTATION_METRICS)].set_index("metric")
            observed = scal.reindex(list(PERMUTATION_METRICS))["delta"].to_numpy(dtype=float)
            pv = _permutation_pvalues(joint, pos_index, min_group_size, observed, n_permutations,
                                      derive_seed(seed, cell.id, sname, "permutation"))
            tests.update({(m, "all"): (val, np.nan, "permutation") for m, val in zip(PERMUTATION_METRICS, pv)})
            got = [tests.get(key, (np.nan, np.nan, "")) for key in zip(rows["metric"], rows["group"])]
            rows["p_value"] = [g[0] for g in got]
            rows["n_discordant"] = [g[1] for g in got]
            rows["test"] = [g[2] for g in got]
        if k > 0:  # overall accuracy does not depend on the scope: keep it once (intersectional scope)
            rows = rows[~((rows["metric"] == "accuracy") & (rows["group"] == "all"))]
        rows.insert(0, "attributes", sname)
        frames.append(rows)
    out = pd.concat(frames, ignore_index=True)
    for col, val in reversed(list(_id_values(cell).items())):
        out.insert(0, col, val)
    return out


_DELTA_COLUMNS = list(ID_COLUMNS) + ["config", "attributes", "group", "metric", "n", "value", "value_ci_low",
                                      "value_ci_high", "baseline_value", "delta", "ci_low", "ci_high",
                                      "effect_size", "test", "n_discordant", "p_value", "p_adjusted"]


def compute_deltas(store: Store, *, n_bootstrap: int = 1000, n_permutations: int = 1000, seed: int = 0,
                   confidence: float = 0.95, min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
                   progress: bool = False) -> tuple[pd.DataFrame, dict[str, Paired]]:
    """``deltas.csv`` rows for every cell of ``store`` (``p_adjusted`` left NaN) and the aligned pairs."""
    from tqdm.auto import tqdm

    frames, pairs = [], {}
    for cid, cell in tqdm(store.cells.items(), desc="analysis: per-cell statistics", disable=not progress):
        base_id = store.baseline_of(cid)
        paired = align(store.cells[base_id], cell) if base_id is not None else None
        if paired is not None:
            pairs[cid] = paired
        frames.append(cell_deltas(cell, paired, n_bootstrap=n_bootstrap, n_permutations=n_permutations, seed=seed,
                                  confidence=confidence, min_group_size=min_group_size))
    out = pd.concat(frames, ignore_index=True)
    for col in _DELTA_COLUMNS:
        if col not in out.columns:
            out[col] = np.nan if col not in ("test",) else ""
    out["test"] = out["test"].fillna("")
    return out[_DELTA_COLUMNS], pairs


def check_same_samples(pairs: Sequence[Paired]) -> None:
    """Sample ids shared across seeds must mean the same sample (same label, same sensitive attributes):
    otherwise a join across seeds would pool unrelated samples (e.g. a dataset regenerated per seed)."""
    if len(pairs) < 2:
        return
    ref = pd.DataFrame({"sample_id": pairs[0].sample_id, "y": pairs[0].y_true}).join(
        pairs[0].sensitive.reset_index(drop=True)).set_index("sample_id")
    for p in pairs[1:]:
        other = pd.DataFrame({"sample_id": p.sample_id, "y": p.y_true}).join(
            p.sensitive.reset_index(drop=True)).set_index("sample_id")
        common = ref.index.intersection(other.index)
        if not len(common):
            continue
        a, b = ref.loc[common], other.loc[common, ref.columns]
        bad = (a.astype(str) != b.astype(str)).any(axis=1)
        if bad.any():
            ids = list(common[bad.to_numpy()][:5])
            raise ValueError(f"{int(bad.sum())} of {len(common)} sample ids shared by two seeds carry different labels "
                             f"or sensitive attributes (e.g. {ids}): the seeds were not evaluated on the same samples. "
                             "Keep the data seed fixed across training seeds (data.init_args.seed).")


def seed_samples(pairs: Sequence[Paired], scope: tuple[str, ...]):
    """What :func:`paired_comparison` resamples for several seeds, decided from the sample ids.

    One seed, or seeds on disjoint test sets: ``(per-seed joint counts, group labels)``, resampled independently.
    Seeds sharing samples (the usual case: one test split, several training seeds): ``(SharedSamples, labels)``,
    resampled jointly so their shared test-set noise is not averaged away. Shared ids must mean the same sample.
    """
    from .stats import SharedSamples

    ids = [np.asarray(p.sample_id, dtype=str) for p in pairs]
    shared = len(pairs) > 1 and any(np.intersect1d(ids[i], ids[j]).size for i in range(len(ids))
                                    for j in range(i + 1, len(ids)))
    if not shared:
        return seed_joints(pairs, scope)
    check_same_samples(pairs)
    union, first = np.unique(np.concatenate(ids), return_index=True)
    sens = pd.concat([p.sensitive[list(scope)] for p in pairs], ignore_index=True).iloc[first]
    y = np.concatenate([p.y_true for p in pairs])[first]
    gid, groups = encode_groups(sens.reset_index(drop=True))
    c = len(pairs[0].classes)
    cells = np.full((len(pairs), len(union)), -1, dtype=np.int64)
    for s, p in enumerate(pairs):
        pos = np.searchsorted(union, ids[s])
        cells[s, pos] = ((gid[pos] * c + y[pos]) * c + p.y_base) * c + p.y_pred
    return SharedSamples(cells, gid, (len(groups), c, c, c)), group_labels(groups)


def seed_joints(pairs: Sequence[Paired], scope: tuple[str, ...]) -> tuple[list[np.ndarray], list[str]]:
    """Joint counts per seed over one group table shared by all seeds (so group g means the same everywhere)."""
    sens = pd.concat([p.sensitive[list(scope)] for p in pairs], ignore_index=True)
    gid, groups = encode_groups(sens)
    c = len(pairs[0].classes)
    joints, start = [], 0
    for p in pairs:
        g = gid[start:start + len(p.y_true)]
        start += len(p.y_true)
        joints.append(joint_counts(p.y_true, p.y_base, p.y_pred, g, len(groups), c))
    return joints, group_labels(groups)


def summarize_seeds(deltas: pd.DataFrame, pairs: dict[str, Paired], *, n_bootstrap: int = 1000,
                    n_permutations: int = 1000, seed: int = 0, confidence: float = 0.95,
                    min_group_size: int = DEFAULT_MIN_GROUP_SIZE) -> pd.DataFrame:
    """Mean ± sd across seeds per configuration × scope × group × metric.

    Configurations with one seed copy that seed's CI and test (``new_test`` False: not a new test for BH).
    With several paired seeds the CI is the percentile interval of the mean over seeds of per-seed paired
    bootstrap draws and the p-value is the paired permutation test of the mean delta (swaps within each seed,
    so every seed stays paired with its own baseline); ``new_test`` is True for those rows.
    """
    keys = list(CONFIG_COLUMNS) + ["config", "attributes", "group", "metric"]
    d = deltas.copy()
    for col in CONFIG_COLUMNS:
        d[col] = d[col].astype(str)
    agg = d.groupby(keys, sort=False, dropna=False).agg(
        n_seeds=("seed", "nunique"), n=("n", "mean"), value_mean=("value", "mean"), value_sd=("value", "std"),
        baseline_mean=("baseline_value", "mean"), delta_mean=("delta", "mean"), delta_sd=("delta", "std"),
        ci_low=("ci_low", "first"), ci_high=("ci_high", "first"), test=("test", "first"),
        p_value=("p_value", "first"), seeds=("seed", lambda s: ";".join(sorted(map(str, s.unique()))))
    ).reset_index()
    agg["new_test"] = False
    multi = agg[(agg["n_seeds"] > 1) & agg["delta_mean"].notna()]
    if multi.empty:
        return agg
    agg[["ci_low", "ci_high", "p_value"]] = agg[["ci_low", "ci_high", "p_value"]].astype(float)
    agg.loc[agg["n_seeds"] > 1, ["ci_low", "ci_high", "p_value"]] = np.nan
    updates = []
    # dropna=False: a cell without activation quantization (act_bits empty: pruned, distilled, weight-only) is a
    # configuration too
    cfg_cells = d[d["cell"].isin(list(pairs))].groupby(list(CONFIG_COLUMNS), sort=False, dropna=False)["cell"] \
        .unique()
    for cfg, cells in cfg_cells.items():
        if len(cells) < 2:
            continue
        ps = [pairs[c] for c in cells]
        attrs = list(ps[0].sensitive.columns)
        for scope in scopes(attrs):
            sname = scope_name(scope)
            joints, labels = seed_samples(ps, scope)
            res = paired_comparison(joints, delta_vector(ps[0].pos_index, min_group_size),
                                    n_bootstrap=n_bootstrap, n_permutations=n_permutations, confidence=confidence,
                                    seed=derive_seed(seed, *cfg, sname, "seeds"))
            mk = metric_keys(labels, len(ps[0].classes))
            tested = np.array([m in TESTED_METRICS for m, _ in mk])
            updates.append(pd.DataFrame({
                **{col: val for col, val in zip(CONFIG_COLUMNS, cfg)}, "attributes": sname,
                "metric": [m for m, _ in mk], "group": [g for _, g in mk],
                "_ci_low": res["ci_low"], "_ci_high": res["ci_high"],
                "_p": np.where(tested, res["p_value"], np.nan),
                "_test": np.where(tested, "permutation_seeds", "")}))
    if updates:
        upd = pd.concat(updates, ignore_index=True)
        key = list(CONFIG_COLUMNS) + ["attributes", "metric", "group"]
        merged = agg[key].merge(upd, on=key, how="left")
        hit = merged["_ci_low"].notna().to_numpy() | merged["_test"].notna().to_numpy()
        hit &= (agg["n_seeds"] > 1).to_numpy()
        for src, dst in (("_ci_low", "ci_low"), ("_ci_high", "ci_high"), ("_p", "p_value"), ("_test", "test")):
            agg.loc[hit, dst] = merged.loc[hit, src].to_numpy()
        agg.loc[hit, "new_test"] = merged.loc[hit, "_test"].eq("permutation_seeds").to_numpy()
    return agg
