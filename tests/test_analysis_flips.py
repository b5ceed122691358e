"""Flips, uncertainty bins and compression-identified exemplars on a hand-made 8-sample store."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fairq.analysis import run_analysis
from fairq.analysis.flips import (UNCERTAINTY_BINS, _flip_rows, compression_exemplars, compute_flips,
                                  exemplar_makeup, normalized_entropy, uncertainty_bin)
from fairq.analysis.load import load_store, store_from_frames
from fairq.analysis.pairs import Paired, align

Y = [1, 1, 0, 0, 1, 1, 0, 0]
GROUP = ["x", "x", "x", "x", "y", "y", "y", "y"]
BASE = [1, 1, 0, 1, 1, 0, 0, 0]        # wrong on samples 3 and 5
C1 = [0, 1, 0, 0, 1, 1, 0, 0]          # flips: 0 correct→wrong, 3 wrong→correct, 5 wrong→correct
C2 = [1, 1, 1, 0, 1, 1, 0, 1]
C3 = [0, 1, 1, 1, 1, 0, 0, 1]
C4 = [1, 0, 1, 1, 1, 0, 1, 1]
# Baseline P(y=1): binary entropies (bits) 0.99 → 0.08 (low), 0.9 / 0.1 → 0.47 (medium), 0.6 → 0.97 and
# 0.2 → 0.72 (high).
PROB1 = [0.99, 0.9, 0.1, 0.6, 0.9, 0.2, 0.1, 0.1]


def write_store(out: Path, cells: dict[str, tuple[str, int, list[int]]]) -> Path:
    """cells: id → (method, weight_bits, y_pred); the baseline gets PROB1, others hard probabilities."""
    rows = []
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    for cid, (method, bits, pred) in cells.items():
        p1 = np.array(PROB1) if method == "baseline" else np.asarray(pred, float)
        # shuffled row order and string ids: analysis must pair by sample_id, not by position
        order = np.array([3, 0, 7, 1, 6, 2, 5, 4])
        frame = pd.DataFrame({"sample_id": [f"id{i}" for i in order], "y_true": np.array(Y)[order],
                              "y_pred": np.array(pred)[order], "prob_0": 1 - p1[order], "prob_1": p1[order],
                              "g": np.array(GROUP)[order]})
        frame.to_parquet(out / "predictions" / f"{cid}.parquet", index=False)
        rows.append({"cell": cid, "dataset": "toy", "model": "m", "method": method, "variant": "",
                     "weight_bits": bits, "act_bits": 8 if bits < 32 else 32, "seed": 0, "backend": "cpu",
                     "target": "y", "num_classes": 2, "sensitive_attributes": "g", "n": 8, "size_mb": bits / 8,
                     "predictions": f"predictions/{cid}.parquet"})
    pd.DataFrame(rows).to_csv(out / "metrics.csv", index=False)
    return out


def test_normalized_entropy_and_bins_hand_values():
    h = normalized_entropy(np.array([[0.5, 0.5], [1.0, 0.0], [0.25, 0.25], [0.01, 0.99]]))
    np.testing.assert_allclose(h[:3], [1.0, 0.0, 1.0])
    assert h[3] == pytest.approx(-(0.01 * np.log2(0.01) + 0.99 * np.log2(0.99)))
    np.testing.assert_array_equal(uncertainty_bin(np.array([0.0, 0.33, 0.34, 0.66, 0.67, 1.0])), [0, 0, 1, 1, 2, 2])



def test_entropy_renormalises_rows_and_bins_are_closed_on_the_left():
    """Rows are clipped at 0 and renormalised (an all-zero row counts as uniform); 3 classes divide by log 3;
    a bin is [lo, hi): exactly 1/3 is medium, exactly 2/3 high, 1 stays high."""
    h = normalized_entropy(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0], [-1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(h, [1.0, 1.0, 0.0, np.log(2) / np.log(3)], atol=1e-12)
    np.testing.assert_array_equal(uncertainty_bin(np.array([1 / 3, 2 / 3, np.nextafter(1 / 3, 0), 1.0])),
                                  [1, 2, 0, 2])

def test_entropy_of_counts_and_float32_rows_without_warnings_and_at_most_one():
    """Integer rows (vote counts) are renormalised like probabilities; a zero probability adds 0 without a
    RuntimeWarning (0·log 0 = 0); a uniform row is 1 for every C and never above it (float noise is clipped:
    the value is documented to lie in [0, 1])."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = normalized_entropy(np.array([[3, 1], [2, 2], [0, 0], [4, 0]]))
        np.testing.assert_allclose(h, [-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)), 1.0, 1.0, 0.0], atol=1e-12)
        for c in range(2, 12):
            h = normalized_entropy(np.full((1, c), 1.0 / c))[0]
            assert h <= 1.0 and h == pytest.approx(1.0, abs=1e-12), c
    # float32 probabilities (as a parquet file may store them) are evaluated in float64, not rounded to float32
    p32 = np.array([[0.7, 0.2, 0.1], [0.333, 0.333, 0.334]], dtype=np.float32)
    q = p32.astype(np.float64) / p32.astype(np.float64).sum(axis=1, keepdims=True)
    h = normalized_entropy(p32)
    assert h.dtype == np.float64
    np.testing.assert_allclose(h, -(q * np.log(q)).sum(axis=1) / np.log(3), rtol=1e-14)


