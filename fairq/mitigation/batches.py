"""Labelled batches with sensitive attributes: gather, group, re-draw and predict (shared by the mitigations).

A *pool* is a dict of columns gathered from batches: every per-sample tensor (``image`` or HF keyword inputs,
``target``, ``sensitive`` as ``[N, n_attrs]`` integer codes) and per-sample lists (``sample_id``), all of
length ``N``. Accepted batches: fairq dicts (``image, target, sensitive, sample_id``), any dict holding
``sensitive`` next to its model inputs, or ``(input, target, sensitive)`` tuples.
"""
from __future__ import annotations

from itertools import islice
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from fairq.compression.data import logits_of, model_device, split_batch

Pool = dict


def _as_dict(batch, i: int) -> dict:
    if isinstance(batch, dict):
        if "sensitive" not in batch:
            raise ValueError(f"batch {i} has no 'sensitive' key (keys: {sorted(batch)}); group-aware mitigations "
                             "need fairq batches (image, target, sensitive [B, n_attrs], sample_id)")
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 3:
        return {"image": batch[0], "target": batch[1], "sensitive": batch[2]}
    raise TypeError(f"batch {i} is a {type(batch).__name__}: group-aware mitigations need dict batches with "
                    "'sensitive' (fairq datamodule batches) or (input, target, sensitive) tuples")


def gather(data, limit: int | None = None) -> Pool:
    """Concatenate at most ``limit`` batches of ``data`` into one pool (CPU tensors)."""
    if data is None:
        raise ValueError("group-aware mitigation needs data with sensitive attributes, got None")
    batches = [data] if isinstance(data, dict) else data
    cols: dict[str, list] = {}
    for i, batch in enumerate(islice(batches, limit)):
        for k, v in _as_dict(batch, i).items():
            cols.setdefault(k, []).append(v)
    if not cols:
        raise ValueError("the data yielded no batches")
    pool = {}
    for k, parts in cols.items():
        if all(torch.is_tensor(p) for p in parts):
            pool[k] = torch.cat([p.detach().cpu() for p in parts])
        else:
            pool[k] = [x for p in parts for x in (p.tolist() if torch.is_tensor(p) else list(p))]
    sens = torch.as_tensor(pool["sensitive"])
    if sens.is_floating_point():
        raise ValueError("'sensitive' must hold integer level codes, got floats")
    pool["sensitive"] = sens.reshape(len(sens), -1).long()
    n = len(pool["sensitive"])
    bad = [k for k, v in pool.items() if len(v) != n]
    if bad:
        raise ValueError(f"pool columns {bad} do not have one entry per sample ({n} samples)")
    return pool


def pool_size(pool: Pool) -> int:
    return len(pool["sensitive"])


def group_ids(sensitive: torch.Tensor, columns: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample intersectional group id, ``[G, n_attrs]`` code rows of the groups) over ``columns``."""
    sensitive = torch.as_tensor(sensitive).reshape(len(sensitive), -1)
    if columns is not None:
        sensitive = sensitive[:, list(columns)]
    rows, ids = torch.unique(sensitive, dim=0, return_inverse=True)
    return ids, rows


def take(pool: Pool, index, batch_size: int) -> list[dict]:
    """Batches (dicts) of the pool samples at ``index`` (in that order)."""
    index = torch.as_tensor(np.asarray(index), dtype=torch.long)
    out = []
    for start in range(0, len(index), batch_size):
        idx = index[start:start + batch_size]
        out.append({k: (v[idx] if torch.is_tensor(v) else [v[i] for i in idx.tolist()]) for k, v in pool.items()})
    return out


@torch.no_grad()
def predict(model: nn.Module, data: Iterable, limit: int | None = None) -> Pool:
    """``{"target", "pred", "prob" [N, C], "sensitive"}`` of ``model`` over labelled batches with sensitive codes."""
    model.eval()
    device = model_device(model)
    out: dict[str, list] = {"target": [], "pred": [], "prob": [], "sensitive": []}
    batches = [data] if isinstance(data, dict) else data
    for i, batch in enumerate(islice(batches, limit)):
        batch = _as_dict(batch, i)
        args, kwargs, target = split_batch(batch)
        if target is None:
            raise ValueError(f"batch {i} has no target ('target'/'labels')")
        args = tuple(a.to(device) for a in args)
        kwargs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in kwargs.items()}
        prob = torch.softmax(logits_of(model(*args, **kwargs)).float(), -1).cpu()
        out["prob"].append(prob)
        out["pred"].append(prob.argmax(-1))
        out["target"].append(torch.as_tensor(target).cpu().long())
        out["sensitive"].append(torch.as_tensor(batch["sensitive"]).reshape(len(prob), -1).long().cpu())
    if not out["prob"]:
        raise ValueError("validation data yielded no batches")
    return {k: torch.cat(v) for k, v in out.items()}


def fairness_of(model: nn.Module, data: Iterable, columns: Sequence[int] | None = None,
                names: Sequence[str] | None = None, limit: int | None = None,
                min_group_size: int | None = None) -> dict:
    """:func:`fairq.metrics.fairness_metrics` of ``model``'s predictions on ``data`` over the sensitive
    ``columns`` (intersectional; default all), without ``per_group``."""
    from fairq.metrics import fairness_metrics

    p = predict(model, data, limit)
    sens = p["sensitive"].numpy()
    cols = list(range(sens.shape[1])) if columns is None else list(columns)
    if any(c < 0 or c >= sens.shape[1] for c in cols):
        raise ValueError(f"sensitive columns {cols} out of range: the batches carry {sens.shape[1]} attribute(s)")
    names = [f"attr{c}" for c in cols] if names is None else list(names)
    kw = {} if min_group_size is None else {"min_group_size": int(min_group_size)}
    out = fairness_metrics(p["target"].numpy(), p["pred"].numpy(), {n: sens[:, c] for n, c in zip(names, cols)},
                           labels=list(range(p["prob"].shape[1])), **kw)
    return {k: float(v) for k, v in out.items() if k != "per_group"}
