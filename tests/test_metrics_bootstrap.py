"""Stratified and paired bootstrap: point estimates, exactness of the count resampling, coverage, speed."""

import time

import numpy as np
import pandas as pd
import pytest

from fairq.metrics import (SCALAR_METRICS, bootstrap_ci, bootstrap_ci_from_counts, encode_groups, fairness_metrics,
                           group_confusion, paired_bootstrap_ci, paired_bootstrap_ci_from_counts,
                           resample_group_counts)

# Tiny known-truth problem: two groups of fixed size; P(y=1 | g), TPR_g, FPR_g chosen so that every gap is
# well away from 0 and the max in equalized odds / min in worst-group accuracy is clear.
SIZES = (150, 100)
P_POS = (0.5, 0.4)
TPR = (0.8, 0.5)
FPR = (0.2, 0.3)
FLIP = (0.05, 0.2)  # "compressed" model: flips the baseline prediction with this probability per group


def _truth(tpr, fpr):
    sel = [p * t + (1 - p) * f for p, t, f in zip(P_POS, tpr, fpr)]
    acc = [p * t + (1 - p) * (1 - f) for p, t, f in zip(P_POS, tpr, fpr)]
    return {
        "accuracy": sum(n * a for n, a in zip(SIZES, acc)) / sum(SIZES),
        "demographic_parity_difference": abs(sel[0] - sel[1]),
        "disparate_impact": min(sel) / max(sel),
        "equal_opportunity_difference": abs(tpr[0] - tpr[1]),
        "predictive_equality_difference": abs(fpr[0] - fpr[1]),
        "equalized_odds_difference": max(abs(tpr[0] - tpr[1]), abs(fpr[0] - fpr[1])),
        "worst_group_accuracy": min(acc),
    }


TPR_B = [t * (1 - f) + (1 - t) * f for t, f in zip(TPR, FLIP)]
FPR_B = [x * (1 - f) + (1 - x) * f for x, f in zip(FPR, FLIP)]
TRUTH_A, TRUTH_B = _truth(TPR, FPR), _truth(TPR_B, FPR_B)


def _simulate(rng):
    g = np.repeat([0, 1], SIZES)
    y = (rng.random(len(g)) < np.take(P_POS, g)).astype(int)
    p_one = np.where(y == 1, np.take(TPR, g), np.take(FPR, g))
    a = (rng.random(len(g)) < p_one).astype(int)
    b = np.where(rng.random(len(g)) < np.take(FLIP, g), 1 - a, a)
    return y, a, b, {"g": g}


def _overall(df):
    return df[df.group == "all"].set_index("metric")


def test_point_estimates_equal_fairness_metrics():
    rng = np.random.default_rng(0)
    y, a, b, sf = _simulate(rng)
    single = _overall(bootstrap_ci(y, a, sf, n_resamples=50, min_group_size=1))
    paired = _overall(paired_bootstrap_ci(y, a, b, sf, n_resamples=50, min_group_size=1))
    ma = fairness_metrics(y, a, sf, min_group_size=1)
    mb = fairness_metrics(y, b, sf, min_group_size=1)
    for key in SCALAR_METRICS:
        assert single.value[key] == pytest.approx(ma[key], abs=1e-12)
        assert paired.baseline_value[key] == pytest.approx(ma[key], abs=1e-12)
        assert paired.value[key] == pytest.approx(mb[key], abs=1e-12)
        assert paired.delta[key] == pytest.approx(mb[key] - ma[key], abs=1e-12)
        assert single.ci_low[key] <= single.ci_high[key]


def test_seeded_and_identical_predictions_give_zero_delta():
    rng = np.random.default_rng(1)
    y, a, _, sf = _simulate(rng)
    r1 = bootstrap_ci(y, a, sf, n_resamples=100, seed=3)
    pd.testing.assert_frame_equal(r1, bootstrap_ci(y, a, sf, n_resamples=100, seed=3))
    assert not r1.equals(bootstrap_ci(y, a, sf, n_resamples=100, seed=4))
    same = paired_bootstrap_ci(y, a, a, sf, n_resamples=100)
    assert (same[["delta", "ci_low", "ci_high"]].to_numpy() == 0).all()


