"""Multi-seed runs stay honest: one data set for every training seed, joins across seeds check that ids mean the
same sample, seeds run into one folder, costs of different kinds never share a Pareto frontier, and the
fairness-aware quantizer lets bugs through instead of treating them as an infeasible option."""
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fairq.analysis.flips import compression_exemplars
from fairq.analysis.load import store_from_frames
from fairq.analysis.pareto import compute_pareto
from fairq.cli import main, make_context, parse_args

TINY = [
    "--data.init_args.n_samples", "400", "--data.init_args.image_size", "32", "--data.init_args.batch_size", "32",
    "--models", "[tiny_cnn]", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
    "--evaluation.latency_repeats", "2", "--evaluation.progress", "false",
    "--analysis.n_bootstrap", "100", "--analysis.figures", "false", "--analysis.report", "false",
    "--quantization.methods", json.dumps([{"method": "ptq_static", "bits": 4}]),
]


def test_training_seeds_see_one_data_set(tmp_path):
    frames = []
    for seed in (0, 5):
        parser, cfg, name = parse_args(["--seed", str(seed), "--output_dir", str(tmp_path / f"s{seed}"), *TINY,
                                        "--data.init_args.cache_dir", str(tmp_path / "cache")])
        dm = make_context(parser, cfg, name).data()
        frames.append(dm.split_frame("test"))
        assert dm.sampling_seed == seed and dm.seed == 0
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_seeds_run_into_one_folder_and_analysis_pairs_each_with_its_baseline(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["--phase", "all", "--seeds", "[0, 1]", "--output_dir", str(out), *TINY,
                 "--mitigation.methods", "[]"]) == 0
    m = pd.read_csv(out / "metrics.csv")
    assert sorted(zip(m["method"], m["seed"])) == [("baseline", 0), ("baseline", 1), ("ptq_static", 0),
                                                    ("ptq_static", 1)]
    base = {s: pd.read_parquet(out / r) for s, r in zip(m["seed"], m["predictions"]) if s in (0, 1)}
    assert list(base[0]["sample_id"]) == list(base[1]["sample_id"])  # the same test samples for both seeds
    summary = pd.read_csv(out / "tables" / "summary.csv")
    acc = summary[(summary["method"] == "ptq_static") & (summary["metric"] == "accuracy")
                  & (summary["group"] == "all")]
    assert len(acc) == 1 and int(acc["n_seeds"].iloc[0]) == 2 and bool(acc["new_test"].iloc[0])
    d = m.set_index("seed")
    want = np.mean([d.loc[s][d.loc[s]["method"] == "ptq_static"]["accuracy"].iloc[0]
                    - d.loc[s][d.loc[s]["method"] == "baseline"]["accuracy"].iloc[0] for s in (0, 1)])
    assert acc["delta_mean"].iloc[0] == pytest.approx(want)
    assert acc["ci_low"].iloc[0] <= acc["delta_mean"].iloc[0] <= acc["ci_high"].iloc[0]


def _cell(cid, method, seed, y, pred, group):
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(len(y))], "y_true": y, "y_pred": pred,
                          "prob": pred.astype(float), "a": group})
    row = {"cell": cid, "dataset": "d", "model": "m", "method": method, "seed": seed, "sensitive_attributes": "a",
           "predictions": ""}
    return row, frame


def test_cross_seed_joins_refuse_ids_that_mean_other_samples():
    rng = np.random.default_rng(0)
    y, g = rng.integers(0, 2, 60), np.array(["x", "y"] * 30)
    rows, frames = [], {}
    for cid, method, seed, labels in (("b0", "baseline", 0, y), ("q0", "ptq_static", 0, y),
                                      ("b1", "baseline", 1, 1 - y), ("q1", "ptq_static", 1, 1 - y)):
        row, frame = _cell(cid, method, seed, labels, labels, g)  # seed 1: another data set under the same ids
        rows.append(row)
        frames[cid] = frame
    store = store_from_frames(pd.DataFrame(rows), frames)
    with pytest.raises(ValueError, match="not evaluated on the same samples"):
        compression_exemplars(store)


def test_pareto_never_puts_estimated_and_serialized_sizes_on_one_frontier():
    rows = [  # (method, backend, size_kind, size, accuracy)
        ("baseline", "fp32", "serialized", 10.0, 0.90),
        ("ptq_static", "int8", "serialized", 3.0, 0.89),
        ("ptq_static_w4", "simulated", "packed_estimate", 1.5, 0.895),
    ]
    m = pd.DataFrame([{"cell": f"c{i}", "dataset": "d", "model": "m", "target": "t", "method": meth, "variant": "",
                       "weight_bits": 8, "act_bits": 8, "backend": be, "seed": 0, "config": meth, "size_kind": kind,
                       "size_mb": size, "latency_ms": 1.0, "accuracy": acc, "worst_group_accuracy": acc,
                       "equalized_odds_difference": 0.1, "demographic_parity_difference": 0.1}
                      for i, (meth, be, kind, size, acc) in enumerate(rows)])
    p = compute_pareto(m)
    size = p[(p["cost_metric"] == "size_mb") & (p["accuracy_metric"] == "accuracy")
             & (p["gap_metric"] == "equalized_odds_difference")].set_index("method")
    # mixed on one axis, the packed INT4 estimate (smaller, more accurate) would dominate real INT8
    assert size.loc["ptq_static", "on_frontier"] and size.loc["ptq_static", "cost_kind"] == "serialized"
    assert size.loc["ptq_static_w4", "cost_kind"] == "packed_estimate"
    lat = p[p["cost_metric"] == "latency_ms"].set_index("method")
    assert set(lat.loc["ptq_static_w4", "cost_kind"] if np.ndim(lat.loc["ptq_static_w4", "cost_kind"])
               else [lat.loc["ptq_static_w4", "cost_kind"]]) == {"simulation"}


def test_fairness_aware_quantizer_records_infeasible_options_but_lets_bugs_through(monkeypatch):
    import fairq.mitigation.fairness_aware as fa
    from fairq.errors import InfeasibleError

    model = nn.Sequential(nn.Linear(4, 2))
    data = [{"input": torch.randn(8, 4), "target": torch.randint(0, 2, (8,)),
             "sensitive": torch.randint(0, 2, (8, 1))}] * 2
    faq = fa.FairnessAwareQuantizer(4, max_eo_gap=1.0, options=[("ptq_static", {}), ("ptq_static", {"observer": "mse"})])
    real = fa.compress
    calls = []

    def infeasible_first(model, config, inputs):
        calls.append(config.observer)
        if len(calls) == 1:
            raise InfeasibleError("budget below any allocation")
        return real(model, config, inputs)

    monkeypatch.setattr(fa, "compress", infeasible_first)
    faq.quantize(model, data, data)
    assert "InfeasibleError" in faq.history[0]["error"] and faq.chosen["options"]["observer"] == "mse"

    def buggy(model, config, inputs):
        raise TypeError("a bug in an option")

    monkeypatch.setattr(fa, "compress", buggy)
    with pytest.raises(TypeError, match="a bug"):
        fa.FairnessAwareQuantizer(4, max_eo_gap=1.0).quantize(model, data, data)


def test_multihead_attention_fused_projection_is_named_not_silently_kept(caplog):
    from fairq.compression.core.modules import quantizable_layers

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2)
            self.fc = nn.Linear(8, 2)

    caplog.set_level(logging.WARNING, logger="fairq.compression.core.modules")
    layers = quantizable_layers(Block())
    assert "fc" in layers and "attn.in_proj_weight" in caplog.text
