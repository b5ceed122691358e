"""Deterministic seeded splitting and subsampling of index tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def stratified_assign(
    strata: pd.Series | Sequence, fractions: Sequence[float], names: Sequence[str], seed: int
) -> np.ndarray:
    """Assign each row to one of ``names`` so every stratum is split in ``fractions`` (largest remainder).

    Written by hand rather than with ``sklearn.model_selection.train_test_split(stratify=...)`` because that
    refuses strata with a single member (real intersections can be that small) and only makes two-way splits.
    Rows are permuted with ``numpy.random.default_rng(seed)``, so the result depends only on the seed and
    on the order of the rows (callers sort by sample id first).
    """
    frac = np.asarray(fractions, dtype=float)
    if len(frac) != len(names) or np.any(frac < 0) or not np.isclose(frac.sum(), 1.0):
        raise ValueError(f"split fractions {list(fractions)} must be {len(names)} non-negative numbers summing to 1")
    strata = pd.Series(np.asarray(strata, dtype=object)).astype(str)
    rng = np.random.default_rng(seed)
    out = np.empty(len(strata), dtype=object)
    for _, rows in sorted(strata.groupby(strata, sort=True).indices.items()):
        rows = rng.permutation(rows)
        counts = _largest_remainder(len(rows), frac)
        start = 0
        for name, c in zip(names, counts):
            out[rows[start : start + c]] = name
            start += c
    return out


def _largest_remainder(n: int, frac: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``n`` closest to ``n * frac`` (ties go to the earlier entry)."""
    exact = n * frac
    counts = np.floor(exact).astype(int)
    short = n - counts.sum()
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def subsample(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """At most ``max_rows`` rows drawn without replacement by a seeded RNG, kept in their original order."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=max_rows, replace=False))
    return frame.iloc[keep]