def test_count_resampling_matches_index_resampling():
    """Multinomial over a group's cells is index resampling within the group: compare moments."""
    rng = np.random.default_rng(2)
    y, a, _, sf = _simulate(rng)
    gid, groups = encode_groups(sf)
    counts = group_confusion(y, a, gid, len(groups), 2)
    draws = resample_group_counts(counts, 4000, np.random.default_rng(0))
    np.testing.assert_array_equal(draws.sum(axis=(2, 3)), np.broadcast_to(counts.sum(axis=(1, 2)), (4000, 2)))
    acc_counts = np.trace(draws, axis1=2, axis2=3).sum(axis=1) / len(y)
    idx_rng = np.random.default_rng(1)
    acc_index = []
    for _ in range(4000):
        pick = np.concatenate([idx_rng.choice(np.flatnonzero(gid == k), size=(gid == k).sum()) for k in (0, 1)])
        acc_index.append((y[pick] == a[pick]).mean())
    assert acc_counts.mean() == pytest.approx(np.mean(acc_index), abs=0.002)
    assert acc_counts.std() == pytest.approx(np.std(acc_index), rel=0.06)
    # and both equal the analytic stratified standard error
    p_g = np.array([(y[gid == k] == a[gid == k]).mean() for k in (0, 1)])
    se = np.sqrt(np.sum(np.array(SIZES) * p_g * (1 - p_g))) / len(y)
    assert acc_counts.std() == pytest.approx(se, rel=0.06)


CHECKED = ("accuracy", "demographic_parity_difference", "disparate_impact", "equal_opportunity_difference",
           "predictive_equality_difference", "equalized_odds_difference", "worst_group_accuracy")


def test_ci_covers_truth_at_nominal_rate():
    rng = np.random.default_rng(10)
    reps = 200
    hits = {k: 0 for k in CHECKED}
    delta_hits = {k: 0 for k in CHECKED}
    for rep in range(reps):
        y, a, b, sf = _simulate(rng)
        single = _overall(bootstrap_ci(y, a, sf, n_resamples=300, seed=rep, min_group_size=1))
        paired = _overall(paired_bootstrap_ci(y, a, b, sf, n_resamples=300, seed=rep, min_group_size=1))
        for k in CHECKED:
            hits[k] += single.ci_low[k] <= TRUTH_A[k] <= single.ci_high[k]
            true_delta = TRUTH_B[k] - TRUTH_A[k]
            delta_hits[k] += paired.ci_low[k] <= true_delta <= paired.ci_high[k]
    coverage = {k: v / reps for k, v in hits.items()}
    delta_coverage = {k: v / reps for k, v in delta_hits.items()}
    print("coverage", coverage, "delta coverage", delta_coverage)
    for cov in (coverage, delta_coverage):
        for k, c in cov.items():
            assert 0.88 <= c < 1.0, (k, c)


# Confusion counts [group, y_true, y_pred]: group 1 has a single positive, so its TPR is undefined (NaN) in the
# ~36 % of resamples that miss it, which takes the NaN-aware path of the interval.
COUNTS = np.array([[[30, 10], [5, 55]],
                   [[12, 7], [0, 1]]])
GROUPS = pd.DataFrame({"g": [0, 1]})


def test_interval_is_the_percentile_of_its_own_resamples():
    """The CI equals np.percentile, at alpha/2 and 1 − alpha/2, of the same resamples' statistics computed here."""
    n_res, seed, conf = 400, 7, 0.90
    out = bootstrap_ci_from_counts(COUNTS, GROUPS, n_resamples=n_res, seed=seed, confidence=conf,
                                   min_group_size=1).set_index(["metric", "group"])
    draws = resample_group_counts(COUNTS, n_res, np.random.default_rng(seed)).astype(float)  # same generator
    correct = draws[:, :, 0, 0] + draws[:, :, 1, 1]
    with np.errstate(invalid="ignore"):
        tpr = draws[:, :, 1, 1] / draws[:, :, 1, :].sum(axis=-1)
    expected = {("accuracy", "all"): correct.sum(axis=1) / COUNTS.sum(),
                ("accuracy", "g=0"): correct[:, 0] / 100, ("accuracy", "g=1"): correct[:, 1] / 20,
                ("tpr", "g=0"): tpr[:, 0], ("tpr", "g=1"): tpr[:, 1]}
    assert 0 < np.isnan(tpr[:, 1]).sum() < n_res and not np.isnan(tpr[:, 0]).any()
    for key, stat in expected.items():
        lo, hi = np.nanpercentile(stat, [5.0, 95.0])
        assert out.loc[key, "ci_low"] == pytest.approx(lo, abs=1e-12), key
        assert out.loc[key, "ci_high"] == pytest.approx(hi, abs=1e-12), key
        assert out.loc[key, "n_valid"] == (~np.isnan(stat)).sum(), key


