"""fairq.metrics core and fairness metrics against fairlearn and aif360, plus fairq's own rules."""

import numpy as np
import pandas as pd
import pytest
from fairlearn import metrics as flm
from sklearn.metrics import accuracy_score

from fairq import metrics as fm
from fairq.metrics import encode_groups, fairness_metrics, group_confusion

TOL = 1e-9


def _random_binary(seed, n=600, levels=(("a", 3), ("b", 2))):
    """Random labels / predictions with group-dependent rates; every group has both classes."""
    rng = np.random.default_rng(seed)
    sf = pd.DataFrame({name: rng.integers(0, k, n) for name, k in levels})
    gid, _ = encode_groups(sf)
    p_pos = rng.uniform(0.2, 0.8, gid.max() + 1)[gid]
    y_true = (rng.random(n) < p_pos).astype(int)
    flip = rng.uniform(0.05, 0.45, gid.max() + 1)[gid]
    y_pred = np.where(rng.random(n) < flip, 1 - y_true, y_true)
    return y_true, y_pred, sf


def _fairlearn_frame(y_true, y_pred, sf):
    return flm.MetricFrame(
        metrics={"accuracy": accuracy_score, "selection_rate": flm.selection_rate,
                 "tpr": flm.true_positive_rate, "fpr": flm.false_positive_rate},
        y_true=y_true, y_pred=y_pred, sensitive_features=sf)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_fairlearn_intersectional(seed):
    y_true, y_pred, sf = _random_binary(seed)
    ours = fairness_metrics(y_true, y_pred, sf, min_group_size=1)
    mf = _fairlearn_frame(y_true, y_pred, sf)
    by = mf.by_group
    pg = ours["per_group"].set_index(list(sf.columns))
    assert list(pg.index) == list(by.index)  # same groups, same (sorted) order
    for col in ("accuracy", "selection_rate", "tpr", "fpr"):
        np.testing.assert_allclose(pg[col].to_numpy(), by[col].to_numpy(), atol=TOL, rtol=0)
    diff, ratio = mf.difference(), mf.ratio()
    assert ours["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=TOL)
    assert ours["demographic_parity_difference"] == pytest.approx(
        flm.demographic_parity_difference(y_true, y_pred, sensitive_features=sf), abs=TOL)
    assert ours["demographic_parity_ratio"] == pytest.approx(
        flm.demographic_parity_ratio(y_true, y_pred, sensitive_features=sf), abs=TOL)
    assert ours["disparate_impact"] == pytest.approx(ratio["selection_rate"], abs=TOL)
    assert ours["equalized_odds_difference"] == pytest.approx(
        flm.equalized_odds_difference(y_true, y_pred, sensitive_features=sf), abs=TOL)
    assert ours["equal_opportunity_difference"] == pytest.approx(diff["tpr"], abs=TOL)
    assert ours["predictive_equality_difference"] == pytest.approx(diff["fpr"], abs=TOL)
    assert ours["accuracy_difference"] == pytest.approx(diff["accuracy"], abs=TOL)
    assert ours["worst_group_accuracy"] == pytest.approx(mf.group_min()["accuracy"], abs=TOL)
    n_by_group = pd.Series(1, index=pd.MultiIndex.from_frame(sf)).groupby(level=[0, 1]).sum()
    np.testing.assert_array_equal(pg["n"].to_numpy(), n_by_group.loc[pg.index].to_numpy())


def test_thin_wrappers_equal_dict():
    y_true, y_pred, sf = _random_binary(3)
    full = fairness_metrics(y_true, y_pred, sf, min_group_size=1)
    for key in fm.SCALAR_METRICS:
        if key == "accuracy":
            continue
        fn = getattr(fm, key)
        assert fn(y_true, y_pred, sensitive_features=sf, min_group_size=1) == full[key], key
        assert "math::" in fn.__doc__
    with pytest.raises(TypeError):  # keyword-only after y_true, y_pred
        fm.demographic_parity_difference(y_true, y_pred, sf)



def test_thin_factory_names_documents_and_passes_every_argument_through():
    """The wrappers are built by ``_thin`` at import time (before a test can intervene), so build one here.
    Hand case, two groups of 4: A has TPR 1/2, B has TPR 1, both FPR 0 → equal opportunity 0.5 with class 1
    positive; with class 0 positive the "TPR" is 1 − FPR = 1 in both groups → 0. At the default
    min_group_size = 20 neither group qualifies → NaN."""
    from fairq.metrics.fairness import _thin

    metric = _thin("equal_opportunity_difference", r"\max_g TPR_g - \min_g TPR_g")
    assert metric.__name__ == metric.__qualname__ == "equal_opportunity_difference"
    assert metric.__doc__.startswith("Equal opportunity difference between sensitive groups.")
    assert r".. math:: \max_g TPR_g - \min_g TPR_g" in metric.__doc__
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    p = np.array([1, 0, 0, 0, 1, 1, 0, 0])
    sf = {"g": np.repeat(["A", "B"], 4)}
    assert metric(y, p, sensitive_features=sf, min_group_size=1) == pytest.approx(0.5)
    assert metric(y, p, sensitive_features=sf, min_group_size=1, pos_label=0) == pytest.approx(0.0)
    assert np.isnan(metric(y, p, sensitive_features=sf))
    with pytest.raises(ValueError, match="not in"):
        metric(y, p, sensitive_features=sf, labels=["no", "yes"])

def test_dict_and_array_inputs_and_string_labels():
    y_true, y_pred, sf = _random_binary(4, levels=(("race", 3),))
    a = fairness_metrics(y_true, y_pred, {"race": sf["race"].to_numpy()}, min_group_size=1)
    b = fairness_metrics(y_true, y_pred, sf["race"].to_numpy(), min_group_size=1)
    names = np.array(["no", "yes"])
    c = fairness_metrics(names[y_true], names[y_pred], sf, pos_label="yes", min_group_size=1)
    for key in fm.SCALAR_METRICS:
        assert a[key] == b[key] == c[key]
    assert list(b["per_group"].columns[:1]) == ["sensitive_feature_0"]


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_aif360_two_groups(seed):
    import aif360.datasets as ds_mod  # a requirement: a missing install must fail, not skip
    from aif360.metrics import ClassificationMetric

    y_true, y_pred, sf = _random_binary(seed, n=400, levels=(("sex", 2),))
    df = pd.DataFrame({"sex": sf["sex"].astype(float), "label": y_true.astype(float)})
    truth = ds_mod.BinaryLabelDataset(df=df, label_names=["label"], protected_attribute_names=["sex"],
                                      favorable_label=1.0, unfavorable_label=0.0)
    pred = truth.copy(deepcopy=True)
    pred.labels = y_pred.astype(float).reshape(-1, 1)
    cm = ClassificationMetric(truth, pred, unprivileged_groups=[{"sex": 0.0}], privileged_groups=[{"sex": 1.0}])
    ours = fairness_metrics(y_true, y_pred, sf, min_group_size=1)
    # aif360 reports unprivileged − privileged (signed) and unprivileged / privileged; fairq reports the
    # between-groups max − min (≥ 0) and min / max (≤ 1).
    assert ours["demographic_parity_difference"] == pytest.approx(abs(cm.statistical_parity_difference()), abs=TOL)
    di = cm.disparate_impact()
    assert ours["disparate_impact"] == pytest.approx(min(di, 1 / di), abs=TOL)
    assert ours["equal_opportunity_difference"] == pytest.approx(abs(cm.equal_opportunity_difference()), abs=TOL)
    assert ours["predictive_equality_difference"] == pytest.approx(
        abs(cm.false_positive_rate_difference()), abs=TOL)
    assert ours["equalized_odds_difference"] == pytest.approx(cm.equalized_odds_difference(), abs=TOL)
    assert ours["accuracy"] == pytest.approx(cm.accuracy(), abs=TOL)
    pg = ours["per_group"].set_index("sex")
    aod = 0.5 * ((pg.fpr[0] - pg.fpr[1]) + (pg.tpr[0] - pg.tpr[1]))
    assert aod == pytest.approx(cm.average_odds_difference(), abs=TOL)
    for level, privileged in ((0, False), (1, True)):
        assert pg.accuracy[level] == pytest.approx(cm.accuracy(privileged=privileged), abs=TOL)
        assert pg.tpr[level] == pytest.approx(cm.true_positive_rate(privileged=privileged), abs=TOL)
        assert pg.selection_rate[level] == pytest.approx(cm.selection_rate(privileged=privileged), abs=TOL)
    assert ours["worst_group_accuracy"] == pytest.approx(
        min(cm.accuracy(privileged=True), cm.accuracy(privileged=False)), abs=TOL)


def test_empty_intersections_skipped():
    y_true, y_pred, sf = _random_binary(5, n=400)
    keep = ~((sf["a"] == 1) & (sf["b"] == 0)).to_numpy()  # remove one intersection entirely
    y_true, y_pred, sf = y_true[keep], y_pred[keep], sf[keep]
    ours = fairness_metrics(y_true, y_pred, sf, min_group_size=1)
    pg = ours["per_group"]
    assert len(pg) == 5 and not ((pg.a == 1) & (pg.b == 0)).any()
    assert ours["demographic_parity_difference"] == pytest.approx(
        flm.demographic_parity_difference(y_true, y_pred, sensitive_features=sf), abs=TOL)
    assert ours["equalized_odds_difference"] == pytest.approx(
        flm.equalized_odds_difference(y_true, y_pred, sensitive_features=sf), abs=TOL)


def test_no_positives_rule_excludes_group_unlike_fairlearn():
    y_true, y_pred, sf = _random_binary(6, n=500, levels=(("g", 4),))
    y_true = y_true.copy()
    y_true[sf["g"].to_numpy() == 2] = 0  # group 2 has no positives: TPR undefined
    ours = fairness_metrics(y_true, y_pred, sf, min_group_size=1)
    pg = ours["per_group"].set_index("g")
    assert np.isnan(pg.tpr[2]) and pg.no_positives[2] and not pg.no_positives.drop(2).any()
    assert not np.isnan(pg.fpr[2])
    others = sf["g"].to_numpy() != 2
    mf_others = _fairlearn_frame(y_true[others], y_pred[others], sf[others])
    assert ours["equal_opportunity_difference"] == pytest.approx(mf_others.difference()["tpr"], abs=TOL)
    mf_all = _fairlearn_frame(y_true, y_pred, sf)
    assert ours["predictive_equality_difference"] == pytest.approx(mf_all.difference()["fpr"], abs=TOL)
    assert ours["equalized_odds_difference"] == pytest.approx(
        max(mf_others.difference()["tpr"], mf_all.difference()["fpr"]), abs=TOL)
    # fairlearn scores the group's TPR as 0.0 instead, which is what fairq's rule avoids.
    assert mf_all.by_group["tpr"][2] == 0.0
    assert flm.equalized_odds_difference(y_true, y_pred, sensitive_features=sf) > ours["equalized_odds_difference"]


def test_no_negatives_rule():
    y_true, y_pred, sf = _random_binary(7, n=300, levels=(("g", 3),))
    y_true = y_true.copy()
    y_true[sf["g"].to_numpy() == 0] = 1
    pg = fairness_metrics(y_true, y_pred, sf, min_group_size=1)["per_group"].set_index("g")
    assert np.isnan(pg.fpr[0]) and pg.no_negatives[0] and pg.negatives[0] == 0


def test_small_groups_flagged_and_excluded_from_gaps():
    y_true, y_pred, sf = _random_binary(8, n=400, levels=(("g", 3),))
    tiny = np.flatnonzero(sf["g"].to_numpy() == 0)[5:]
    keep = np.setdiff1d(np.arange(len(y_true)), tiny)  # group 0 keeps 5 samples
    y_true, y_pred, sf = y_true[keep], y_pred[keep], sf.iloc[keep]
    ours = fairness_metrics(y_true, y_pred, sf, min_group_size=20)
    pg = ours["per_group"].set_index("g")
    assert pg.small_group[0] and not pg.small_group[[1, 2]].any() and pg.n[0] == 5
    big = sf["g"].to_numpy() != 0
    mf = _fairlearn_frame(y_true[big], y_pred[big], sf[big])
    assert ours["demographic_parity_difference"] == pytest.approx(mf.difference()["selection_rate"], abs=TOL)
    assert ours["worst_group_accuracy"] == pytest.approx(mf.group_min()["accuracy"], abs=TOL)
    assert ours["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=TOL)  # everyone counts
    with_tiny = fairness_metrics(y_true, y_pred, sf, min_group_size=1)
    assert with_tiny["demographic_parity_difference"] == pytest.approx(
        flm.demographic_parity_difference(y_true, y_pred, sensitive_features=sf), abs=TOL)


def test_gaps_nan_with_fewer_than_two_groups():
    y_true, y_pred, sf = _random_binary(9, n=100, levels=(("g", 1),))
    out = fairness_metrics(y_true, y_pred, sf, min_group_size=1)
    assert np.isnan(out["demographic_parity_difference"]) and np.isnan(out["equalized_odds_difference"])
    assert np.isnan(out["worst_group_accuracy"])
    assert out["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))


def test_multiclass_one_vs_rest_matches_fairlearn_per_class():
    rng = np.random.default_rng(0)
    n, k = 1500, 7
    sf = pd.DataFrame({"gender": rng.integers(0, 2, n), "age": rng.integers(0, 3, n)})
    y_true = rng.integers(0, k, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
    ours = fairness_metrics(y_true, y_pred, sf, min_group_size=1)
    dp, ratio, eopp, pe, eo = [], [], [], [], []
    for c in range(k):
        t, p = (y_true == c).astype(int), (y_pred == c).astype(int)
        mf = _fairlearn_frame(t, p, sf)
        dp.append(mf.difference()["selection_rate"])
        ratio.append(mf.ratio()["selection_rate"])
        eopp.append(mf.difference()["tpr"])
        pe.append(mf.difference()["fpr"])
        eo.append(flm.equalized_odds_difference(t, p, sensitive_features=sf))
        np.testing.assert_allclose(ours["per_group"][f"tpr_{c}"].to_numpy(), mf.by_group["tpr"].to_numpy(),
                                   atol=TOL)
    assert ours["demographic_parity_difference"] == pytest.approx(max(dp), abs=TOL)
    assert ours["demographic_parity_ratio"] == pytest.approx(min(ratio), abs=TOL)
    assert ours["equal_opportunity_difference"] == pytest.approx(max(eopp), abs=TOL)
    assert ours["predictive_equality_difference"] == pytest.approx(max(pe), abs=TOL)
    assert ours["equalized_odds_difference"] == pytest.approx(max(eo), abs=TOL)
    mf_acc = flm.MetricFrame(metrics=accuracy_score, y_true=y_true, y_pred=y_pred, sensitive_features=sf)
    np.testing.assert_allclose(ours["per_group"]["accuracy"].to_numpy(), mf_acc.by_group.to_numpy(), atol=TOL)
    assert ours["worst_group_accuracy"] == pytest.approx(mf_acc.group_min(), abs=TOL)
    assert ours["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=TOL)


def test_group_confusion_counts_by_hand():
    counts = group_confusion([0, 1, 1, 1, 0], [0, 1, 0, 1, 1], [0, 0, 1, 1, 1], n_groups=2, num_classes=2)
    expected = np.array([[[1, 0], [0, 1]], [[0, 1], [1, 1]]])
    np.testing.assert_array_equal(counts, expected)


def test_encode_groups_levels_and_ids():
    gid, groups = encode_groups({"race": ["b", "a", "b", "c"], "sex": [1, 0, 0, 1]})
    assert groups.to_dict("records") == [{"race": "a", "sex": 0}, {"race": "b", "sex": 0},
                                         {"race": "b", "sex": 1}, {"race": "c", "sex": 1}]
    np.testing.assert_array_equal(gid, [2, 0, 1, 3])


@pytest.mark.parametrize("bad, match", [
    (dict(sensitive_features={"race": ["a", None, "b", "a"]}), "missing values.*race"),
    (dict(sensitive_features=np.zeros((4, 2, 2))), "shape"),
    (dict(y_pred=[0, 1, 2, 0, 1]), "differ in length"),
    (dict(sensitive_features=["a", "b"]), "2 rows but y_true has 4"),
    (dict(pos_label=7), "pos_label=7"),
    (dict(sensitive_features={"n": [0, 1, 0, 1]}), "clash"),
])
def test_bad_input_errors(bad, match):
    args = dict(y_true=[0, 1, 1, 0], y_pred=[0, 1, 0, 0], sensitive_features={"race": ["a", "b", "b", "a"]})
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        fairness_metrics(args["y_true"], args["y_pred"], args["sensitive_features"],
                         pos_label=args.get("pos_label", 1))


def test_sensitive_feature_forms_get_fairlearns_names_and_one_id_per_observed_combination():
    import torch

    from fairq.metrics import group_labels

    levels = np.array([1, 0, 1, 1])
    for form in (pd.Series(levels), levels, torch.tensor(levels), levels[:, None]):
        gid, groups = encode_groups(form)
        assert list(groups.columns) == ["sensitive_feature_0"] and groups.index.name == "group_id"
        np.testing.assert_array_equal(gid, [1, 0, 1, 1])
    gid, groups = encode_groups(pd.Series(levels, name="sex"))
    assert list(groups.columns) == ["sex"]
    gid, groups = encode_groups(np.array([[1, 5], [0, 5], [1, 6], [1, 5]]))
    assert list(groups.columns) == ["sensitive_feature_0", "sensitive_feature_1"]
    assert group_labels(groups) == ["sensitive_feature_0=0, sensitive_feature_1=5",
                                    "sensitive_feature_0=1, sensitive_feature_1=5",
                                    "sensitive_feature_0=1, sensitive_feature_1=6"]
    np.testing.assert_array_equal(gid, [1, 0, 2, 1])
    frame = pd.DataFrame({"race": ["b", "a", "b"]}, index=[10, 20, 30])       # its index is not an attribute
    assert list(encode_groups(frame)[1].columns) == ["race"]
    assert list(encode_groups({"race": torch.tensor([2, 1, 2])})[0]) == [1, 0, 1]
    for bad, match in (({}, "empty mapping"), (pd.DataFrame(index=range(3)), "no columns"),
                       (pd.DataFrame([[1, 2]], columns=["a", "a"]), "duplicate column names"),
                       ({"race": np.zeros((3, 2))}, r"sensitive_features\['race'\] must be 1-D")):
        with pytest.raises(ValueError, match=match):
            encode_groups(bad)


def test_more_level_combinations_than_int64_ids_still_get_one_id_per_observed_row():
    """20 attributes of 10 levels: 10^20 combinations do not fit a flat int64 index, so rows are compared instead."""
    rows = np.random.default_rng(0).integers(0, 10, size=(40, 20))
    rows[:10] = np.arange(10)[:, None]                                   # every attribute has all 10 levels
    rows[[25, 37]] = rows[13]                                            # three samples share one combination
    gid, groups = encode_groups(rows)
    uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
    np.testing.assert_array_equal(gid, inverse.ravel())
    np.testing.assert_array_equal(groups.to_numpy(), uniq)
    assert gid[13] == gid[25] == gid[37] and len(groups) == len(uniq) < 40


def test_label_encoding_edge_cases():
    from fairq.metrics import encode_labels

    t, p, classes, pos = encode_labels([1, 1], [1, 1])                  # one observed label = the positive one
    assert list(classes) == ["<negative>", 1] and pos == 1 and list(t) == [1, 1]
    t, p, classes, pos = encode_labels([0, 0], [0, 0])                  # one observed label, the negative one
    assert list(classes) == [0, 1] and pos == 1 and list(p) == [0, 0]
    t, p, classes, pos = encode_labels(np.array([["no"], ["yes"]]), ["yes", "yes"], pos_label="no")  # [n, 1]
    assert list(classes) == ["no", "yes"] and pos == 0 and list(t) == [0, 1] and list(p) == [1, 1]
    t, p, classes, pos = encode_labels([2, 0], [1, 1], labels=[2, 1, 0])
    assert list(t) == [0, 2] and list(p) == [1, 1] and pos is None      # three classes: multiclass
    for kw, match in ((dict(y_true=[], y_pred=[]), r"^no labels: y_true and y_pred are empty$"),
                      (dict(y_true=[0, 1], y_pred=[0]), "differ in length"),
                      (dict(y_true=[1], y_pred=[1], pos_label=None),
                       r"^only one class \[1\]; a binary problem needs labels=\[negative, positive\]$"),
                      (dict(y_true=[0, 1], y_pred=[0, 1], labels=[0, 1, 1]), r"^labels has duplicates: \[0, 1, 1\]$"),
                      (dict(y_true=[0, 3], y_pred=[0, 1], labels=[0, 1]), r"y_true has labels not in .*3"),
                      (dict(y_true=[0, 1], y_pred=[5, 1], labels=[0, 1]), r"y_pred has labels not in"),
                      (dict(y_true=np.zeros((2, 2)), y_pred=[0, 1]), "y_true must be 1-D"),
                      (dict(y_true=[0, 1], y_pred=np.zeros((2, 2))), "y_pred must be 1-D")):
        with pytest.raises(ValueError, match=match):
            encode_labels(**kw)


def test_per_group_table_from_counts_by_hand():
    """Every per_group column of metrics_from_counts, worked out by hand: binary with either positive class, the
    min_group_size boundary (a group of exactly min_group_size is not small), one-sample and empty groups."""
    counts = np.array([[[2, 1], [0, 2]],      # g0: n 5, TN 2, FP 1, TP 2
                       [[0, 0], [1, 3]],      # g1: n 4, no negatives
                       [[0, 0], [0, 1]],      # g2: n 1
                       [[0, 0], [0, 0]]])     # g3: empty, dropped from per_group
    pg = fm.metrics_from_counts(counts, min_group_size=5)["per_group"]
    assert pg.index.name == "group_id" and list(pg.index) == [0, 1, 2] and list(pg["group"]) == [0, 1, 2]
    expected = {"n": [5, 4, 1], "accuracy": [4 / 5, 3 / 4, 1.0], "selection_rate": [3 / 5, 3 / 4, 1.0],
                "tpr": [1.0, 3 / 4, 1.0], "fpr": [1 / 3, np.nan, np.nan], "positives": [2, 4, 1],
                "negatives": [3, 0, 0], "small_group": [False, True, True], "no_positives": [False, False, False],
                "no_negatives": [False, True, True]}
    for col, values in expected.items():
        np.testing.assert_allclose(pg[col].to_numpy(dtype=float), values, err_msg=col)
    neg = fm.metrics_from_counts(counts, pos_index=0, min_group_size=0)["per_group"]   # class 0 is positive
    np.testing.assert_allclose(neg["selection_rate"], [2 / 5, 1 / 4, 0.0])
    np.testing.assert_allclose(neg["positives"], [3, 0, 0])
    assert not neg["small_group"].any(), "min_group_size 0 (or 1) flags no non-empty group"


def test_multiclass_per_group_columns_are_named_by_class_and_counted_by_hand():
    counts = np.zeros((2, 3, 3), dtype=int)
    counts[0] = [[2, 1, 0], [0, 1, 1], [0, 0, 3]]
    counts[1] = [[1, 0, 0], [0, 0, 2], [1, 0, 0]]
    pg = fm.metrics_from_counts(counts, classes=["cat", "dog", "owl"], min_group_size=1)["per_group"]
    assert "selection_rate" not in pg and "negatives" not in pg
    np.testing.assert_allclose(pg["selection_rate_cat"], [2 / 8, 2 / 4])
    np.testing.assert_allclose(pg["selection_rate_owl"], [4 / 8, 2 / 4])
    np.testing.assert_allclose(pg["tpr_dog"], [1 / 2, 0.0])
    np.testing.assert_allclose(pg["fpr_cat"], [0 / 5, 1 / 3])
    np.testing.assert_allclose(pg["fpr_owl"], [1 / 5, 2 / 3])
    np.testing.assert_allclose(pg["positives_owl"], [3, 1])
    y = ["cat", "dog", "dog", "owl"]
    by_name = fairness_metrics(y, ["dog", "dog", "owl", "owl"], {"s": [0, 0, 1, 1]}, min_group_size=1)["per_group"]
    assert {"tpr_cat", "tpr_dog", "tpr_owl"} <= set(by_name.columns)


@pytest.mark.parametrize("counts, kwargs, match", [
    (np.zeros((2, 2, 3)), {}, r"counts must have shape \[G, C, C\]; got \(2, 2, 3\)"),
    (np.zeros((2, 2)), {}, r"counts must have shape \[G, C, C\]"),
    (np.zeros((2, 1, 1)), {}, "need at least two classes; counts has C=1"),
    (np.ones((2, 2, 2)), dict(pos_index=2), "pos_index must be 0 or 1 for a binary problem; got 2"),
    (np.ones((2, 2, 2)), dict(groups=pd.DataFrame({"s": [0, 1, 2]})), "groups has 3 rows but counts has 2 groups"),
    (np.ones((2, 3, 3)), dict(classes=["a", "b"]), "classes has 2 entries but counts has C=3"),
])
def test_metrics_from_counts_refuses_bad_input_naming_the_problem(counts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fm.metrics_from_counts(counts, **kwargs)
    fm.metrics_from_counts(np.ones((2, 3, 3)), pos_index=2)  # pos_index is ignored for multiclass


@pytest.mark.parametrize("name, args", [
    ("y_true", ([[0, 1]], [0], [0])), ("y_pred", ([0], [[0, 1]], [0])), ("group_ids", ([0], [0], [[0, 1]]))])
def test_group_confusion_errors_name_the_argument(name, args):
    with pytest.raises(ValueError, match=rf"^{name} must be 1-D"):
        group_confusion(*args, n_groups=1, num_classes=2)


def test_group_confusion_checks_lengths_and_ranges_naming_the_argument():
    with pytest.raises(ValueError, match=r"^lengths differ: y_true 2, y_pred 1, group_ids 2$"):
        group_confusion([0, 1], [0], [0, 0], n_groups=1, num_classes=2)
    ok = dict(y_true=[0, 1], y_pred=[1, 0], group_ids=[0, 1])
    for name, bad, hi in (("y_true", [0, 2], 2), ("y_pred", [-1, 0], 2), ("group_ids", [0, 2], 2)):
        args = {**ok, name: bad}
        with pytest.raises(ValueError, match=rf"^{name} must lie in \[0, {hi}\); got values in \[{min(bad)}, "
                                             rf"{max(bad)}\]$"):
            group_confusion(args["y_true"], args["y_pred"], args["group_ids"], n_groups=2, num_classes=2)
    counts = group_confusion([1, 1], [1, 0], [1, 1], n_groups=2, num_classes=2)   # top codes are in range
    assert counts.sum() == 2 and counts[1, 1].tolist() == [1, 1]


def test_unknown_labels_are_listed_alone_and_at_most_ten():
    from fairq.metrics import encode_labels

    with pytest.raises(ValueError, match=r"^y_pred has labels not in \[0, 1\]: \[7\]$"):
        encode_labels([0, 1, 0], [0, 7, 1], labels=[0, 1])
    many = list(range(2, 14))                                               # 12 unknown labels
    with pytest.raises(ValueError, match=r": \[2, 3, 4, 5, 6, 7, 8, 9, 10, 11\]$"):
        encode_labels([0] * 12, many, labels=[0, 1])


def test_vectorised_gaps_are_per_resample_and_ignore_an_undefined_rate():
    """scalar_metrics_from_counts on a batch [B, G, C, C]: each resample is scored on its own (a resample with one
    eligible group has NaN gaps while the others do not), and a gap undefined for one rate (no negatives in a group:
    no FPR gap) leaves the max over the other — hand-worked values."""
    g0 = [[5, 1], [2, 4]]                                  # TPR 4/6, FPR 1/6, selection 5/12
    batch = np.array([[g0, [[3, 3], [1, 5]]],              # r0: both rates in both groups
                      [g0, [[0, 0], [1, 5]]],              # r1: group 1 has no negatives
                      [g0, [[3, 3], [0, 0]]],              # r2: group 1 has no positives
                      [g0, [[0, 0], [0, 0]]]])             # r3: group 1 empty: one eligible group
    out = fm.scalar_metrics_from_counts(batch, pos_index=1, min_group_size=1)
    eo = out["equalized_odds_difference"]
    np.testing.assert_allclose(eo, [max(abs(4 / 6 - 5 / 6), abs(1 / 6 - 3 / 6)), 1 / 6, 2 / 6, np.nan])
    np.testing.assert_allclose(out["equal_opportunity_difference"], [1 / 6, 1 / 6, np.nan, np.nan])
    np.testing.assert_allclose(out["demographic_parity_difference"], [8 / 12 - 5 / 12, 5 / 6 - 5 / 12,
                                                                      3 / 6 - 5 / 12, np.nan])
    for r in range(4):                                     # the batch equals one call per resample
        one = fm.scalar_metrics_from_counts(batch[r], pos_index=1, min_group_size=1)
        for key, value in one.items():
            np.testing.assert_allclose(out[key][r], value, err_msg=f"{key} r{r}")


def test_tensor_inputs_that_require_grad_are_accepted():
    torch = pytest.importorskip("torch")
    y = torch.tensor([0.0, 1.0, 1.0, 0.0], requires_grad=True)
    s = torch.tensor([0.0, 0.0, 1.0, 1.0], requires_grad=True)
    counts = group_confusion(y, y, [0, 0, 1, 1], n_groups=2, num_classes=2)
    assert counts.sum() == 4 and counts[:, 0, 1].sum() == 0
    gid, groups = encode_groups(s)
    assert gid.tolist() == [0, 0, 1, 1] and len(groups) == 2


@pytest.mark.parametrize("sf, match", [
    (np.zeros((3, 2, 2)), r"sensitive_features must be a DataFrame, a dict name -> 1-D array, or a 1-D/2-D array; "
                          r"got an array of shape \(3, 2, 2\)"),
    ({"race": ["a", None, "b"]}, r"\{'race': 1\}; drop or impute those samples first"),
    ({"mixed": [pd.Timestamp("2020-01-01"), 3]}, r"sensitive attribute 'mixed' has levels that cannot be sorted"),
])
def test_sensitive_feature_errors_say_what_to_do(sf, match):
    with pytest.raises(ValueError, match=match):
        encode_groups(sf)


def test_a_missing_positive_label_says_how_to_fix_it():
    with pytest.raises(ValueError, match=r"^pos_label='yes' is not one of the labels \['a', 'b'\]; "
                                         r"pass pos_label= with the positive class$"):
        fairness_metrics(["a", "b"], ["a", "b"], {"s": [0, 1]}, pos_label="yes")


def test_scalar_gaps_by_hand_size_threshold_and_the_no_negatives_rule():
    """Hand-worked scalars with min_group_size 5: a group of exactly 5 counts, a smaller one with an extreme FPR
    does not, a group without negatives has no FPR (and stays in the other gaps), a group with a single negative
    does have one; an empty group changes nothing and no division warns."""
    import warnings

    counts = np.array([[[4, 1], [1, 4]],     # g0 n 10: sel .5, tpr .8, fpr .2, acc .8
                       [[2, 2], [0, 1]],     # g1 n 5 (= min size): sel .6, tpr 1, fpr .5, acc .6
                       [[0, 4], [0, 0]],     # g2 n 4 (too small): fpr 1, sel 1
                       [[0, 0], [2, 4]],     # g3 n 6: no negatives; sel 4/6, tpr 4/6, acc 4/6
                       [[0, 1], [1, 4]],     # g4 n 6: one negative, fpr 1; sel 5/6, tpr .8, acc 4/6
                       [[0, 0], [0, 0]]])    # g5 empty
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fm.scalar_metrics_from_counts(counts, pos_index=1, min_group_size=5)
        rates = fm.group_rates(counts)
    expected = {"accuracy": 19 / 31, "demographic_parity_difference": 5 / 6 - 1 / 2,
                "demographic_parity_ratio": (1 / 2) / (5 / 6), "disparate_impact": (1 / 2) / (5 / 6),
                "equal_opportunity_difference": 1 - 4 / 6, "predictive_equality_difference": 1.0 - 0.2,
                "equalized_odds_difference": 0.8, "worst_group_accuracy": 0.6, "accuracy_difference": 0.8 - 0.6}
    for key, value in expected.items():
        assert float(out[key]) == pytest.approx(value, abs=1e-12), key
    default = fm.scalar_metrics_from_counts(counts, min_group_size=5)                   # pos_index defaults to 1
    assert {k: float(v) for k, v in default.items()} == pytest.approx({k: float(v) for k, v in out.items()})
    np.testing.assert_allclose(rates["selection_rate"][:, 0], fm.group_rates(counts, 1)["selection_rate"][:, 0])
    np.testing.assert_allclose(rates["fpr"][:, 0], [0.2, 0.5, 1.0, np.nan, 1.0, np.nan])
    for key, values in (("tp", [4, 1, 0, 4, 4, 0]), ("fp", [1, 2, 4, 0, 1, 0]), ("pred_positives", [5, 3, 4, 4, 5, 0]),
                        ("positives", [5, 1, 0, 6, 5, 0]), ("negatives", [5, 4, 4, 0, 1, 0])):
        np.testing.assert_array_equal(rates[key][:, 0], values, err_msg=key)                # documented keys
    tiny = np.array([[[1, 0], [0, 1]], [[1, 0], [0, 0]], [[0, 1], [0, 0]]])   # two 1-sample groups
    assert fm.scalar_metrics_from_counts(tiny, min_group_size=1)["worst_group_accuracy"] == 0.0
    assert fm.scalar_metrics_from_counts(tiny, min_group_size=0)["worst_group_accuracy"] == 0.0
    for bad in (np.ones((2, 2)), np.ones((2, 2, 3))):
        with pytest.raises(ValueError, match=r"counts must have shape \[\.\.\., G, C, C\]"):
            fm.group_rates(bad)
