"""Group counts core: sensitive attributes → intersectional group ids → per-group confusion counts.

Every fairness number in fairq is a pure function of the ``[G, C, C]`` array built here
(``counts[g, t, p]`` = samples of group ``g`` with true class ``t`` predicted as ``p``), so the
one-shot metrics, the streaming torchmetrics state and the bootstrap share one definition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["encode_groups", "encode_labels", "group_confusion", "group_labels"]


def _as_1d(values, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D numpy array (accepts lists, Series, CPU/GPU tensors)."""
    if hasattr(values, "detach"):  # torch tensor without importing torch here
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sample); got shape {arr.shape}")
    return arr


def _sensitive_frame(sensitive_features) -> pd.DataFrame:
    """Normalise DataFrame / dict name→array / Series / 1-D or 2-D array to a DataFrame."""
    if isinstance(sensitive_features, pd.DataFrame):
        frame = sensitive_features.reset_index(drop=True)
    elif isinstance(sensitive_features, pd.Series):
        name = sensitive_features.name if sensitive_features.name is not None else "sensitive_feature_0"
        frame = pd.DataFrame({name: sensitive_features.to_numpy()})
    elif isinstance(sensitive_features, Mapping):
        if not sensitive_features:
            raise ValueError("sensitive_features is an empty mapping; give at least one attribute")
        frame = pd.DataFrame({str(k): _as_1d(v, f"sensitive_features[{k!r}]")
                              for k, v in sensitive_features.items()})
    else:
        if hasattr(sensitive_features, "detach"):
            sensitive_features = sensitive_features.detach().cpu().numpy()
        arr = np.asarray(sensitive_features)
        if arr.ndim == 1:
            frame = pd.DataFrame({"sensitive_feature_0": arr})
        elif arr.ndim == 2:
            # Same default names as fairlearn's MetricFrame.
            frame = pd.DataFrame({f"sensitive_feature_{i}": arr[:, i] for i in range(arr.shape[1])})
        else:
            raise ValueError(
                "sensitive_features must be a DataFrame, a dict name -> 1-D array, or a 1-D/2-D array; "
                f"got an array of shape {arr.shape}")
    if frame.shape[1] == 0:
        raise ValueError("sensitive_features has no columns; give at least one attribute")
    if len(set(frame.columns)) != frame.shape[1]:
        raise ValueError(f"sensitive_features has duplicate column names: {list(frame.columns)}")
    missing = frame.isna().sum()
    if missing.any():
        bad = {str(c): int(n) for c, n in missing.items() if n}
        raise ValueError(f"sensitive_features has missing values (column: count) {bad}; "
                         "drop or impute those samples first")
    return frame


def encode_groups(sensitive_features) -> tuple[np.ndarray, pd.DataFrame]:
    """Map sensitive attributes to intersectional group ids.

    Parameters
    ----------
    sensitive_features : DataFrame, dict of name -> array, Series, or 1-D / 2-D array
        One column per attribute; several columns define intersectional groups (every observed
        combination of levels).

    Returns
    -------
    group_ids : ndarray of int64, shape (n_samples,)
        Id of each sample's group, in ``range(len(groups))``.
    groups : DataFrame
        One row per id (index ``group_id``), one column per attribute holding the level combination.
        Only observed combinations appear (empty intersections are skipped, as in fairlearn); rows
        are sorted lexicographically by level, the order of fairlearn's ``MetricFrame.by_group``.
    """
    frame = _sensitive_frame(sensitive_features)
    codes, uniques = [], []
    for col in frame.columns:
        try:
            c, u = pd.factorize(frame[col], sort=True)
        except TypeError as err:  # e.g. mixed str / int levels cannot be sorted
            raise ValueError(f"sensitive attribute {col!r} has levels that cannot be sorted: {err}") from err
        codes.append(c.astype(np.int64))
        uniques.append(np.asarray(u))
    shape = tuple(len(u) for u in uniques)
    if np.prod([float(s) for s in shape]) < np.iinfo(np.int64).max:
        flat = np.ravel_multi_index(codes, shape)
        observed, group_ids = np.unique(flat, return_inverse=True)
        level_codes = np.unravel_index(observed, shape)
    else:  # astronomically many combinations: unique over the code rows instead
        stacked = np.stack(codes, axis=1)
        observed_rows, group_ids = np.unique(stacked, axis=0, return_inverse=True)
        level_codes = tuple(observed_rows[:, i] for i in range(stacked.shape[1]))
    groups = pd.DataFrame({col: uniques[i][level_codes[i]] for i, col in enumerate(frame.columns)})
    groups.index.name = "group_id"
    return group_ids.astype(np.int64).ravel(), groups


