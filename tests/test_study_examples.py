"""The Beyond-Naive-Quantization study's README examples, essentially verbatim, against fairq: fairq imports, a fairq
datamodule's own loaders and the dataset's attribute names (``Male``, ``Young``), a tiny model."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from datamodules import SyntheticDataModule
from fairq import FairnessAwareQuantizer, apply_quantization, compare_quantization_methods, compute_fairness_metrics
from fairq.compression.quant.qat import train_briefly
from fairq.compression.core.registry import ALIASES, resolve_alias
from fairq.metrics import fairness_metrics
from fairq.models import create_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    dm = SyntheticDataModule(n_samples=600, image_size=32, batch_size=32,
                             cache_dir=str(tmp_path_factory.mktemp("cache")))
    dm.prepare_data()
    dm.setup()
    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=dm.num_classes)
    train_briefly(model, dm.train_dataloader(), epochs=2, lr=3e-3)
    return dm, model.eval()


def test_example_apply_then_compute_fairness_metrics(setup):
    dm, model = setup
    quantized_model = apply_quantization(model, method="PTQ", bit_width=8,
                                         calibration_data=dm.calibration_dataloader(128))
    metrics = compute_fairness_metrics(quantized_model, dm.test_dataloader(), sensitive_attr="Male")
    text = f"Demographic Parity: {metrics['demographic_parity']:.4f}\nEqualized Odds: {metrics['equalized_odds']:.4f}"
    assert "Demographic Parity" in text
    # the study's names read fairq's numbers; fairq's names stay the listed ones
    assert metrics["demographic_parity"] == metrics["demographic_parity_difference"]
    assert metrics["equalized_odds"] == metrics["equalized_odds_difference"]
    assert "demographic_parity" not in metrics and metrics.get("no_such_metric") is None
    # grouped by Male alone, computed independently from the stored predictions
    p = metrics["predictions"]
    want = fairness_metrics(p["y_true"], p["y_pred"], p[["Male"]])
    assert metrics["demographic_parity"] == pytest.approx(want["demographic_parity_difference"])
    assert set(p["Male"]) == set(dm.sensitive_levels["Male"])  # level labels, from the loader itself
    from fairq.compression import model_size_mb

    assert metrics["model_size_mb"] == pytest.approx(model_size_mb(quantized_model))
    assert metrics["model_size_mb"] < 0.5 * model_size_mb(model)  # real INT8 weights on disk


def test_example_compare_quantization_methods(setup, tmp_path):
    dm, model = setup
    results = compare_quantization_methods(
        model=model, methods=["PTQ_INT8", "PTQ_INT4", "QAT_INT8", "bias_aware"], test_loader=dm.test_dataloader(),
        sensitive_attrs=["Male", "Young"], calibration_data=dm.calibration_dataloader(128),
        train_loader=dm.train_dataloader(), n_bootstrap=50)
    fig = results.plot_comparison()
    path = results.save_to_csv(tmp_path / "comparison.csv")
    frame = pd.read_csv(path, index_col=0)
    assert list(frame.index) == ["baseline", "PTQ_INT8", "PTQ_INT4", "QAT_INT8", "bias_aware"]
    assert len(fig.axes) == 4
    # each alias ran its method at its width: INT4 has at most 16 levels per output channel
    from fairq.compression import effective_weights, layer_bits

    q4 = results.models["PTQ_INT4"]
    assert {b for b in layer_bits(q4).values() if b is not None} == {4}
    assert max(max(torch.unique(r).numel() for r in w.flatten(1)) for w in effective_weights(q4).values()) <= 16
    acc = {k: (f["y_true"] == f["y_pred"]).mean() for k, f in results.predictions.items()}
    assert frame.loc["PTQ_INT4", "accuracy"] == pytest.approx(acc["PTQ_INT4"])


def test_compare_names_the_missing_training_data_before_any_work(setup):
    """A loader that is not fairq's has no datamodule to draw from: the missing argument is named."""
    dm, model = setup
    plain = list(dm.test_dataloader())  # batches alone: no datamodule behind them
    with pytest.raises(ValueError, match=r"'QAT_INT8' needs training batches.*train_loader="):
        compare_quantization_methods(model=model, methods=["PTQ_INT8", "QAT_INT8"], test_loader=plain,
                                     sensitive_attrs=["Male"], sensitive_names=["Male", "Young"],
                                     calibration_data=dm.calibration_dataloader(64))


