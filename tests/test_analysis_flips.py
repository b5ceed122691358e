"""Flips, uncertainty bins and compression-identified exemplars on a hand-made 8-sample store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fairq.analysis import run_analysis
from fairq.analysis.flips import (UNCERTAINTY_BINS, compression_exemplars, compute_flips, exemplar_makeup,
                                  normalized_entropy, uncertainty_bin)
from fairq.analysis.load import load_store
from fairq.analysis.pairs import align

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
