"""Labelled batches with sensitive attributes: gather, group and re-draw (shared by the mitigations).

A *pool* is a dict of columns gathered from batches (read with :func:`fairq.batches.split_batch`): the model
inputs (one input under ``"input"``, or Hugging Face keyword inputs under their names), ``target``,
``sensitive`` as ``[N, n_attrs]`` integer codes and ``sample_id``, all of length ``N``. :func:`take` turns pool
rows back into batches that :func:`~fairq.batches.split_batch` reads the same way.
"""
from __future__ import annotations

from itertools import islice
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from fairq.batches import as_batches, predict, split_batch

Pool = dict


def gather(data, limit: int | None = None) -> Pool:
    """Concatenate at most ``limit`` batches of ``data`` into one pool (CPU tensors)."""
    if data is None:
        raise ValueError("group-aware mitigation needs data with sensitive attributes, got None")
    cols: dict[str, list] = {}
    for i, raw in enumerate(islice(as_batches(data), limit)):
        b = split_batch(raw)
        if b.sensitive is None:
            raise ValueError(f"batch {i} carries no sensitive codes: group-aware mitigations need fairq batches "
                             "(a dict with 'sensitive' [B, n_attrs]) or (input, target, sensitive) tuples")
        inputs = b.kwargs if b.kwargs else {"input": b.args[0]}
        row = {**inputs, "sensitive": b.sensitive}
        if b.target is not None:
            row["target"] = torch.as_tensor(b.target)
        if b.sample_ids is not None:
            row["sample_id"] = b.sample_ids
        for k, v in row.items():
            cols.setdefault(k, []).append(v)
    if not cols:
        raise ValueError("the data yielded no batches")
    pool = {}
    for k, parts in cols.items():
        if all(torch.is_tensor(p) for p in parts):
            pool[k] = torch.cat([p.detach().cpu() for p in parts])
        else:
            pool[k] = [x for p in parts for x in (p.tolist() if torch.is_tensor(p) else list(p))]
    n = len(pool["sensitive"])
    bad = [k for k, v in pool.items() if len(v) != n]
    if bad:
        raise ValueError(f"pool columns {bad} do not have one entry per sample ({n} samples)")
    return pool


def pool_size(pool: Pool) -> int:
    return len(pool["sensitive"])


def group_ids(sensitive: torch.Tensor, columns: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample intersectional group id, ``[G, n_attrs]`` code rows of the groups) over ``columns``.

    Ids come from :func:`fairq.metrics.encode_groups` (observed combinations, sorted by their codes)."""
    from fairq.metrics import encode_groups

    sensitive = torch.as_tensor(sensitive).reshape(len(sensitive), -1)
    if columns is not None:
        sensitive = sensitive[:, list(columns)]
    ids, groups = encode_groups(sensitive.numpy())
    return torch.from_numpy(ids), torch.as_tensor(groups.to_numpy(dtype=np.int64))


def take(pool: Pool, index, batch_size: int) -> list[dict]:
    """Batches (dicts) of the pool samples at ``index`` (in that order)."""
    index = torch.as_tensor(np.asarray(index), dtype=torch.long)
    out = []
    for start in range(0, len(index), batch_size):
        idx = index[start:start + batch_size]
        out.append({k: (v[idx] if torch.is_tensor(v) else [v[i] for i in idx.tolist()]) for k, v in pool.items()})
    return out


def fairness_of(model: nn.Module, data: Iterable, columns: Sequence[int] | None = None,
                names: Sequence[str] | None = None, limit: int | None = None,
                min_group_size: int | None = None) -> dict:
    """:func:`fairq.metrics.fairness_metrics` of ``model``'s predictions on ``data`` over the sensitive
    ``columns`` (intersectional; default all), without ``per_group``."""
    from fairq.metrics import fairness_metrics

    p = predict(model, data, limit=limit)
    if p.sensitive is None:
        raise ValueError("validation batches carry no sensitive codes")
    sens = p.sensitive
    cols = list(range(sens.shape[1])) if columns is None else list(columns)
    if any(c < 0 or c >= sens.shape[1] for c in cols):
        raise ValueError(f"sensitive columns {cols} out of range: the batches carry {sens.shape[1]} attribute(s)")
    names = [f"attr{c}" for c in cols] if names is None else list(names)
    kw = {} if min_group_size is None else {"min_group_size": int(min_group_size)}
    out = fairness_metrics(p.target, p.pred, {n: sens[:, c] for n, c in zip(names, cols)},
                           labels=list(range(p.prob.shape[1])), **kw)
    return {k: float(v) for k, v in out.items() if k != "per_group"}
