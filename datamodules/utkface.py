"""UTKFace (aligned & cropped faces) with a seeded stratified train/val/test split."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from datamodules._registry import register_datamodule
from datamodules.base import SPLITS, FaceDataModule
from datamodules.errors import DATASET_URLS, DataFormatError

log = logging.getLogger(__name__)

RACES = ["White", "Black", "Asian", "Indian", "Others"]
GENDERS = ["male", "female"]
NAME_RE = re.compile(r"^(\d+)_([01])_([0-4])_(\d+)\.jpg\.chip\.jpg$")
LAYOUT = "<root>/UTKFace/<age>_<gender 0|1>_<race 0-4>_<datetime>.jpg.chip.jpg (or <root> being that folder itself)"


def age_bin_labels(edges: Sequence[int]) -> list[str]:
    """Labels of the bins cut at ``edges``: ``(20, 40, 60)`` → ``0-19, 20-39, 40-59, 60+``."""
    bounds = [0, *edges]
    return [f"{lo}-{hi - 1}" for lo, hi in zip(bounds[:-1], bounds[1:])] + [f"{bounds[-1]}+"]


def irregular_reason(name: str) -> str:
    """Why a file name is not ``age_gender_race_datetime.jpg.chip.jpg`` (for the skip report)."""
    if any(c.isspace() for c in name):
        return "whitespace in file name"
    if name.endswith("jpg.chip.jpg") and not name.endswith(".jpg.chip.jpg"):
        return "missing '.' before 'jpg.chip.jpg'"
    if not name.endswith(".jpg.chip.jpg"):
        return "does not end in '.jpg.chip.jpg'"
    stem = name[: -len(".jpg.chip.jpg")]
    fields = stem.split("_")
    if len(fields) != 4:
        return f"{len(fields)} fields, expected 4: age_gender_race_datetime"
    return "a field is out of range (gender must be 0|1, race 0-4, age and datetime digits)"


@register_datamodule("utkface")
class UTKFaceDataModule(FaceDataModule):
    """UTKFace: target ``gender`` | ``race`` | ``age_bin``; sensitive attributes from the same set.

    Labels come from the file names (gender 0 male / 1 female; race 0 White, 1 Black, 2 Asian, 3 Indian,
    4 Others). Ages are binned at ``age_bin_edges`` (default 0-19, 20-39, 40-59, 60+). Files whose names do
    not parse are skipped, counted, reported once in the log and listed by :meth:`describe`. No official split
    exists: samples are split ``split_fractions`` (train, val, test) within every target × sensitive stratum
    by an RNG seeded with ``seed``.
    """

    dataset_name = "utkface"
    ATTRIBUTES = ("gender", "race", "age_bin")

    def __init__(
        self,
        root: str | None = None,
        target: str = "gender",
        sensitive: Sequence[str] = ("race", "age_bin"),
        image_size: int = 128,
        age_bin_edges: Sequence[int] = (20, 40, 60),
        split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
        **kwargs,  # FaceDataModule loader options: batch_size, eval_batch_size, num_workers, seed, cache_dir, …
    ):
        edges = [int(e) for e in age_bin_edges]
        if not edges or edges[0] <= 0 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise DataFormatError(f"age_bin_edges must be positive and strictly increasing, got {list(age_bin_edges)}")
        self.age_bin_edges = edges
        self.split_fractions = [float(f) for f in split_fractions]
        for name in [target, *([sensitive] if isinstance(sensitive, str) else sensitive)]:
            if name not in self.ATTRIBUTES:
                raise DataFormatError(f"unknown UTKFace attribute {name!r}; available: {', '.join(self.ATTRIBUTES)}")
        super().__init__(
            root, target, sensitive, image_size, **kwargs,
        )

    def _levels(self, attribute: str) -> list[str]:
        return {"gender": GENDERS, "race": RACES, "age_bin": age_bin_labels(self.age_bin_edges)}[attribute]

    def _label_spaces(self):
        return list(self._levels(self.target_name)), {a: list(self._levels(a)) for a in self.sensitive_names}

    def _resolve_root(self) -> Path:
        where = f"Expected layout: {LAYOUT}. Get it from {DATASET_URLS['utkface']}"
        if self.root is None:
            raise DataFormatError(f"no UTKFace root given (data.root). {where}")
        root = Path(self.root).expanduser()
        if (root / "UTKFace").is_dir():
            return root / "UTKFace"
        if root.is_dir() and any(n.endswith(".chip.jpg") for n in os.listdir(root)):
            return root
        raise DataFormatError(f"UTKFace not found at {root} (no UTKFace/ folder of *.jpg.chip.jpg files). {where}")

    def _read_index(self, root: Path) -> pd.DataFrame:
        rows, irregular = [], []
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
        for name in names:
            m = NAME_RE.match(name)
            if m is None:
                irregular.append({"file": name, "reason": f"irregular name: {irregular_reason(name)}"})
                continue
            age, gender, race, _ = m.groups()
            rows.append((name, name[: -len(".jpg.chip.jpg")], int(age), GENDERS[int(gender)], RACES[int(race)]))
        if irregular:
            log.warning(
                "UTKFace: skipped %d file(s) with irregular names: %s", len(irregular),
                "; ".join(f"{r['file']!r} ({r['reason'].split(': ', 1)[1]})" for r in irregular),
            )
        self._skipped.extend(irregular)
        self.irregular_files = irregular
        if not rows:
            raise DataFormatError(f"no parseable UTKFace images in {root}. Expected layout: {LAYOUT}")
        frame = pd.DataFrame(rows, columns=["file", "sample_id", "age", "gender", "race"])
        bins = np.searchsorted(self.age_bin_edges, frame["age"].to_numpy(), side="right")
        frame["age_bin"] = np.asarray(age_bin_labels(self.age_bin_edges), dtype=object)[bins]
        frame["target"] = pd.Categorical(frame[self.target_name], categories=self.class_names).codes.astype("int64")
        frame["split"] = self.assign_splits(frame, self.split_fractions, SPLITS)
        return frame[["file", "sample_id", "split", "target", *self.sensitive_names]]

    def _extra_description(self):
        return {
            "split": "seeded stratified (target x sensitive) within UTKFace",
            "split_fractions": dict(zip(SPLITS, self.split_fractions)),
            "age_bin_edges": self.age_bin_edges,
            "age_bins": age_bin_labels(self.age_bin_edges),
            "irregular_files": len(getattr(self, "irregular_files", [])),
        }
