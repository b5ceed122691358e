"""End to end through main.py on a tiny synthetic run: baseline → quantization → analysis, store contract, resume."""
import json

import pandas as pd
import pytest

from fairq.cli import main

TINY = [
    "--data.init_args.n_samples", "480", "--data.init_args.image_size", "32", "--data.init_args.batch_size", "32",
    "--models", "[tiny_cnn]", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
    "--evaluation.latency_repeats", "2", "--evaluation.progress", "false",
]
QUANT = ('--quantization={"calibration_samples": 64, "methods": [{"method": "ptq_static", "bits": 8}, '
         '{"method": "ptq_static", "bits": 4, "observer": "percentile"}, '
         '{"method": "qat", "bits": 4, "epochs": 1, "max_steps": 3}]}')


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    mp.setenv("FAIRQ_CACHE", str(tmp_path_factory.mktemp("cache")))
    base = ["--output_dir", str(out), *TINY]
    assert main(["--phase", "baseline", *base]) == 0
    assert main(["--phase", "quantization", *base, QUANT]) == 0
    assert main(["--phase", "analysis", *base, '--analysis={"n_bootstrap": 50}']) == 0
    yield out
    mp.undo()


def test_store_contract(run_dir):
    for name in ("config.yaml", "environment.json", "data.json", "metrics.csv", "report.html"):
        assert (run_dir / name).exists(), name
    m = pd.read_csv(run_dir / "metrics.csv")
    assert list(m["method"]) == ["baseline", "ptq_static", "ptq_static", "qat"]
    for col in ("accuracy", "worst_group_accuracy", "demographic_parity_difference", "equalized_odds_difference",
                "size_mb", "latency_ms", "predictions"):
        assert m[col].notna().all(), col
    assert set(m["weight_bits"]) == {32, 8, 4}
    assert "observer=percentile" in set(m["variant"].fillna(""))
    from fairq.compression.backends.int8 import int8_ranges

    int8_rows = m[m["backend"] == "int8"]  # ptq_static w8 runs real kernels; its activation range is on record
    assert len(int8_rows) == 1 and set(int8_rows["int8_act_range"]) == {f"0..{int8_ranges()[0]}"}
    assert m.loc[m["backend"] != "int8", "int8_act_range"].isna().all()
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["packages"]["torch"]


def test_metrics_rows_are_computed_from_the_stored_predictions(run_dir):
    from fairq.metrics import fairness_metrics

    m = pd.read_csv(run_dir / "metrics.csv")
    for _, row in m.iterrows():
        p = pd.read_parquet(run_dir / row["predictions"])
        assert {"sample_id", "y_true", "y_pred", "prob", "Male", "Young"} <= set(p.columns)
        assert len(p) == row["n"] and p["sample_id"].is_unique
        again = fairness_metrics(p["y_true"], p["y_pred"], p[["Male", "Young"]])
        assert again["accuracy"] == pytest.approx(row["accuracy"])
        assert again["demographic_parity_difference"] == pytest.approx(row["demographic_parity_difference"],
                                                                       nan_ok=True)
    base = pd.read_parquet(run_dir / m.loc[0, "predictions"])
    q4 = pd.read_parquet(run_dir / m.loc[2, "predictions"])
    assert (base["sample_id"] == q4["sample_id"]).all()
    assert not (base["prob"] == q4["prob"]).all()  # the 4-bit model really computes something else


def test_tensorboard_has_fairness_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    tags = set()
    for ev in events:
        acc = EventAccumulator(str(ev))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert any(t.startswith("fairness/intersectional/") for t in tags), tags
    assert any(t.startswith("fairness/Male/") for t in tags), tags


def test_rerun_skips_finished_cells(run_dir, caplog):
    before = (run_dir / "metrics.csv").read_bytes()
    caplog.set_level("INFO", logger="fairq")
    assert main(["--phase", "baseline", "--output_dir", str(run_dir), *TINY]) == 0
    assert main(["--phase", "quantization", "--output_dir", str(run_dir), *TINY, QUANT]) == 0
    assert (run_dir / "metrics.csv").read_bytes() == before
    assert "already" in caplog.text


def test_phase_without_baseline_names_the_phase_to_run(tmp_path, capsys):
    assert main(["--phase", "quantization", "--output_dir", str(tmp_path / "empty"), *TINY, QUANT]) == 2
    err = capsys.readouterr().err
    assert "--phase baseline" in err and "Traceback" not in err
