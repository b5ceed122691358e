"""FairFace reader on a tiny format-exact fixture: val is test, seeded validation carve-out, bad CSVs."""

from __future__ import annotations

import pandas as pd
import pytest

from datamodules import DataFormatError, FairFaceDataModule
from tests.fixtures_data import FAIRFACE_AGES, FAIRFACE_RACES, write_fairface


@pytest.fixture
def fairface(tmp_path):
    root = tmp_path / "fairface"
    return root, write_fairface(root, n_train=60, n_val=20), tmp_path / "cache"


def _dm(root, cache, **kw):
    dm = FairFaceDataModule(root=str(root), cache_dir=str(cache), image_size=16, batch_size=8, **kw)
    dm.prepare_data()
    dm.setup()
    return dm


def test_splits_labels_and_levels(fairface):
    root, frames, cache = fairface
    dm = _dm(root, cache, val_fraction=0.25)
    test = dm.split_frame("test")
    assert sorted(test["sample_id"]) == sorted(f[:-4] for f in frames["val"]["file"])
    train, val = dm.split_frame("train"), dm.split_frame("val")
    assert sorted([*train["sample_id"], *val["sample_id"]]) == sorted(f[:-4] for f in frames["train"]["file"])
    assert 10 <= len(val) <= 20  # 25 % of 60 within stratum rounding
    assert dm.class_names == ["Male", "Female"]
    assert dm.sensitive_levels == {"race": FAIRFACE_RACES, "age": FAIRFACE_AGES}
    truth = frames["train"].assign(sample_id=frames["train"]["file"].str[:-4]).set_index("sample_id")
    assert (train.set_index("sample_id")["race"] == truth.loc[train["sample_id"], "race"]).all()
    assert train["target"].tolist() == [dm.class_names.index(g) for g in truth.loc[train["sample_id"], "gender"]]
    batch = next(iter(dm.test_dataloader()))
    assert batch["sensitive"].shape == (8, 2) and int(batch["sensitive"][:, 1].max()) < len(FAIRFACE_AGES)
    assert dm.describe()["split_fractions"] == {"train": 0.75, "val": 0.25}


def test_validation_split_is_seeded(fairface):
    root, _, cache = fairface
    a, b, c = (_dm(root, cache, seed=s) for s in (1, 1, 2))
    ids = [set(m.split_frame("val")["sample_id"]) for m in (a, b, c)]
    assert ids[0] == ids[1] and ids[0] != ids[2]


def test_race_as_target(fairface):
    root, _, cache = fairface
    dm = _dm(root, cache, target="race", sensitive=["gender"])
    assert dm.num_classes == 7 and dm.sensitive_names == ["gender"]


def test_missing_root(tmp_path):
    with pytest.raises(DataFormatError, match=r"fairface_label_train\.csv.*github\.com/joojs/fairface"):
        FairFaceDataModule(root=str(tmp_path), cache_dir=str(tmp_path)).setup()


def test_missing_column_lists_existing(fairface):
    root, frames, cache = fairface
    frames["val"].drop(columns="race").to_csv(root / "fairface_label_val.csv", index=False)
    expected = r"lacks column\(s\) \['race'\]; it has \['file', 'age', 'gender', 'service_test'\]"
    with pytest.raises(DataFormatError, match=expected):
        _dm(root, cache)


def test_unknown_label_value(fairface):
    root, frames, cache = fairface
    bad = frames["train"].copy()
    bad.loc[0, "race"] = "Martian"
    bad.to_csv(root / "fairface_label_train.csv", index=False)
    with pytest.raises(DataFormatError, match="unknown race value.*Martian"):
        _dm(root, cache)


def test_unknown_attribute_name():
    with pytest.raises(DataFormatError, match="unknown FairFace attribute 'ethnicity'; available: gender, race, age"):
        FairFaceDataModule(root="x", sensitive=["ethnicity"])
