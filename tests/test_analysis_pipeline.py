"""End-to-end analysis on a tiny hand-made store: tables, flips, findings, errors, and the report in Chromium."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fairq.analysis import run_analysis
from fairq.metrics import fairness_metrics

GENDERS = ("f", "m")
RACES = ("a", "b", "c")
WORST = ("f", "c")  # the group whose predictions the INT4 cell degrades


def _entropy_bin_probs(rng, y_pred, n):
    """Binary probabilities consistent with y_pred, confidence spread so every uncertainty bin is populated."""
    conf = rng.uniform(0.5, 1.0, size=n)
    p1 = np.where(y_pred == 1, conf, 1.0 - conf)
    return p1


def _write_cell(out: Path, rows: list, frame: pd.DataFrame, **meta) -> None:
    cell = meta["cell"]
    rel = f"predictions/{cell}.parquet"
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / rel, index=False)
    m = fairness_metrics(frame["y_true"], frame["y_pred"], frame[["gender", "race"]])
    row = {"dataset": "synth", "model": "tiny", "variant": "", "backend": "cpu", "n": len(frame),
           "target": "label", "num_classes": 2, "sensitive_attributes": "gender;race", "size_mb": 1.0,
           "size_kind": "serialized", "latency_ms": 1.0, "latency_batch_size": 1, "predictions": rel}
    row.update(meta)
    row.update({k: v for k, v in m.items() if k != "per_group"})
    rows.append(row)


def make_store(out: Path, *, n: int = 1600, seeds=(0,), with_mitigation: bool = True, rng_seed: int = 0) -> Path:
    """Baseline + PTQ INT8 (tiny random flips) + PTQ INT4 (degrades the ``WORST`` group) [+ a mitigation cell]."""
    rng = np.random.default_rng(rng_seed)
    rows: list = []
    gender = rng.choice(GENDERS, size=n)
    race = rng.choice(RACES, size=n, p=[0.4, 0.35, 0.25])
    y = rng.integers(0, 2, size=n)
    worst = (gender == WORST[0]) & (race == WORST[1])
    ids = np.array([f"s{i:05d}" for i in range(n)])
    for seed in seeds:
        acc = np.where(worst, 0.82, 0.9)
        base = np.where(rng.random(n) < acc, y, 1 - y)
        p1 = _entropy_bin_probs(rng, base, n)

        def frame(pred, p=None):
            p = p1 if p is None else p
            return pd.DataFrame({"sample_id": ids, "y_true": y, "y_pred": pred, "prob_0": 1 - p, "prob_1": p,
                                 "prob": p, "gender": gender, "race": race})

        conf = np.abs(p1 - 0.5) * 2  # 0 = unsure, 1 = sure
        _write_cell(out, rows, frame(base), cell=f"base_s{seed}", method="baseline", weight_bits=32, act_bits=32,
                    seed=seed, size_mb=4.0)
        # INT8: 1% flips, more on uncertain samples.
        flip8 = rng.random(n) < 0.02 * (1 - conf)
        _write_cell(out, rows, frame(np.where(flip8, 1 - base, base)), cell=f"ptq8_s{seed}", method="ptq_static",
                    weight_bits=8, act_bits=8, seed=seed, size_mb=1.0)
        # INT4: correct predictions of the worst group break with prob 0.25, others with 0.02; uncertain ones more.
        breaks = (base == y) & (rng.random(n) < np.where(worst, 0.25, 0.02) * (1.5 - conf))
        fixes = (base != y) & (rng.random(n) < 0.03)
        pred4 = np.where(breaks | fixes, 1 - base, base)
        _write_cell(out, rows, frame(pred4), cell=f"ptq4_s{seed}", method="ptq_static", weight_bits=4,
                    act_bits=8, seed=seed, size_mb=0.5)
        if with_mitigation:
            # Balanced calibration at INT4: undoes most of the worst-group damage.
            repair = breaks & worst & (rng.random(n) < 0.8)
            _write_cell(out, rows, frame(np.where(repair, base, pred4)), cell=f"bac4_s{seed}",
                        method="bias_aware_calibration", variant="calibration=balanced", weight_bits=4,
                        act_bits=8, seed=seed, size_mb=0.5, reference_method="ptq_static")
    pd.DataFrame(rows).to_csv(out / "metrics.csv", index=False)
    return out


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    out = make_store(tmp_path_factory.mktemp("store"))
    res = run_analysis(out, n_bootstrap=200, seed=0, progress=False)
    return out, res


CONTRACT = ["metric", "value", "baseline_value", "delta", "ci_low", "ci_high", "p_value", "p_adjusted", "cell",
            "dataset", "model", "method", "variant", "weight_bits", "act_bits", "seed", "attributes", "group"]


def test_writes_every_output(analysed):
    out, res = analysed
    for name in ("deltas", "flips", "findings", "summary", "pareto", "exemplars"):
        assert (out / "tables" / f"{name}.csv").is_file(), name
    for name in ("overview", "flips", "findings"):
        tex = (out / "tables" / f"{name}.tex").read_text()
        assert "\\begin{table}" in tex and "\\toprule" in tex
        assert not any(ord(ch) > 127 for ch in tex), f"{name}.tex has non-ASCII characters"
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert [p.split("_")[0] for p in pngs] == ["flips", "group", "heatmaps", "pareto"], pngs
    assert res["report"] == out / "report.html"
    deltas = pd.read_csv(out / "tables" / "deltas.csv")
    assert set(CONTRACT) <= set(deltas.columns)


def test_values_match_metrics_csv_and_deltas_are_paired_differences(analysed):
    out, _ = analysed
    deltas = pd.read_csv(out / "tables" / "deltas.csv", keep_default_na=False, na_values=[""])
    metrics = pd.read_csv(out / "metrics.csv").set_index("cell")
    overall = deltas[(deltas["attributes"] == "gender;race") & (deltas["group"] == "all")]
    for _, r in overall.iterrows():  # every overall value = what fairness_metrics wrote into metrics.csv
        assert r["value"] == pytest.approx(metrics.at[r["cell"], r["metric"]], nan_ok=True), (r["cell"], r["metric"])
        assert r["value_ci_low"] <= r["value"] + 1e-12 or np.isnan(r["value_ci_low"])
    comp = overall[overall["method"] != "baseline"]
    np.testing.assert_allclose(comp["delta"], comp["value"] - comp["baseline_value"])
    base = metrics[metrics["method"] == "baseline"]
    for _, r in comp.iterrows():
        assert r["baseline_value"] == pytest.approx(base.iloc[0][r["metric"]], nan_ok=True)
    # Per-attribute scopes exist, and overall accuracy is not repeated in them.
    assert {"gender", "race"} <= set(deltas["attributes"])
    assert not ((deltas["attributes"] == "race") & (deltas["metric"] == "accuracy") & (deltas["group"] == "all")).any()


def test_mcnemar_and_bh_against_statsmodels(analysed):
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.multitest import multipletests

    out, res = analysed
    base = pd.read_parquet(out / "predictions" / "base_s0.parquet").set_index("sample_id")
    comp = pd.read_parquet(out / "predictions" / "ptq4_s0.parquet").set_index("sample_id").loc[base.index]
    table = pd.crosstab(base["y_pred"] == base["y_true"], comp["y_pred"] == comp["y_true"]).to_numpy()
    expected = mcnemar(table, exact=False, correction=True).pvalue  # > 25 discordant pairs here
    deltas = res["deltas"]
    row = deltas[(deltas["cell"] == "ptq4_s0") & (deltas["metric"] == "accuracy") & (deltas["group"] == "all")]
    assert row["test"].item() == "mcnemar_chi2"
    assert row["p_value"].item() == pytest.approx(expected, rel=1e-9)
    # One seed: the run's tests are the deltas' tests plus the findings' tests, adjusted together.
    findings = res["findings"]
    p = np.concatenate([deltas["p_value"].dropna(), findings["p_value"].dropna()])
    adj = np.concatenate([deltas["p_adjusted"].dropna(), findings["p_adjusted"].dropna()])
    np.testing.assert_allclose(adj, multipletests(p, method="fdr_bh")[1])
    summary = pd.read_csv(out / "tables" / "summary.csv", keep_default_na=False, na_values=[""])
    srow = summary[(summary["config"] == "ptq_static w4a8") & (summary["metric"] == "accuracy")
                   & (summary["group"] == "all")].iloc[0]
    assert not srow["new_test"] and srow["p_adjusted"] == pytest.approx(row["p_adjusted"].item())
    tested = deltas[deltas["p_value"].notna()]
    assert set(tested["metric"]) == {"accuracy", "worst_group_accuracy", "demographic_parity_difference",
                                     "equalized_odds_difference"}


def test_findings_follow_the_injected_effects(analysed):
    _, res = analysed
    f = res["findings"].set_index(["finding", "config"])
    print(res["findings"][["finding", "config", "estimate", "ci_low", "ci_high", "p_adjusted", "verdict"]]
          .to_string())
    assert f.loc[("worst_vs_best", "ptq_static w4a8"), "verdict"] == "supported"
    assert f.loc[("worst_vs_best", "ptq_static w8a8"), "verdict"] != "supported"
    mit = f.loc["mitigation_vs_ptq"].set_index("statistic", append=True)
    bac = "bias_aware_calibration w4a8 calibration=balanced"
    eo = mit.loc[(bac, "equalized_odds_difference(mitigated) − equalized_odds_difference(plain PTQ)")]
    assert eo["verdict"] == "supported" and eo["estimate"] < 0
    wga = mit.loc[(bac, "worst_group_accuracy(mitigated) − worst_group_accuracy(plain PTQ)")]
    assert wga["verdict"] == "supported" and wga["estimate"] > 0
    assert f.loc[("fewer_bits", "ptq_static w4a8")]["verdict"].eq("supported").all()
    ex = res["findings"][res["findings"]["finding"] == "exemplars_worst_group"].iloc[0]
    assert "gender=f, race=c" in ex["claim"] and ex["verdict"] == "supported"
    assert set(res["findings"]["verdict"]) <= {"supported", "not supported", "inconclusive"}


def test_mitigation_is_compared_with_ptq_of_the_same_options(tmp_path):
    """Balanced calibration with a percentile observer is judged against natural calibration with that observer."""
    out = make_store(tmp_path, n=400)
    metrics = pd.read_csv(out / "metrics.csv", keep_default_na=False)
    extra = []
    for cell, method in (("ptq4_s0", "ptq_static"), ("bac4_s0", "bias_aware_calibration")):
        row = metrics[metrics["cell"] == cell].iloc[0].copy()
        row["cell"], row["variant"] = f"{cell}_pct", "observer=percentile"
        extra.append(row)
    pd.concat([metrics, pd.DataFrame(extra)]).to_csv(out / "metrics.csv", index=False)
    res = run_analysis(out, n_bootstrap=50, progress=False, figures=False, report=False)
    mit = res["findings"][res["findings"]["finding"] == "mitigation_vs_ptq"]
    refs = dict(zip(mit["config"], mit["reference"]))
    assert refs["bias_aware_calibration w4a8 observer=percentile"] == "ptq_static w4a8 observer=percentile"
    assert refs["bias_aware_calibration w4a8 calibration=balanced"] == "ptq_static w4a8"


def test_seeds_are_aggregated_and_tested_in_pairs(tmp_path):
    out = make_store(tmp_path, n=600, seeds=(0, 1), with_mitigation=False)
    res = run_analysis(out, n_bootstrap=100, progress=False, figures=False, report=False)
    summary = pd.read_csv(res["tables"]["summary"], keep_default_na=False, na_values=[""])
    deltas = res["deltas"]
    key = (summary["config"] == "ptq_static w4a8") & (summary["metric"] == "accuracy") & (summary["group"] == "all")
    row = summary[key].iloc[0]
    per_seed = deltas[(deltas["config"] == "ptq_static w4a8") & (deltas["metric"] == "accuracy")
                      & (deltas["group"] == "all")]["delta"]
    assert row["n_seeds"] == 2 and row["seeds"] == "0;1"
    assert row["delta_mean"] == pytest.approx(per_seed.mean()) and row["delta_sd"] == pytest.approx(per_seed.std())
    assert row["test"] == "permutation_seeds" and row["new_test"]
    assert row["ci_low"] <= row["delta_mean"] <= row["ci_high"] and row["p_adjusted"] >= row["p_value"]
    assert (res["findings"]["n_seeds"] == 2).all()


def test_baseline_only_store(tmp_path):
    out = make_store(tmp_path, n=300)
    metrics = pd.read_csv(out / "metrics.csv")
    metrics[metrics["method"] == "baseline"].to_csv(out / "metrics.csv", index=False)
    res = run_analysis(out, n_bootstrap=50, progress=False, report=False)
    assert res["deltas"]["delta"].isna().all() and res["deltas"]["value"].notna().any()
    assert res["findings"].empty
    assert (out / "tables" / "flips.csv").is_file()


def test_missing_inputs_name_the_phase(tmp_path):
    with pytest.raises(FileNotFoundError, match="--phase baseline"):
        run_analysis(tmp_path, progress=False)
    out = make_store(tmp_path / "s", n=200)
    metrics = pd.read_csv(out / "metrics.csv")
    (out / "predictions" / "ptq4_s0.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="ptq4_s0.*--phase quantization"):
        run_analysis(out, progress=False)
    metrics[metrics["method"] != "baseline"].to_csv(out / "metrics.csv", index=False)
    with pytest.raises(ValueError, match="no baseline rows.*--phase baseline"):
        run_analysis(out, progress=False)
    metrics.drop(columns="predictions").to_csv(out / "metrics.csv", index=False)
    with pytest.raises(ValueError, match="predictions"):
        run_analysis(out, progress=False)


CHROMIUM = Path("/usr/bin/chromium")


def test_report_is_self_contained(analysed):
    out, _ = analysed
    doc = (out / "report.html").read_text()
    assert "<script src=" not in doc and "<link" not in doc  # nothing fetched: plotly.js is inline
    assert doc.count("Plotly.newPlot") >= 4
    assert len(doc) > 1_000_000  # the inlined plotly.js bundle


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(analysed, tmp_path):
    from PIL import Image

    out, _ = analysed
    shot = tmp_path / "report.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
           "--enable-logging=stderr", "--v=0", (out / "report.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-2000:]
    js_errors = [ln for ln in log.splitlines() if "Uncaught" in ln or ("CONSOLE" in ln and "rror" in ln)]
    assert not js_errors, js_errors
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert img.shape[:2] == (2000, 1200)
    assert img.std() > 20, "screenshot is (nearly) blank"
    # Plotly drew something: strongly coloured pixels (heatmap cells), which the tables alone do not have.
    hsv = np.asarray(Image.open(shot).convert("HSV"), dtype=float)
    assert ((hsv[..., 1] > 120) & (hsv[..., 2] > 60)).mean() > 0.01


def test_multiclass_target_and_dynamic_act_bits(tmp_path):
    """A 4-class target (one-vs-rest gaps), no stored probabilities, act_bits missing (dynamic quantization)."""
    rng = np.random.default_rng(3)
    n, c = 900, 4
    y = rng.integers(0, c, size=n)
    sens = rng.choice(["u", "v", "w"], size=n)
    base = np.where(rng.random(n) < 0.8, y, rng.integers(0, c, size=n))
    comp = np.where((sens == "w") & (rng.random(n) < 0.3), (base + 1) % c, base)
    rows = []
    (tmp_path / "predictions").mkdir()
    for cid, method, wb, ab, pred in (("b", "baseline", 32, 32, base), ("d", "ptq_dynamic", 8, None, comp)):
        pd.DataFrame({"sample_id": np.arange(n), "y_true": y, "y_pred": pred, "s": sens}).to_parquet(
            tmp_path / "predictions" / f"{cid}.parquet")
        rows.append({"cell": cid, "dataset": "mc", "model": "m", "method": method, "weight_bits": wb,
                     "act_bits": ab, "seed": 0, "num_classes": c, "sensitive_attributes": "s",
                     "predictions": f"predictions/{cid}.parquet"})
    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    res = run_analysis(tmp_path, n_bootstrap=100, progress=False, report=False)
    d = res["deltas"]
    assert set(d.loc[d["cell"] == "d", "config"]) == {"ptq_dynamic w8"}
    per_group = d[(d["cell"] == "d") & (d["metric"] == "accuracy") & (d["group"] != "all")].set_index("group")
    truth = {g: (comp[sens == g] == y[sens == g]).mean() - (base[sens == g] == y[sens == g]).mean() for g in "uvw"}
    for g, v in truth.items():
        assert per_group.loc[f"s={g}", "delta"] == pytest.approx(v)
    assert per_group.loc["s=w", "p_adjusted"] < 0.01
    flips = pd.read_csv(res["tables"]["flips"])
    overall = flips[flips["group"] == "all"].iloc[0]
    assert overall["flips"] == (comp != base).sum() and np.isnan(overall["flip_rate_low"])
    assert overall["wrong_to_wrong"] == ((comp != base) & (base != y) & (comp != y)).sum()


def test_config_labels_keep_fractional_average_widths():
    from fairq.analysis.load import config_label

    row = {"method": "mixed_precision", "weight_bits": 4.991, "act_bits": 8.0, "variant": ""}
    assert config_label(row) == "mixed_precision w4.99a8"
    assert config_label({**row, "method": "ptq_static", "weight_bits": "4.0"}) == "ptq_static w4a8"
    assert config_label({**row, "act_bits": float("nan")}) == "mixed_precision w4.99"
    # a preserved-layer cell keeps its nominal weight_bits for pairing but is labelled with its measured average
    slp = {"method": "sensitive_layer_preservation", "weight_bits": 4, "act_bits": 8, "variant": "",
           "avg_weight_bits": 4.6612}
    assert config_label(slp) == "sensitive_layer_preservation w4.66a8"


def test_ci_level_and_margin_in_texts_follow_alpha_and_margin():
    from fairq.analysis.tables import findings_overview

    frame = pd.DataFrame({"dataset": ["d"], "model": ["m"], "claim": ["c"], "statistic": ["s"], "hypothesis": ["< 0"],
                          "estimate": [-0.1], "ci_low": [-0.2], "ci_high": [-0.05], "p_adjusted": [0.01],
                          "verdict": ["supported"]})
    assert "estimate [90% CI]" in findings_overview(frame, "90%").columns


def test_fewer_bits_compares_real_int8_with_simulated_int4(tmp_path):
    out = make_store(tmp_path, n=400, with_mitigation=False)
    metrics = pd.read_csv(out / "metrics.csv", keep_default_na=False)
    metrics["backend"] = metrics["cell"].map({"ptq8_s0": "int8", "ptq4_s0": "simulated"}).fillna("fp32")
    metrics.to_csv(out / "metrics.csv", index=False)
    res = run_analysis(out, n_bootstrap=50, progress=False, figures=False, report=False)
    fewer = res["findings"][res["findings"]["finding"] == "fewer_bits"]
    assert set(zip(fewer["config"], fewer["reference"])) == {("ptq_static w4a8", "ptq_static w8a8")}


def test_a_mitigation_is_judged_against_plain_ptq_on_its_own_backend(tmp_path):
    """A simulated mitigation is never judged against real INT8 kernels; with a simulated control stored next to
    the real one, that control is the reference, and every claim names the backends."""
    out = make_store(tmp_path, n=400)
    m = pd.read_csv(out / "metrics.csv", keep_default_na=False)
    m["backend"] = np.where(m["method"] == "bias_aware_calibration", "simulated",
                            np.where(m["method"] == "ptq_static", "int8", "fp32"))
    m.to_csv(out / "metrics.csv", index=False)
    res = run_analysis(out, n_bootstrap=50, progress=False, figures=False, report=False)
    assert (res["findings"]["finding"] == "mitigation_vs_ptq").sum() == 0  # only a real-INT8 PTQ cell: no claim
    control = m[m["cell"] == "ptq4_s0"].iloc[0].copy()
    control["cell"], control["variant"], control["backend"] = "ptq4_sim_s0", "backend=simulated", "simulated"
    pd.concat([m, pd.DataFrame([control])]).to_csv(out / "metrics.csv", index=False)
    res = run_analysis(out, n_bootstrap=50, progress=False, figures=False, report=False)
    mit = res["findings"][res["findings"]["finding"] == "mitigation_vs_ptq"]
    assert len(mit) and set(mit["reference"]) == {"ptq_static w4a8 backend=simulated"}
    assert mit["claim"].str.contains(r"\[simulated\] .* vs ptq_static w4a8 backend=simulated \[simulated\]").all()


# ------------------------------------------------------------------ findings on tiny in-memory stores, by hand
def _memory_store(cells):
    """``cells``: (metrics row, gender list, race list, y_true, y_pred) → an in-memory store plus the pairs that
    :func:`run_analysis` would build (each compressed cell aligned to its dataset's baseline)."""
    from fairq.analysis.load import store_from_frames
    from fairq.analysis.pairs import align

    rows, frames = [], {}
    for row, gender, race, y, pred in cells:
        ids = [f"{row['dataset']}{i:04d}" for i in range(len(y))]
        frames[row["cell"]] = pd.DataFrame({"sample_id": ids, "y_true": y, "y_pred": pred, "gender": gender,
                                            "race": race})
        rows.append({"model": "tiny", "target": "label", "variant": "", "seed": 0,
                     "sensitive_attributes": "gender;race", **row})
    store = store_from_frames(pd.DataFrame(rows), frames)
    pairs = {c: align(store.cells[store.baseline_of(c)], store.cells[c]) for c in store.metrics.index
             if store.metrics.at[c, "method"] != "baseline" and store.baseline_of(c) is not None}
    return store, pairs


def _groups(spec):
    """``[(gender, race, n, n_correct), ...]`` → gender, race, y_true (all 1) and y_pred (the first n_correct of
    each group right)."""
    g, r, pred = [], [], []
    for gender, race, n, k in spec:
        g += [gender] * n
        r += [race] * n
        pred += [1] * k + [0] * (n - k)
    return g, r, [1] * len(pred), pred


def test_worst_vs_best_ranks_eligible_groups_by_the_baseline_and_differences_by_hand():
    from fairq.analysis.findings import FINDING_COLUMNS, compute_findings

    # Baseline: f/a 50 % (40 samples: exactly min_group_size), m/a 90 %, m/b 0 % but only 10 samples (ineligible).
    # The compressed cell reverses the ranking (f/a 95 %, m/a 30 %): groups are ranked by the *baseline*.
    base = _groups([("f", "a", 40, 20), ("m", "a", 80, 72), ("m", "b", 10, 0)])
    comp = _groups([("f", "a", 40, 38), ("m", "a", 80, 24), ("m", "b", 10, 10)])
    tiny = _groups([("f", "a", 6, 3), ("m", "a", 6, 5)])  # a first dataset whose groups are all too small
    nan = float("nan")
    store, pairs = _memory_store([
        ({"cell": "t0", "dataset": "aa", "method": "baseline", "weight_bits": 32, "act_bits": 32}, *tiny),
        ({"cell": "t1", "dataset": "aa", "method": "ptq_dynamic", "weight_bits": 8, "act_bits": nan}, *tiny),
        ({"cell": "b0", "dataset": "synth", "method": "baseline", "weight_bits": 32, "act_bits": 32}, *base),
        # an orphan (no baseline of its seed: values but no pairs) is skipped, not the end of the search
        ({"cell": "o7", "dataset": "synth", "method": "ptq_static", "weight_bits": 4, "act_bits": 8, "seed": 7},
         *comp),
        ({"cell": "d0", "dataset": "synth", "method": "ptq_dynamic", "weight_bits": 8, "act_bits": nan}, *comp)])
    f = compute_findings(store, pairs, pd.DataFrame(), pd.DataFrame(), n_bootstrap=30, n_permutations=30,
                         seed=1, min_group_size=40)
    assert list(f.columns) == FINDING_COLUMNS
    assert len(f) == 1  # "aa" has < 2 eligible groups, o7 no pairs: no claim there, the next config gets one
    row = f.iloc[0]
    expected = {"finding": "worst_vs_best", "dataset": "synth", "model": "tiny", "target": "label",
                "config": "ptq_dynamic w8", "reference": "baseline",
                "claim": "ptq_dynamic w8 lowers the accuracy of the worst baseline group (gender=f, race=a) more than "
                         "that of the best (gender=m, race=a)",
                "statistic": "Δacc(worst group) − Δacc(best group)", "hypothesis": "< 0", "test": "permutation",
                "n_seeds": 1}
    assert {k: row[k] for k in expected} == expected
    assert row["estimate"] == pytest.approx((0.95 - 0.5) - (0.3 - 0.9))
    assert row["ci_low"] <= row["estimate"] <= row["ci_high"] and 0 < row["p_value"] <= 1


def test_fewer_bits_picks_the_extreme_widths_and_matching_activation_bits():
    from fairq.analysis.findings import compute_findings

    rng = np.random.default_rng(5)
    gender = ["f"] * 60 + ["m"] * 85
    race = ["a"] * 120 + ["b"] * 25  # m/b: 25 samples, below min_group_size=30
    y = rng.integers(0, 2, size=145)
    nan = float("nan")
    cells = [({"cell": "b0", "method": "baseline", "weight_bits": 32, "act_bits": 32}, y)]
    # A configuration with one (missing) width comes first: it is skipped, not the end of the search.
    specs = [("dist", "distillation", "", nan, nan), ("p8", "ptq_static", "", 8, 8), ("p4", "ptq_static", "", 4, 8),
             ("p2", "ptq_static", "", 2, 8),
             # no activation width in common: the first of each width (w8a16, listed before w8a8)
             ("x4", "ptq_static", "x", 4, 4), ("x16", "ptq_static", "x", 8, 16), ("x8", "ptq_static", "x", 8, 8),
             # a common activation width (8) is preferred over the first-listed one (w4a4)
             ("y44", "ptq_static", "y", 4, 4), ("y48", "ptq_static", "y", 4, 8), ("y88", "ptq_static", "y", 8, 8)]
    preds = {}
    for cid, method, variant, wb, ab in specs:
        pred = np.where(rng.random(145) < 0.75, y, 1 - y)
        pred[120:] = 1 - y[120:]  # the small group, all wrong, must not count as the worst group
        preds[cid] = pred
        cells.append(({"cell": cid, "method": method, "variant": variant, "weight_bits": wb, "act_bits": ab}, pred))
    store, pairs = _memory_store([({"dataset": "synth", **row}, gender, race, y, pred) for row, pred in cells])
    f = compute_findings(store, pairs, pd.DataFrame(), pd.DataFrame(), n_bootstrap=20, n_permutations=20,
                         seed=0, min_group_size=30)
    fewer = f[f["finding"] == "fewer_bits"]
    expected = {("ptq_static w2a8", "ptq_static w8a8"): ("p2", "p8"),
                ("ptq_static w4a4 x", "ptq_static w8a16 x"): ("x4", "x16"),
                ("ptq_static w4a8 y", "ptq_static w8a8 y"): ("y48", "y88")}
    assert sorted(zip(fewer["config"], fewer["reference"])) == sorted(2 * list(expected))
    sens = pd.DataFrame({"gender": gender, "race": race})
    for _, r in fewer.iterrows():
        lo, hi = expected[(r["config"], r["reference"])]
        metric = r["statistic"].split("(")[0]
        what = {"accuracy": "accuracy", "worst_group_accuracy": "worst-group accuracy"}[metric]
        assert (r["dataset"], r["model"], r["target"], r["hypothesis"], r["test"], r["n_seeds"]) == \
               ("synth", "tiny", "label", "< 0", "permutation", 1)
        assert r["claim"] == f"{r['config']} has lower {what} than {r['reference']}"
        assert r["statistic"] == f"{metric}(low bits) − {metric}(high bits)"
        m_lo, m_hi = (fairness_metrics(y, preds[c], sens, min_group_size=30)[metric] for c in (lo, hi))
        assert r["estimate"] == pytest.approx(m_lo - m_hi), (r["config"], metric)
        assert r["ci_low"] <= r["estimate"] <= r["ci_high"] and 0 < r["p_value"] <= 1


def test_paired_claims_use_common_seeds_the_run_settings_and_one_seed_stream_each(tmp_path, monkeypatch):
    import fairq.analysis.findings as findings_module

    out = make_store(tmp_path, n=300, seeds=(0, 1))
    metrics = pd.read_csv(out / "metrics.csv", keep_default_na=False)
    metrics[metrics["cell"] != "bac4_s1"].to_csv(out / "metrics.csv", index=False)  # mitigation: seed 0 only
    calls = []
    real = findings_module.paired_comparison

    def spy(joints, stat, **kw):
        calls.append(kw)
        return real(joints, stat, **kw)

    monkeypatch.setattr(findings_module, "paired_comparison", spy)
    res = run_analysis(out, n_bootstrap=40, n_permutations=30, alpha=0.1, progress=False, figures=False,
                       report=False)
    f = res["findings"]
    paired = f[f["test"] == "permutation"]
    assert len(calls) == len(paired) == 3 + 2 + 3  # worst_vs_best ×3 (w8, w4, bac), fewer_bits ×2, mitigation ×3
    for kw in calls:
        assert (kw["n_bootstrap"], kw["n_permutations"], kw["confidence"]) == (40, 30, pytest.approx(0.9))
        assert isinstance(kw["seed"], int)
    assert len({kw["seed"] for kw in calls}) == len(calls)  # every claim draws its own resamples
    assert (f.loc[f["finding"] == "fewer_bits", "n_seeds"] == 2).all()
    mit = f[f["finding"] == "mitigation_vs_ptq"]
    assert (mit["n_seeds"] == 1).all() and len(mit) == 3
    cells = metrics.set_index("cell")
    verbs = {"demographic_parity_difference": ("< 0", "reduces the demographic-parity gap"),
             "equalized_odds_difference": ("< 0", "reduces the equalized-odds gap"),
             "worst_group_accuracy": ("> 0", "raises worst-group accuracy")}
    for _, r in mit.iterrows():
        metric = r["statistic"].split("(")[0]
        hyp, verb = verbs[metric]
        assert (r["dataset"], r["model"], r["target"], r["hypothesis"], r["test"]) == \
               ("synth", "tiny", "label", hyp, "permutation")
        assert r["claim"] == f"bias_aware_calibration w4a8 calibration=balanced [cpu] {verb} vs ptq_static w4a8 [cpu]"
        assert r["estimate"] == pytest.approx(cells.at["bac4_s0", metric] - cells.at["ptq4_s0", metric])
        assert r["ci_low"] <= r["estimate"] <= r["ci_high"] and 0 < r["p_value"] <= 1


def test_a_mitigation_is_judged_against_ptq_of_the_same_simulation(tmp_path):
    """A per-layer-input simulated mitigation is judged against the per-layer-input PTQ twin, not against the
    deployed-graph PTQ cell listed first."""
    out = make_store(tmp_path, n=300)
    m = pd.read_csv(out / "metrics.csv", keep_default_na=False)
    m["backend"] = "simulated"
    m["simulation"] = np.where(m["method"] == "bias_aware_calibration", "layer_input", "")
    twin = m[m["cell"] == "ptq4_s0"].iloc[0].copy()
    twin["cell"], twin["variant"], twin["simulation"] = ("ptq4_li_s0", "backend=simulated_simulation=layer_input",
                                                         "layer_input")
    pd.concat([m, pd.DataFrame([twin])]).to_csv(out / "metrics.csv", index=False)
    res = run_analysis(out, n_bootstrap=20, progress=False, figures=False, report=False)
    mit = res["findings"][res["findings"]["finding"] == "mitigation_vs_ptq"]
    assert len(mit) == 3
    assert set(mit["reference"]) == {"ptq_static w4a8 backend=simulated_simulation=layer_input"}


def test_mitigation_gaps_of_a_multiclass_target_are_the_one_vs_rest_gaps():
    from fairq.analysis.findings import compute_findings

    rng = np.random.default_rng(11)
    n = 240
    gender, race = list(rng.choice(["f", "m"], size=n)), list(rng.choice(["a", "b"], size=n))
    y = rng.integers(0, 3, size=n)
    hit = np.array([g == "f" and r == "b" for g, r in zip(gender, race)])
    preds = {"b0": np.where(rng.random(n) < 0.8, y, rng.integers(0, 3, size=n))}
    preds["p4"] = np.where(hit & (rng.random(n) < 0.5), 2, preds["b0"])  # INT4 pushes one group towards class 2
    preds["m4"] = np.where(hit & (rng.random(n) < 0.5), preds["b0"], preds["p4"])
    rows = {"b0": {"method": "baseline", "weight_bits": 32, "act_bits": 32},
            "p4": {"method": "ptq_static", "weight_bits": 4, "act_bits": 8},
            "m4": {"method": "bias_aware_calibration", "variant": "calibration=balanced", "weight_bits": 4,
                   "act_bits": 8, "reference_method": "ptq_static"}}
    store, pairs = _memory_store([({"cell": c, "dataset": "mc", **rows[c]}, gender, race, y, preds[c])
                                  for c in rows])
    f = compute_findings(store, pairs, pd.DataFrame(), pd.DataFrame(), n_bootstrap=20, n_permutations=20)
    mit = f[f["finding"] == "mitigation_vs_ptq"].set_index("statistic")
    sens = pd.DataFrame({"gender": gender, "race": race})
    ref, new = (fairness_metrics(y, preds[c], sens) for c in ("p4", "m4"))
    for metric in ("demographic_parity_difference", "equalized_odds_difference", "worst_group_accuracy"):
        row = mit.loc[f"{metric}(mitigated) − {metric}(plain PTQ)"]
        assert row["estimate"] == pytest.approx(new[metric] - ref[metric]), metric


# ------------------------------------------------------------------ which plain-PTQ cells a mitigation is judged against
_MIT = "bias_aware_calibration"


def _cells_table(rows, *, simulation=True, reference_config=True):
    """A metrics table as ``findings._configs`` gives it (config columns as strings), indexed by cell id; each row
    ``(cell, config label, overrides)``; ``simulation`` / ``reference_config`` False: an older store without them."""
    base = {"dataset": "d", "model": "m", "target": "t", "method": "ptq_static", "variant": "", "weight_bits": "4",
            "act_bits": "8", "backend": "cpu", "seed": 0, "reference_method": "", "simulation": np.nan,
            "reference_config": ""}
    table = pd.DataFrame([{**base, "cell": c, "config": label, **kw} for c, label, kw in rows]).set_index("cell")
    return table.drop(columns=[c for c, keep in (("simulation", simulation), ("reference_config", reference_config))
                               if not keep])


def _chosen(table, mitigation="mit"):
    from fairq.analysis.findings import _reference_cells

    return list(_reference_cells(table, table.loc[[mitigation]]).index)


def _mitigation(variant="calibration=balanced", **kw):
    return ("mit", f"mitigation {variant}", {"method": _MIT, "variant": variant, "reference_method": "ptq_static",
                                            **kw})


def test_a_mitigation_is_judged_against_the_control_it_named_first():
    rows = [("plain", "ptq w4a8", {}),
            ("same", "ptq w4a8 calibration=balanced", {"variant": "calibration=balanced"}),
            ("named", "ptq w4a8 draw=natural", {"variant": "draw=natural"}),
            ("named_s1", "ptq w4a8 draw=natural", {"variant": "draw=natural", "seed": 1}),
            _mitigation(reference_config="ptq w4a8 draw=natural")]
    assert _chosen(_cells_table(rows)) == ["named", "named_s1"]  # the configuration with all its seeds
    # a named control that was not stored (or is the setting itself): the same options, else the default cell
    rows[-1] = _mitigation(reference_config="ptq w4a8 not-stored")
    assert _chosen(_cells_table(rows)) == ["same"]
    rows[-1] = _mitigation(reference_config="mitigation calibration=balanced")
    assert _chosen(_cells_table(rows)) == ["same"]
    # an older store without reference_config (or without a named one): the same options first
    rows[-1] = _mitigation()
    assert _chosen(_cells_table(rows)) == _chosen(_cells_table(rows, reference_config=False)) == ["same"]


@pytest.mark.parametrize("backend, plain_variant", [("cpu", ""), ("simulated", "backend=simulated"),
                                                    ("simulated", "backend=simulated_simulation=layer_input")])
def test_without_a_same_options_control_a_mitigation_is_judged_against_the_default_ptq_cell(backend, plain_variant):
    rows = [("mse", "ptq w4a8 observer=mse", {"variant": "observer=mse", "backend": backend}),
            ("plain", f"ptq w4a8 {plain_variant}", {"variant": plain_variant, "backend": backend}),
            ("pct", "ptq w4a8 observer=percentile", {"variant": "observer=percentile", "backend": backend}),
            _mitigation(backend=backend)]
    assert _chosen(_cells_table(rows)) == ["plain"]
    # no default cell either: the first candidate stored, rather than no claim
    assert _chosen(_cells_table([r for r in rows if r[0] != "plain"])) == ["mse"]


def test_reference_candidates_share_data_model_target_bits_method_backend_and_simulation():
    other = [("ds", {"dataset": "d2"}), ("mo", {"model": "m2"}), ("ta", {"target": "t2"}),
             ("wb", {"weight_bits": "8"}), ("ab", {"act_bits": ""}), ("me", {"method": "ptq_dynamic"}),
             ("be", {"backend": "int8"}), ("si", {"simulation": "layer_input"})]
    rows = [(c, f"ptq {c}", kw) for c, kw in other] + [("ok", "ptq ok", {"variant": "x=1"}), _mitigation()]
    assert _chosen(_cells_table(rows)) == ["ok"]
    assert _chosen(_cells_table(rows[:-2] + rows[-1:])) == []  # only mismatching cells: no reference
    # a missing simulation matches a missing one, in the mitigation and in the candidates alike
    rows = [("graph", "ptq graph", {"simulation": "graph"}), ("none", "ptq none", {}), _mitigation()]
    assert _chosen(_cells_table(rows)) == ["none"]
    rows[-1] = _mitigation(simulation="graph")
    assert _chosen(_cells_table(rows)) == ["graph"]
    assert _chosen(_cells_table(rows, simulation=False)) == ["graph"]  # older store: no simulation to compare
    # the reference method is the one the mitigation recorded, and a setting is never its own reference
    rows = [("dyn", "ptq dyn", {"method": "ptq_dynamic"}), ("self", "mitigation calibration=balanced",
                                                             {"method": _MIT, "variant": "calibration=balanced"}),
            _mitigation(reference_method="ptq_dynamic")]
    assert _chosen(_cells_table(rows)) == ["dyn"]
    assert _chosen(_cells_table(rows[1:])) == []


def test_every_mitigation_with_a_reference_gets_every_defined_claim(monkeypatch):
    """A mitigation without a reference, or a claim that is undefined (``_paired_claim`` gives None), skips only
    itself; each row names its configuration, reference and claim."""
    import fairq.analysis.findings as findings_module

    table = _cells_table([("mit", "mitigation a", {"method": _MIT, "variant": "a", "reference_method": "none"}),
                          ("ptq", "ptq w4a8", {}),
                          ("mit2", "mitigation b", {"method": _MIT, "variant": "b", "reference_method": "ptq_static"})])
    calls = []

    def fake(store, a_cells, b_cells, metric, **kw):
        calls.append((a_cells, b_cells, metric, kw["tag"]))
        if metric == "demographic_parity_difference":
            return None
        return {"estimate": 0.5, "ci_low": 0.1, "ci_high": 0.9, "p_value": 0.01, "test": "permutation",
                "n_seeds": 1}

    monkeypatch.setattr(findings_module, "_paired_claim", fake)
    rows = findings_module._mitigation_vs_ptq(None, table, n_bootstrap=10, n_permutations=10, seed=3,
                                              min_group_size=5, confidence=0.9)
    assert [c[:3] for c in calls] == [({"0": "ptq"}, {"0": "mit2"}, metric) for metric, _, _ in
                                      findings_module._MITIGATION_CLAIMS]
    assert len({c[3] for c in calls}) == 3  # one seed stream per claim
    got = pd.DataFrame(rows)
    assert list(got["statistic"]) == ["equalized_odds_difference(mitigated) − equalized_odds_difference(plain PTQ)",
                                      "worst_group_accuracy(mitigated) − worst_group_accuracy(plain PTQ)"]
    assert (got["config"] == "mitigation b").all() and (got["reference"] == "ptq w4a8").all()
    assert list(got["claim"]) == ["mitigation b [cpu] reduces the equalized-odds gap vs ptq w4a8 [cpu]",
                                  "mitigation b [cpu] raises worst-group accuracy vs ptq w4a8 [cpu]"]
    assert list(got["hypothesis"]) == ["< 0", "> 0"] and (got["estimate"] == 0.5).all()


def _exemplar_rows(model, spec):
    """``spec``: ``[(g, r, n, n_baseline_right, n_exemplars), ...]`` → rows of a compression_exemplars table."""
    rows = []
    for g, r, n, right, ex in spec:
        for i in range(n):
            rows.append({"dataset": "d", "model": model, "target": "t", "sample_id": f"{model}-{g}{r}{i}",
                         "y_true": 1, "baseline_label": int(i < right), "compressed_label": 1,
                         "exemplar": i >= n - ex, "g": g, "r": r})
    return rows


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_exemplars_worst_group_claim_by_hand(confidence):
    """The worst group is the eligible intersectional group (n ≥ min_group_size, here 5) with the lowest baseline
    accuracy on the exemplar table's samples; its share of exemplars vs of the test set, scipy's exact binomial
    test and Wilson interval. Models with one eligible group or without exemplars come first and give no row."""
    from types import SimpleNamespace

    from scipy.stats import binomtest

    from fairq.analysis.findings import _exemplars_worst

    ex = pd.DataFrame(
        _exemplar_rows("one_group", [("x", "p", 6, 1, 2), ("y", "q", 4, 0, 2)])      # (y, q) too small
        + _exemplar_rows("no_exemplars", [("x", "p", 6, 1, 0), ("y", "q", 6, 5, 0)])
        + _exemplar_rows("m", [("x", "p", 5, 1, 3),     # accuracy 0.2, exactly min_group_size: the worst
                               ("x", "q", 12, 9, 2),    # 0.75
                               ("y", "p", 4, 0, 1),     # 0.0 but 4 < 5: not eligible
                               ("y", "q", 19, 11, 1)]))  # 0.58
    models = ("one_group", "no_exemplars", "m")
    cells = {f"b_{mo}_{s}": {"method": "baseline", "dataset": "d", "model": mo, "target": "t"}
             for mo in models for s in (0, 1)}
    cells.update({f"q_{mo}": {"method": "ptq_static", "dataset": "d", "model": mo, "target": "t"} for mo in models})
    m = pd.DataFrame.from_dict(cells, orient="index")
    store = SimpleNamespace(cells={c: SimpleNamespace(sensitive=pd.DataFrame(columns=["g", "r"])) for c in cells})

    rows = _exemplars_worst(store, m, ex, 5, confidence)
    assert len(rows) == 1
    row = rows[0]
    k, n_ex, share = 3, 7, 5 / 40
    test = binomtest(k, n_ex, p=share)
    ci = test.proportion_ci(confidence_level=confidence, method="wilson")
    assert (row["finding"], row["dataset"], row["model"], row["target"], row["config"], row["reference"]) == \
           ("exemplars_worst_group", "d", "m", "t", "all compressed cells", "baseline")
    assert row["claim"] == "compression-identified exemplars over-represent the worst baseline group (g=x, r=p)"
    assert (row["statistic"], row["hypothesis"], row["test"], row["n_seeds"]) == \
           ("share of exemplars − share of test set", "> 0", "exact binomial", 2)
    assert row["estimate"] == pytest.approx(3 / 7 - 5 / 40)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(ci.low - share), pytest.approx(ci.high - share))
    assert row["p_value"] == pytest.approx(test.pvalue) and test.pvalue < 0.05  # two-sided, and small here
    assert row["ci_low"] < row["estimate"] < row["ci_high"]
    # a larger min_group_size leaves (x, p) out: (y, q) is then the worst
    rows = _exemplars_worst(store, m, ex, 6, confidence)
    assert [r["claim"].endswith("(g=y, r=q)") for r in rows] == [True]
    assert rows[0]["estimate"] == pytest.approx(1 / 7 - 19 / 40)
    assert _exemplars_worst(store, m, ex.iloc[:0], 5, confidence) == []
    # min_group_size 1: a one-sample group the baseline gets right has accuracy 1 (not the worst)
    single = pd.DataFrame(_exemplar_rows("m", [("x", "p", 1, 1, 1), ("y", "q", 4, 3, 1)]))
    assert _exemplars_worst(store, m, single, 1, confidence)[0]["claim"].endswith("(g=y, r=q)")


def test_compute_findings_defaults_are_run_analysis_defaults():
    """``compute_findings`` called with its defaults decides claims as ``run_analysis`` does with its own (which are
    ``AnalysisSettings``' defaults, the one place they are set)."""
    import inspect

    from fairq.analysis import AnalysisSettings
    from fairq.analysis.findings import compute_findings

    ra, cf = AnalysisSettings(), inspect.signature(compute_findings).parameters
    assert inspect.signature(run_analysis).parameters["settings"].default is None  # → AnalysisSettings()
    assert cf["n_bootstrap"].default == ra.n_bootstrap == 1000
    assert ra.n_permutations is None and ra.n_perm == ra.n_bootstrap  # as many permutations as resamples
    assert cf["n_permutations"].default == ra.n_perm
    assert cf["seed"].default == ra.seed
    assert cf["confidence"].default == pytest.approx(ra.confidence) == pytest.approx(1 - ra.alpha)
    assert cf["min_group_size"].default == ra.min_group_size
