"""FaceDataModule: the shared Lightning DataModule behind every face dataset (index → split → cache → loaders)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from datamodules import cache as image_cache
from datamodules.common import FairqDataModule
from datamodules.dataset import BatchedImageDataset, CachedImageDataset, collate_batch
from datamodules.errors import DataFormatError
from datamodules.sampler import GroupBalancedSampler, balanced_indices
from datamodules.splits import stratified_assign, subsample

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class FaceDataModule(FairqDataModule):
    """Images with a target label, sensitive attributes and a stable sample id, served from a decoded cache.

    Subclasses describe their dataset with :meth:`_label_spaces` (known at construction, so ``num_classes``
    can be linked to a model before setup), :meth:`_resolve_root` and :meth:`_read_index`; this class does
    subsampling, caching, bad-file bookkeeping and every loader.

    Parameters
    ----------
    root
        Folder holding the dataset (see each subclass for its layout).
    target
        Attribute predicted by the model.
    sensitive
        Sensitive attributes; their combinations are the intersectional groups.
    image_size
        Side of the square images the model sees (non-square images are centre-cropped first).
    batch_size, eval_batch_size
        Training batch size; batch size of val/test/calibration loaders (default: ``batch_size``).
    num_workers
        DataLoader workers (also used to decode images when the cache is built).
    seed
        The data seed: splits, subsamples and generated data (fixed across a run's training seeds, so every seed is
        evaluated on the same samples). Shuffling and the balanced sampler follow :attr:`sampling_seed`, which a
        run sets to its training seed (``--seed``).
    cache_dir
        Where decoded images (and generated data) are kept; default ``$FAIRQ_CACHE`` or ``~/.cache/fairq``.
    balanced_sampler
        Train loader draws equally from every intersectional group (:class:`GroupBalancedSampler`).
    skip_bad_images
        Skip and count unreadable or missing images instead of failing on the first one.
    max_samples_per_split
        Keep at most this many samples per split (seeded draw) for tiny runs.

    Notes
    -----
    Dataset subclasses declare only their own parameters and defaults and forward the loader options above as
    ``**kwargs``; jsonargparse follows ``super().__init__(**kwargs)`` to this signature, so the CLI and
    ``--print_config`` still list every one of them.
    """

    dataset_name: ClassVar[str] = "face"

    def __init__(
        self,
        root: str | None,
        target: str,
        sensitive: Sequence[str],
        image_size: int,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        balanced_sampler: bool = False,
        skip_bad_images: bool = False,
        max_samples_per_split: int | None = None,
    ):
        super().__init__()
        # No save_hyperparameters(): Lightning refuses to log when model and datamodule hparams share a key
        # (seed, image_size…) with different values; the resolved config and describe() record everything.
        if isinstance(sensitive, str):
            sensitive = [sensitive]
        if not sensitive:
            raise DataFormatError("at least one sensitive attribute is needed")
        if target in sensitive:
            raise DataFormatError(f"target {target!r} cannot also be a sensitive attribute ({list(sensitive)})")
        if len(set(sensitive)) != len(sensitive):
            raise DataFormatError(f"duplicate sensitive attributes in {list(sensitive)}")
        if image_size <= 0 or batch_size <= 0:
            raise DataFormatError(f"image_size and batch_size must be positive, got {image_size}, {batch_size}")
        if max_samples_per_split is not None and max_samples_per_split <= 0:
            raise DataFormatError(f"max_samples_per_split must be positive, got {max_samples_per_split}")
        self.root = root
        self.target_name = target
        self.sensitive_names = list(sensitive)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.sampling_seed = int(seed)  # shuffling and balanced sampling: a run sets its training seed here
        self.cache_dir = str(image_cache.default_cache_dir(cache_dir))
        self.balanced_sampler = balanced_sampler
        self.skip_bad_images = skip_bad_images
        self.max_samples_per_split = max_samples_per_split
        self.class_names, self.sensitive_levels = self._label_spaces()
        self.num_classes = len(self.class_names)
        self._frames: dict[str, pd.DataFrame] = {}
        self._skipped: list[dict[str, str]] = []
        self._cache: image_cache.ImageCache | None = None
        self._data_root: Path | None = None

    # ----------------------------------------------------------------- subclass hooks
    def _label_spaces(self) -> tuple[list[str], dict[str, list[str]]]:
        """Class names of the target and the ordered levels of each sensitive attribute."""
        raise NotImplementedError

    def _resolve_root(self) -> Path:
        """The folder holding the data; raise :class:`DataFormatError` naming the expected layout if absent."""
        raise NotImplementedError

    def _read_index(self, root: Path) -> pd.DataFrame:
        """One row per usable image: ``file`` (relative to root), ``sample_id``, ``split``, ``target`` (int code)
        and one string column per sensitive attribute. Irregular entries go to ``self._skipped``."""
        raise NotImplementedError

    def _extra_description(self) -> dict[str, Any]:
        """Dataset-specific facts for :meth:`describe` (split fractions, age bins, generation parameters…)."""
        return {}

    # ----------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Download/generate if asked, read the index and build the decoded-image cache (idempotent)."""
        self._load()

    def setup(self, stage: str | None = None) -> None:
        """Make the splits and the cache available (reuses what :meth:`prepare_data` built)."""
        self._load()

    @property
    def is_setup(self) -> bool:
        """Whether the index and cache are loaded."""
        return self._cache is not None

    @property
    def skipped_files(self) -> list[dict[str, str]]:
        """``{"file", "reason"}`` for every file skipped so far (irregular names, unreadable or missing images)."""
        return list(self._skipped)

    def read_index(self) -> pd.DataFrame:
        """The full parsed index (every usable image, all splits, before subsampling and caching)."""
        self._skipped = []
        return self._read_index(self._resolve_root())

    def _load(self) -> None:
        if self._cache is not None:
            return
        root = self._resolve_root()
        self._skipped = []
        index = self._read_index(root)
        frames = []
        for k, split in enumerate(SPLITS):
            part = index[index["split"] == split].sort_values("sample_id", kind="stable")
            frames.append(subsample(part, self.max_samples_per_split, self.seed + 1000 * (k + 1)))
        index = pd.concat(frames, ignore_index=True)
        index = self._drop_missing(root, index)
        if index.empty:
            raise DataFormatError(f"no usable images found for {self.dataset_name} under {root}")
        cache = image_cache.load_or_build(
            self.dataset_name,
            root,
            index["file"].tolist(),
            self.image_size,
            self.cache_dir,
            skip_bad_images=self.skip_bad_images,
            num_workers=self.num_workers,
        )
        index["_row"] = np.arange(len(index))
        if cache.bad:
            bad_files = [index["file"].iat[i] for i in sorted(cache.bad)]
            self._skipped.extend({"file": f, "reason": f"unreadable image: {cache.bad[i]}"}
                                 for i, f in zip(sorted(cache.bad), bad_files))
            index = index.drop(index.index[sorted(cache.bad)])
            log.warning("%s: skipped %d unreadable image(s): %s", self.dataset_name, len(bad_files),
                        ", ".join(bad_files))
        self._frames = {s: index[index["split"] == s].reset_index(drop=True) for s in SPLITS}
        for s, f in self._frames.items():
            if f.empty:
                raise DataFormatError(f"{self.dataset_name}: the {s} split is empty under {root}")
        self._data_root = root
        self._cache = cache

    def _drop_missing(self, root: Path, index: pd.DataFrame) -> pd.DataFrame:
        listed = set()
        for folder in index["file"].map(os.path.dirname).unique():
            if (root / folder).is_dir():
                listed.update(os.path.join(folder, name) for name in os.listdir(root / folder))
        missing = ~index["file"].isin(listed)
        if not missing.any():
            return index
        names = index.loc[missing, "file"].tolist()
        if not self.skip_bad_images:
            raise DataFormatError(
                f"{len(names)} image(s) listed for {self.dataset_name} are missing under {root}, e.g. "
                f"{', '.join(names[:5])}. Restore them, or set skip_bad_images=True to skip and count them."
            )
        self._skipped.extend({"file": n, "reason": "missing image file"} for n in names)
        log.warning("%s: skipped %d missing image(s): %s", self.dataset_name, len(names), ", ".join(names[:20]))
        return index[~missing]

    # ----------------------------------------------------------------- tables
    def _frame(self, split: str) -> pd.DataFrame:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
        if self._cache is None:
            raise RuntimeError("call prepare_data() and setup() first")
        return self._frames[split]

    def split_frame(self, split: str) -> pd.DataFrame:
        """``sample_id``, ``target`` (int code) and one string column per sensitive attribute, for ``split``."""
        return self._frame(split)[["sample_id", "target", *self.sensitive_names]].copy()

    def sensitive_codes(self, split: str) -> np.ndarray:
        """``[N, n_attributes]`` int64 codes into :attr:`sensitive_levels`."""
        f = self._frame(split)
        cols = [pd.Categorical(f[a], categories=self.sensitive_levels[a]).codes for a in self.sensitive_names]
        return np.stack(cols, axis=1).astype(np.int64)

    def group_ids(self, split: str) -> np.ndarray:
        """One integer per sample identifying its intersectional group (mixed radix over the sensitive codes,
        :func:`fairq.metrics.intersectional_group_ids`)."""
        from fairq.metrics import intersectional_group_ids

        sizes = [len(self.sensitive_levels[a]) for a in self.sensitive_names]
        return intersectional_group_ids(torch.from_numpy(self.sensitive_codes(split)), sizes).numpy()

    @property
    def task(self):
        """How this datamodule's batches are read (:class:`fairq.batches.ClassificationTask`): the ``image`` key is
        the model input; ``sensitive`` columns are :attr:`sensitive_names` with :attr:`sensitive_levels`."""
        from fairq.batches import ClassificationTask

        return ClassificationTask(input_keys=("image",), sensitive_names=tuple(self.sensitive_names),
                                  sensitive_levels={a: list(self.sensitive_levels[a]) for a in self.sensitive_names})

    def group_names(self, split: str) -> list[str]:
        """Readable intersectional group label per sample, e.g. ``race=White,age_bin=20-39``."""
        f = self._frame(split)
        parts = [f"{a}=" + f[a].astype(str) for a in self.sensitive_names]
        out = parts[0]
        for p in parts[1:]:
            out = out + "," + p
        return out.tolist()

    # ----------------------------------------------------------------- loaders
    def dataset(self, split: str, *, augment: bool = False, batched: bool = False) -> CachedImageDataset:
        """The map-style dataset of ``split`` (``augment`` adds the random horizontal flip).

        ``batched`` returns a :class:`BatchedImageDataset`, which DataLoaders must pair with
        ``collate_fn=datamodules.dataset.collate_batch`` (as this module's loaders do).
        """
        f = self._frame(split)
        cls = BatchedImageDataset if batched else CachedImageDataset
        return cls(
            self._cache.path, f["_row"].to_numpy(), f["target"].to_numpy(), self.sensitive_codes(split),
            f["sample_id"].tolist(), hflip=augment, task=self.task, datamodule=self,
        )

    def _loader(self, dataset, batch_size: int, *, shuffle: bool = False, sampler=None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.sampling_seed) if shuffle else None
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, generator=generator,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0, collate_fn=collate_batch,
        )

    def split_dataloader(
        self, split: str, *, shuffle: bool = False, balanced: bool = False, batch_size: int | None = None,
        augment: bool = False,
    ) -> DataLoader:
        """Loader over ``split``; ``balanced`` uses :class:`GroupBalancedSampler` (and ignores ``shuffle``)."""
        ds = self.dataset(split, augment=augment, batched=True)
        bs = batch_size or (self.batch_size if split == "train" else self.eval_batch_size)
        if balanced:
            return self._loader(ds, bs, sampler=GroupBalancedSampler(self.group_ids(split), seed=self.sampling_seed))
        return self._loader(ds, bs, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        """Shuffled (or group-balanced) training batches with random horizontal flips."""
        return self.split_dataloader("train", shuffle=True, balanced=self.balanced_sampler, augment=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self.split_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order."""
        return self.split_dataloader("test")

    def calibration_indices(self, n: int, *, balanced: bool = False, seed: int = 0) -> np.ndarray:
        """Positions in the train split of a deterministic draw of ``n`` samples (natural or group-balanced)."""
        if n <= 0:
            raise ValueError(f"calibration size must be positive, got {n}")
        rng = np.random.default_rng([seed, 7919])
        if balanced:
            return balanced_indices(self.group_ids("train"), n, rng)
        total = len(self._frame("train"))
        if n > total:
            log.warning("calibration asked for %d samples; the train split has %d, using all", n, total)
        return rng.choice(total, size=min(n, total), replace=False).astype(np.int64)

    def calibration_dataloader(
        self, n: int, *, balanced: bool = False, seed: int = 0, batch_size: int | None = None
    ) -> DataLoader:
        """``n`` training samples (no augmentation) drawn uniformly, or equally per intersectional group."""
        idx = self.calibration_indices(n, balanced=balanced, seed=seed)
        return self._loader(Subset(self.dataset("train", batched=True), idx.tolist()),
                            batch_size or self.eval_batch_size)

    # ----------------------------------------------------------------- record
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable record of the data: sources, counts per split and group, skipped files, cache."""
        counts = {}
        for s in SPLITS:
            f = self._frame(s)
            groups = pd.Series(self.group_names(s)).value_counts().sort_index()
            counts[s] = {
                "n": int(len(f)),
                "target": {self.class_names[k]: int(v) for k, v in f["target"].value_counts().sort_index().items()},
                "groups": {k: int(v) for k, v in groups.items()},
                **{a: {k: int(v) for k, v in f[a].value_counts().sort_index().items()} for a in self.sensitive_names},
            }
        return {
            "dataset": self.dataset_name,
            "root": str(self._data_root),
            "target": self.target_name,
            "class_names": list(self.class_names),
            "sensitive": list(self.sensitive_names),
            "sensitive_levels": {k: list(v) for k, v in self.sensitive_levels.items()},
            "image_size": self.image_size,
            "seed": self.seed,
            "max_samples_per_split": self.max_samples_per_split,
            "counts": counts,
            "skipped": {"n": len(self._skipped), "files": list(self._skipped)},
            "cache_file": str(self._cache.path),
            **self._extra_description(),
        }

    def stratify_labels(self, frame: pd.DataFrame) -> pd.Series:
        """Stratum per row: target × every sensitive attribute (used for seeded stratified splits)."""
        out = frame["target"].astype(str)
        for a in self.sensitive_names:
            out = out + "|" + frame[a].astype(str)
        return out

    def assign_splits(self, frame: pd.DataFrame, fractions: Sequence[float], names: Sequence[str]) -> np.ndarray:
        """Seeded stratified assignment of ``frame`` rows (sorted by sample id) to ``names``."""
        frame = frame.sort_values("sample_id", kind="stable")
        out = pd.Series(stratified_assign(self.stratify_labels(frame), fractions, names, self.seed), index=frame.index)
        return out
