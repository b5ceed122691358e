"""Statistics of fairq.analysis on data with known answers (hand values, reference libraries, simulations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from fairq.analysis.findings import verdict
from fairq.analysis.pareto import pareto_mask
from fairq.analysis.stats import (SharedSamples, benjamini_hochberg, cohens_h, joint_counts, mcnemar_test,
                                  paired_comparison, percentile_ci, permutation_p, permute_joint)
from fairq.analysis.stats import _two_sided_p
from fairq.metrics import group_rates, scalar_metrics_from_counts


# ------------------------------------------------------------------------------------------------ BH
def test_bh_matches_hand_values_and_keeps_nan():
    p = [0.01, 0.04, 0.03, 0.2, np.nan]
    # By hand, m = 4 tests: sorted 0.01, 0.03, 0.04, 0.2 → p·m/rank = 0.04, 0.06, 0.0533, 0.2, then the running
    # minimum from the top: 0.04, 0.0533, 0.0533, 0.2.
    expected = [0.04, 0.16 / 3, 0.16 / 3, 0.2, np.nan]
    np.testing.assert_allclose(benjamini_hochberg(p), expected, rtol=1e-12)
    # a missing p-value as None (an object column of findings) is NaN too
    np.testing.assert_allclose(benjamini_hochberg([None, *p[:4]]), [np.nan, *expected[:4]], rtol=1e-12)


def test_bh_matches_statsmodels_on_random_list():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(3).uniform(size=57) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1])


# ------------------------------------------------------------------------------------------------ McNemar
def test_mcnemar_exact_on_hand_table():
    # 2 vs 8 discordant pairs: two-sided exact binomial p = 2 · P(X ≤ 2 | n=10, 1/2) = 2 · (1+10+45)/1024.
    p, disc, how = mcnemar_test(2, 8)
    assert how == "mcnemar_exact" and disc == 10
    assert p == pytest.approx(112 / 1024, abs=1e-12)
    assert mcnemar_test(8, 2)[0] == pytest.approx(p)


def test_mcnemar_chi2_on_hand_table():
    # 30 vs 10: continuity-corrected statistic (|30−10|−1)² / 40 = 9.025; chi²(1) tail = erfc(√(x/2)).
    p, disc, how = mcnemar_test(30, 10)
    assert how == "mcnemar_chi2" and disc == 40
    assert p == pytest.approx(math.erfc(math.sqrt(9.025 / 2)), rel=1e-9)


def test_mcnemar_no_discordant_pairs():
    assert mcnemar_test(0, 0) == (1.0, 0, "mcnemar_exact")


def test_mcnemar_counts_a_single_pair_and_switches_to_chi2_at_25():
    """One discordant pair is counted (exact p = 1); 24 pairs still get the exact binomial test, 25 the chi² test
    with continuity correction (both computed by hand here, scipy only for the distributions)."""
    assert mcnemar_test(1, 0) == (1.0, 1, "mcnemar_exact") and mcnemar_test(0, 1) == (1.0, 1, "mcnemar_exact")
    p, disc, how = mcnemar_test(15, 9)                     # exact: 2·P(X ≤ 9), X ~ Bin(24, 1/2)
    assert (disc, how) == (24, "mcnemar_exact") and p == pytest.approx(2 * sps.binom.cdf(9, 24, 0.5), rel=1e-12)
    p, disc, how = mcnemar_test(20, 5)                     # chi² = (|20 − 5| − 1)² / 25 = 7.84, 1 dof
    assert (disc, how) == (25, "mcnemar_chi2") and p == pytest.approx(sps.chi2.sf(7.84, 1), rel=1e-12)


# ------------------------------------------------------------------------------------------------ effect size
def test_cohens_h_hand_values():
    assert cohens_h(0.5, 0.5) == pytest.approx(0.0)
    assert cohens_h(1.0, 0.0) == pytest.approx(math.pi)
    assert cohens_h(0.8, 0.9) == pytest.approx(2 * math.asin(math.sqrt(0.8)) - 2 * math.asin(math.sqrt(0.9)))


# ------------------------------------------------------------------------------------------------ permutation
def test_permute_joint_swaps_only_predictions():
    rng = np.random.default_rng(0)
    joint = rng.integers(0, 20, size=(3, 2, 2, 2))
    perm = permute_joint(joint, 50, rng)
    # Group sizes, labels and the unordered prediction pair of every sample are kept.
    np.testing.assert_array_equal(perm.sum(axis=(2, 3, 4)), np.broadcast_to(joint.sum(axis=(1, 2, 3)), (50, 3)))
    np.testing.assert_array_equal(perm.sum(axis=(3, 4)), np.broadcast_to(joint.sum(axis=(2, 3)), (50, 3, 2)))
    np.testing.assert_array_equal(perm + np.swapaxes(perm, -1, -2),
                                  np.broadcast_to(joint + np.swapaxes(joint, -1, -2), perm.shape))
    assert not (perm == joint).all()


def _dp_delta(a, b):
    sa = scalar_metrics_from_counts(a, pos_index=1, min_group_size=1)["demographic_parity_difference"]
    sb = scalar_metrics_from_counts(b, pos_index=1, min_group_size=1)["demographic_parity_difference"]
    return (np.asarray(sb) - np.asarray(sa))[..., None]


def test_permutation_test_is_calibrated_under_h0():
    """Two exchangeable prediction vectors: p-values ~ U(0, 1) (KS test), ~5% below 0.05."""
    rng = np.random.default_rng(11)
    n, sims = 400, 200
    ps = []
    for _ in range(sims):
        g = rng.integers(0, 3, size=n)
        y = rng.integers(0, 2, size=n)
        rate = np.array([0.3, 0.45, 0.6])[g]            # group-dependent, but the same for both vectors
        a = (rng.random(n) < rate).astype(int)
        b = (rng.random(n) < rate).astype(int)
        joint = joint_counts(y, a, b, g, 3, 2)
        obs = _dp_delta(joint.sum(-1), joint.sum(-2))[0]
        ps.append(permutation_p([joint], _dp_delta, np.atleast_1d(obs), 199, rng)[0])
    ps = np.asarray(ps)
    assert sps.kstest(ps, "uniform").pvalue > 0.01
    assert 0.01 <= (ps < 0.05).mean() <= 0.11


def test_permutation_test_detects_a_real_gap_change():
    rng = np.random.default_rng(5)
    n = 600
    g = rng.integers(0, 2, size=n)
    y = rng.integers(0, 2, size=n)
    a = (rng.random(n) < 0.5).astype(int)
    b = np.where((g == 1) & (rng.random(n) < 0.4), 1, a)  # B selects group 1 much more often
    joint = joint_counts(y, a, b, g, 2, 2)
    obs = _dp_delta(joint.sum(-1), joint.sum(-2))[0]
    assert permutation_p([joint], _dp_delta, np.atleast_1d(obs), 499, rng)[0] < 0.01


def test_permutation_test_detects_a_real_negative_effect():
    """B closes a DP gap that A has: the delta is negative and the two-sided p must be small (an upper-tail-only
    p would be ~1 here)."""
    rng = np.random.default_rng(6)
    n = 600
    g = rng.integers(0, 2, size=n)
    y = rng.integers(0, 2, size=n)
    b = (rng.random(n) < 0.5).astype(int)
    a = np.where((g == 1) & (rng.random(n) < 0.4), 1, b)  # A selects group 1 much more often; B does not
    joint = joint_counts(y, a, b, g, 2, 2)
    obs = _dp_delta(joint.sum(-1), joint.sum(-2))[0]
    assert obs < -0.1
    assert permutation_p([joint], _dp_delta, np.atleast_1d(obs), 499, rng)[0] < 0.01


def test_two_sided_p_counts_ties_leaves_out_nan_draws_and_works_per_column():
    """p = (1 + #{|T*| ≥ |T|}) / (1 + #valid draws) per column: a draw as large as |T| counts (up to float noise),
    NaN draws are left out of both counts, and a NaN T or a column without a valid draw gives NaN."""
    nan = np.nan
    null = np.array([[1.0, 0.1, nan, 0.3, 5.0],
                     [-2.0, 0.2, nan, nan, 0.1],
                     [0.5, 0.3, nan, nan, 0.2],
                     [nan, 0.4, nan, nan, 0.3]])
    observed = np.array([-1.0, 0.25, 0.0, 0.1 + 0.2, nan])   # 0.1 + 0.2 is 0.30000000000000004
    # column 0: |1|, |-2| ≥ 1 of 3 valid → 3/4; column 1: 0.3, 0.4 of 4 → 3/5; column 3: the one draw ties → 2/2
    np.testing.assert_array_equal(_two_sided_p(observed, null), [3 / 4, 3 / 5, nan, 1.0, nan])


# ------------------------------------------------------------------------------------------------ percentiles
def test_percentile_ci_pins_the_levels_on_known_draws():
    """Draws 0..1000: the q-th percentile (linear interpolation) is 10·q exactly, so a 95% interval is (25, 975)
    and an 80% one (100, 900). NaN draws are left out, and a column without valid draws gives NaN."""
    draws = np.arange(1001.0)
    lo, hi, valid = percentile_ci(draws[:, None], 0.95)
    assert (lo[0], hi[0], valid[0]) == (pytest.approx(25.0, abs=1e-9), pytest.approx(975.0, abs=1e-9), 1001)
    lo, hi, _ = percentile_ci(draws[:, None], 0.80)
    assert (lo[0], hi[0]) == (pytest.approx(100.0, abs=1e-9), pytest.approx(900.0, abs=1e-9))
    table = np.stack([np.concatenate([draws, [np.nan] * 7]), np.full(1008, np.nan)], axis=1)
    lo, hi, valid = percentile_ci(table, 0.95)
    assert (lo[0], hi[0]) == (pytest.approx(25.0, abs=1e-9), pytest.approx(975.0, abs=1e-9))
    assert np.isnan(lo[1]) and np.isnan(hi[1])
    assert valid.tolist() == [1001, 0]


# ------------------------------------------------------------------------------------------------ CI coverage
def _acc_delta(a, b):
    acc = lambda c: np.trace(c.sum(axis=-3), axis1=-2, axis2=-1) / c.sum(axis=(-1, -2, -3))  # noqa: E731
    return (acc(b) - acc(a))[..., None]


def test_percentile_ci_single_valid_draw_and_paired_comparison_plumbing():
    lo, hi, valid = percentile_ci(np.array([[np.nan], [4.0], [np.nan]]), 0.95)
    assert (lo[0], hi[0], valid[0]) == (4.0, 4.0, 1)  # one valid draw is an interval of one point
    joint = np.zeros((2, 2, 2, 2), dtype=int)
    joint[:, 0, 0, 0], joint[:, 1, 1, 1], joint[:, 1, 1, 0], joint[:, 0, 1, 1] = 30, 30, 6, 4
    kw = dict(n_bootstrap=200, permutation=False)
    res = paired_comparison([joint], _acc_delta, seed=1, confidence=0.8, **kw)
    assert set(res) == {"estimate", "ci_low", "ci_high", "p_value", "n_valid"}
    assert np.isnan(res["p_value"]).all() and res["n_valid"].tolist() == [200]
    wide = paired_comparison([joint], _acc_delta, seed=1, confidence=0.99, **kw)
    assert wide["ci_low"][0] < res["ci_low"][0] and res["ci_high"][0] < wide["ci_high"][0]  # the level is used
    again = paired_comparison([joint], _acc_delta, seed=1, confidence=0.8, **kw)
    other = paired_comparison([joint], _acc_delta, seed=2, confidence=0.8, **kw)
    assert (again["ci_low"][0], again["ci_high"][0]) == (res["ci_low"][0], res["ci_high"][0])  # seeded
    assert (other["ci_low"][0], other["ci_high"][0]) != (res["ci_low"][0], res["ci_high"][0])  # by that seed
    with pytest.raises(ValueError, match="^paired_comparison needs at least one joint count array$"):
        paired_comparison([], _acc_delta)


def test_paired_bootstrap_ci_covers_true_delta_at_nominal_rate():
    """Simulated paired predictions with a known accuracy drop: the 95% CI covers it in ~95% of runs."""
    rng = np.random.default_rng(2024)
    n, sims, true_delta = 500, 200, -0.06
    covered = 0
    for _ in range(sims):
        g = rng.integers(0, 2, size=n)
        y = rng.integers(0, 2, size=n)
        base_ok = rng.random(n) < 0.85
        # Among baseline-correct samples break 10%, among baseline errors fix p_fix: E[Δ] = −0.085 + 0.15 p_fix.
        p_fix = (true_delta + 0.085) / 0.15
        u = rng.random(n)
        comp_ok = np.where(base_ok, u >= 0.10, u < p_fix)
        a = np.where(base_ok, y, 1 - y)
        b = np.where(comp_ok, y, 1 - y)
        res = paired_comparison([joint_counts(y, a, b, g, 2, 2)], _acc_delta, n_bootstrap=300, permutation=False,
                                seed=int(rng.integers(1 << 30)))
        covered += res["ci_low"][0] <= true_delta <= res["ci_high"][0]
    rate = covered / sims
    assert 0.90 <= rate <= 0.99, rate


def test_paired_comparison_seeds_average_and_pair():
    """Two identical seeds give the single-seed estimate; a constant shift moves the estimate by that shift."""
    rng = np.random.default_rng(1)
    n = 300
    g, y = rng.integers(0, 2, size=n), rng.integers(0, 2, size=n)
    a = np.where(rng.random(n) < 0.8, y, 1 - y)
    b = np.where(rng.random(n) < 0.1, 1 - a, a)
    j = joint_counts(y, a, b, g, 2, 2)
    one = paired_comparison([j], _acc_delta, n_bootstrap=200, n_permutations=200, seed=0)
    two = paired_comparison([j, j], _acc_delta, n_bootstrap=200, n_permutations=200, seed=0)
    assert two["estimate"][0] == pytest.approx(one["estimate"][0])
    assert {k: v.shape for k, v in two.items()} == {k: (1,) for k in two}      # one statistic, whatever the seeds
    expected = (np.mean(b == y) - np.mean(a == y))
    assert one["estimate"][0] == pytest.approx(expected)
    assert one["ci_low"][0] <= expected <= one["ci_high"][0]


def _shared(n_seeds, g, y, a, b):
    """The same predictions as ``n_seeds`` seeds on one test set (what a run with a fixed data seed stores)."""
    cells = np.tile(((g * 2 + y) * 2 + a) * 2 + b, (n_seeds, 1))
    return SharedSamples(cells, g, (2, 2, 2, 2))


def test_duplicated_seeds_on_one_test_set_do_not_narrow_the_interval():
    """The same counts as 1 / 2 / 4 / 8 "seeds" on one test set carry one test set's noise: same CI width, same p
    (independent per-seed resampling gave widths 0.042 / 0.028 / 0.020 / 0.014 — confidence from nothing)."""
    rng = np.random.default_rng(1)
    n = 400
    g, y = rng.integers(0, 2, size=n), rng.integers(0, 2, size=n)
    a = np.where(rng.random(n) < 0.8, y, 1 - y)
    b = np.where(rng.random(n) < 0.1, 1 - a, a)
    one = paired_comparison([joint_counts(y, a, b, g, 2, 2)], _acc_delta, n_bootstrap=2000, n_permutations=2000,
                            seed=0)
    width1 = (one["ci_high"] - one["ci_low"])[0]
    for k in (2, 4, 8):
        res = paired_comparison(_shared(k, g, y, a, b), _acc_delta, n_bootstrap=2000, n_permutations=2000, seed=0)
        assert res["estimate"][0] == pytest.approx(one["estimate"][0])
        assert (res["ci_high"] - res["ci_low"])[0] == pytest.approx(width1, rel=0.15), k
        assert res["p_value"][0] == pytest.approx(one["p_value"][0], abs=0.05), k
    # the independent-resampling path for seeds on one test set is the bug: it does narrow
    narrowed = paired_comparison([joint_counts(y, a, b, g, 2, 2)] * 8, _acc_delta, n_bootstrap=2000,
                                 n_permutations=10, seed=0)
    assert (narrowed["ci_high"] - narrowed["ci_low"])[0] < 0.6 * width1


def test_shared_seeds_that_differ_add_their_spread_to_the_interval():
    """Seeds that disagree (different training runs on one test set) widen the CI beyond one seed's."""
    rng = np.random.default_rng(2)
    n = 400
    g, y = rng.integers(0, 2, size=n), rng.integers(0, 2, size=n)
    a = np.where(rng.random(n) < 0.8, y, 1 - y)
    seeds = [np.where(rng.random(n) < flip, 1 - a, a) for flip in (0.02, 0.25)]  # very different seeds
    cells = np.stack([((g * 2 + y) * 2 + a) * 2 + b for b in seeds])
    both = paired_comparison(SharedSamples(cells, g, (2, 2, 2, 2)), _acc_delta, n_bootstrap=2000, seed=0,
                             permutation=False)
    singles = [paired_comparison([joint_counts(y, a, b, g, 2, 2)], _acc_delta, n_bootstrap=2000, seed=0,
                                 permutation=False) for b in seeds]
    assert both["estimate"][0] == pytest.approx(np.mean([s["estimate"][0] for s in singles]))
    assert (both["ci_high"] - both["ci_low"])[0] > max((s["ci_high"] - s["ci_low"])[0] for s in singles)
    assert both["p_value"].shape == (1,) and np.isnan(both["p_value"]).all()     # no permutation test asked for
    # the level is used: an 80 % interval lies inside the 95 % one of the same draws (same seed)
    narrow = paired_comparison(SharedSamples(cells, g, (2, 2, 2, 2)), _acc_delta, n_bootstrap=2000, seed=0,
                               permutation=False, confidence=0.8)
    assert both["ci_low"][0] < narrow["ci_low"][0] < narrow["ci_high"][0] < both["ci_high"][0]


# ------------------------------------------------------------------------------------------------ rules
@pytest.mark.parametrize("est, lo, hi, p, hyp, expected", [
    (-0.10, -0.15, -0.05, 0.001, "< 0", "supported"),
    (0.10, 0.05, 0.15, 0.001, "> 0", "supported"),
    (0.10, 0.05, 0.15, 0.001, "< 0", "not supported"),       # significant the other way
    (0.001, -0.005, 0.008, 0.6, "< 0", "not supported"),     # CI inside ±1 point: negligible
    (-0.03, -0.07, 0.01, 0.2, "< 0", "inconclusive"),
    (-0.10, -0.15, -0.05, 0.2, "< 0", "inconclusive"),       # CI excludes 0 but corrected p does not
    (np.nan, np.nan, np.nan, np.nan, "> 0", "inconclusive"),
    # boundaries, all strict: a CI touching 0, p equal to alpha, a CI edge equal to the margin
    (0.10, 0.0, 0.20, 0.001, "> 0", "inconclusive"),
    (-0.10, -0.20, 0.0, 0.001, "> 0", "inconclusive"),
    (-0.10, -0.15, -0.05, 0.05, "< 0", "inconclusive"),
    (0.0, -0.01, 0.005, 0.6, "< 0", "inconclusive"),
    (0.0, -0.005, 0.01, 0.6, "< 0", "inconclusive"),
])
def test_verdict_rule(est, lo, hi, p, hyp, expected):
    assert verdict(est, lo, hi, p, hyp) == expected


def test_verdict_rejects_unknown_hypothesis():
    with pytest.raises(ValueError, match="hypothesis"):
        verdict(0.1, 0.0, 0.2, 0.01, "!= 0")


def test_apply_rules_judges_every_row_with_the_given_alpha_and_margin():
    import pandas as pd

    from fairq.analysis.findings import apply_rules

    frame = pd.DataFrame({"finding": ["a", "b", "c"], "hypothesis": ["> 0", "< 0", "> 0"],
                          "estimate": [0.10, -0.10, 0.01], "ci_low": [0.05, -0.15, -0.03],
                          "ci_high": [0.15, -0.05, 0.03], "p_adjusted": [0.10, 0.001, 0.5]})
    # defaults: alpha 0.05 (row a: p = 0.10 is not significant), margin 1 point (row c: ±3 points is not inside)
    assert list(apply_rules(frame)["verdict"]) == ["inconclusive", "supported", "inconclusive"]
    assert list(apply_rules(frame, alpha=0.2)["verdict"]) == ["supported", "supported", "inconclusive"]
    assert list(apply_rules(frame, margin=0.05)["verdict"]) == ["inconclusive", "supported", "not supported"]
    assert "verdict" not in frame.columns  # the input is left as it was


# ------------------------------------------------------------------------------------------------ Pareto
def test_pareto_mask_hand_points():
    # columns: accuracy (max), gap (min), size (min)
    pts = np.array([[0.90, 0.10, 4.0],   # best accuracy → frontier
                    [0.88, 0.05, 1.0],   # frontier
                    [0.87, 0.06, 1.0],   # dominated by row 1
                    [0.80, 0.20, 0.5],   # smallest → frontier
                    [0.88, 0.05, 1.0],   # tie with row 1: neither dominates
                    [np.nan, 0.0, 0.1]])  # missing accuracy → never on the frontier
    np.testing.assert_array_equal(pareto_mask(pts, [True, False, False]), [True, True, False, True, True, False])


# ------------------------------------------------------------------------------------------------ SharedSamples
def _seed_cells(c, g, y, a, b, present):
    """Flat ``(group, y_true, a, b)`` cell of each sample, -1 where the seed lacks it (as deltas.seed_samples)."""
    return np.where(present, ((g * c + y) * c + a) * c + b, -1)


def test_shared_samples_joints_are_each_seeds_own_counts_and_swaps_transpose_them():
    """Per seed, the joint counts are that seed's own ``joint_counts`` over the samples it saw (-1 cells left
    out); swapping every sample exchanges A and B, i.e. transposes the last two axes. 3 classes and 2 groups of
    different sizes, so a wrong radix or a swapped index lands in another cell."""
    rng = np.random.default_rng(7)
    n, c = 90, 3
    g = (rng.random(n) < 0.3).astype(int)
    y = rng.integers(0, c, size=n)
    preds = [(rng.integers(0, c, size=n), rng.integers(0, c, size=n)) for _ in range(2)]
    present = [np.ones(n, dtype=bool), rng.random(n) < 0.7]                 # seed 1 misses ~30% of the samples
    cells = np.stack([_seed_cells(c, g, y, a, b, m) for (a, b), m in zip(preds, present)])
    ss = SharedSamples(cells, g, (2, c, c, c))
    want = np.stack([joint_counts(y[m], a[m], b[m], g[m], 2, c) for (a, b), m in zip(preds, present)])
    np.testing.assert_array_equal(ss.joints(), want)
    assert ss.count.sum() == n and ss.n_seeds == 2 and ss.joints().dtype == np.int64      # counts stay integers
    np.testing.assert_array_equal(ss.joints(ss.count, ss.count), np.swapaxes(want, -1, -2))
    half = ss.count // 2                                                      # swap some samples of each pattern
    np.testing.assert_array_equal(ss.joints(ss.count, half).sum(axis=(-1, -2)), want.sum(axis=(-1, -2)))
    # integer-valued float codes (pandas turns an int column with a gap into floats) mean the same samples
    np.testing.assert_array_equal(SharedSamples(cells.astype(float), g.astype(float), (2, c, c, c)).joints(), want)


def test_shared_samples_resample_keeps_strata_sizes_and_is_unbiased():
    rng = np.random.default_rng(8)
    n = 200
    g = rng.integers(0, 3, size=n)
    y, a, b = (rng.integers(0, 2, size=n) for _ in range(3))
    ss = SharedSamples(_seed_cells(2, g, y, a, b, np.ones(n, dtype=bool))[None], g, (3, 2, 2, 2))
    draws = ss.resample(4000, rng)
    assert draws.shape == (4000, len(ss.count)) and draws.dtype == np.int64
    for s in range(3):
        sel = ss.strata == s
        assert (draws[:, sel].sum(axis=1) == (g == s).sum()).all()           # each stratum keeps its size
    # a multinomial draw of the stratum size over its patterns has mean = the observed pattern counts
    np.testing.assert_allclose(draws.mean(axis=0), ss.count, atol=0.1 * ss.count.max())
    assert draws.std(axis=0).min() > 0


def test_shared_seeds_a_seed_without_a_group_makes_exactly_the_draws_that_pick_it_undefined():
    """Seed 1 never saw group 1, so its group-1 accuracy delta is NaN. A bootstrap draw resamples the 2 seeds with
    replacement: it is undefined iff it picks seed 1, which happens with probability 1 − (1/2)² = 3/4; the valid
    draws are seed 0 alone, so their interval covers seed 0's estimate. The estimate (mean over seeds) is NaN."""
    rng = np.random.default_rng(9)
    n = 400
    g, y = rng.integers(0, 2, size=n), rng.integers(0, 2, size=n)
    a = np.where(rng.random(n) < 0.8, y, 1 - y)
    b = np.where(rng.random(n) < 0.2, 1 - a, a)
    cells = np.stack([_seed_cells(2, g, y, a, b, np.ones(n, dtype=bool)), _seed_cells(2, g, y, a, b, g == 0)])

    def group1_acc_delta(ca, cb):
        return (group_rates(cb, None)["accuracy"][..., 1] - group_rates(ca, None)["accuracy"][..., 1])[..., None]

    res = paired_comparison(SharedSamples(cells, g, (2, 2, 2, 2)), group1_acc_delta, n_bootstrap=2000,
                            n_permutations=200, seed=0)
    assert {k: v.shape for k, v in res.items()} == {k: (1,) for k in ("estimate", "ci_low", "ci_high", "p_value",
                                                                       "n_valid")}
    assert np.isnan(res["estimate"][0]) and np.isnan(res["p_value"][0])
    assert 400 <= res["n_valid"][0] <= 600                                   # Binomial(2000, 1/4): 500 ± 58 (3 sd)
    m = g == 1
    seed0 = np.mean(b[m] == y[m]) - np.mean(a[m] == y[m])
    assert res["ci_low"][0] <= seed0 <= res["ci_high"][0]


def test_memory_chunks_do_not_change_the_draws_and_defaults_are_documented(monkeypatch):
    """Draws made in many small memory chunks equal the draws made at once (the generator is consumed row by row),
    for a 2-column statistic; and paired_comparison's defaults are 1000 / 1000 draws, seed 0, 95 %."""
    from fairq.analysis import stats

    rng = np.random.default_rng(3)
    n = 200
    g, y = rng.integers(0, 2, size=n), rng.integers(0, 2, size=n)
    a = np.where(rng.random(n) < 0.8, y, 1 - y)
    b = np.where(rng.random(n) < 0.2, 1 - a, a)
    joint = joint_counts(y, a, b, g, 2, 2)

    def two(ca, cb):
        return np.concatenate([_acc_delta(ca, cb),
                               _dp_delta(ca, cb)], axis=-1)

    whole = stats.bootstrap_draws(joint, two, 50, np.random.default_rng(0))
    whole_p = stats.permutation_draws(joint, two, 50, np.random.default_rng(0))
    monkeypatch.setattr(stats, "_CHUNK_CELLS", 7 * joint.size)              # chunks of 7 draws: 7+7+…+1
    np.testing.assert_array_equal(stats.bootstrap_draws(joint, two, 50, np.random.default_rng(0)), whole)
    np.testing.assert_array_equal(stats.permutation_draws(joint, two, 50, np.random.default_rng(0)), whole_p)
    assert whole.shape == whole_p.shape == (50, 2)
    monkeypatch.undo()
    documented = paired_comparison([joint], _acc_delta, n_bootstrap=1000, n_permutations=1000, seed=0,
                                   confidence=0.95)
    for key, value in paired_comparison([joint], _acc_delta).items():
        np.testing.assert_array_equal(value, documented[key], err_msg=key)


def test_memory_chunks_are_the_largest_that_fit(monkeypatch):
    """``_chunks(total, per_item)``: as many items per chunk as ``_CHUNK_CELLS`` holds, one when an item alone is
    larger, the last chunk the remainder."""
    from fairq.analysis import stats

    monkeypatch.setattr(stats, "_CHUNK_CELLS", 10)
    assert list(stats._chunks(25, 1)) == [10, 10, 5]
    assert list(stats._chunks(25, 3)) == [3] * 8 + [1]
    assert list(stats._chunks(3, 11)) == [1, 1, 1]
    assert list(stats._chunks(0, 2)) == []


def test_a_statistic_with_one_value_per_draw_gives_one_column():
    """A statistic may return ``[...]`` (one value) or ``[..., K]``: draws are ``[B, K]`` and results ``[K]``
    either way."""
    from fairq.analysis import stats

    joint = joint_counts(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), np.array([1, 1, 0, 0]),
                         np.array([0, 0, 1, 1]), 2, 2)

    def flat(ca, cb):
        return _acc_delta(ca, cb)[..., 0]

    for draws in (stats.bootstrap_draws, stats.permutation_draws):
        one, k = (draws(joint, f, 20, np.random.default_rng(1)) for f in (flat, _acc_delta))
        assert one.shape == (20, 1)
        np.testing.assert_array_equal(one, k)
    one, k = (paired_comparison([joint, joint], f, n_bootstrap=20, n_permutations=20) for f in (flat, _acc_delta))
    for key, value in k.items():
        assert np.shape(one[key]) == np.shape(value) == (1,), key
        np.testing.assert_array_equal(one[key], value, err_msg=key)


