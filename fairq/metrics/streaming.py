"""Streaming per-group confusion counts as a torchmetrics ``Metric`` (DDP-summable state).

Group ids must be fixed before the first batch: a batch that lacks a group then simply adds zeros to that
group's row. (torchmetrics' own ``BinaryFairness`` re-derives groups per batch and mis-assigns counts when a
batch lacks one, torchmetrics#3489 — hence this class instead of that one.) Use
:func:`intersectional_group_ids` to turn per-attribute integer codes with known level counts into those fixed
ids, and :func:`radix_groups` for the matching level table.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torchmetrics import Metric

from .fairness import DEFAULT_MIN_GROUP_SIZE, SCALAR_METRICS, metrics_from_counts

__all__ = ["GroupConfusionMetric", "intersectional_group_ids", "radix_groups"]


def _strides(num_levels: Sequence[int]) -> list[int]:
    """Mixed-radix place values, last attribute fastest (the order of ``itertools.product``)."""
    strides, acc = [], 1
    for levels in reversed(list(num_levels)):
        strides.append(acc)
        acc *= int(levels)
    return strides[::-1]


def intersectional_group_ids(codes: torch.Tensor, num_levels: Sequence[int]) -> torch.Tensor:
    """Flat intersectional group id from per-attribute codes (mixed radix).

    Parameters
    ----------
    codes : int tensor of shape (B, n_attrs) or (B,)
        ``codes[:, a]`` in ``range(num_levels[a])``.
    num_levels : sequence of int
        Number of levels of each attribute, known up front (so ids never depend on the batch).

    Returns
    -------
    LongTensor of shape (B,)
        ``sum_a codes[:, a] * prod(num_levels[a+1:])``, in ``range(prod(num_levels))``; row ``id`` of
        :func:`radix_groups` holds the matching levels.
    """
    codes = torch.as_tensor(codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    num_levels = [int(v) for v in num_levels]
    if codes.ndim != 2 or codes.shape[1] != len(num_levels):
        raise ValueError(f"codes must have shape [B, {len(num_levels)}] (one column per attribute in "
                         f"num_levels={num_levels}); got {tuple(codes.shape)}")
    if codes.is_floating_point():
        raise ValueError("codes must be integer level codes, not floats")
    codes = codes.long()
    if codes.numel():
        low = codes.min(dim=0).values
        high = codes.max(dim=0).values
        for a, levels in enumerate(num_levels):
            if low[a] < 0 or high[a] >= levels:
                raise ValueError(f"attribute {a} codes must lie in [0, {levels}); got [{int(low[a])}, {int(high[a])}]")
    strides = torch.tensor(_strides(num_levels), dtype=torch.long, device=codes.device)
    return (codes * strides).sum(dim=1)


def radix_groups(levels: Mapping[str, Sequence] | Sequence[int], names: Sequence[str] | None = None
                 ) -> pd.DataFrame:
    """Level table for the ids of :func:`intersectional_group_ids` (row ``id`` = that group's levels).

    ``levels`` is either ``{attribute: [level labels in code order]}`` or a list of level counts (then the
    table holds the codes, with columns ``names`` or ``attr_0, attr_1, …``).
    """
    if isinstance(levels, Mapping):
        names = [str(k) for k in levels]
        values = [list(v) for v in levels.values()]
    else:
        values = [list(range(int(k))) for k in levels]
        names = list(names) if names is not None else [f"attr_{i}" for i in range(len(values))]
        if len(names) != len(values):
            raise ValueError(f"names {names} must give one name per attribute ({len(values)})")
    rows = list(itertools.product(*values))
    table = pd.DataFrame(rows, columns=names)
    table.index.name = "group_id"
    return table


class GroupConfusionMetric(Metric):
    """Accumulates ``counts[g, t, p]`` over batches; ``compute()`` gives the scalar fairness metrics.

    Parameters
    ----------
    num_groups, num_classes : int
        Fixed up front: ``group_ids`` of every batch lie in ``range(num_groups)``.
    groups : DataFrame, optional
        Level table (e.g. :func:`radix_groups`) used to label ``per_group`` in :meth:`fairness_metrics`.
    pos_index : int, default 1
        Positive class code for ``num_classes == 2``.
    min_group_size : int
        As in :func:`fairq.metrics.fairness_metrics`.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_groups: int, num_classes: int, *, groups: pd.DataFrame | None = None,
                 pos_index: int = 1, min_group_size: int = DEFAULT_MIN_GROUP_SIZE, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_groups < 1 or num_classes < 2:
            raise ValueError(f"need num_groups >= 1 and num_classes >= 2; got {num_groups}, {num_classes}")
        if groups is not None and len(groups) != num_groups:
            raise ValueError(f"groups has {len(groups)} rows but num_groups={num_groups}")
        self.num_groups = int(num_groups)
        self.num_classes = int(num_classes)
        self.groups = groups
        self.pos_index = pos_index
        self.min_group_size = min_group_size
        self.add_state("counts", default=torch.zeros(num_groups, num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def _labels(self, preds: torch.Tensor) -> torch.Tensor:
        """Class codes from labels, ``[B, C]`` scores (argmax) or ``[B]`` binary probabilities / logits."""
        if preds.is_floating_point():
            if preds.ndim == 2:
                return preds.argmax(dim=1)
            if preds.ndim == 1 and self.num_classes == 2:
                # torchmetrics' binary convention: values outside [0, 1] are logits → sigmoid; threshold 0.5.
                if preds.numel() and (preds.min() < 0 or preds.max() > 1):
                    preds = preds.sigmoid()
                return (preds >= 0.5).long()
            raise ValueError(f"float preds must be [B, {self.num_classes}] scores or [B] binary probabilities; "
                             f"got shape {tuple(preds.shape)}")
        return preds.long()

    def update(self, preds: torch.Tensor, target: torch.Tensor, group_ids: torch.Tensor) -> None:
        """Add one batch: ``preds`` (labels, scores or binary probabilities), ``target`` labels, ``group_ids``."""
        preds = self._labels(torch.as_tensor(preds, device=self.device))
        target = torch.as_tensor(target, device=self.device).long().reshape(-1)
        group_ids = torch.as_tensor(group_ids, device=self.device).long().reshape(-1)
        preds = preds.reshape(-1)
        if not (preds.numel() == target.numel() == group_ids.numel()):
            raise ValueError(f"batch sizes differ: preds {preds.numel()}, target {target.numel()}, "
                             f"group_ids {group_ids.numel()}")
        if preds.numel() == 0:
            return
        c, g = self.num_classes, self.num_groups
        for name, v, hi in (("preds", preds, c), ("target", target, c), ("group_ids", group_ids, g)):
            if v.min() < 0 or v.max() >= hi:
                raise ValueError(f"{name} must lie in [0, {hi}); got [{int(v.min())}, {int(v.max())}]")
        flat = (group_ids * c + target) * c + preds
        self.counts += torch.bincount(flat, minlength=g * c * c).reshape(g, c, c)

    def compute(self) -> dict[str, torch.Tensor]:
        """Scalar metrics (``SCALAR_METRICS``) as 0-d float tensors, ready for ``log_dict``; NaN if undefined."""
        out = self._metrics(self.counts)
        return {k: torch.tensor(out[k], dtype=torch.float32) for k in SCALAR_METRICS}

    def fairness_metrics(self) -> dict:
        """The full :func:`fairq.metrics.fairness_metrics` dict (with ``per_group``) over all batches so far.

        Syncs the counts across processes first when running distributed.
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute):
            counts = self.counts.detach().clone()
        return self._metrics(counts)

    def _metrics(self, counts: torch.Tensor) -> dict:
        return metrics_from_counts(counts.cpu().numpy(), self.groups, pos_index=self.pos_index,
                                   min_group_size=self.min_group_size)