def test_flip_table_small_groups_undefined_rates_and_column_types():
    """3 classes, a 1-sample group ``a`` (baseline right, flipped) and a group ``b`` whose baseline is always
    wrong. Counts by hand: rates of a 1-sample group are defined, rates with a zero denominator (no baseline
    error, no baseline success, an empty uncertainty bin) are NaN; counts are ints, rates floats; no warnings."""
    from statsmodels.stats.proportion import proportion_confint

    # sample:      0  1  2  3         normalized entropy of the baseline probabilities (bin)
    t = np.array([0, 0, 1, 2])      # 0: [.98, .01, .01] → 0.10 (low)     1: uniform → 1 (high)
    a = np.array([0, 1, 2, 0])      # 2: [.5, .5, 0] → log 2 / log 3 = 0.63 (medium)
    b = np.array([1, 0, 0, 0])      # 3: [.5, .25, .25] → 0.95 (high)
    probs = np.array([[0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.5, 0.25, 0.25]])
    pair = Paired(sample_id=np.arange(4), y_true=t, y_base=a, y_pred=b, sensitive=pd.DataFrame({"g": list("abbb")}),
                  base_probs=probs, classes=[0, 1, 2], pos_index=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = _flip_rows(pair, np.array([0, 1, 1, 1]), ["g=a", "g=b"]).set_index("group")
    nan = np.nan
    want = {  # flips: 0 correct→wrong, 1 wrong→correct, 2 wrong→wrong (a different wrong class), 3 none
        "n": [1, 3], "flips": [1, 2], "flip_rate": [1.0, 2 / 3],
        "correct_to_wrong": [1, 0], "wrong_to_correct": [0, 1], "wrong_to_wrong": [0, 1],
        "correct_to_wrong_rate": [1.0, 0.0], "wrong_to_correct_rate": [0.0, 1 / 3], "wrong_to_wrong_rate": [0.0, 1 / 3],
        "p_wrong_given_base_correct": [1.0, nan], "p_correct_given_base_wrong": [nan, 1 / 3],
        "n_low": [1, 0], "flips_low": [1, 0], "flip_rate_low": [1.0, nan],
        "n_medium": [0, 1], "flips_medium": [0, 1], "flip_rate_medium": [nan, 1.0],
        "n_high": [0, 2], "flips_high": [0, 1], "flip_rate_high": [nan, 0.5],
    }
    for col, values in want.items():
        assert rows[col].dtype.kind == ("f" if "rate" in col or col.startswith("p_") else "i"), col
        np.testing.assert_allclose(rows[col].to_numpy(), values, rtol=1e-12, err_msg=col)
    for col in ("flip_rate_ci_low", "flip_rate_ci_high"):
        assert rows[col].dtype.kind == "f", col
    for grp, k, n in (("g=a", 1, 1), ("g=b", 2, 3)):                         # Wilson 95 % (statsmodels)
        lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert rows.loc[grp, ["flip_rate_ci_low", "flip_rate_ci_high"]].tolist() == [pytest.approx(lo),
                                                                                       pytest.approx(hi)]


def test_flips_by_group_direction_and_uncertainty(tmp_path):
    store = load_store(write_store(tmp_path, {"b": ("baseline", 32, BASE), "c1": ("ptq_static", 4, C1)}))
    flips = compute_flips(store, {"c1": align(store.cells["b"], store.cells["c1"])})
    by = flips.set_index(["attributes", "group"])
    overall, x, y = by.loc[("all", "all")], by.loc[("g", "g=x")], by.loc[("g", "g=y")]
    assert (overall["n"], overall["flips"], overall["correct_to_wrong"], overall["wrong_to_correct"]) == (8, 3, 1, 2)
    assert overall["flip_rate"] == pytest.approx(3 / 8)
    assert (x["flips"], x["correct_to_wrong"], x["wrong_to_correct"]) == (2, 1, 1)
    assert (y["flips"], y["correct_to_wrong"], y["wrong_to_correct"]) == (1, 0, 1)
    # baseline correct on 6 samples, 1 breaks; wrong on 2, both fixed
    assert overall["p_wrong_given_base_correct"] == pytest.approx(1 / 6)
    assert overall["p_correct_given_base_wrong"] == pytest.approx(1.0)
    # bins: low {0}, medium {1, 2, 4, 6, 7}, high {3, 5}; flips on 0, 3, 5
    assert [overall[f"n_{b}"] for b in UNCERTAINTY_BINS] == [1, 5, 2]
    assert [overall[f"flips_{b}"] for b in UNCERTAINTY_BINS] == [1, 0, 2]
    assert [overall[f"flip_rate_{b}"] for b in UNCERTAINTY_BINS] == [1.0, 0.0, 1.0]
    assert [overall[f"{k}_rate"] for k in ("correct_to_wrong", "wrong_to_correct")] == [1 / 8, 2 / 8]
    # each group has one baseline error, and C1 fixes both: 1 / 1
    assert (x["p_correct_given_base_wrong"], y["p_correct_given_base_wrong"]) == (1.0, 1.0)
    from statsmodels.stats.proportion import proportion_confint

    for row, k, n in ((overall, 3, 8), (x, 2, 4), (y, 1, 4)):                 # Wilson 95 % (statsmodels)
        lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert (row["flip_rate_ci_low"], row["flip_rate_ci_high"]) == (pytest.approx(lo), pytest.approx(hi))


def test_compression_identified_exemplars(tmp_path):
    cells = {"b": ("baseline", 32, BASE), "c1": ("ptq_static", 4, C1), "c2": ("ptq_static", 8, C2),
             "c3": ("ptq_dynamic", 8, C3), "c4": ("qat", 4, C4)}
    store = load_store(write_store(tmp_path, cells))
    ex = compression_exemplars(store).set_index("sample_id")
    # Votes of C1..C4 per sample: 0: 0,1,0,1 (tie → no); 2: 0,1,1,1 (1 beats baseline 0); 3: tie; 5: tie;
    # 7: 0,1,1,1 (1 beats 0); all others agree with the baseline.
    assert sorted(ex.index[ex["exemplar"]]) == ["id2", "id7"]
    assert ex.loc["id2", "compressed_agreement"] == pytest.approx(0.75)
    makeup = exemplar_makeup(ex.reset_index(), {("toy", "m", "y"): ["g"]}).set_index("group")
    assert makeup.loc["g=x", "n_exemplars"] == 1 and makeup.loc["g=y", "n_exemplars"] == 1
    np.testing.assert_allclose(makeup["share_test"], [0.5, 0.5])
    np.testing.assert_allclose(makeup["representation"], [1.0, 1.0])


def test_run_analysis_on_tiny_store_writes_flips_csv(tmp_path):
    out = write_store(tmp_path, {"b": ("baseline", 32, BASE), "c1": ("ptq_static", 4, C1)})
    res = run_analysis(out, n_bootstrap=50, progress=False, figures=False, report=False)
    flips = pd.read_csv(res["tables"]["flips"], keep_default_na=False)
    row = flips[(flips["cell"] == "c1") & (flips["group"] == "all")].iloc[0]
    assert (row["flips"], row["correct_to_wrong"], row["wrong_to_correct"]) == (3, 1, 2)
    deltas = pd.read_csv(res["tables"]["deltas"])
    acc = deltas[(deltas["cell"] == "c1") & (deltas["metric"] == "accuracy") & (deltas["group"] == "all")].iloc[0]
    assert acc["value"] == pytest.approx(7 / 8) and acc["baseline_value"] == pytest.approx(6 / 8)
    assert acc["test"] == "mcnemar_exact" and acc["p_value"] == pytest.approx(1.0)  # 1 vs 2 discordant: p = 1


def test_exemplar_votes_refuse_a_seed_whose_ids_mean_other_samples():
    """Baseline seed 1 was evaluated on another data set under the same ids (labels differ on s1..s4): the error
    names the two cells, counts the 4 mismatching ids of 6, shows the first 3 and names the setting to fix."""
    y = np.array([0, 1, 0, 1, 0, 1])
    other = np.array([0, 0, 1, 0, 1, 1])
    rows, frames = [], {}
    for cid, method, seed, labels in (("b0", "baseline", 0, y), ("b1", "baseline", 1, other),
                                      ("q0", "ptq_static", 0, y)):
        frames[cid] = pd.DataFrame({"sample_id": [f"s{i}" for i in range(6)], "y_true": labels, "y_pred": labels,
                                    "prob": labels.astype(float), "a": ["x", "y"] * 3})
        rows.append({"cell": cid, "dataset": "d", "model": "m", "method": method, "seed": seed,
                     "sensitive_attributes": "a", "predictions": ""})
    with pytest.raises(ValueError) as err:
        compression_exemplars(store_from_frames(pd.DataFrame(rows), frames))
    assert str(err.value) == (  # plain ids, not numpy reprs
        "cells 'b0' and 'b1' give 4 of 6 shared sample ids different labels or sensitive attributes "
        "(e.g. ['s1', 's2', 's3']): they were not evaluated on the same samples. Keep the data seed fixed across "
        "training seeds (data.init_args.seed).")


def test_flips_table_layout(tmp_path):
    """``flips.csv``: the cell's id columns and config, then attributes / group, then the counts; a fresh index;
    no compressed cell → the same leading columns, no rows."""
    from fairq.analysis.load import ID_COLUMNS

    out = write_store(tmp_path, {"b": ("baseline", 32, BASE), "c1": ("ptq_static", 4, C1),
                                 "c2": ("ptq_static", 8, C2)})
    store = load_store(out)
    f = compute_flips(store, {c: align(store.cells["b"], store.cells[c]) for c in ("c1", "c2")})
    lead = [*ID_COLUMNS, "config", "attributes", "group", "n", "flips", "flip_rate"]
    assert list(f.columns[:len(lead)]) == lead
    assert f.index.equals(pd.RangeIndex(len(f))) and len(f) == 2 * 3  # per cell: all, g=x, g=y
    assert list(f["cell"]) == ["c1"] * 3 + ["c2"] * 3 and list(f["attributes"]) == ["all", "g", "g"] * 2
    assert list(f["group"]) == ["all", "g=x", "g=y"] * 2
    empty = compute_flips(store, {})
    assert list(empty.columns) == lead and empty.empty


def test_exemplars_of_a_later_model_and_a_class_the_labels_lack():
    """A model whose cells share no sample is skipped without skipping the models after it; classes are those
    of every cell of a model (no ``num_classes`` stored: 0 .. the largest label seen): the labels and the baseline
    hold only 1 / 2, compressed cells also predict 0, and a code means one class in every cell."""
    rows, frames = [], {}

    def cell(cid, model, method, ids, y, pred):
        frames[cid] = pd.DataFrame({"sample_id": ids, "y_true": y, "y_pred": pred, "g": ["x", "y"] * 2})
        rows.append({"cell": cid, "dataset": "d", "model": model, "target": "t", "method": method, "seed": 0,
                     "sensitive_attributes": "g", "predictions": ""})

    ids = ["s0", "s1", "s2", "s3"]
    cell("b_apart", "apart", "baseline", ids, [1] * 4, [1] * 4)
    cell("q_apart", "apart", "ptq_static", ["t0", "t1", "t2", "t3"], [1] * 4, [1] * 4)
    y = [1, 2, 1, 2]
    cell("b", "m", "baseline", ids, y, [1, 2, 2, 2])
    cell("q1", "m", "ptq_static", ids, y, [0, 2, 1, 2])
    cell("q2", "m", "ptq_dynamic", ids, y, [0, 1, 1, 2])
    ex = compression_exemplars(store_from_frames(pd.DataFrame(rows), frames))
    assert set(ex["model"]) == {"m"}
    assert list(ex["y_true"]) == [1, 2, 1, 2]
    assert list(ex["baseline_label"]) == [1, 2, 2, 2]
    # votes: s0 0,0; s1 2,1 (tie → the first class: 1); s2 1,1; s3 2,2
    assert list(ex["compressed_label"]) == [0, 1, 1, 2]
    assert list(ex["compressed_agreement"]) == [1.0, 0.5, 1.0, 1.0]
    assert list(ex["exemplar"]) == [True, False, True, False]  # s1: one vote for 1 does not beat one for 2


def test_exemplar_makeup_by_hand_with_a_model_without_exemplars():
    """Every column of exemplar_makeup worked out by hand: a one-sample group that is an exemplar (rate 1), and a
    model with no exemplar at all (shares undefined, no division warning); one row per group, a fresh index."""
    import warnings

    ex = pd.DataFrame({"dataset": "d", "model": ["m1"] * 5 + ["m2"] * 2, "target": "y",
                       "g": ["x", "x", "x", "y", "z", "x", "y"],
                       "exemplar": [True, False, False, True, True, False, False]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = exemplar_makeup(ex, {("d", "m1", "y"): ["g"], ("d", "m2", "y"): ["g"]})
    assert list(out.index) == list(range(5))
    assert set(out.columns) == {"dataset", "model", "target", "attributes", "group", "n_test", "share_test",
                                "n_exemplars", "share_exemplars", "representation", "exemplar_rate",
                                "n_exemplars_total"}
    m1 = out[out["model"] == "m1"].set_index("group")
    assert (m1["dataset"] == "d").all() and (m1["target"] == "y").all() and (m1["attributes"] == "g").all()
    assert list(m1.index) == ["g=x", "g=y", "g=z"] and m1["n_exemplars"].dtype.kind == "i"
    np.testing.assert_array_equal(m1["n_test"], [3, 1, 1])
    np.testing.assert_array_equal(m1["n_exemplars"], [1, 1, 1])
    np.testing.assert_allclose(m1["share_test"], [0.6, 0.2, 0.2])
    np.testing.assert_allclose(m1["share_exemplars"], [1 / 3] * 3)
    np.testing.assert_allclose(m1["representation"], [(1 / 3) / 0.6, (1 / 3) / 0.2, (1 / 3) / 0.2])
    np.testing.assert_allclose(m1["exemplar_rate"], [1 / 3, 1.0, 1.0])
    assert (m1["n_exemplars_total"] == 3).all()
    m2 = out[out["model"] == "m2"].set_index("group")
    assert m2["share_exemplars"].isna().all() and m2["representation"].isna().all()
    np.testing.assert_allclose(m2["exemplar_rate"], [0.0, 0.0])
    assert (m2["n_exemplars_total"] == 0).all()


def test_exemplars_can_be_limited_to_method_families(tmp_path):
    out = write_store(tmp_path, {"b": ("baseline", 32, BASE), "c1": ("ptq_static", 4, C1), "c4": ("qat", 4, C4)})
    metrics = pd.read_csv(out / "metrics.csv")
    metrics["family"] = metrics["method"].map({"baseline": "baseline", "ptq_static": "ptq", "qat": "qat"})
    metrics.to_csv(out / "metrics.csv", index=False)
    store = load_store(out)
    assert set(compression_exemplars(store, families=("ptq",))["n_compressed"]) == {1}
    assert set(compression_exemplars(store)["n_compressed"]) == {2}
    assert compression_exemplars(store, families=("pruning",)).empty


def test_exemplars_use_the_samples_every_cell_has_and_every_model(tmp_path):
    """A compressed cell missing two samples limits every model row to the common samples; a model without a
    compressed cell (listed first) is skipped without ending the scan; a model sharing a single sample still gets its
    row; the labels are those of the samples' ids; one fresh index over all models."""
    out = write_store(tmp_path, {"b": ("baseline", 32, BASE), "c1": ("ptq_static", 4, C1), "c4": ("qat", 4, C4)})
    pred = out / "predictions"
    c1 = pd.read_parquet(pred / "c1.parquet")
    c1[~c1["sample_id"].isin(["id0", "id5"])].to_parquet(pred / "c1_part.parquet", index=False)
    c1[c1["sample_id"] == "id3"].to_parquet(pred / "c1_one.parquet", index=False)
    m = pd.read_csv(out / "metrics.csv")
    alone = m[m["cell"] == "b"].assign(cell="b0", model="m0")                       # no compressed cell
    one = m[m["cell"].isin(["b", "c1"])].assign(model="m3")
    one["cell"] = one["cell"] + "_m3"
    one.loc[one["cell"] == "c1_m3", "predictions"] = "predictions/c1_one.parquet"
    m.loc[m["cell"] == "c1", "predictions"] = "predictions/c1_part.parquet"
    pd.concat([alone, m, one]).to_csv(out / "metrics.csv", index=False)
    ex = compression_exemplars(load_store(out))
    assert list(ex.index) == list(range(len(ex))) and set(ex["model"]) == {"m", "m3"}
    main = ex[ex["model"] == "m"].set_index("sample_id")
    ids = [f"id{i}" for i in (1, 2, 3, 4, 6, 7)]
    assert sorted(main.index) == ids and (main["n_compressed"] == 2).all()
    pos = [int(i[2:]) for i in main.index]
    np.testing.assert_array_equal(main["y_true"], np.take(Y, pos))
    np.testing.assert_array_equal(main["baseline_label"], np.take(BASE, pos))
    c1v, c4v = np.take(C1, pos), np.take(C4, pos)
    np.testing.assert_array_equal(main["compressed_label"], np.where(c1v == c4v, c1v, 0))  # a 1–1 tie: class 0
    np.testing.assert_array_equal(main["g"], np.take(GROUP, pos))
    single = ex[ex["model"] == "m3"]
    assert list(single["sample_id"]) == ["id3"] and list(single["compressed_label"]) == [C1[3]]
    assert compression_exemplars(load_store(out), families=("ptq",)).empty  # no family column: nothing matches
