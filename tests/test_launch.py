"""``--launcher ray``: a local Ray with 2 workers gives the serial run's cells and numbers; a worker killed
mid-cell is retried and every cell is stored exactly once; without Ray the launcher says how to install it."""
import json
import sys

import pandas as pd
import pytest
import torch

from fairq.cli import main

TINY = [
    "--data.init_args.n_samples", "400", "--data.init_args.image_size", "32", "--data.init_args.batch_size", "32",
    "--models", "[tiny_cnn]", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
    "--evaluation.latency_repeats", "2", "--evaluation.progress", "false",
    "--analysis.n_bootstrap", "50", "--analysis.figures", "false", "--analysis.report", "false",
]
# wall-clock timings: they measure the machine's load at that moment, not the cell's result
TIMING = ["latency_ms", "latency_ratio_vs_fp32", "eval_seconds", "compress_seconds"]


def test_ray_launcher_missing_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    # both default models: the default config's soft-head-pruning entry names tiny_vit (checked first)
    assert main(["--phase", "all", "--launcher", "ray", "--output_dir", str(tmp_path), *TINY,
                 "--models", "[tiny_cnn, tiny_vit]"]) == 2
    err = capsys.readouterr().err
    assert "pip install -r requirements-ray.txt" in err and "Traceback" not in err
    assert not (tmp_path / "metrics.csv").exists()


@pytest.mark.slow
def test_local_ray_gives_the_serial_runs_cells_and_numbers(tmp_path, monkeypatch):
    """Every cell and every value but the timings, with the serial run on 2 threads and each Ray worker on 1 —
    training (a baseline, QAT) and a sensitivity-driven mixed-precision plan included."""
    pytest.importorskip("ray", reason="Ray is optional (requirements-ray.txt); CI installs it")
    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    sections = ["--quantization.methods", json.dumps([{"method": "ptq_static", "bits": 8},
                                                      {"method": "ptq_static", "bits": 4},
                                                      {"method": "mixed_precision", "bits": 4},
                                                      {"method": "qat", "bits": 4, "epochs": 1}]),
                "--mitigation.methods", json.dumps([{"method": "bias_aware_calibration", "bits": 4}])]
    runs = {}
    for launcher, threads in (("local", 2), ("ray", 1)):
        out = tmp_path / launcher
        before = torch.get_num_threads()
        torch.set_num_threads(threads)  # the serial run computes on 2 threads, each Ray worker on cpus_per_cell
        try:
            assert main(["--phase", "all", "--launcher", launcher, "--ray.cpus_per_cell", "1",
                         "--output_dir", str(out), *TINY, *sections]) == 0
        finally:
            torch.set_num_threads(before)
        runs[launcher] = pd.read_csv(out / "metrics.csv").set_index("cell").sort_index()
    local, ray_ = runs["local"], runs["ray"]
    assert list(local.index) == list(ray_.index) and len(local) == 6  # baseline, 4 quantization, bias-aware
    assert sorted(local.columns) == sorted(ray_.columns)
    values = [c for c in local.columns if c not in TIMING]
    pd.testing.assert_frame_equal(local[values], ray_[values], check_exact=True)
    assert (tmp_path / "ray" / "tables" / "findings.csv").exists()  # analysis ran in the driver


def test_a_control_cell_is_the_same_row_whichever_section_reaches_it_first(tmp_path, monkeypatch):
    """Ray may start bias-aware calibration (whose control is plain PTQ W4A8) before the quantization task of that
    very cell. The control must still be the quantization section's cell: its phase and its calibration draw (the
    mitigation section draws fewer samples here, so an order-dependent draw changes the numbers)."""
    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    sections = ["--quantization.methods", json.dumps([{"method": "ptq_static", "bits": 4}]),
                "--mitigation.methods", json.dumps([{"method": "bias_aware_calibration", "bits": 4}]),
                "--mitigation.calibration_samples", "64"]
    runs = {}
    for name, order in (("in_order", ["all"]), ("mitigation_first", ["baseline", "mitigation", "quantization"])):
        out = tmp_path / name
        for phase in order:
            assert main(["--phase", phase, "--output_dir", str(out), *TINY, *sections]) == 0
        runs[name] = pd.read_csv(out / "metrics.csv").set_index("cell").sort_index()
    first, second = runs["in_order"], runs["mitigation_first"]
    assert list(first.index) == list(second.index) and len(first) == 3  # baseline, ptq_static w4a8, bias-aware
    values = [c for c in first.columns if c not in TIMING]
    pd.testing.assert_frame_equal(first[values], second[values], check_exact=True)
    ptq = first[first["method"] == "ptq_static"].iloc[0]
    assert ptq["phase"] == "quantization"


@pytest.mark.slow
def test_a_worker_killed_mid_cell_is_retried_and_every_cell_is_stored_once(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="Ray is optional (requirements-ray.txt); CI installs it")
    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAIRQ_METHOD_MODULES", "tests.plugins.crash_once")
    marker = tmp_path / "crashed"
    out = tmp_path / "run"
    sections = ["--quantization.methods", json.dumps([{"method": "_crash_once", "marker": str(marker)},
                                                      {"method": "ptq_static", "bits": 4}]),
                "--mitigation.methods", "[]"]
    assert main(["--phase", "all", "--launcher", "ray", "--ray.max_retries", "2", "--output_dir", str(out),
                 *TINY, *sections]) == 0
    assert marker.exists()  # the first attempt really died
    m = pd.read_csv(out / "metrics.csv")
    assert m["cell"].is_unique and sorted(m["method"]) == ["_crash_once", "baseline", "ptq_static"]
    for rel in m["predictions"]:
        assert len(pd.read_parquet(out / rel)) == int(m["n"].iloc[0])  # nothing torn
    # a rerun skips every finished cell and leaves the table as it was
    before = (out / "metrics.csv").read_bytes()
    assert main(["--phase", "quantization", "--launcher", "ray", "--output_dir", str(out), *TINY, *sections]) == 0
    assert (out / "metrics.csv").read_bytes() == before
