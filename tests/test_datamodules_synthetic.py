"""Synthetic default: generated files carry the requested statistics, are deterministic, and encode a known bias."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from datamodules import DATAMODULES, CelebADataModule, DataFormatError, SyntheticDataModule

PROPORTIONS = [0.1, 0.3, 0.2, 0.4]  # groups in order (Male, Young) = (0,0), (0,1), (1,0), (1,1)
RATES = [0.2, 0.7, 0.4, 0.5]


def _synthetic(tmp_path, **kw):
    kw = {"n_samples": 600, "image_size": 32, "cache_dir": str(tmp_path / "cache"), "batch_size": 32, **kw}
    dm = SyntheticDataModule(**kw)
    dm.prepare_data()
    dm.setup()
    return dm


def _read_written(folder):
    """Attributes and partition parsed straight from the written CelebA-layout files."""
    attrs = pd.read_csv(folder / "list_attr_celeba.txt", sep=r"\s+", skiprows=1)
    part = pd.read_csv(folder / "list_eval_partition.txt", sep=r"\s+", header=None, index_col=0).iloc[:, 0]
    return attrs, part


def test_written_statistics_match_request(tmp_path):
    dm = _synthetic(tmp_path, n_samples=1000, group_proportions=PROPORTIONS, positive_rates=RATES)
    attrs, part = _read_written(dm.data_folder)
    assert len(attrs) == 1000 and len(list((dm.data_folder / "img_align_celeba").glob("*.jpg"))) == 1000
    group = ((attrs["Male"] > 0) * 2 + (attrs["Young"] > 0)).to_numpy()
    smiling = (attrs["Smiling"] > 0).to_numpy()
    counts = np.bincount(group, minlength=4)
    assert np.abs(counts - 1000 * np.array(PROPORTIONS)).max() <= 1
    rates = np.array([smiling[group == g].mean() for g in range(4)])
    assert np.abs(rates - RATES).max() <= 1 / counts.min()
    # label-group correlation as requested: phi(Young, Smiling) from the files equals the recorded one
    params = json.loads((dm.data_folder / "synthetic_params.json").read_text())
    phi = np.corrcoef((attrs["Young"] > 0).to_numpy(), smiling)[0, 1]
    assert phi == pytest.approx(params["realised"]["label_group_phi"]["Young"], abs=1e-12)
    p_young = np.array(PROPORTIONS)[[1, 3]].sum()
    p_smile_young = (np.array(PROPORTIONS) * RATES)[[1, 3]].sum() / p_young
    p_smile_old = (np.array(PROPORTIONS) * RATES)[[0, 2]].sum() / (1 - p_young)
    assert smiling[group % 2 == 1].mean() - smiling[group % 2 == 0].mean() == pytest.approx(
        p_smile_young - p_smile_old, abs=0.01)
    fractions = part.value_counts(normalize=True).sort_index().to_numpy()
    assert np.abs(fractions - [0.7, 0.1, 0.2]).max() < 0.005
    minority_test = ((group == 0) & (part.loc[attrs.index].to_numpy() == 2)).sum()
    assert minority_test == pytest.approx(0.2 * counts[0], abs=2)  # the minority reaches the test split
    desc = dm.describe()
    assert desc["generation"]["group_proportions"] == PROPORTIONS and desc["dataset"] == "synthetic"


def test_deterministic_by_seed_and_keyed_by_parameters(tmp_path):
    def digest(dm):
        h = hashlib.sha256((dm.data_folder / "list_attr_celeba.txt").read_bytes())
        for f in sorted((dm.data_folder / "img_align_celeba").glob("*.jpg"))[:50]:
            h.update(f.read_bytes())
        return h.hexdigest()

    a = _synthetic(tmp_path / "a", n_samples=200, seed=4)
    b = _synthetic(tmp_path / "b", n_samples=200, seed=4)
    c = _synthetic(tmp_path / "c", n_samples=200, seed=5)
    assert digest(a) == digest(b) != digest(c)
    assert a.data_folder.name == b.data_folder.name != c.data_folder.name
    again = _synthetic(tmp_path / "a", n_samples=200, seed=4)
    assert again.data_folder == a.data_folder and again.describe()["cache_file"] == a.describe()["cache_file"]


def test_read_back_by_the_celeba_reader(tmp_path):
    dm = _synthetic(tmp_path, n_samples=100)
    assert isinstance(dm, CelebADataModule) and DATAMODULES["synthetic"] is SyntheticDataModule
    celeba = CelebADataModule(root=str(dm.data_folder), cache_dir=str(tmp_path / "cache"), image_size=32)
    celeba.setup()
    for split in ("train", "val", "test"):
        pd.testing.assert_frame_equal(celeba.split_frame(split), dm.split_frame(split))
    with pytest.raises(DataFormatError, match="available: Smiling, Male, Young"):
        _synthetic(tmp_path, n_samples=100, target="Eyeglasses")
    with pytest.raises(DataFormatError, match="group_proportions"):
        SyntheticDataModule(group_proportions=[0.5, 0.5, 0.5, 0.5])


def _train_tiny_cnn(dm, epochs=1):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2),
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(epochs):
        for b in dm.train_dataloader():
            loss = nn.functional.cross_entropy(net(b["image"]), b["target"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(b["image"]).argmax(1) for b in dm.test_dataloader()]).numpy()
    frame = dm.split_frame("test")
    correct = pred == frame["target"].to_numpy()
    group = dm.group_ids("test")
    return correct.mean(), np.array([correct[group == g].mean() for g in range(4)])


def test_tiny_cnn_learns_target_with_gap_for_weak_signal_group(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2 shared cores are faster without intra-op contention
    try:
        weak = _synthetic(tmp_path, n_samples=3000, batch_size=64)  # default: group 0 is small and faint
        acc, per_group = _train_tiny_cnn(weak)
        control = _synthetic(tmp_path, n_samples=3000, batch_size=64, signal_strength=[1.0] * 4)
        _, per_group_control = _train_tiny_cnn(control)
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.85, (acc, per_group)  # chance is ~0.5
    assert per_group[0] < per_group[1:].min() - 0.1, per_group  # the faint-cue group lags
    assert per_group_control[0] > per_group[0] + 0.1, (per_group, per_group_control)  # because of its cue