def test_paired_interval_is_the_percentile_of_its_own_resampled_deltas():
    # joint [g, y_true, baseline, pred]: the compressed model breaks some of the baseline's correct answers.
    joint = np.zeros((2, 2, 2, 2), dtype=int)
    joint[0, 0, 0, 0], joint[0, 0, 0, 1], joint[0, 1, 1, 1], joint[0, 1, 1, 0], joint[0, 1, 0, 0] = 40, 8, 40, 4, 8
    joint[1, 0, 0, 0], joint[1, 0, 1, 0], joint[1, 1, 1, 1], joint[1, 1, 0, 1] = 20, 5, 20, 5
    n_res, seed, conf = 300, 3, 0.80
    out = paired_bootstrap_ci_from_counts(joint, GROUPS, n_resamples=n_res, seed=seed, confidence=conf,
                                          min_group_size=1).set_index(["metric", "group"])
    d = resample_group_counts(joint, n_res, np.random.default_rng(seed))
    base_ok = d[:, :, 0, 0, :].sum(-1) + d[:, :, 1, 1, :].sum(-1)
    comp_ok = d[:, :, 0, :, 0].sum(-1) + d[:, :, 1, :, 1].sum(-1)
    delta = (comp_ok - base_ok).sum(axis=1) / joint.sum()
    lo, hi = np.percentile(delta, [10.0, 90.0])
    assert out.loc[("accuracy", "all"), "ci_low"] == pytest.approx(lo, abs=1e-12)
    assert out.loc[("accuracy", "all"), "ci_high"] == pytest.approx(hi, abs=1e-12)
    assert out.loc[("accuracy", "all"), "delta"] == pytest.approx((80 - 92 + 50 - 40) / 150, abs=1e-12)  # by cell


def test_basic_interval_reflects_percentile_around_estimate():
    rng = np.random.default_rng(5)
    y, a, _, sf = _simulate(rng)
    pct = bootstrap_ci(y, a, sf, n_resamples=300, seed=1)
    basic = bootstrap_ci(y, a, sf, n_resamples=300, seed=1, method="basic")
    np.testing.assert_allclose(basic.ci_low, 2 * pct.value - pct.ci_high)
    np.testing.assert_allclose(basic.ci_high, 2 * pct.value - pct.ci_low)
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci(y, a, sf, method="bca")


def test_per_group_rows_and_speed():
    rng = np.random.default_rng(3)
    n = 5000
    sf = {"race": rng.integers(0, 5, n), "age": rng.integers(0, 4, n)}
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < 0.8, y, 1 - y)
    b = np.where(rng.random(n) < 0.05, 1 - a, a)
    start = time.perf_counter()
    out = paired_bootstrap_ci(y, a, b, sf, n_resamples=1000)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, elapsed  # typically ~0.1 s: resampling works on counts, not samples
    groups = out[out.group != "all"]
    assert set(groups.metric) == {"accuracy", "selection_rate", "tpr", "fpr"}
    assert groups.group.nunique() == 20 and "race=0, age=0" in set(groups.group)
    assert (out.n_valid == 1000).all()


