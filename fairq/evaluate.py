"""Model → per-sample predictions frame → metrics row. The one place fairq evaluates a model."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from torch import nn

from fairq.batches import ClassificationTask, predict


def predict_frame(model: nn.Module, loader: Iterable, *, task: ClassificationTask | None = None,
                  sensitive_names: Sequence[str] | None = None,
                  sensitive_levels: Mapping[str, Sequence[str]] | None = None, progress: bool = True,
                  desc: str = "evaluate") -> pd.DataFrame:
    """Run ``model`` over ``loader`` (read by ``task``, :func:`fairq.batches.predict`) and return one row per sample.

    Columns: ``sample_id, y_true, y_pred, prob_0..prob_{C-1}`` (``prob`` = ``prob_1`` when binary) and one string
    column per sensitive attribute — the ``predictions/<cell>.parquet`` contract. Attribute names and level
    labels come from ``task`` (a datamodule's ``.task``) unless given here.
    """
    task = task or ClassificationTask()
    names = list(sensitive_names if sensitive_names is not None else task.sensitive_names)
    levels = dict(task.sensitive_levels)
    levels.update(sensitive_levels or {})
    p = predict(model, loader, task, progress=progress, desc=desc)
    frame = pd.DataFrame({"sample_id": p.sample_ids, "y_true": p.target, "y_pred": p.pred})
    for c in range(p.prob.shape[1]):
        frame[f"prob_{c}"] = p.prob[:, c]
    if p.prob.shape[1] == 2:
        frame["prob"] = p.prob[:, 1]
    if names:
        if p.sensitive is None or p.sensitive.shape[1] != len(names):
            got = 0 if p.sensitive is None else p.sensitive.shape[1]
            raise ValueError(f"the batches carry {got} sensitive column(s); expected {len(names)} ({names})")
        for j, name in enumerate(names):
            labels = levels.get(name)
            if labels is None:  # no level labels known: the codes themselves
                labels = [str(i) for i in range(int(p.sensitive[:, j].max()) + 1)]
            labels = np.asarray(labels, dtype=object)
            frame[name] = labels[p.sensitive[:, j]]
    return frame


def frame_metrics(frame: pd.DataFrame, sensitive_names: Sequence[str], **kwargs) -> dict:
    """The scalar fairness metrics of a predictions frame (intersectional groups over ``sensitive_names``)."""
    from fairq.metrics import fairness_metrics

    out = fairness_metrics(frame["y_true"].to_numpy(), frame["y_pred"].to_numpy(),
                           frame[list(sensitive_names)], **kwargs)
    return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in out.items() if k != "per_group"}
