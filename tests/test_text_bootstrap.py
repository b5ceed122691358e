"""The text analysis's cluster bootstrap (fairq.analysis.text): resampling units, Rao–Wu weights per stratum, the
weighted StereoSet metric (a term drawn twice counts twice) and the unit-weight point estimate."""
import numpy as np
import pandas as pd
import pytest

from fairq.analysis.text import _resample_weights, cluster_weights, metric_draws, paired_draws
from fairq.text.task import resampling_units, text_metrics


def stereoset_rows(n_terms=12, per_term=5, seed=0, copies=1, benchmark="stereoset"):
    """Per-item StereoSet rows; ``copies`` repeats every item (identical scores) within its term."""
    rng = np.random.default_rng(seed)
    rows = []
    doms = ("gender", "profession", "race", "religion")
    for t in range(n_terms):
        for i in range(per_term):
            st, an, un = rng.random(3)
            for c in range(copies):
                rows.append({"sample_id": f"{benchmark}:{t}-{i}-{c}", "benchmark": benchmark,
                             "domain": doms[t % 4], "term": f"term{t}", "score_stereotype": st, "score_anti": an,
                             "score_unrelated": un, "y_true": 1, "y_pred": int(st > an)})
    return pd.DataFrame(rows)


def crows_rows(n=40, seed=1):
    rng = np.random.default_rng(seed)
    more, less = rng.normal(size=n), rng.normal(size=n)
    return pd.DataFrame({"sample_id": [f"crows:{i}" for i in range(n)], "benchmark": "crows",
                         "domain": np.where(np.arange(n) % 3 == 0, "gender", "race"), "score_more": more,
                         "score_less": less, "y_true": 1, "y_pred": (more > less).astype(int)})


def test_units_are_terms_templates_and_pairs():
    bbq = pd.DataFrame({"sample_id": ["bbq:Age:0", "bbq:Age:1", "bbq:Age:2", "bbq:Religion:0"], "benchmark": "bbq",
                        "domain": ["Age", "Age", "Age", "Religion"], "question_index": ["1", "1", "2", "1"]})
    ss = stereoset_rows(n_terms=2, per_term=2)
    frame = pd.concat([bbq, ss, crows_rows(3)], ignore_index=True)
    u = resampling_units(frame)
    assert list(u[:4]) == ["Age:1", "Age:1", "Age:2", "Religion:1"]  # same template = one unit, per category
    assert list(u[4:8]) == ["gender:term0", "gender:term0", "profession:term1", "profession:term1"]
    assert list(u[8:]) == ["crows:0", "crows:1", "crows:2"]  # one pair, one unit
    assert list(resampling_units(frame.assign(cluster="x"))) == ["x"] * len(frame)  # a stored column wins


def test_cluster_weights_rao_wu_per_stratum():
    units = np.array(["a", "a", "b", "c", "c", "c", "d", "e", "e"])
    strata = np.array(["s", "s", "s", "s", "s", "s", "t", "u", "u"])
    w = cluster_weights(units, strata, 2000, np.random.default_rng(0))
    assert w.shape == (2000, len(units))
    # every item of a unit has its unit's weight
    for same in ([0, 1], [3, 4, 5], [7, 8]):
        assert (w[:, same] == w[:, [same[0]]]).all()
    # stratum s: 3 units, 2 drawn, weights (count × 3/2) sum to 3; single-unit strata keep weight 1
    ws = w[:, [0, 2, 3]]
    assert np.allclose(ws.sum(1), 3) and set(np.unique(ws)) <= {0.0, 1.5, 3.0}
    assert (w[:, 6] == 1).all() and (w[:, [7, 8]] == 1).all()
    # mean weight 1 per unit (unbiased), within 5 SE over 2000 draws
    se = ws.std(0) / np.sqrt(len(ws))
    assert np.all(np.abs(ws.mean(0) - 1) < 5 * se)


def test_unit_weights_give_the_cells_metrics():
    frame = pd.concat([stereoset_rows(), crows_rows()], ignore_index=True)
    point = metric_draws(frame)
    want = text_metrics(frame)
    for k in ("stereoset_intra_ss", "stereoset_intra_lms", "stereoset_intra_icat", "stereoset_intra_ss_race",
              "crows_metric"):
        assert point[k][0] == pytest.approx(want[k], abs=1e-9), k


def test_a_term_drawn_twice_counts_twice():
    """Weighting term t by c_t equals scoring a benchmark in which term t appears c_t times (as distinct terms)."""
    frame = stereoset_rows(n_terms=8, per_term=4, seed=3)
    counts = {f"term{t}": c for t, c in enumerate([0, 2, 1, 3, 1, 0, 1, 2])}
    w = frame["term"].map(counts).to_numpy(float)[None, :]
    got = metric_draws(frame, {"stereoset": w})
    copies = [frame[frame["term"] == t].assign(term=f"{t}#{k}") for t, c in counts.items() for k in range(c)]
    want = text_metrics(pd.concat(copies, ignore_index=True))
    for k in ("stereoset_intra_ss", "stereoset_intra_lms", "stereoset_intra_ss_gender", "stereoset_intra_lms_race"):
        assert got[k][0] == pytest.approx(want[k], abs=1e-9), k


def test_repeating_items_within_a_term_does_not_narrow_the_interval():
    """Items of a term are not independent draws: a benchmark whose every item is repeated 5 times within its term
    has exactly the same bootstrap distribution (an item-level bootstrap would shrink it by about √5)."""
    one, five = stereoset_rows(copies=1), stereoset_rows(copies=5)
    d1 = metric_draws(one, _resample_weights(one, 300, np.random.default_rng(7)))["stereoset_intra_ss"]
    d5 = metric_draws(five, _resample_weights(five, 300, np.random.default_rng(7)))["stereoset_intra_ss"]
    assert np.allclose(d1, d5) and d1.std() > 0


def test_paired_draws_identical_cells_have_a_zero_delta():
    frame = pd.concat([stereoset_rows(), crows_rows()], ignore_index=True)
    res = paired_draws(frame, frame.copy(), n_bootstrap=200, rng=np.random.default_rng(0))
    r = res["stereoset_intra_ss"]
    assert r["delta"] == 0 and r["ci_low"] == 0 and r["ci_high"] == 0 and r["p_value"] == 1
    assert r["value_ci_low"] < r["value"] < r["value_ci_high"]
