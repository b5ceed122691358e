r"""Fairness metrics as pure functions of per-group confusion counts.

Definitions (``g`` ranges over the *eligible* groups, see the rules below):

- selection rate :math:`s_g = P(\hat y = 1 \mid g)`, :math:`TPR_g = P(\hat y = 1 \mid y = 1, g)`,
  :math:`FPR_g = P(\hat y = 1 \mid y = 0, g)`, accuracy :math:`a_g = P(\hat y = y \mid g)`.
- ``demographic_parity_difference`` :math:`= \max_g s_g - \min_g s_g` (fairlearn ``between_groups``).
- ``demographic_parity_ratio`` :math:`= \min_g s_g / \max_g s_g`; ``disparate_impact`` is the same
  number under the name the Beyond-Naive-Quantization study uses (min/max, so always ≤ 1).
- ``equal_opportunity_difference`` :math:`= \max_g TPR_g - \min_g TPR_g`;
  ``predictive_equality_difference`` :math:`= \max_g FPR_g - \min_g FPR_g`;
  ``equalized_odds_difference`` = the larger of the two (fairlearn ``worst_case``).
- ``worst_group_accuracy`` :math:`= \min_g a_g`; ``accuracy_difference`` :math:`= \max_g a_g - \min_g a_g`;
  ``accuracy`` is over all samples.

Rules fairq applies (fairlearn differs on the first two; see ``tests/test_metrics_fairness.py``):

1. **No positives / no negatives.** A group with no samples of the positive class has an undefined TPR: it is
   NaN in ``per_group`` (flag ``no_positives``) and left out of the TPR gap (and so of equal opportunity and
   equalized odds); likewise FPR with no negatives (flag ``no_negatives``). fairlearn instead scores such a
   group's TPR as 0.0, which inflates equalized odds; fairq matches fairlearn exactly whenever every group has
   both classes.
2. **Tiny groups.** Groups with fewer than ``min_group_size`` samples stay in ``per_group`` (flag
   ``small_group``) but are left out of every between-group number (the gaps, ratios and
   ``worst_group_accuracy``); overall ``accuracy`` still counts them. Default
   ``DEFAULT_MIN_GROUP_SIZE = 20``: with fewer samples a rate moves by ≥ 5 points per sample and the gaps are
   dominated by noise. Pass ``min_group_size=1`` for fairlearn's behaviour.
3. **Empty intersections** (a level combination with no samples) are skipped, as in fairlearn.
4. A gap or ratio needs at least two eligible groups; otherwise it is NaN. A ratio whose maximum selection rate
   is 0 is NaN (0/0, as in fairlearn).
5. When only one of the TPR and FPR gaps is defined, equalized odds is that one; NaN when neither is.

**Multiclass** targets (more than two classes, e.g. race as a 7-class target) are scored one-vs-rest: for each
class ``k`` the rates above are computed with ``k`` as the positive class, and each between-group number is the
worst over classes (largest difference, smallest ratio). Accuracy and worst-group accuracy are the usual
multiclass ones. ``per_group`` then carries ``selection_rate_<k>``, ``tpr_<k>``, ``fpr_<k>``, ``positives_<k>``
for each class. For two classes only ``pos_label`` is the positive class (the negative class would give the same
differences).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .core import encode_groups, encode_labels, group_confusion

__all__ = [
    "DEFAULT_MIN_GROUP_SIZE", "SCALAR_METRICS", "GROUP_METRICS", "fairness_metrics", "metrics_from_counts",
    "group_rates", "scalar_metrics_from_counts", "demographic_parity_difference", "demographic_parity_ratio",
    "equalized_odds_difference", "equal_opportunity_difference", "predictive_equality_difference",
    "disparate_impact", "worst_group_accuracy", "accuracy_difference",
]

DEFAULT_MIN_GROUP_SIZE = 20

#: Scalar keys of :func:`fairness_metrics` (everything except ``per_group``), in a stable order.
SCALAR_METRICS = (
    "accuracy", "demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
    "equal_opportunity_difference", "predictive_equality_difference", "disparate_impact",
    "worst_group_accuracy", "accuracy_difference",
)
#: Per-group rates (binary problems; multiclass has ``accuracy`` only plus per-class columns).
GROUP_METRICS = ("accuracy", "selection_rate", "tpr", "fpr")

_RESERVED = {"n", "accuracy", "selection_rate", "tpr", "fpr", "positives", "negatives", "small_group",
             "no_positives", "no_negatives"}


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with NaN where ``den == 0`` (no warnings)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def group_rates(counts: np.ndarray, pos_index: int | None = 1) -> dict[str, np.ndarray]:
    """Per-group counts and rates from ``counts[..., G, C, C]`` (leading batch axes allowed).

    Returns arrays of shape ``[..., G]`` (``n``, ``correct``, ``accuracy``) and ``[..., G, K]`` (``positives``,
    ``negatives``, ``pred_positives``, ``tp``, ``fp``, ``selection_rate``, ``tpr``, ``fpr``) where ``K = 1``
    (the class ``pos_index``) for a binary problem and ``K = C`` (one-vs-rest) otherwise. Rates are NaN where
    their denominator is 0.
    """
    counts = np.asarray(counts)
    if counts.ndim < 3 or counts.shape[-1] != counts.shape[-2]:
        raise ValueError(f"counts must have shape [..., G, C, C]; got {counts.shape}")
    c = counts.shape[-1]
    n = counts.sum(axis=(-1, -2))
    diag = np.diagonal(counts, axis1=-2, axis2=-1)          # [..., G, C]  true k predicted k
    true_k = counts.sum(axis=-1)                             # [..., G, C]  true k
    pred_k = counts.sum(axis=-2)                             # [..., G, C]  predicted k
    correct = diag.sum(axis=-1)
    if c == 2 and pos_index is not None:
        sl = slice(pos_index, pos_index + 1)
        diag, true_k, pred_k = diag[..., sl], true_k[..., sl], pred_k[..., sl]
    negatives = n[..., None] - true_k
    fp = pred_k - diag
    return {
        "n": n, "correct": correct, "accuracy": _div(correct, n),
        "positives": true_k, "negatives": negatives, "pred_positives": pred_k, "tp": diag, "fp": fp,
        "selection_rate": _div(pred_k, n[..., None]), "tpr": _div(diag, true_k), "fpr": _div(fp, negatives),
    }


def _between(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Max − min and min / max over the group axis (-2 for ``[..., G, K]``) among ``valid`` entries."""
    hi = np.where(valid, values, -np.inf).max(axis=-2)
    lo = np.where(valid, values, np.inf).min(axis=-2)
    enough = valid.sum(axis=-2) >= 2
    diff = np.where(enough, hi - lo, np.nan)
    ratio = np.where(enough, _div(np.where(enough, lo, 0.0), np.where(enough, hi, 0.0)), np.nan)
    return diff, ratio, np.where(enough, lo, np.nan), np.where(enough, hi, np.nan)


