"""FairnessMonitor logs exactly what fairq.metrics computes on the epoch's predictions, batch gaps included."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from callbacks import FairnessMonitor
from fairq.metrics import fairness_metrics


class _Module:
    def __init__(self):
        self.logged = {}

    def log_dict(self, values, **kwargs):
        self.logged.update({k: float(v) for k, v in values.items()})


def test_logged_gaps_equal_one_shot_metrics_even_when_a_batch_lacks_a_group():
    rng = np.random.default_rng(0)
    n = 400
    sens = np.stack([rng.integers(0, 2, n), rng.integers(0, 3, n)], 1)
    y = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.8, y, 1 - y)
    pred[(sens[:, 0] == 1) & (sens[:, 1] == 2)] = 1  # a group-dependent selection rate
    dm = SimpleNamespace(sensitive_names=["a", "b"], sensitive_levels={"a": ["a0", "a1"], "b": ["b0", "b1", "b2"]},
                         num_classes=2)
    trainer = SimpleNamespace(datamodule=dm, sanity_checking=False)
    module = _Module()
    cb = FairnessMonitor()
    cb.setup(trainer, module)
    cb.on_validation_epoch_start(trainer, module)
    order = np.argsort(sens[:, 1] == 2, kind="stable")  # first batches hold no b=b2 sample at all
    for chunk in np.array_split(order, 8):
        out = {"preds": torch.as_tensor(pred[chunk]), "target": torch.as_tensor(y[chunk]),
               "sensitive": torch.as_tensor(sens[chunk])}
        cb.on_validation_batch_end(trainer, module, out, None, 0)
    cb.on_validation_epoch_end(trainer, module)

    frame = pd.DataFrame({"a": sens[:, 0], "b": sens[:, 1]})
    inter = fairness_metrics(y, pred, frame, min_group_size=1)
    only_b = fairness_metrics(y, pred, frame[["b"]], min_group_size=1)
    got = module.logged
    assert got["fairness/intersectional/dp_diff"] == pytest.approx(inter["demographic_parity_difference"])
    assert got["fairness/intersectional/eo_diff"] == pytest.approx(inter["equalized_odds_difference"])
    assert got["fairness/intersectional/worst_group_acc"] == pytest.approx(inter["worst_group_accuracy"])
    assert got["fairness/b/dp_diff"] == pytest.approx(only_b["demographic_parity_difference"])
    assert inter["demographic_parity_difference"] > 0.3  # the planted gap is visible
