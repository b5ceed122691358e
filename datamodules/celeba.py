"""CelebA in torchvision's on-disk layout, official train/val/test partition."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from datamodules._registry import register_datamodule
from datamodules.base import FaceDataModule
from datamodules.errors import DATASET_URLS, DataFormatError

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
PARTITIONS = {0: "train", 1: "val", 2: "test"}
LAYOUT = (
    f"<root>/{IMAGE_DIR}/000001.jpg …, <root>/{ATTR_FILE} (count line, header of attribute names, then "
    f"'file ±1 …' rows) and <root>/{PARTITION_FILE} ('file 0|1|2'); <root> may also be the parent of a "
    "'celeba/' folder laid out so (torchvision's layout)"
)


def _binary_levels(attribute: str) -> list[str]:
    return [f"not_{attribute}", attribute]


@register_datamodule("celeba")
class CelebADataModule(FaceDataModule):
    """CelebA faces: binary target and sensitive attributes from the 40 CelebA attributes.

    The attribute and partition files are parsed here with pandas rather than through
    ``torchvision.datasets.CelebA``, which decodes a JPEG per item; torchvision is still used for the
    download (``download=True``). Attribute values ``-1``/``1`` become codes 0/1 with class names
    ``not_<attr>`` / ``<attr>``.
    """

    dataset_name = "celeba"

    def __init__(
        self,
        root: str | None = None,
        target: str = "Smiling",
        sensitive: Sequence[str] = ("Male", "Young"),
        image_size: int = 128,
        download: bool = False,
        **kwargs,  # FaceDataModule loader options: batch_size, eval_batch_size, num_workers, seed, cache_dir, …
    ):
        self.download = download
        super().__init__(
            root, target, sensitive, image_size, **kwargs,
        )

    def _label_spaces(self):
        return _binary_levels(self.target_name), {a: _binary_levels(a) for a in self.sensitive_names}

    def prepare_data(self) -> None:
        """Download through torchvision when ``download=True``, then build the cache."""
        if self.download:
            if self.root is None:
                raise DataFormatError("download=True needs a root folder to download CelebA into")
            import torchvision

            torchvision.datasets.CelebA(self.root, split="all", target_type="attr", download=True)
        super().prepare_data()

    def _resolve_root(self) -> Path:
        if self.root is None:
            raise DataFormatError(
                f"no CelebA root given (data.root). Expected layout: {LAYOUT}. Get it from {DATASET_URLS['celeba']}"
            )
        root = Path(self.root).expanduser()
        for cand in (root, root / "celeba"):
            if (cand / ATTR_FILE).is_file():
                return cand
        raise DataFormatError(
            f"CelebA not found at {root} (no {ATTR_FILE} there or in {root / 'celeba'}). Expected layout: "
            f"{LAYOUT}. Get it from {DATASET_URLS['celeba']}"
        )

    def _extra_description(self):
        return {"split": f"official CelebA partition ({PARTITION_FILE}: 0 train, 1 val, 2 test)"}

    def _read_index(self, root: Path) -> pd.DataFrame:
        attrs = read_attributes(root / ATTR_FILE)
        wanted = [self.target_name, *self.sensitive_names]
        unknown = [a for a in wanted if a not in attrs.columns]
        if unknown:
            raise DataFormatError(
                f"unknown CelebA attribute(s) {unknown} in {root / ATTR_FILE}; available: "
                f"{', '.join(c for c in attrs.columns if c != 'file')}"
            )
        part = read_partition(root / PARTITION_FILE)
        merged = attrs[["file", *wanted]].merge(part, on="file", how="left", validate="one_to_one")
        if merged["partition"].isna().any():
            missing = merged.loc[merged["partition"].isna(), "file"].tolist()
            raise DataFormatError(
                f"{len(missing)} file(s) of {ATTR_FILE} have no entry in {root / PARTITION_FILE}, e.g. {missing[:5]}"
            )
        if not (root / IMAGE_DIR).is_dir():
            raise DataFormatError(f"image folder {root / IMAGE_DIR} is missing. Expected layout: {LAYOUT}")
        out = pd.DataFrame({
            "file": IMAGE_DIR + "/" + merged["file"],
            "sample_id": merged["file"].str.rsplit(".", n=1).str[0],
            "split": merged["partition"].astype(int).map(PARTITIONS),
            "target": (merged[self.target_name] > 0).astype("int64"),
        })
        for a in self.sensitive_names:
            out[a] = [_binary_levels(a)[v > 0] for v in merged[a]]
        return out


def read_attributes(path: Path) -> pd.DataFrame:
    """Parse ``list_attr_celeba.txt`` into a frame with ``file`` and one ±1 int column per attribute."""
    if not path.is_file():
        raise DataFormatError(f"missing CelebA attribute file {path}")
    with open(path) as fh:
        count_line = fh.readline().strip()
        names = fh.readline().split()
    if not count_line.isdigit() or not names:
        raise DataFormatError(
            f"{path} must start with a count line and a header line of attribute names; got {count_line!r}, {names}"
        )
    frame = pd.read_csv(path, sep=r"\s+", skiprows=2, header=None, dtype=str)
    if frame.shape[1] != len(names) + 1:
        raise DataFormatError(
            f"{path}: rows have {frame.shape[1]} fields but the header names {len(names)} attributes "
            f"(+1 file column): {names}"
        )
    frame.columns = ["file", *names]
    values = frame[names].apply(pd.to_numeric, errors="coerce")
    bad = ~values.isin([-1, 1]).all(axis=1)
    if bad.any():
        examples = frame.loc[bad, "file"].tolist()[:5]
        raise DataFormatError(f"{path}: attribute values must be -1 or 1; bad rows e.g. {examples}")
    if int(count_line) != len(frame):
        raise DataFormatError(f"{path}: count line says {count_line} images but {len(frame)} rows follow")
    frame[names] = values.astype("int8")
    return frame


def read_partition(path: Path) -> pd.DataFrame:
    """Parse ``list_eval_partition.txt`` (``file 0|1|2``) into ``file, partition``."""
    if not path.is_file():
        raise DataFormatError(f"missing CelebA partition file {path} (lines 'file 0|1|2' for train/val/test)")
    frame = pd.read_csv(path, sep=r"\s+", header=None, dtype=str)
    if frame.shape[1] != 2:
        raise DataFormatError(f"{path}: expected 2 columns 'file partition', got {frame.shape[1]}")
    frame.columns = ["file", "partition"]
    part = pd.to_numeric(frame["partition"], errors="coerce")
    if not part.isin(list(PARTITIONS)).all():
        raise DataFormatError(f"{path}: partition must be 0, 1 or 2; got {sorted(frame['partition'].unique())[:10]}")
    frame["partition"] = part.astype(int)
    return frame
