"""Pair a cell with its baseline by ``sample_id`` and build the group scopes and metric vectors analysis tests."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fairq.metrics import SCALAR_METRICS, encode_groups, encode_labels, group_labels, group_rates
from fairq.metrics import scalar_metrics_from_counts

from .load import Cell

__all__ = ["Paired", "align", "class_list", "scopes", "scope_name", "encode_scope", "metric_keys",
           "metric_vector", "PROPORTION_METRICS"]

#: Metrics that are proportions (Cohen's h applies); gaps and ratios are not.
PROPORTION_METRICS = ("accuracy", "worst_group_accuracy", "selection_rate", "tpr", "fpr")


def class_list(*cells: Cell) -> list[int]:
    """Class codes ``0..C-1``: ``num_classes`` from metrics.csv when given, else the labels observed."""
    for cell in cells:
        c = cell.row.get("num_classes", np.nan)
        try:
            if not pd.isna(c) and int(c) >= 2:
                return list(range(int(c)))
        except (TypeError, ValueError):
            pass
    seen = np.unique(np.concatenate([np.concatenate([c.frame["y_true"].to_numpy(), c.frame["y_pred"].to_numpy()])
                                     for c in cells]))
    return list(range(int(seen.max()) + 1)) if len(seen) else [0, 1]


def encode(cell: Cell, classes: list[int]) -> tuple[np.ndarray, np.ndarray, int | None]:
    """``(t, p, pos_index)`` codes of a cell's labels (positive class 1 when binary)."""
    t, p, _, pos_index = encode_labels(cell.frame["y_true"].to_numpy(), cell.frame["y_pred"].to_numpy(),
                                       pos_label=1, labels=classes)
    return t, p, pos_index


@dataclass
class Paired:
    """A cell and its baseline on their common samples (sorted by ``sample_id``)."""

    sample_id: np.ndarray
    y_true: np.ndarray          # class codes
    y_base: np.ndarray
    y_pred: np.ndarray
    sensitive: pd.DataFrame     # one str column per attribute
    base_probs: np.ndarray | None
    classes: list[int]
    pos_index: int | None


def align(base: Cell, cell: Cell) -> Paired:
    """Inner-join ``cell`` to ``base`` on ``sample_id``; labels must agree on the common samples."""
    classes = class_list(base, cell)
    bf, cf = base.frame, cell.frame
    common = np.intersect1d(base.ids, cell.ids, assume_unique=True)
    if len(common) == 0:
        raise ValueError(f"cells {base.id!r} and {cell.id!r} share no sample_id: their predictions are not of the "
                         f"same test set (check the predictions files)")
    if len(common) < max(len(bf), len(cf)):
        warnings.warn(f"cells {base.id!r} ({len(bf)} samples) and {cell.id!r} ({len(cf)}) share {len(common)} "
                      f"sample ids; comparing on those", stacklevel=2)
    bi = np.searchsorted(base.ids, common)
    ci = np.searchsorted(cell.ids, common)
    tb, pb, pos_index = encode(base, classes)
    tc, pc, _ = encode(cell, classes)
    if not np.array_equal(tb[bi], tc[ci]):
        bad = common[tb[bi] != tc[ci]][:5]
        raise ValueError(f"y_true differs between {base.id!r} and {cell.id!r} for sample_id {list(bad)}: "
                         f"the two cells were evaluated on different labels")
    attrs = [a for a in base.sensitive if a in cf.columns]
    sens = bf.loc[bi, attrs].reset_index(drop=True)
    probs = base.probs[bi] if base.probs is not None and base.probs.shape[1] == len(classes) else None
    return Paired(sample_id=common, y_true=tb[bi], y_base=pb[bi], y_pred=pc[ci], sensitive=sens,
                  base_probs=probs, classes=classes, pos_index=pos_index)


def scopes(attributes: list[str]) -> list[tuple[str, ...]]:
    """Group scopes analysed: the intersection of all attributes first, then each attribute alone."""
    out = [tuple(attributes)]
    if len(attributes) > 1:
        out += [(a,) for a in attributes]
    return out


def scope_name(scope: tuple[str, ...]) -> str:
    """``"gender;race"`` style name of a scope (the metrics.csv ``sensitive_attributes`` convention)."""
    return ";".join(scope)


def encode_scope(sensitive: pd.DataFrame, scope: tuple[str, ...]) -> tuple[np.ndarray, pd.DataFrame, list[str]]:
    """Group ids, level table and readable labels (``"gender=f, race=1"``) of ``scope``."""
    gid, groups = encode_groups(sensitive[list(scope)])
    return gid, groups, group_labels(groups)


def _group_metric_names(num_classes: int) -> tuple[str, ...]:
    return ("accuracy", "selection_rate", "tpr", "fpr") if num_classes == 2 else ("accuracy",)


def metric_keys(labels: list[str], num_classes: int) -> list[tuple[str, str]]:
    """``(metric, group)`` keys of :func:`metric_vector`'s entries, same order as ``fairq.metrics.bootstrap_ci``."""
    keys = [(k, "all") for k in SCALAR_METRICS]
    for name in _group_metric_names(num_classes):
        keys.extend((name, lab) for lab in labels)
    return keys


def metric_vector(counts: np.ndarray, pos_index: int | None, min_group_size: int) -> np.ndarray:
    """``[..., K]``: every scalar metric then each group's rates, from ``counts[..., G, C, C]`` (keys: metric_keys).

    All groups of the scope are kept (callers build scopes from observed levels, so none is empty).
    """
    scal = scalar_metrics_from_counts(counts, pos_index=pos_index, min_group_size=min_group_size)
    cols = [np.asarray(scal[k], dtype=float)[..., None] for k in SCALAR_METRICS]
    r = group_rates(counts, pos_index)
    for name in _group_metric_names(counts.shape[-1]):
        cols.append(r[name] if name == "accuracy" else r[name][..., 0])
    return np.concatenate(cols, axis=-1)


def delta_vector(pos_index: int | None, min_group_size: int):
    """Antisymmetric statistic ``metric_vector(b) − metric_vector(a)`` for :func:`stats.paired_comparison`."""
    def stat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return metric_vector(b, pos_index, min_group_size) - metric_vector(a, pos_index, min_group_size)
    return stat
