"""Model → per-sample predictions frame → metrics row. The one place fairq evaluates a model."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm


@torch.inference_mode()
def predict_frame(model: nn.Module, loader: Iterable[Mapping], *, sensitive_names: Sequence[str],
                  sensitive_levels: Mapping[str, Sequence[str]], progress: bool = True,
                  desc: str = "evaluate") -> pd.DataFrame:
    """Run ``model`` over fairq dict batches and return one row per sample.

    Columns: ``sample_id, y_true, y_pred, prob_0..prob_{C-1}`` (``prob`` = ``prob_1`` when binary) and one string
    column per sensitive attribute — the ``predictions/<cell>.parquet`` contract.
    """
    if hasattr(model, "eval"):
        model.eval()
    ids, ys, probs, sens = [], [], [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        logits = model(batch["image"])
        logits = logits.logits if hasattr(logits, "logits") else logits
        probs.append(torch.softmax(logits.float(), dim=-1).cpu())
        ys.append(batch["target"].cpu())
        sens.append(batch["sensitive"].cpu())
        ids.extend(str(s) for s in batch["sample_id"])
    p = torch.cat(probs).numpy()
    frame = pd.DataFrame({"sample_id": ids, "y_true": torch.cat(ys).numpy().astype(np.int64),
                          "y_pred": p.argmax(1).astype(np.int64)})
    for c in range(p.shape[1]):
        frame[f"prob_{c}"] = p[:, c]
    if p.shape[1] == 2:
        frame["prob"] = p[:, 1]
    codes = torch.cat(sens).numpy()
    for j, name in enumerate(sensitive_names):
        levels = np.asarray(sensitive_levels[name], dtype=object)
        frame[name] = levels[codes[:, j]]
    return frame


def frame_metrics(frame: pd.DataFrame, sensitive_names: Sequence[str], **kwargs) -> dict:
    """The scalar fairness metrics of a predictions frame (intersectional groups over ``sensitive_names``)."""
    from fairq.metrics import fairness_metrics

    out = fairness_metrics(frame["y_true"].to_numpy(), frame["y_pred"].to_numpy(),
                           frame[list(sensitive_names)], **kwargs)
    return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in out.items() if k != "per_group"}
