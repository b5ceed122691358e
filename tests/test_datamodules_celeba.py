"""CelebA reader on a tiny format-exact fixture: batches, official partition, cache, calibration, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import datamodules.cache as cache_mod
from datamodules import CelebADataModule, DataFormatError, create_datamodule
from datamodules.dataset import IMAGENET_MEAN, IMAGENET_STD
from tests.fixtures_data import write_celeba


@pytest.fixture
def celeba(tmp_path):
    root = tmp_path / "celeba"
    attrs = write_celeba(root, n=40)
    return root, attrs, tmp_path / "cache"


def _dm(root, cache, **kw):
    kw = {"image_size": 16, "batch_size": 8, **kw}
    dm = CelebADataModule(root=str(root), cache_dir=str(cache), **kw)
    dm.prepare_data()
    dm.setup()
    return dm


def test_batches_match_reference_preprocessing(celeba):
    root, attrs, cache = celeba
    dm = _dm(root, cache)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (8, 3, 16, 16)
    assert batch["target"].dtype == torch.int64 and batch["sensitive"].shape == (8, 2)
    assert batch["sensitive"].dtype == torch.int64
    # reference: torchvision centre-crop to the short side, resize, ImageNet normalisation, from the JPEG itself
    for k, sid in enumerate(batch["sample_id"][:3]):
        img = Image.open(root / "img_align_celeba" / f"{sid}.jpg").convert("RGB")
        ref = TF.resize(TF.center_crop(img, [18, 18]), [16, 16], antialias=True)
        ref = TF.normalize(TF.to_tensor(ref), IMAGENET_MEAN, IMAGENET_STD)
        # one uint8 step of the cached pixels is 1/255/std ≈ 0.02 in normalised units
        assert torch.allclose(batch["image"][k], ref, atol=0.02), sid
    row = attrs.set_index("file").loc[[f"{s}.jpg" for s in batch["sample_id"]]]
    assert batch["target"].tolist() == (row["Smiling"] > 0).astype(int).tolist()
    assert batch["sensitive"][:, 0].tolist() == (row["Male"] > 0).astype(int).tolist()
    assert batch["sensitive"][:, 1].tolist() == (row["Young"] > 0).astype(int).tolist()


def test_official_partition_and_metadata(celeba):
    root, attrs, cache = celeba
    dm = _dm(root, cache, target="Eyeglasses", sensitive=["Male", "Pale_Skin"])
    for code, split in enumerate(("train", "val", "test")):
        expected = sorted(f[:-4] for f in attrs.loc[attrs["partition"] == code, "file"])
        frame = dm.split_frame(split)
        assert sorted(frame["sample_id"]) == expected
        assert list(frame.columns) == ["sample_id", "target", "Male", "Pale_Skin"]
    assert dm.num_classes == 2 and dm.class_names == ["not_Eyeglasses", "Eyeglasses"]
    assert dm.sensitive_levels == {"Male": ["not_Male", "Male"], "Pale_Skin": ["not_Pale_Skin", "Pale_Skin"]}
    desc = json.loads(json.dumps(dm.describe()))
    assert desc["counts"]["train"]["n"] == int((attrs["partition"] == 0).sum())
    assert sum(desc["counts"]["test"]["groups"].values()) == desc["counts"]["test"]["n"]
    assert desc["cache_file"].endswith(".npy")


def test_parent_folder_with_celeba_subdir(celeba):
    root, _, cache = celeba
    dm = _dm(root.parent, cache)
    assert len(dm.split_frame("train")) > 0


def test_registry_builds_celeba(celeba):
    root, _, cache = celeba
    dm = create_datamodule("celeba", root=str(root), cache_dir=str(cache), image_size=16)
    assert isinstance(dm, CelebADataModule)
    with pytest.raises(ValueError, match="Unknown datamodule 'celbea'.*celeba"):
        create_datamodule("celbea")


def test_cache_is_reused_without_decoding(celeba, monkeypatch):
    root, _, cache = celeba
    first = _dm(root, cache)
    ref = next(iter(first.test_dataloader()))["image"]

    def refuse(*args, **kwargs):
        raise AssertionError("decoded a JPEG although the cache exists")

    monkeypatch.setattr(Image, "open", refuse)
    second = _dm(root, cache)
    assert second.describe()["cache_file"] == first.describe()["cache_file"]
    assert torch.equal(next(iter(second.test_dataloader()))["image"], ref)
    with pytest.raises(AssertionError, match="decoded a JPEG"):  # another resolution is another cache
        _dm(root, cache, image_size=12)
    assert len(list((cache / "images").glob("*.npy"))) == 1
    assert not list((cache / "images").glob(".*tmp*"))  # no temporary file left behind


def test_subsample_is_deterministic_and_changes_cache_key(celeba):
    root, _, cache = celeba
    a = _dm(root, cache, max_samples_per_split=5)
    b = _dm(root, cache, max_samples_per_split=5)
    assert all(len(a.split_frame(s)) == 5 for s in ("train", "val", "test"))
    assert a.split_frame("train")["sample_id"].tolist() == b.split_frame("train")["sample_id"].tolist()
    full = _dm(root, cache)
    assert full.describe()["cache_file"] != a.describe()["cache_file"]


def test_train_loader_flips_and_balanced_sampler(celeba):
    root, _, cache = celeba
    dm = _dm(root, cache, balanced_sampler=True, batch_size=4)
    torch.manual_seed(0)
    plain = {s: img for b in dm.split_dataloader("train") for s, img in zip(b["sample_id"], b["image"])}
    seen_flip = seen_plain = False
    for b in dm.train_dataloader():
        for s, img in zip(b["sample_id"], b["image"]):
            same, flipped = torch.equal(img, plain[s]), torch.equal(img, plain[s].flip(-1))
            assert same or flipped
            seen_flip |= flipped and not same
            seen_plain |= same
    assert seen_flip and seen_plain
    sampler = dm.train_dataloader().sampler
    assert type(sampler).__name__ == "GroupBalancedSampler"
    counts = np.bincount(dm.group_ids("train")[list(iter(sampler))])
    assert counts[counts > 0].max() - counts[counts > 0].min() <= 1


def test_calibration_draws(celeba):
    root, _, cache = celeba
    dm = _dm(root, cache)
    groups = dm.group_ids("train")
    balanced = dm.calibration_indices(16, balanced=True, seed=3)
    assert len(balanced) == 16
    per_group = np.bincount(groups[balanced], minlength=4)
    present = np.unique(groups)
    assert set(np.flatnonzero(per_group)) == set(present)
    assert per_group[present].max() - per_group[present].min() <= 1
    assert np.array_equal(balanced, dm.calibration_indices(16, balanced=True, seed=3))
    assert not np.array_equal(balanced, dm.calibration_indices(16, balanced=True, seed=4))
    natural = dm.calibration_indices(10, seed=3)
    assert len(np.unique(natural)) == 10 and natural.max() < len(groups)
    ids = [s for b in dm.calibration_dataloader(10, seed=3, batch_size=4) for s in b["sample_id"]]
    assert ids == dm.split_frame("train")["sample_id"].iloc[natural].tolist()


def test_missing_root_names_layout_and_source(tmp_path):
    dm = CelebADataModule(root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path))
    with pytest.raises(DataFormatError, match=r"img_align_celeba.*list_attr_celeba\.txt.*mmlab\.ie\.cuhk\.edu\.hk"):
        dm.setup()
    with pytest.raises(DataFormatError, match="no CelebA root"):
        CelebADataModule(root=None).setup()


def test_unknown_attribute_lists_available(celeba):
    root, _, cache = celeba
    with pytest.raises(DataFormatError, match=r"unknown CelebA attribute\(s\) \['Smile'\].*Smiling.*Young"):
        _dm(root, cache, target="Smile")


def test_attribute_file_missing_a_column(celeba):
    root, _, cache = celeba
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:-1])  # header lists 39 names, rows still carry 40 values
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match="rows have 41 fields but the header names 39 attributes"):
        _dm(root, cache)


def test_truncated_image_named_or_skipped(celeba):
    root, attrs, cache = celeba
    victim = root / "img_align_celeba" / attrs["file"].iloc[0]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DataFormatError, match=f"cannot read image .*{victim.name}"):
        _dm(root, cache)
    assert not list((cache / "images").glob("*.npy"))  # nothing half-written
    dm = _dm(root, cache, skip_bad_images=True)
    desc = dm.describe()
    assert desc["skipped"]["n"] == 1 and desc["skipped"]["files"][0]["file"].endswith(victim.name)
    assert victim.stem not in set(dm.split_frame("train")["sample_id"])
    assert sum(desc["counts"][s]["n"] for s in ("train", "val", "test")) == len(attrs) - 1
    with pytest.raises(DataFormatError, match=f"unreadable image.*{victim.name}"):  # cache remembers it
        _dm(root, cache)


def test_missing_image_file(celeba):
    root, attrs, cache = celeba
    (root / "img_align_celeba" / attrs["file"].iloc[-1]).unlink()
    with pytest.raises(DataFormatError, match=f"missing under .*{attrs['file'].iloc[-1]}"):
        _dm(root, cache)
    dm = _dm(root, cache, skip_bad_images=True)
    assert dm.describe()["skipped"]["files"][0]["reason"] == "missing image file"


def test_download_flag_goes_through_torchvision(celeba, monkeypatch):
    import torchvision

    root, _, cache = celeba
    calls = []
    monkeypatch.setattr(torchvision.datasets, "CelebA", lambda *a, **k: calls.append((a, k)))
    _dm(root.parent, cache, download=True)
    assert calls == [((str(root.parent),), {"split": "all", "target_type": "attr", "download": True})]


def test_cache_builds_with_worker_processes(celeba):
    root, _, cache = celeba
    serial = _dm(root, cache)
    parallel = CelebADataModule(root=str(root), cache_dir=str(cache / "p"), image_size=16, num_workers=2)
    parallel.setup()
    a = np.load(serial.describe()["cache_file"])
    b = np.load(parallel.describe()["cache_file"])
    assert np.array_equal(a, b)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "env"))
    assert cache_mod.default_cache_dir(None) == tmp_path / "env"
    assert cache_mod.default_cache_dir(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.delenv("FAIRQ_CACHE")
    assert cache_mod.default_cache_dir(None) == cache_mod.Path.home() / ".cache" / "fairq"


def test_batched_fetch_equals_per_item_collate(celeba):
    from torch.utils.data import DataLoader

    root, _, cache = celeba
    dm = _dm(root, cache)
    per_item = DataLoader(dm.dataset("val"), batch_size=5)  # plain dataset, torch's default_collate
    for fast, slow in zip(dm.split_dataloader("val", batch_size=5), per_item, strict=True):
        assert fast.keys() == slow.keys()
        assert torch.equal(fast["image"], slow["image"]) and torch.equal(fast["target"], slow["target"])
        assert torch.equal(fast["sensitive"], slow["sensitive"]) and fast["sample_id"] == slow["sample_id"]