@pytest.mark.slow
def test_many_groups_gap_bias():
    """The documented limitation: percentile CIs of a gap over many small groups under-cover; deltas do not."""
    n_groups, size, reps = 20, 100, 60
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(n_groups), size)
    rate = np.where(np.arange(n_groups) == 0, 0.5, 0.3)  # true DP gap 0.2, set by group 0
    rate_b = rate * 0.9 + (1 - rate) * 0.1  # compressed model: 10 % uniform flips
    true_delta = (rate_b.max() - rate_b.min()) - 0.2
    cov = {"percentile": 0, "basic": 0, "delta": 0}
    for rep in range(reps):
        y = rng.integers(0, 2, len(g))
        a = (rng.random(len(g)) < rate[g]).astype(int)
        b = np.where(rng.random(len(g)) < 0.1, 1 - a, a)
        for method in ("percentile", "basic"):
            row = _overall(bootstrap_ci(y, a, {"g": g}, n_resamples=300, seed=rep, method=method,
                                        min_group_size=1)).loc["demographic_parity_difference"]
            cov[method] += row.ci_low <= 0.2 <= row.ci_high
        row = _overall(paired_bootstrap_ci(y, a, b, {"g": g}, n_resamples=300, seed=rep,
                                           min_group_size=1)).loc["demographic_parity_difference"]
        cov["delta"] += row.ci_low <= true_delta <= row.ci_high
    cov = {k: v / reps for k, v in cov.items()}
    print("many-groups coverage", cov)
    assert cov["percentile"] < 0.7 < cov["delta"] and cov["basic"] > cov["percentile"]


def test_count_resampling_keeps_group_totals_for_any_cell_shape_and_tiny_groups():
    """[G, cells] of any trailing shape: each group keeps its total; a one-sample group always redraws its one cell;
    an empty group draws nothing; negative counts and a 1-D array are refused."""
    counts = np.array([[3, 1, 0], [0, 1, 0], [0, 0, 0]])              # 2-D: group 1 has one sample, group 2 none
    d = resample_group_counts(counts, 500, np.random.default_rng(0))
    assert d.shape == (500, 3, 3) and d.dtype.kind == "i"
    np.testing.assert_array_equal(d.sum(axis=-1), np.broadcast_to([4, 1, 0], (500, 3)))
    assert (d[:, 1] == [0, 1, 0]).all() and (d[:, 2] == 0).all() and (d[:, 0, 2] == 0).all()
    assert 0.70 <= d[:, 0, 0].mean() / 4 <= 0.80                         # cell share 3/4, sd of the mean ≈ 0.01
    with pytest.raises(ValueError, match="non-negative"):
        resample_group_counts(-counts, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"must be \[G, \.\.\.cells\]"):
        resample_group_counts(np.array([3, 1]), 2, np.random.default_rng(0))


def test_arguments_are_checked_at_their_boundaries():
    ok = dict(n_resamples=1, confidence=0.5)
    out = bootstrap_ci_from_counts(COUNTS, GROUPS, min_group_size=1, **ok)       # one resample is allowed
    one = out.n_valid == 1
    assert (out.n_valid <= 1).all() and one.any() and (out.ci_low[one] == out.ci_high[one]).all()
    for bad, match in ((dict(n_resamples=0), "n_resamples must be >= 1"), (dict(confidence=0.0), "confidence"),
                       (dict(confidence=1.0), "confidence"), (dict(confidence=1.5), "confidence"),
                       (dict(method="bca"), "method must be one of")):
        with pytest.raises(ValueError, match=match):
            bootstrap_ci_from_counts(COUNTS, GROUPS, **{**ok, **bad})
        with pytest.raises(ValueError, match=match):
            paired_bootstrap_ci_from_counts(np.stack([COUNTS] * 2, axis=-1), GROUPS, **{**ok, **bad})


