"""GroupBalancedSampler and the seeded stratified split helper."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules import GroupBalancedSampler
from datamodules.splits import interleaved_pattern, stratified_assign


def test_equal_draws_per_group_with_replacement_for_small_groups():
    groups = np.repeat([0, 1, 2], [3, 50, 600])
    sampler = GroupBalancedSampler(groups, num_samples=1500, seed=1)
    draws = np.array(list(sampler))
    assert len(draws) == len(sampler) == 1500
    assert np.bincount(groups[draws]).tolist() == [500, 500, 500]
    small = draws[groups[draws] == 0]
    assert set(small) == {0, 1, 2}  # the 3-member group is drawn with replacement
    large = draws[groups[draws] == 2]
    assert len(set(large)) == len(large)  # groups big enough are drawn without replacement


def test_remainder_and_determinism_per_epoch():
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    s = GroupBalancedSampler(groups, seed=3)
    assert len(s) == 10
    first = list(s)
    counts = np.bincount(groups.numpy()[first])
    assert counts.max() - counts.min() <= 1
    assert list(GroupBalancedSampler(groups, seed=3)) == first
    s.set_epoch(1)
    assert list(s) != first
    s.set_epoch(0)
    assert list(s) == first


def test_sampler_in_dataloader_balances_batches():
    groups = np.repeat([0, 1], [10, 990])
    loader = DataLoader(TensorDataset(torch.arange(1000)), batch_size=100,
                        sampler=GroupBalancedSampler(groups, seed=0))
    seen = torch.cat([b[0] for b in loader]).numpy()
    assert abs((groups[seen] == 0).mean() - 0.5) < 1e-9


def test_sampler_rejects_empty():
    with pytest.raises(ValueError):
        GroupBalancedSampler([])


def test_interleaved_pattern_prefixes_track_fractions():
    frac = np.array([0.7, 0.1, 0.2])
    pattern = interleaved_pattern(1000, frac)
    counts = np.cumsum(np.eye(3)[pattern], axis=0)
    expected = np.arange(1, 1001)[:, None] * frac
    assert np.abs(counts - expected).max() < 1


def test_stratified_assign_exact_totals_and_tiny_strata():
    rng = np.random.default_rng(0)
    strata = rng.integers(0, 150, 2000)  # many strata of ~13, some far smaller
    out = stratified_assign(strata, [0.7, 0.1, 0.2], ["train", "val", "test"], seed=0)
    assert pd.Series(out).value_counts().to_dict() == {"train": 1400, "test": 400, "val": 200}
    table = pd.crosstab(strata, out)[["train", "val", "test"]].to_numpy()
    assert np.abs(table - table.sum(1, keepdims=True) * np.array([0.7, 0.1, 0.2])).max() < 2
    singletons = stratified_assign(np.arange(100), [0.7, 0.1, 0.2], ["a", "b", "c"], seed=0)
    assert pd.Series(singletons).value_counts().to_dict() == {"a": 70, "c": 20, "b": 10}
    again = [stratified_assign(strata, [0.7, 0.1, 0.2], "abc", seed=0) for _ in range(2)]
    assert (again[0] == again[1]).all()
    with pytest.raises(ValueError, match="sum"):
        stratified_assign(strata, [0.5, 0.1, 0.2], "abc", seed=0)
