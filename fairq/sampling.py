"""Group-balanced draws: the one rule behind the datamodules' balanced sampler and bias-aware calibration.

Lives in ``fairq`` (not ``datamodules``) so that mitigations, a layer below the datamodules, can use it without an
upward import (``tests/test_engine_seams.py``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def balanced_indices(group_ids: Sequence[int] | np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices with (up to one) equal draws from every group present in ``group_ids``, shuffled.

    A group with fewer members than its quota is drawn with replacement; otherwise without. When ``n`` is
    not a multiple of the number of groups, the remainder goes to groups chosen at random by ``rng``.
    """
    group_ids = np.asarray(group_ids)
    groups = np.unique(group_ids)
    if len(groups) == 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    quota = np.full(len(groups), n // len(groups))
    quota[rng.choice(len(groups), size=n % len(groups), replace=False)] += 1
    picks = []
    for g, q in zip(groups, quota):
        members = np.flatnonzero(group_ids == g)
        picks.append(rng.choice(members, size=q, replace=q > len(members)))
    return rng.permutation(np.concatenate(picks)).astype(np.int64)