def _nan_reduce(x: np.ndarray, fn, axis: int = -1) -> np.ndarray:
    """``fn`` (np.max / np.min) over ``axis`` ignoring NaN; NaN when all are NaN (no warnings)."""
    allnan = np.isnan(x).all(axis=axis)
    fill = -np.inf if fn is np.max else np.inf
    out = fn(np.where(np.isnan(x), fill, x), axis=axis)
    return np.where(allnan, np.nan, out)


def scalar_metrics_from_counts(counts: np.ndarray, *, pos_index: int | None = 1,
                               min_group_size: int = DEFAULT_MIN_GROUP_SIZE) -> dict[str, np.ndarray]:
    """Every scalar of :data:`SCALAR_METRICS` from ``counts[..., G, C, C]``, vectorised over leading axes.

    This is the maths of :func:`fairness_metrics` (the bootstrap calls it on ``[B, G, C, C]`` at once).
    """
    r = group_rates(counts, pos_index)
    eligible = (r["n"] >= max(int(min_group_size), 1))[..., None]           # [..., G, 1]
    sel_diff, sel_ratio, _, _ = _between(r["selection_rate"], eligible)
    tpr_diff, _, _, _ = _between(r["tpr"], eligible & (r["positives"] > 0))
    fpr_diff, _, _, _ = _between(r["fpr"], eligible & (r["negatives"] > 0))
    acc_diff, _, acc_lo, _ = _between(r["accuracy"][..., None], eligible)
    eo = _nan_reduce(np.stack([tpr_diff, fpr_diff], axis=-1), np.max)      # per class
    ratio = _nan_reduce(sel_ratio, np.min)
    return {
        "accuracy": _div(r["correct"].sum(axis=-1), r["n"].sum(axis=-1)),
        "demographic_parity_difference": _nan_reduce(sel_diff, np.max),
        "demographic_parity_ratio": ratio,
        "equalized_odds_difference": _nan_reduce(eo, np.max),
        "equal_opportunity_difference": _nan_reduce(tpr_diff, np.max),
        "predictive_equality_difference": _nan_reduce(fpr_diff, np.max),
        "disparate_impact": ratio.copy(),
        "worst_group_accuracy": acc_lo[..., 0],
        "accuracy_difference": acc_diff[..., 0],
    }


