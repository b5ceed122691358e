"""FairFace: official train/val label CSVs; val is the test split, a seeded validation split comes from train."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from datamodules._registry import register_datamodule
from datamodules.base import FaceDataModule
from datamodules.errors import DATASET_URLS, DataFormatError

RACES = ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"]
GENDERS = ["Male", "Female"]
AGES = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]
LEVELS = {"gender": GENDERS, "race": RACES, "age": AGES}
LABEL_FILES = {"train": "fairface_label_train.csv", "val": "fairface_label_val.csv"}
LAYOUT = (
    "<root>/train/1.jpg …, <root>/val/1.jpg …, <root>/fairface_label_train.csv and <root>/fairface_label_val.csv "
    "with columns file,age,gender,race,service_test (file like 'val/1.jpg')"
)


@register_datamodule("fairface")
class FairFaceDataModule(FaceDataModule):
    """FairFace: target ``gender`` | ``race`` | ``age``; sensitive attributes from the same set.

    Levels are FairFace's own: 2 genders, 7 races, 9 age bins (``0-2`` … ``more than 70``). The official
    ``val`` set is used as the test split; ``val_fraction`` of the official train set, stratified by
    target × sensitive attributes and seeded by ``seed``, becomes the validation split.
    """

    dataset_name = "fairface"

    def __init__(
        self,
        root: str | None = None,
        target: str = "gender",
        sensitive: Sequence[str] = ("race", "age"),
        image_size: int = 128,
        val_fraction: float = 0.1,
        **kwargs,  # FaceDataModule loader options: batch_size, eval_batch_size, num_workers, seed, cache_dir, …
    ):
        if not 0.0 < val_fraction < 1.0:
            raise DataFormatError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.val_fraction = float(val_fraction)
        for name in [target, *([sensitive] if isinstance(sensitive, str) else sensitive)]:
            if name not in LEVELS:
                raise DataFormatError(f"unknown FairFace attribute {name!r}; available: {', '.join(LEVELS)}")
        super().__init__(
            root, target, sensitive, image_size, **kwargs,
        )

    def _label_spaces(self):
        return list(LEVELS[self.target_name]), {a: list(LEVELS[a]) for a in self.sensitive_names}

    def _resolve_root(self) -> Path:
        where = f"Expected layout: {LAYOUT}. Get it from {DATASET_URLS['fairface']}"
        if self.root is None:
            raise DataFormatError(f"no FairFace root given (data.root). {where}")
        root = Path(self.root).expanduser()
        for cand in (root, root / "fairface"):
            if all((cand / f).is_file() for f in LABEL_FILES.values()):
                return cand
        raise DataFormatError(f"FairFace not found at {root} (need both {', '.join(LABEL_FILES.values())}). {where}")

    def _read_labels(self, path: Path) -> pd.DataFrame:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"cannot parse {path}: {exc}") from exc
        needed = ["file", self.target_name, *self.sensitive_names]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise DataFormatError(
                f"{path} lacks column(s) {missing}; it has {list(frame.columns)} "
                "(expected file,age,gender,race,service_test)"
            )
        for col in needed[1:]:
            unknown = sorted(set(frame[col]) - set(LEVELS[col]))
            if unknown:
                raise DataFormatError(f"{path}: unknown {col} value(s) {unknown[:10]}; expected {LEVELS[col]}")
        return frame

    def _read_index(self, root: Path) -> pd.DataFrame:
        parts = []
        for official, fname in LABEL_FILES.items():
            frame = self._read_labels(root / fname)
            out = pd.DataFrame({
                "file": frame["file"],
                "sample_id": frame["file"].str.rsplit(".", n=1).str[0],
                "target": pd.Categorical(frame[self.target_name], categories=self.class_names).codes.astype("int64"),
            })
            for a in self.sensitive_names:
                out[a] = frame[a]
            if official == "val":
                out["split"] = "test"
            else:
                out["split"] = self.assign_splits(out, (1 - self.val_fraction, self.val_fraction), ("train", "val"))
            parts.append(out)
        index = pd.concat(parts, ignore_index=True)
        dup = index["sample_id"].duplicated()
        if dup.any():
            examples = index.loc[dup, "file"].tolist()[:5]
            raise DataFormatError(f"duplicate FairFace files in the label CSVs, e.g. {examples}")
        return index

    def _extra_description(self):
        return {
            "split": "test = official val; val = seeded stratified (target x sensitive) carve-out of official train",
            "split_fractions": {"train": 1 - self.val_fraction, "val": self.val_fraction},
            "age_bins": AGES,
        }
