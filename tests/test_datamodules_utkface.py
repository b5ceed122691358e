"""UTKFace reader: file-name parsing, irregular names, age bins, seeded stratified split; real copy (slow)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datamodules import DataFormatError, UTKFaceDataModule
from datamodules.utkface import age_bin_labels
from tests.fixtures_data import write_utkface

IRREGULAR = ("24_0_1_20170116220224657 .jpg.chip.jpg", "39_1_20170116174525125.jpg.chip.jpg",
             "55_0_0_20170116232725357jpg.chip.jpg")
SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL_UTKFACE = SHARED / "data" / "utkface"


def _dm(root, cache, **kw):
    dm = UTKFaceDataModule(root=str(root), cache_dir=str(cache), image_size=16, batch_size=8, **kw)
    dm.prepare_data()
    dm.setup()
    return dm


def test_labels_from_names_and_irregular_reported_once(tmp_path, caplog):
    truth = write_utkface(tmp_path, n=80, irregular=IRREGULAR)
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        dm = _dm(tmp_path, tmp_path / "cache", age_bin_edges=[18, 40])
    reports = [r for r in caplog.records if "irregular" in r.getMessage()]
    assert len(reports) == 1 and all(name in reports[0].getMessage() for name in IRREGULAR)
    skipped = dm.describe()["skipped"]
    assert skipped["n"] == 3 and {s["file"] for s in skipped["files"]} == set(IRREGULAR)
    assert [s["reason"] for s in skipped["files"]] == [
        "irregular name: whitespace in file name",
        "irregular name: 3 fields, expected 4: age_gender_race_datetime",
        "irregular name: missing '.' before 'jpg.chip.jpg'",
    ]
    frame = pd.concat([dm.split_frame(s) for s in ("train", "val", "test")]).set_index("sample_id")
    truth = truth.assign(sample_id=truth["file"].str.replace(".jpg.chip.jpg", "", regex=False)).set_index("sample_id")
    assert sorted(frame.index) == sorted(truth.index)
    truth = truth.loc[frame.index]
    assert (frame["target"] == truth["gender"]).all()  # 0 male / 1 female, as in the names
    assert (frame["race"] == np.array(["White", "Black", "Asian", "Indian", "Others"])[truth["race"]]).all()
    expected_bin = np.where(truth["age"] < 18, "0-17", np.where(truth["age"] < 40, "18-39", "40+"))
    assert (frame["age_bin"] == expected_bin).all()
    assert dm.sensitive_levels["age_bin"] == ["0-17", "18-39", "40+"]
    assert dm.describe()["age_bin_edges"] == [18, 40]


def test_age_bin_labels():
    assert age_bin_labels([20, 40, 60]) == ["0-19", "20-39", "40-59", "60+"]
    with pytest.raises(DataFormatError, match="strictly increasing"):
        UTKFaceDataModule(age_bin_edges=[40, 20])


def test_split_is_seeded_and_stratified(tmp_path):
    write_utkface(tmp_path, n=300, seed=1)
    a = _dm(tmp_path, tmp_path / "c", target="race", sensitive=["gender"], seed=5)
    b = _dm(tmp_path, tmp_path / "c", target="race", sensitive=["gender"], seed=5)
    c = _dm(tmp_path, tmp_path / "c", target="race", sensitive=["gender"], seed=6)
    ids = lambda dm: {s: set(dm.split_frame(s)["sample_id"]) for s in ("train", "val", "test")}  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert [len(a.split_frame(s)) for s in ("train", "val", "test")] == [210, 30, 60]
    full = pd.concat([a.split_frame(s).assign(split=s) for s in ("train", "val", "test")])
    table = pd.crosstab([full["target"], full["gender"]], full["split"])
    expected = table.sum(axis=1).to_numpy()[:, None] * np.array([[0.2, 0.7, 0.1]])  # columns: test, train, val
    assert np.abs(table[["test", "train", "val"]].to_numpy() - expected).max() < 2


def test_missing_root_and_unknown_attribute(tmp_path):
    with pytest.raises(DataFormatError, match=r"UTKFace/<age>_<gender 0\|1>.*susanqq\.github\.io/UTKFace"):
        UTKFaceDataModule(root=str(tmp_path / "none"), cache_dir=str(tmp_path)).setup()
    with pytest.raises(DataFormatError, match="attribute 'ethnicity'; available: gender, race, age_bin"):
        UTKFaceDataModule(root=str(tmp_path), target="ethnicity")


@pytest.mark.slow
def test_real_utkface_copy(tmp_path, caplog):
    if not REAL_UTKFACE.is_dir():
        pytest.skip(f"shared UTKFace copy not present at {REAL_UTKFACE}")
    folder = REAL_UTKFACE / "UTKFace"
    # independent count: parse every name with a plain regex, straight from the directory listing
    pattern = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.jpg\.chip\.jpg$")
    parsed = [m.groups() for m in map(pattern.match, os.listdir(folder)) if m]
    n_files = len(list(folder.iterdir()))
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        dm = UTKFaceDataModule(root=str(REAL_UTKFACE), cache_dir=str(tmp_path), image_size=32,
                               max_samples_per_split=40)
        index = dm.read_index()
    skipped = dm.skipped_files
    assert len(skipped) == n_files - len(parsed) == 5  # the shared README documents five irregular names
    assert sum("3 fields" in s["reason"] for s in skipped) == 3  # three lack a field entirely
    assert len(index) == len(parsed)
    genders = pd.Series([g for _, g, _, _ in parsed]).value_counts()
    races = pd.Series([r for _, _, r, _ in parsed]).value_counts()
    assert index["target"].value_counts().sort_index().tolist() == [genders["0"], genders["1"]]
    assert index["race"].value_counts().to_dict() == {
        name: races[str(k)] for k, name in enumerate(["White", "Black", "Asian", "Indian", "Others"])}
    # and the README's figures, counted from the files by whoever wrote it
    assert (genders["0"], genders["1"]) == (12389, 11314)
    assert [races[str(k)] for k in range(5)] == [10077, 4525, 3434, 3975, 1692]
    dm.setup()  # tiny subsample end to end: 3 x 40 real images decoded and served
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32)
    assert dm.describe()["skipped"]["n"] == 5