def test_percentile_ci_per_column_default_level_and_cohens_h_clips():
    import warnings

    draws = np.stack([np.arange(1001.0), 10 * np.arange(1001.0), np.full(1001, np.nan)], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                   # an all-NaN column is skipped quietly
        lo, hi, valid = percentile_ci(draws)                             # default: 95 %
    np.testing.assert_allclose(lo[:2], [25.0, 250.0])
    np.testing.assert_allclose(hi[:2], [975.0, 9750.0])
    assert np.isnan(lo[2]) and np.isnan(hi[2]) and valid.tolist() == [1001, 1001, 0]
    assert cohens_h(1.2, 0.5) == cohens_h(1.0, 0.5) and cohens_h(-0.1, 0.5) == cohens_h(0.0, 0.5)
    assert cohens_h(0.5, 1.3) == cohens_h(0.5, 1.0) and cohens_h(0.5, -2.0) == cohens_h(0.5, 0.0)


def test_flips_uncertain_pools_seeds_and_tests_high_against_low_by_hand():
    """The flips_uncertain claim of one configuration: flips and counts of the high- and low-uncertainty bins summed
    over seeds, the difference of rates, statsmodels' score test and Newcombe interval at the run's confidence; a
    configuration without flips gets p = 1 and no interval; one without low-uncertainty samples gets no claim; only
    the ``group == "all"`` rows count."""
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

    import pandas as pd

    from fairq.analysis.findings import _flips_uncertain

    base = dict(dataset="d", model="m", target="y", method="ptq_static", variant="", weight_bits=4, act_bits=8,
                backend="simulated", config="ptq_static w4a8", group="all", n_medium=5, flips_medium=1)
    rows = [dict(base, seed=0, flips_high=6, n_high=20, flips_low=1, n_low=40),
            dict(base, seed=1, flips_high=4, n_high=10, flips_low=2, n_low=30),
            dict(base, seed=1, group="g=a", flips_high=9, n_high=9, flips_low=0, n_low=9),      # not pooled
            dict(base, method="rtn", config="rtn w4a8", seed=0, flips_high=3, n_high=8, flips_low=0, n_low=0),
            dict(base, method="qat", config="qat w4a8", seed=0, flips_high=0, n_high=8, flips_low=0, n_low=8),
            dict(base, method="awq", config="awq w4a8", seed=0, flips_high=0, n_high=0, flips_low=1, n_low=5),
            dict(base, method="gptq", config="gptq w4a8", seed=0, flips_high=1, n_high=1, flips_low=0, n_low=1),
            dict(base, method="smoothquant", config="sq w4a8", seed=0, flips_high=2, n_high=10, flips_low=2,
                 n_low=20)]
    out = _flips_uncertain(pd.DataFrame(rows), confidence=0.9)
    assert [r["config"] for r in out] == ["ptq_static w4a8", "qat w4a8", "gptq w4a8", "sq w4a8"]
    claim, none, one, equal_flips = out
    assert one["estimate"] == 1.0 and 0 < one["p_value"] < 1            # one sample in each bin still counts
    assert equal_flips["p_value"] == pytest.approx(test_proportions_2indep(2, 10, 2, 20, method="score").pvalue)
    assert equal_flips["p_value"] < 1 and not np.isnan(equal_flips["ci_low"])
    assert claim["estimate"] == pytest.approx(10 / 30 - 3 / 70)
    p = test_proportions_2indep(10, 30, 3, 70, method="score").pvalue
    lo, hi = confint_proportions_2indep(10, 30, 3, 70, compare="diff", method="newcomb", alpha=0.1)
    assert claim["p_value"] == pytest.approx(p) and (claim["ci_low"], claim["ci_high"]) == (pytest.approx(lo),
                                                                                            pytest.approx(hi))
    assert (claim["finding"], claim["reference"], claim["hypothesis"], claim["n_seeds"]) == (
        "flips_uncertain", "baseline", "> 0", 2)
    assert (claim["dataset"], claim["model"], claim["target"]) == ("d", "m", "y")
    assert claim["test"] == "two-proportion score" and "ptq_static w4a8 [simulated]" in claim["claim"]
    assert claim["statistic"] == "flip rate (high) − flip rate (low)"
    assert none["p_value"] == 1.0 and np.isnan(none["ci_low"]) and np.isnan(none["ci_high"])
    assert none["estimate"] == 0.0 and none["n_seeds"] == 1
    assert _flips_uncertain(pd.DataFrame(), 0.95) == []
    assert _flips_uncertain(pd.DataFrame(rows).drop(columns="flips_high"), 0.95) == []