def metrics_from_counts(counts: np.ndarray, groups: pd.DataFrame | None = None, *, pos_index: int | None = 1,
                        classes: Sequence | None = None,
                        min_group_size: int = DEFAULT_MIN_GROUP_SIZE) -> dict:
    """The :func:`fairness_metrics` dict from per-group confusion counts.

    Parameters
    ----------
    counts : array of shape (G, C, C)
        ``counts[g, t, p]`` as built by :func:`fairq.metrics.core.group_confusion`.
    groups : DataFrame, optional
        Row ``g`` holds the attribute levels of group ``g`` (from :func:`~fairq.metrics.core.encode_groups`);
        default: one column ``group`` with the id.
    pos_index : int, default 1
        Code of the positive class when ``C == 2`` (ignored for multiclass, which is one-vs-rest).
    classes : sequence, optional
        Original labels of the ``C`` codes, used to name the per-class columns of a multiclass ``per_group``.
    min_group_size : int
        Groups with fewer samples are flagged ``small_group`` and left out of between-group numbers.

    Returns
    -------
    dict
        Float for each key of :data:`SCALAR_METRICS` plus ``per_group`` (DataFrame indexed by ``group_id``,
        non-empty groups only).
    """
    counts = np.asarray(counts)
    if counts.ndim != 3 or counts.shape[1] != counts.shape[2]:
        raise ValueError(f"counts must have shape [G, C, C]; got {counts.shape}")
    n_groups, c = counts.shape[0], counts.shape[1]
    if c < 2:
        raise ValueError(f"need at least two classes; counts has C={c}")
    if c == 2 and pos_index not in (0, 1):
        raise ValueError(f"pos_index must be 0 or 1 for a binary problem; got {pos_index!r}")
    if groups is None:
        groups = pd.DataFrame({"group": np.arange(n_groups)})
        groups.index.name = "group_id"
    if len(groups) != n_groups:
        raise ValueError(f"groups has {len(groups)} rows but counts has {n_groups} groups")
    clash = _RESERVED.intersection(map(str, groups.columns))
    if clash:
        raise ValueError(f"sensitive attribute names {sorted(clash)} clash with per_group columns; rename them")
    classes = list(range(c)) if classes is None else list(classes)
    if len(classes) != c:
        raise ValueError(f"classes has {len(classes)} entries but counts has C={c}")

    out = {k: float(v) for k, v in
           scalar_metrics_from_counts(counts, pos_index=pos_index, min_group_size=min_group_size).items()}
    r = group_rates(counts, pos_index)
    table = groups.copy()
    table.index = pd.RangeIndex(n_groups, name="group_id")
    table["n"] = r["n"]
    table["accuracy"] = r["accuracy"]
    if c == 2:
        table["selection_rate"] = r["selection_rate"][:, 0]
        table["tpr"] = r["tpr"][:, 0]
        table["fpr"] = r["fpr"][:, 0]
        table["positives"] = r["positives"][:, 0]
        table["negatives"] = r["negatives"][:, 0]
    else:
        for k, name in enumerate(classes):
            table[f"selection_rate_{name}"] = r["selection_rate"][:, k]
            table[f"tpr_{name}"] = r["tpr"][:, k]
            table[f"fpr_{name}"] = r["fpr"][:, k]
            table[f"positives_{name}"] = r["positives"][:, k]
    table["small_group"] = r["n"] < max(int(min_group_size), 1)
    if c == 2:
        table["no_positives"] = r["positives"][:, 0] == 0
        table["no_negatives"] = r["negatives"][:, 0] == 0
    out["per_group"] = table[table["n"] > 0]
    return out