def test_defaults_are_the_documented_ones():
    """1000 percentile resamples at 95 % with seed 0 and min_group_size 20, for every entry point."""
    from fairq.metrics import DEFAULT_MIN_GROUP_SIZE

    assert DEFAULT_MIN_GROUP_SIZE == 20
    documented = dict(n_resamples=1000, confidence=0.95, seed=0, min_group_size=20, method="percentile")
    joint = np.stack([COUNTS, COUNTS[..., ::-1]], axis=-1)
    pd.testing.assert_frame_equal(bootstrap_ci_from_counts(COUNTS, GROUPS),
                                  bootstrap_ci_from_counts(COUNTS, GROUPS, **documented))
    pd.testing.assert_frame_equal(paired_bootstrap_ci_from_counts(joint, GROUPS),
                                  paired_bootstrap_ci_from_counts(joint, GROUPS, **documented))
    rng = np.random.default_rng(4)
    y, a, b, sf = _simulate(rng)
    pd.testing.assert_frame_equal(bootstrap_ci(y, a, sf), bootstrap_ci(y, a, sf, pos_label=1, **documented))
    pd.testing.assert_frame_equal(paired_bootstrap_ci(y, a, b, sf),
                                  paired_bootstrap_ci(y, a, b, sf, pos_label=1, **documented))
    assert (bootstrap_ci(y, a, sf).n_valid == 1000).all()


def test_an_empty_group_gets_no_rows_and_leaves_the_others_unchanged():
    counts = np.concatenate([COUNTS, np.zeros((1, 2, 2), dtype=int)])
    groups = pd.DataFrame({"g": [0, 1, 2]})
    out = bootstrap_ci_from_counts(counts, groups, n_resamples=50, min_group_size=1)
    assert "g=2" not in set(out.group)
    pd.testing.assert_frame_equal(out, bootstrap_ci_from_counts(COUNTS, GROUPS, n_resamples=50, min_group_size=1))
    joint = counts[..., None] * np.eye(2, dtype=int)                   # B predicts exactly what A does
    paired = paired_bootstrap_ci_from_counts(joint, groups, n_resamples=50, min_group_size=1)
    assert "g=2" not in set(paired.group) and (paired.delta == 0).all()