def test_example_compare_verbatim_takes_its_data_from_the_loader_s_datamodule(setup, caplog):
    """The study's second example as written (no calibration or training data): a fairq loader knows its
    datamodule, so calibration and QAT batches come from that datamodule's training split — never the test split —
    and the log says so."""
    import logging

    from fairq.api import _method_inputs, _method_specs, datamodule_of

    dm, model = setup
    test_loader = dm.test_dataloader()
    assert datamodule_of(test_loader) is dm and datamodule_of(dm) is dm and datamodule_of([]) is None
    with caplog.at_level(logging.INFO, logger="fairq"):
        results = compare_quantization_methods(model=model, methods=["PTQ_INT8", "PTQ_INT4", "QAT_INT8", "bias_aware"],
                                               test_loader=test_loader, sensitive_attrs=["Male", "Young"],
                                               n_bootstrap=20)
    assert list(results.to_frame().index) == ["baseline", "PTQ_INT8", "PTQ_INT4", "QAT_INT8", "bias_aware"]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "no calibration_data given" in said and "no train_loader given" in said and "training split" in said
    # what each method got: training-split batches only
    inputs = _method_inputs(_method_specs(["PTQ_INT8", "QAT_INT8", "bias_aware"], 8), dm, 0,
                            calibration_data=None, train_loader=None, validation_data=None)
    test_ids = set(dm.test_dataloader().dataset.sample_ids)
    train_ids = set(dm.dataset("train").sample_ids)
    calib = inputs["PTQ_INT8"]["calibration_data"]
    calib_ids = {calib.dataset.dataset.sample_ids[i] for i in calib.dataset.indices}
    assert len(calib_ids) == min(256, len(train_ids)) and calib_ids <= train_ids and not calib_ids & test_ids
    balanced = inputs["bias_aware"]["calibration_data"]
    assert {balanced.dataset.dataset.sample_ids[i] for i in balanced.dataset.indices} <= train_ids
    assert set(inputs["QAT_INT8"]["train_loader"].dataset.sample_ids) == train_ids
    # what the caller passes wins
    mine = dm.calibration_dataloader(32)
    assert _method_inputs(_method_specs(["PTQ_INT8"], 8), dm, 0, calibration_data=mine, train_loader=None,
                          validation_data=None)["PTQ_INT8"]["calibration_data"] is mine


def test_example_fairness_aware_quantizer_reports_the_measured_gap_honestly(setup):
    dm, model = setup
    quantizer = FairnessAwareQuantizer(bit_width=8, max_dp_gap=0.01, sensitive_attributes=["Male", "Young"])
    quantized_model = quantizer.quantize(model=model, calibration_data=dm.calibration_dataloader(256),
                                         fairness_constraint=True)
    assert isinstance(quantized_model, torch.nn.Module)
    assert quantizer.names == ["Male", "Young"] and quantizer.columns == [0, 1]  # names taken from the data
    assert quantizer.constraint_met == (quantizer.final_dp_gap <= 0.01)  # whatever it is, it is the truth
    assert math.isfinite(quantizer.final_dp_gap) and quantizer.chosen["dp_gap"] == quantizer.final_dp_gap
    # the gap was measured on a held-out quarter of the calibration samples, not on data it calibrated on
    assert all(r.get("skipped") == "no train_data given" for r in quantizer.history
               if r["method"] == "fairness_finetune")


def test_alias_table_is_one_mapping_onto_registered_methods():
    from fairq.methods import METHODS

    for alias, (method, bits) in ALIASES.items():
        assert method in METHODS and alias not in METHODS
        assert resolve_alias(alias, 3) == (method, bits if bits is not None else 3)
    assert resolve_alias("ptq_static", 4) == ("ptq_static", 4)
    assert np.all([resolve_alias(a)[0] in METHODS for a in ALIASES])