def fairness_metrics(y_true, y_pred, sensitive_features, *, pos_label=1, labels: Sequence | None = None,
                     min_group_size: int = DEFAULT_MIN_GROUP_SIZE) -> dict:
    """Accuracy and group-fairness metrics over (intersectional) sensitive groups.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted labels (any hashable labels; two classes = binary, more = multiclass one-vs-rest).
    sensitive_features : DataFrame, dict of name -> array, or array
        Several columns define intersectional groups.
    pos_label : scalar, default 1
        Positive class of a binary problem.
    labels : sequence, optional
        Full class list (fixes the classes when some are absent from this data).
    min_group_size : int, default ``DEFAULT_MIN_GROUP_SIZE``
        Smaller groups are reported but left out of between-group numbers (module docstring, rule 2).

    Returns
    -------
    dict
        ``accuracy, demographic_parity_difference, demographic_parity_ratio, equalized_odds_difference,
        equal_opportunity_difference, predictive_equality_difference, disparate_impact, worst_group_accuracy,
        accuracy_difference`` (floats, NaN when undefined) and ``per_group`` (DataFrame: attribute levels, ``n``,
        ``accuracy``, ``selection_rate``, ``tpr``, ``fpr``, ``positives``, ``negatives``, flags ``small_group``,
        ``no_positives``, ``no_negatives``). Formulas and rules: module docstring.
    """
    t, p, classes, pos_index = encode_labels(y_true, y_pred, pos_label=pos_label, labels=labels)
    group_ids, groups = encode_groups(sensitive_features)
    if len(group_ids) != len(t):
        raise ValueError(f"sensitive_features has {len(group_ids)} rows but y_true has {len(t)} samples")
    counts = group_confusion(t, p, group_ids, len(groups), len(classes))
    return metrics_from_counts(counts, groups, pos_index=pos_index, classes=classes, min_group_size=min_group_size)


def _thin(key: str, formula: str):
    """Build the public one-metric wrapper for ``key`` (fairlearn style: keyword-only after y_true, y_pred)."""

    def metric(y_true, y_pred, *, sensitive_features, pos_label=1, labels=None,
               min_group_size: int = DEFAULT_MIN_GROUP_SIZE) -> float:
        return fairness_metrics(y_true, y_pred, sensitive_features, pos_label=pos_label, labels=labels,
                                min_group_size=min_group_size)[key]

    metric.__name__ = metric.__qualname__ = key
    metric.__doc__ = f"""{key.replace('_', ' ').capitalize()} between sensitive groups.

    .. math:: {formula}

    over the groups with at least ``min_group_size`` samples (and, for rates conditioned on the label, at
    least one sample of that label); multiclass targets take the worst class, one-vs-rest. See
    :mod:`fairq.metrics.fairness` for the rules and :func:`fairness_metrics` for the parameters.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    sensitive_features : DataFrame, dict of name -> array, or array
    pos_label : scalar, default 1
    labels : sequence, optional
    min_group_size : int, default ``DEFAULT_MIN_GROUP_SIZE``

    Returns
    -------
    float
        NaN when fewer than two groups qualify.
    """
    return metric


demographic_parity_difference = _thin(
    "demographic_parity_difference", r"\max_g P(\hat y=1 \mid g) - \min_g P(\hat y=1 \mid g)")
demographic_parity_ratio = _thin(
    "demographic_parity_ratio", r"\min_g P(\hat y=1 \mid g) \,/\, \max_g P(\hat y=1 \mid g)")
disparate_impact = _thin(
    "disparate_impact", r"\min_g P(\hat y=1 \mid g) \,/\, \max_g P(\hat y=1 \mid g)")
equal_opportunity_difference = _thin(
    "equal_opportunity_difference", r"\max_g TPR_g - \min_g TPR_g")
predictive_equality_difference = _thin(
    "predictive_equality_difference", r"\max_g FPR_g - \min_g FPR_g")
equalized_odds_difference = _thin(
    "equalized_odds_difference",
    r"\max\left(\max_g TPR_g - \min_g TPR_g,\ \max_g FPR_g - \min_g FPR_g\right)")
worst_group_accuracy = _thin("worst_group_accuracy", r"\min_g P(\hat y = y \mid g)")
accuracy_difference = _thin(
    "accuracy_difference", r"\max_g P(\hat y = y \mid g) - \min_g P(\hat y = y \mid g)")