def test_the_sample_level_entry_points_pass_every_setting_to_the_count_level_ones():
    """``bootstrap_ci`` / ``paired_bootstrap_ci`` = the ``*_from_counts`` functions on hand-built counts, with every
    setting away from its default: a positive label at index 0, a declared class no sample has (so the last joint
    cell is empty), a group below the default minimum size, and ``y_true`` a tensor that requires grad."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    g = np.repeat([0, 1], [45, 12])                                      # group 1: below the default 20
    y, a, b = (rng.integers(0, 2, len(g)) for _ in range(3))
    sf = pd.Series(np.where(g == 0, "u", "v"), name="s")
    groups = pd.DataFrame({"s": ["u", "v"]})
    kw = dict(n_resamples=37, confidence=0.8, seed=5, min_group_size=7, method="basic")

    def counts(c, code):                                                 # [G, C, C] and [G, C, C, C] by hand
        single, joint = np.zeros((2, c, c), dtype=int), np.zeros((2, c, c, c), dtype=int)
        for gi, t, pa, pb in zip(g, code(y), code(a), code(b)):
            single[gi, t, pb] += 1
            joint[gi, t, pa, pb] += 1
        return single, joint

    y_grad = torch.tensor(y, dtype=torch.float32, requires_grad=True)
    single, joint = counts(2, lambda v: v)
    pd.testing.assert_frame_equal(bootstrap_ci(y_grad, b, sf, pos_label=0, **kw),
                                  bootstrap_ci_from_counts(single, groups, pos_index=0, **kw))
    b_grad = torch.tensor(b, dtype=torch.float32, requires_grad=True)
    pd.testing.assert_frame_equal(paired_bootstrap_ci(y_grad, a, b_grad, sf, pos_label=0, **kw),
                                  paired_bootstrap_ci_from_counts(joint, groups, pos_index=0, **kw))
    with pytest.raises(ValueError, match=r"^prediction vector 1 has 56 samples but y_true has 57$"):
        paired_bootstrap_ci(y, a, b[1:], sf)
    with pytest.raises(ValueError, match=r"^sensitive_features has 56 rows but y_true has 57 samples$"):
        bootstrap_ci(y, b, sf[1:])
    assert "s=v" in set(bootstrap_ci(y, b, sf, **kw).group)
    single, joint = counts(3, lambda v: v)                                # declared class 2: never seen
    pd.testing.assert_frame_equal(bootstrap_ci(y, b, sf, labels=[0, 1, 2], **kw),
                                  bootstrap_ci_from_counts(single, groups, pos_index=1, **kw))
    pd.testing.assert_frame_equal(paired_bootstrap_ci(y, a, b, sf, labels=[0, 1, 2], **kw),
                                  paired_bootstrap_ci_from_counts(joint, groups, pos_index=1, **kw))


def _recomputed_paired_interval(joint, n_res, seed, conf, pos_index, min_group_size, method):
    """Scalar-metric deltas of the same resamples (same generator), scored here with the public
    ``scalar_metrics_from_counts``, then the percentile (or basic) interval by np.percentile."""
    from fairq.metrics import scalar_metrics_from_counts

    d = resample_group_counts(joint, n_res, np.random.default_rng(seed))
    base = scalar_metrics_from_counts(d.sum(axis=-1), pos_index=pos_index, min_group_size=min_group_size)
    comp = scalar_metrics_from_counts(d.sum(axis=-2), pos_index=pos_index, min_group_size=min_group_size)
    point_b = scalar_metrics_from_counts(joint.sum(axis=-1), pos_index=pos_index, min_group_size=min_group_size)
    point_c = scalar_metrics_from_counts(joint.sum(axis=-2), pos_index=pos_index, min_group_size=min_group_size)
    alpha = 1 - conf
    out = {}
    for key in SCALAR_METRICS:
        delta = comp[key] - base[key]
        lo, hi = np.nanpercentile(delta, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        point = point_c[key] - point_b[key]
        out[key] = (2 * point - hi, 2 * point - lo) if method == "basic" else (lo, hi)
    return out


@pytest.mark.parametrize("pos_index, min_group_size, method, conf", [
    (0, 30, "basic", 0.8), (1, 1, "basic", 0.9), (0, 1, "percentile", 0.95)])
def test_paired_interval_follows_every_setting(pos_index, min_group_size, method, conf):
    """The paired interval of every scalar metric equals an independent recomputation from the same resamples, for
    either positive class, a size threshold that leaves a group out, and both interval methods."""
    joint = np.zeros((3, 2, 2, 2), dtype=int)
    joint[0, 0, 0, 0], joint[0, 0, 0, 1], joint[0, 1, 1, 1], joint[0, 1, 1, 0], joint[0, 1, 0, 0] = 30, 9, 35, 6, 10
    joint[1, 0, 0, 0], joint[1, 0, 1, 0], joint[1, 1, 1, 1], joint[1, 1, 0, 1] = 22, 6, 18, 4
    joint[2, 0, 0, 0], joint[2, 1, 1, 1], joint[2, 1, 0, 1], joint[2, 0, 1, 1] = 8, 6, 3, 3   # 20 samples
    groups = pd.DataFrame({"g": [0, 1, 2]})
    out = paired_bootstrap_ci_from_counts(joint, groups, n_resamples=200, seed=9, confidence=conf, method=method,
                                          pos_index=pos_index, min_group_size=min_group_size)
    out = out.set_index(["metric", "group"])
    expected = _recomputed_paired_interval(joint, 200, 9, conf, pos_index, min_group_size, method)
    for key, (lo, hi) in expected.items():
        got = out.loc[(key, "all")]
        np.testing.assert_allclose([got.ci_low, got.ci_high], [lo, hi], atol=1e-12, err_msg=key)


def test_point_estimates_follow_the_positive_class_and_size_threshold():
    rng = np.random.default_rng(12)
    g = np.repeat([0, 1, 2], [60, 40, 25])
    y = rng.integers(0, 2, len(g))
    a = np.where(rng.random(len(g)) < np.take([0.1, 0.3, 0.2], g), 1 - y, y)
    sf = {"g": g}
    for kw in (dict(pos_label=0, min_group_size=30), dict(pos_label=1, min_group_size=1)):
        ref = fairness_metrics(y, a, sf, **kw)
        got = bootstrap_ci(y, a, sf, n_resamples=20, **kw).set_index(["metric", "group"])
        for key in SCALAR_METRICS:
            assert got.loc[(key, "all"), "value"] == pytest.approx(ref[key], abs=1e-12, nan_ok=True), (kw, key)
        pg = ref["per_group"].set_index("g")
        for name in ("selection_rate", "tpr", "fpr"):
            for lvl in (0, 1, 2):
                assert got.loc[(name, f"g={lvl}"), "value"] == pytest.approx(pg.loc[lvl, name], abs=1e-12)


def test_every_non_empty_group_gets_rows_and_multiclass_rows_are_accuracy_only():
    counts = np.zeros((3, 3, 3), dtype=int)
    counts[0] = [[3, 1, 0], [0, 2, 1], [1, 0, 4]]
    counts[1, 2, 2] = 1                                                   # one sample
    groups = pd.DataFrame({"g": ["a", "b", "c"]})                          # c: empty
    out = bootstrap_ci_from_counts(counts, groups, n_resamples=30, min_group_size=1)
    rows = out[out.group != "all"]
    assert set(rows.metric) == {"accuracy"} and list(rows.group) == ["g=a", "g=b"]
    joint = np.zeros((3, 3, 3, 3), dtype=int)
    joint[0, 0, 0, 0], joint[0, 1, 1, 2], joint[1, 2, 2, 2] = 5, 4, 1
    paired = paired_bootstrap_ci_from_counts(joint, groups, n_resamples=30, min_group_size=1)
    assert list(paired[paired.group != "all"].group) == ["g=a", "g=b"]
    with pytest.raises(ValueError, match=r"joint_counts must have shape \[G, C, C, C\]; got \(3, 2, 2, 3\)"):
        paired_bootstrap_ci_from_counts(np.ones((3, 2, 2, 3), dtype=int), groups)


def test_memory_chunks_do_not_change_the_bootstrap(monkeypatch):
    """Resampling in several memory chunks (forced by a tiny chunk budget) draws exactly the same resamples."""
    import fairq.metrics.bootstrap as bs

    joint = np.stack([COUNTS, COUNTS[..., ::-1]], axis=-1)
    whole = paired_bootstrap_ci_from_counts(joint, GROUPS, n_resamples=50, min_group_size=1)
    single = bootstrap_ci_from_counts(COUNTS, GROUPS, n_resamples=50, min_group_size=1)
    monkeypatch.setattr(bs, "_CHUNK_CELLS", 7 * joint.size)                # 7 resamples per chunk, 8 chunks
    pd.testing.assert_frame_equal(paired_bootstrap_ci_from_counts(joint, GROUPS, n_resamples=50, min_group_size=1),
                                  whole)
    pd.testing.assert_frame_equal(bootstrap_ci_from_counts(COUNTS, GROUPS, n_resamples=50, min_group_size=1), single)


def test_interval_per_column_full_partial_single_and_empty():
    """``_interval``: a column without NaN, one with some NaN, one with a single valid resample (its interval is
    that value) and an all-NaN one (NaN, without a warning); more resamples than columns and fewer."""
    import warnings

    from fairq.metrics.bootstrap import _interval

    b = np.arange(10.0)
    samples = np.stack([b, np.where(b < 6, np.nan, b), np.where(b == 3, 7.0, np.nan), np.full(10, np.nan)], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo, hi, valid = _interval(samples, np.zeros(4), 0.8, "percentile")
    np.testing.assert_array_equal(valid, [10, 4, 1, 0])                  # 4 valid = as many as columns
    np.testing.assert_allclose(lo[:3], [np.percentile(b, 10), np.percentile(b[6:], 10), 7.0])
    np.testing.assert_allclose(hi[:3], [np.percentile(b, 90), np.percentile(b[6:], 90), 7.0])
    assert np.isnan(lo[3]) and np.isnan(hi[3])
    wide = np.tile(samples[:3, :1], (1, 5))                                 # 3 resamples, 5 columns
    wide[0, 1] = np.nan
    lo, hi, valid = _interval(wide, np.zeros(5), 0.5, "percentile")
    np.testing.assert_array_equal(valid, [3, 2, 3, 3, 3])
    np.testing.assert_allclose(lo, [0.5, 1.25, 0.5, 0.5, 0.5])


def test_an_empty_group_with_a_single_cell_draws_nothing():
    d = resample_group_counts(np.array([[4], [0]]), 6, np.random.default_rng(0))
    np.testing.assert_array_equal(d, np.broadcast_to([[4], [0]], (6, 2, 1)))
