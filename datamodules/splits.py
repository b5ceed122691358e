"""Deterministic seeded splitting and subsampling of index tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def stratified_assign(
    strata: pd.Series | Sequence, fractions: Sequence[float], names: Sequence[str], seed: int
) -> np.ndarray:
    """Assign each row to one of ``names`` in proportions ``fractions``, stratum by stratum.

    The strata (in a seeded random order, each with its rows seeded-permuted) are laid end to end and dealt
    a fixed interleaved pattern of split names whose every prefix is as close to ``fractions`` as integers
    allow. So each stratum is split in ``fractions`` to within two rows per split, the totals are exact, and
    strata with one or two members (common among intersectional groups) still reach val/test in proportion
    instead of all landing in train. Written by hand because ``sklearn``'s ``train_test_split(stratify=...)``
    refuses strata with a single member and only makes two-way splits. Depends only on ``seed`` and the
    row order (callers sort by sample id first).
    """
    frac = np.asarray(fractions, dtype=float)
    if len(frac) != len(names) or np.any(frac < 0) or not np.isclose(frac.sum(), 1.0):
        raise ValueError(f"split fractions {list(fractions)} must be {len(names)} non-negative numbers summing to 1")
    strata = pd.Series(np.asarray(strata, dtype=object)).astype(str)
    rng = np.random.default_rng(seed)
    groups = sorted(strata.groupby(strata, sort=True).indices.items())
    order = np.concatenate([rng.permutation(groups[k][1]) for k in rng.permutation(len(groups))]) if groups else []
    out = np.empty(len(strata), dtype=object)
    pattern = interleaved_pattern(len(strata), frac)
    out[np.asarray(order, dtype=np.int64)] = np.asarray(list(names), dtype=object)[pattern]
    return out


def interleaved_pattern(n: int, fractions: Sequence[float]) -> np.ndarray:
    """``n`` split indices, each step taking the split furthest below its share ``(step + 1) * fraction``."""
    frac = [float(f) for f in fractions]
    counts = [0] * len(frac)
    out = np.empty(n, dtype=np.int64)
    for p in range(n):
        deficits = [(p + 1) * f - c for f, c in zip(frac, counts)]
        s = max(range(len(frac)), key=deficits.__getitem__)
        out[p] = s
        counts[s] += 1
    return out


def largest_remainder(n: int, frac: np.ndarray) -> np.ndarray:
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
