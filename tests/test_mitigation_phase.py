"""Mitigation phase through main.py on a tiny synthetic run: cells, controls, λ sweep, saved plans, resume."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from fairq.cli import main

TINY = [
    "--data.init_args.n_samples", "400", "--data.init_args.image_size", "32", "--data.init_args.batch_size", "32",
    "--models", "[tiny_cnn]", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
    "--evaluation.latency_repeats", "2", "--evaluation.progress", "false",
]
SECTION = {
    "calibration_samples": 48, "bits": [4],
    "methods": [
        {"method": "bias_aware_calibration"},
        {"method": "bias_aware_calibration", "observer": "percentile"},
        {"method": "fairness_finetune", "lam": [0.0, 2.0], "max_steps": 3},
        {"method": "sensitive_layer_preservation", "min_group_size": 2},
        {"method": "fairness_aware_quantizer", "max_dp_gap": 0.0, "finetune_lams": [1.0], "finetune_max_steps": 2,
         "min_group_size": 2},
    ],
}
MITIG = "--mitigation=" + json.dumps(SECTION)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    mp.setenv("FAIRQ_CACHE", str(tmp_path_factory.mktemp("cache")))
    base = ["--output_dir", str(out), *TINY]
    assert main(["--phase", "baseline", *base]) == 0
    assert main(["--phase", "mitigation", *base, MITIG]) == 0
    yield out
    mp.undo()


def _rows(run_dir):
    return pd.read_csv(run_dir / "metrics.csv", keep_default_na=False, na_values=[""])


def test_every_configured_mitigation_and_control_is_a_cell(run_dir):
    m = _rows(run_dir)
    got = sorted(zip(m["method"], m["variant"].fillna("")))
    assert got == sorted([
        ("baseline", ""), ("ptq_static", ""), ("bias_aware_calibration", ""),
        ("ptq_static", "observer=percentile"), ("bias_aware_calibration", "observer=percentile"),
        ("ptq_static", "backend=simulated_simulation=layer_input"),  # fine-tune's and preservation's control
        ("fairness_finetune", "lambda=0_max_steps=3"), ("fairness_finetune", "lambda=2_max_steps=3"),
        ("sensitive_layer_preservation", "min_group_size=2"),
        ("fairness_aware_quantizer", "max_dp_gap=0.0_finetune_lams=1.0_finetune_max_steps=2_min_group_size=2"),
    ])
    quantized = m[m["method"] != "baseline"]
    assert set(quantized["weight_bits"]) == {4} and set(quantized["act_bits"]) == {8}
    for _, row in m.iterrows():  # same per-sample contract as every other phase
        p = pd.read_parquet(run_dir / row["predictions"])
        assert len(p) == row["n"] and {"sample_id", "y_true", "y_pred", "prob", "Male", "Young"} <= set(p.columns)
    ft = m[m["method"] == "fairness_finetune"].set_index("variant")
    assert list(ft["lambda"]) == [0.0, 2.0] and set(ft["finetune_steps"]) == {3}


def test_bias_aware_cell_used_a_balanced_draw_of_the_natural_size(run_dir):
    m = _rows(run_dir)
    row = m[(m["method"] == "bias_aware_calibration") & m["variant"].isna()].iloc[0]
    record = json.loads((run_dir / "mitigation" / f"{row['cell']}.json").read_text())["calibration"]
    assert record["n"] == SECTION["calibration_samples"] == record["unique_samples"]
    assert set(record["drawn_groups"].values()) == {12}  # 48 samples over the 4 (Male, Young) groups


def test_preserved_layers_are_saved_with_the_cell(run_dir):
    m = _rows(run_dir)
    row = m[m["method"] == "sensitive_layer_preservation"].iloc[0]
    plan = json.loads((run_dir / row["plan"]).read_text())
    preserved = [r["layer"] for r in plan["layers"] if r["policy"] == "preserved"]
    assert sorted(plan["preserved"]) == sorted(preserved)  # plan order: most sensitive first
    assert (row["preserved_layers"] or "") == ";".join(plan["preserved"])
    assert plan["avg_bits"] <= plan["budget"] == 5.0 and row["avg_weight_bits"] == pytest.approx(plan["avg_bits"])
    assert all(r["bits"] is None for r in plan["layers"] if r["policy"] == "preserved")


def test_fairness_aware_quantizer_row_and_record_agree(run_dir):
    m = _rows(run_dir)
    row = m[m["method"] == "fairness_aware_quantizer"].iloc[0]
    rec = json.loads((run_dir / row["mitigation_record"]).read_text())
    assert rec["sensitive_names"] == ["Male", "Young"] and rec["max_dp_gap"] == 0.0
    tried = [h["method"] for h in rec["history"]]
    assert tried == ["ptq_static", "bias_aware_calibration", "sensitive_layer_preservation", "fairness_finetune"]
    assert str(row["constraint_met"]) == str(rec["constraint_met"]) and row["chosen_method"] == rec["chosen"]["method"]
    assert rec["constraint_met"] == (rec["final_dp_gap"] <= 0.0)
    assert row["val_dp_gap"] == pytest.approx(rec["final_dp_gap"])


def test_rerun_skips_finished_cells(run_dir, caplog):
    before = (run_dir / "metrics.csv").read_bytes()
    caplog.set_level("INFO", logger="fairq")
    assert main(["--phase", "mitigation", "--output_dir", str(run_dir), *TINY, MITIG]) == 0
    assert (run_dir / "metrics.csv").read_bytes() == before
    assert "already done" in caplog.text


def test_balanced_draw_follows_the_datamodule_seed_policy(run_dir, tmp_path):
    from datamodules import SyntheticDataModule
    from fairq.mitigation import balanced_draw

    dm = SyntheticDataModule(n_samples=400, image_size=32, cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup()
    for seed in (0, 1):
        want = dm.calibration_indices(40, balanced=True, seed=seed)
        assert np.array_equal(balanced_draw(torch.as_tensor(dm.sensitive_codes("train")), 40, seed), want)


def _plan(methods, bits=None, quantization=None):
    from fairq.sections import plan_run

    sections = {"mitigation": {"bits": bits, "methods": methods}}
    if quantization is not None:
        sections["quantization"] = {"methods": quantization}
    return plan_run(sections)["mitigation"]


def test_sweeps_lambda_restricts_bits_and_defaults_to_the_reference_widths():
    out = _plan([{"method": "fairness_finetune", "lam": [0, 0.5], "fairness": "eo"}], bits=[4, 8])
    assert [(p.config.weight_bits, p.config.lam) for p in out] == [(4, 0.0), (4, 0.5), (8, 0.0), (8, 0.5)]
    assert out[1].config.variant() == "lambda=0.5_fairness=eo" and out[1].entry == "mitigation.methods[0]"
    assert [p.config.weight_bits for p in _plan([{"method": "sensitive_layer_preservation", "bits": 8}],
                                                 bits=[4, 8])] == [8]
    # no bits anywhere: the widths the reference method (ptq_static) runs at in the quantization section
    ref = [{"method": "ptq_static", "bits": 3}, {"method": "ptq_dynamic", "bits": 8}, {"method": "ptq_static",
                                                                                        "bits": 6}]
    assert [p.config.weight_bits for p in _plan([{"method": "bias_aware_calibration"}], quantization=ref)] == [3, 6]
    # a list for a tuple-valued field is a value, not a sweep
    faq = _plan([{"method": "fairness_aware_quantizer", "max_dp_gap": 0.1, "finetune_lams": [1.0, 2.0]}], bits=[4])
    assert len(faq) == 1 and faq[0].config.finetune_lams == (1.0, 2.0)
    with pytest.raises(ValueError, match=r"mitigation.methods\[0\]: unknown method 'magic'"):
        _plan([{"method": "magic"}], bits=[4])
    with pytest.raises(ValueError, match=r"mitigation.methods\[1\] \(fairness_aware_quantizer\).*constraint"):
        _plan([{"method": "ptq_static"}, {"method": "fairness_aware_quantizer"}], bits=[4])


def test_mitigation_without_baseline_names_the_phase_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    assert main(["--phase", "mitigation", "--output_dir", str(tmp_path / "empty"), *TINY, MITIG]) == 2
    err = capsys.readouterr().err
    assert "--phase baseline" in err and "Traceback" not in err
