"""Pruning cells through the phases: stored like every cell (family, measured sparsity, sparse size, audit file),
and analysis draws the sparsity curves from the same deltas it reports."""
import json

import pandas as pd
import pytest

from fairq.cli import main
from test_engine_seams import TINY


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("prune")
    os.environ.setdefault("FAIRQ_CACHE", str(root / "cache"))
    out = root / "run"
    methods = [{"method": "magnitude_prune", "sparsity": [0.5, 0.9]},
               {"method": "magnitude_prune", "sparsity": [0.5], "scope": "global"},
               {"method": "magnitude_prune", "sparsity": 0.5, "then": {"method": "ptq_static", "bits": 4}},
               {"method": "channel_prune", "ratio": 0.5}, {"method": "ptq_static", "bits": 4}]
    args = ["--output_dir", str(out), *TINY, "--quantization.methods", json.dumps(methods)]
    for phase in ("baseline", "quantization", "analysis"):
        assert main(["--phase", phase, *args]) == 0
    return out


def test_pruned_cells_are_stored_with_their_measured_sparsity(pruned_run):
    m = pd.read_csv(pruned_run / "metrics.csv", keep_default_na=False)
    p = m[m["family"] == "pruning"].set_index("variant")
    assert sorted(p.index) == ["ratio=0.5", "sparsity=0.5", "sparsity=0.5_scope=global",
                               "sparsity=0.5_then=ptq_static", "sparsity=0.9"]
    assert float(p.loc["sparsity=0.9", "sparsity"]) == pytest.approx(0.9, abs=1e-3)
    assert p.loc["sparsity=0.5", "size_kind"] == "sparse_serialized"
    assert p.loc["sparsity=0.5_then=ptq_static", "size_kind"] == "packed_estimate"  # graph simulation: dense estimate
    assert int(p.loc["sparsity=0.5_then=ptq_static", "weight_bits"]) == 4
    assert p.loc["sparsity=0.5_then=ptq_static", "then_method"] == "ptq_static"
    assert p.loc["ratio=0.5", "size_kind"] == "serialized"
    base = m[m["method"] == "baseline"].iloc[0]
    assert float(p.loc["ratio=0.5", "size_mb"]) < float(base["size_mb"])
    assert float(p.loc["ratio=0.5", "flops"]) < float(p.loc["sparsity=0.5", "flops"])  # structural: fewer FLOPs
    for cell, rel in zip(p["cell"], p["sparsity_audit"].where(p["sparsity_audit"] != "", p["pruning_plan"])):
        assert rel == f"pruning/{cell}.json" and (pruned_run / rel).exists()


def test_sparsity_curves_are_the_deltas_of_the_pruned_cells(pruned_run):
    curves = pd.read_csv(pruned_run / "tables" / "sparsity_curves.csv")
    deltas = pd.read_csv(pruned_run / "tables" / "deltas.csv")
    m = pd.read_csv(pruned_run / "metrics.csv", keep_default_na=False).set_index("cell")
    # one curve per setting other than the x axis: layer and global scope are two curves
    assert set(curves["curve"]) == {"magnitude_prune", "magnitude_prune [scope=global]",
                                    "magnitude_prune + ptq_static w4", "channel_prune"}
    one_point = curves[(curves["metric"] == "accuracy") & (curves["group"] == "all")]
    assert not one_point.duplicated(["model", "curve", "sparsity"]).any()
    for curve, c in curves[(curves["metric"] == "worst_group_accuracy") & (curves["group"] == "all")].groupby("curve"):
        assert c["sparsity"].min() == 0.0 and (c[c["sparsity"] == 0]["cell"].str.contains("baseline")).all()
    pts = curves[curves["cell"].isin(m.index[m["family"] == "pruning"])]
    assert len(pts) and (pts["sparsity"].to_numpy() == m.loc[pts["cell"], "sparsity"].astype(float).to_numpy()).all()
    merged = pts.merge(deltas, on=["cell", "attributes", "metric", "group"], suffixes=("", "_d"))
    assert len(merged) == len(pts)
    assert (merged["value"] == merged["value_d"]).all() and (merged["ci_low"] == merged["ci_low_d"]).all()
    assert {"accuracy"} == set(pts[pts["group"] != "all"]["metric"])  # per-group accuracy rows are there


def test_pruning_identified_exemplars_come_from_the_pruned_cells_only(pruned_run):
    from fairq.analysis.flips import compression_exemplars
    from fairq.analysis.load import load_store

    m = pd.read_csv(pruned_run / "metrics.csv", keep_default_na=False)
    n_pruned, n_all = int((m["family"] == "pruning").sum()), int((m["method"] != "baseline").sum())
    assert n_all > n_pruned  # the run has a plain PTQ cell too
    store = load_store(pruned_run, progress=False)
    assert set(compression_exemplars(store, families=("pruning",))["n_compressed"]) == {n_pruned}
    assert set(compression_exemplars(store)["n_compressed"]) == {n_all}
    ex = pd.read_csv(pruned_run / "tables" / "pruning_exemplars.csv")
    first = ex[ex["attributes"] == ex["attributes"].iloc[0]]
    assert first["share_test"].sum() == pytest.approx(1.0)
    assert first["n_test"].sum() == int(m[m["method"] == "baseline"]["n"].iloc[0])
    assert first["n_exemplars"].sum() == first["n_exemplars_total"].iloc[0]


def test_method_table_lists_every_cell_with_params_size_accuracy_latency(pruned_run):
    t = pd.read_csv(pruned_run / "tables" / "methods.csv")
    m = pd.read_csv(pruned_run / "metrics.csv")
    assert len(t) == len(m) and t["method"].iloc[0] == "baseline"
    assert {"params", "size_mb", "size_kind", "accuracy", "worst_group_accuracy", "latency_ms"} <= set(t.columns)
    merged = t.merge(m, on=["model", "method", "variant", "weight_bits"], suffixes=("", "_m"))
    assert len(merged) == len(m) and (merged["accuracy"] == merged["accuracy_m"]).all()
    pruned = t[t["family"] == "pruning"]
    assert pruned["params"].notna().all() and pruned["sparsity"].notna().all()


def test_findings_judge_the_pruned_cells_too(pruned_run):
    """Cells without activation quantization (act_bits empty) get the worst-vs-best-group claim like any other."""
    f = pd.read_csv(pruned_run / "tables" / "findings.csv")
    wvb = f[f["finding"] == "worst_vs_best"]
    assert {"sparsity=0.5", "sparsity=0.9", "ratio=0.5"} <= {c.split(" ")[-1] for c in wvb["config"]}
    assert wvb["verdict"].notna().all() and wvb["p_adjusted"].notna().all()