def group_labels(groups: pd.DataFrame) -> list[str]:
    """Readable label per group row, e.g. ``"Male=1, Young=0"``."""
    cols = list(groups.columns)
    return [", ".join(f"{c}={v}" for c, v in zip(cols, row)) for row in groups.itertuples(index=False)]


def encode_labels(y_true, y_pred, *, pos_label=1, labels: Sequence | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    """Map arbitrary class labels to ``0..C-1``.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    pos_label : scalar
        Positive class when the problem is binary (at most two distinct labels overall).
    labels : sequence, optional
        The full class list (fixes ``C`` and its order even when a class is absent from this data).

    Returns
    -------
    t, p : ndarray of int64
        Encoded labels.
    classes : ndarray
        ``classes[k]`` is the original label of code ``k``.
    pos_index : int or None
        Code of ``pos_label`` for a binary problem, ``None`` for a multiclass one (more than two classes).
    """
    yt = _as_1d(y_true, "y_true")
    yp = _as_1d(y_pred, "y_pred")
    if len(yt) != len(yp):
        raise ValueError(f"y_true and y_pred differ in length: {len(yt)} vs {len(yp)}")
    if labels is None:
        classes = np.unique(np.concatenate([yt, yp]))
        if len(classes) == 1 and pos_label is not None:
            # One observed label: the problem is still binary. Add the missing class so both codes exist.
            (only,) = classes
            other = "<negative>" if only == pos_label else pos_label
            classes = np.asarray([other, only] if only == pos_label else [only, other], dtype=object)
    else:
        classes = np.asarray(list(labels))
        if len(pd.unique(classes)) != len(classes):
            raise ValueError(f"labels has duplicates: {np.asarray(classes).tolist()}")
    if len(classes) == 0:
        raise ValueError("no labels: y_true and y_pred are empty")
    t = _encode(yt, classes, "y_true")
    p = _encode(yp, classes, "y_pred")
    pos_index = None
    if len(classes) == 1:
        raise ValueError(f"only one class {np.asarray(classes).tolist()}; "
                         "a binary problem needs labels=[negative, positive]")
    if len(classes) == 2:
        hits = [i for i, c in enumerate(classes) if c == pos_label]
        if not hits:
            raise ValueError(f"pos_label={pos_label!r} is not one of the labels {np.asarray(classes).tolist()}; "
                             "pass pos_label= with the positive class")
        pos_index = hits[0]
    return t, p, classes, pos_index


def _encode(values: np.ndarray, classes: np.ndarray, name: str) -> np.ndarray:
    """Codes of ``values`` among ``classes``; error naming unknown labels."""
    codes = pd.Index(classes).get_indexer(values)
    if (codes < 0).any():
        unknown = pd.unique(values[codes < 0])[:10]
        # tolist(): plain Python values in the message ([0, 1], not [np.int64(0), np.int64(1)] under numpy 2)
        raise ValueError(f"{name} has labels not in {np.asarray(classes).tolist()}: {np.asarray(unknown).tolist()}")
    return codes.astype(np.int64)


def group_confusion(y_true, y_pred, group_ids, n_groups: int, num_classes: int) -> np.ndarray:
    """Per-group confusion counts via one ``bincount``.

    Parameters
    ----------
    y_true, y_pred : array-like of int, shape (n_samples,)
        Class codes in ``range(num_classes)``.
    group_ids : array-like of int, shape (n_samples,)
        Group codes in ``range(n_groups)``.

    Returns
    -------
    ndarray of int64, shape (n_groups, num_classes, num_classes)
        ``counts[g, t, p]`` = number of samples of group ``g`` with true class ``t`` predicted ``p``.
    """
    t = _as_1d(y_true, "y_true").astype(np.int64, copy=False)
    p = _as_1d(y_pred, "y_pred").astype(np.int64, copy=False)
    g = _as_1d(group_ids, "group_ids").astype(np.int64, copy=False)
    if not (len(t) == len(p) == len(g)):
        raise ValueError(f"lengths differ: y_true {len(t)}, y_pred {len(p)}, group_ids {len(g)}")
    for name, arr, hi in (("y_true", t, num_classes), ("y_pred", p, num_classes), ("group_ids", g, n_groups)):
        if len(arr) and (arr.min() < 0 or arr.max() >= hi):
            raise ValueError(f"{name} must lie in [0, {hi}); got values in [{arr.min()}, {arr.max()}]")
    flat = (g * num_classes + t) * num_classes + p
    counts = np.bincount(flat, minlength=n_groups * num_classes * num_classes)
    return counts.reshape(n_groups, num_classes, num_classes)
