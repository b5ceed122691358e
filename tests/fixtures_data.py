"""Writers of tiny, format-exact dataset fixtures (CelebA, FairFace, UTKFace) for the datamodule tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
FAIRFACE_AGES = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]
FAIRFACE_RACES = ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"]


def _jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int]) -> None:
    """A random-pattern JPEG of ``size`` (width, height) with a bright left half (so flips are detectable)."""
    w, h = size
    pixels = rng.integers(0, 120, size=(h, w, 3), dtype=np.uint8)
    pixels[:, : w // 2] += 120
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def write_celeba(root: Path, n: int = 36, seed: int = 0, size: tuple[int, int] = (18, 22)) -> pd.DataFrame:
    """CelebA in torchvision's layout under ``root``; returns the written attributes (±1) and partition."""
    rng = np.random.default_rng(seed)
    files = [f"{i + 1:06d}.jpg" for i in range(n)]
    for f in files:
        _jpeg(root / "img_align_celeba" / f, rng, size)
    attrs = pd.DataFrame(rng.choice([-1, 1], size=(n, len(CELEBA_ATTRIBUTES))), columns=CELEBA_ATTRIBUTES)
    attrs.insert(0, "file", files)
    partition = np.repeat([0, 1, 2], [n - 2 * (n // 4), n // 4, n // 4])
    with open(root / "list_attr_celeba.txt", "w") as fh:
        fh.write(f"{n}\n{' '.join(CELEBA_ATTRIBUTES)} \n")
        for row in attrs.itertuples(index=False):
            fh.write(row[0] + " " + " ".join(f"{v:2d}" for v in row[1:]) + "\n")
    with open(root / "list_eval_partition.txt", "w") as fh:
        fh.writelines(f"{f} {p}\n" for f, p in zip(files, partition))
    attrs["partition"] = partition
    return attrs


def write_fairface(root: Path, n_train: int = 60, n_val: int = 20, seed: int = 0, size: int = 20) -> dict:
    """FairFace's layout under ``root``; returns the two label frames as written."""
    rng = np.random.default_rng(seed)
    frames = {}
    for split, n in (("train", n_train), ("val", n_val)):
        files = [f"{split}/{i + 1}.jpg" for i in range(n)]
        for f in files:
            _jpeg(root / f, rng, (size, size))
        frames[split] = pd.DataFrame({
            "file": files,
            "age": rng.choice(FAIRFACE_AGES, n),
            "gender": rng.choice(["Male", "Female"], n),
            "race": rng.choice(FAIRFACE_RACES, n),
            "service_test": rng.choice(["True", "False"], n),
        })
        frames[split].to_csv(root / f"fairface_label_{split}.csv", index=False)
    return frames


def write_utkface(
    root: Path, n: int = 80, seed: int = 0, size: int = 20, irregular: tuple[str, ...] = ()
) -> pd.DataFrame:
    """``root/UTKFace/`` of ``age_gender_race_datetime.jpg.chip.jpg`` files plus ``irregular`` extra names."""
    rng = np.random.default_rng(seed)
    folder = root / "UTKFace"
    rows = []
    for i in range(n):
        age, gender, race = int(rng.integers(1, 90)), int(rng.integers(0, 2)), int(rng.integers(0, 5))
        name = f"{age}_{gender}_{race}_2017011{i:010d}.jpg.chip.jpg"
        _jpeg(folder / name, rng, (size, size))
        rows.append((name, age, gender, race))
    for name in irregular:
        _jpeg(folder / name, rng, (size, size))
    return pd.DataFrame(rows, columns=["file", "age", "gender", "race"])
