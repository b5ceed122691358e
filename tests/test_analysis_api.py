"""fairq.api: compute_fairness_metrics / compare_quantization_methods on a tiny model with known behaviour."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fairq.api import compare_quantization_methods, compute_fairness_metrics

N, D = 800, 8


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    group = torch.randint(0, 2, (N,), generator=g)
    x = torch.randn(N, D, generator=g)
    x[:, 1] = group.float()                                   # the model can see the group
    y = (x[:, 0] + 0.3 * torch.randn(N, generator=g) > 0).long()
    return x, y, group


def _loader(batch=100):
    x, y, group = _data()
    return [{"image": x[i:i + batch], "target": y[i:i + batch], "sensitive": group[i:i + batch, None],
             "sample_id": [f"s{j}" for j in range(i, min(i + batch, N))]} for i in range(0, N, batch)]


def _model(group_bias=0.0):
    lin = nn.Linear(D, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1, 0] = 4.0                                 # logit_1 − logit_0 = 4·x0 (+ bias for group 1)
        lin.weight[1, 1] = group_bias
    return nn.Sequential(lin)


def test_compute_fairness_metrics_matches_fairlearn():
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    model = _model(group_bias=1.5)
    res = compute_fairness_metrics(model, _loader(), sensitive_attr="group", sensitive_levels={"group": ["a", "b"]},
                                   n_bootstrap=100)
    x, y, group = _data()
    pred = model(x).argmax(1).numpy()
    sens = np.array(["a", "b"])[group.numpy()]
    assert res["accuracy"] == pytest.approx((pred == y.numpy()).mean())
    assert res["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y.numpy(), pred, sensitive_features=sens))
    assert res["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(y.numpy(), pred, sensitive_features=sens))
    assert sorted(res["per_group"]["group"]) == ["a", "b"]
    ci = res["ci"].set_index(["metric", "group"])
    assert ci.loc[("accuracy", "all"), "ci_low"] <= res["accuracy"] <= ci.loc[("accuracy", "all"), "ci_high"]
    # tuple batches (input, target, sensitive) give the same numbers
    tuples = [(b["image"], b["target"], b["sensitive"]) for b in _loader()]
    again = compute_fairness_metrics(model, tuples, sensitive_attr="group")
    assert again["demographic_parity_difference"] == pytest.approx(res["demographic_parity_difference"])


def test_compute_fairness_metrics_needs_column_names():
    loader = _loader()
    for b in loader:
        b["sensitive"] = torch.cat([b["sensitive"], b["sensitive"]], dim=1)
    with pytest.raises(ValueError, match="sensitive_names"):
        compute_fairness_metrics(_model(), loader)
    with pytest.raises(ValueError, match="not among"):
        compute_fairness_metrics(_model(), loader, sensitive_attr="race", sensitive_names=["g1", "g2"])


def test_compare_quantization_methods(tmp_path):
    base = _model()
    biased = _model(group_bias=2.0)       # a "compressed" model that selects group 1 far more often
    x, _, _ = _data(seed=1)
    methods = {"same": copy.deepcopy(base), "biased": biased, "int4": ("ptq_static", 4),
               "dyn8": {"method": "ptq_dynamic", "bit_width": 8}}
    cmp = compare_quantization_methods(base, methods, _loader(), "group", calibration_data=[x[:200]],
                                       n_bootstrap=200)
    frame = cmp.to_frame()
    assert list(frame.index) == ["baseline", "same", "biased", "int4", "dyn8"]
    ref = compute_fairness_metrics(base, _loader(), sensitive_attr="group")
    assert frame.loc["baseline", "accuracy"] == pytest.approx(ref["accuracy"])
    # identical model: no change, nothing to test against
    assert frame.loc["same", "accuracy_delta"] == 0 and frame.loc["same", "flip_rate"] == 0
    assert frame.loc["same", "accuracy_p_adjusted"] == pytest.approx(1.0)
    # the biased model widens the DP gap, significantly after BH
    assert frame.loc["biased", "demographic_parity_difference_delta"] > 0.1
    assert frame.loc["biased", "demographic_parity_difference_p_adjusted"] < 0.05
    assert frame.loc["biased", "demographic_parity_difference_delta_ci_low"] > 0
    assert frame.loc["int4", "size_mb"] < frame.loc["baseline", "size_mb"]
    path = cmp.save_to_csv(tmp_path / "cmp.csv")
    back = pd.read_csv(path, index_col="method")
    np.testing.assert_allclose(back["accuracy"], frame["accuracy"])
    fig = cmp.plot_comparison(path=tmp_path / "cmp.png")
    assert len(fig.axes) == 4 and (tmp_path / "cmp.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="unique"):
        compare_quantization_methods(base, ["ptq_static", "ptq_static"], _loader(), "group")
