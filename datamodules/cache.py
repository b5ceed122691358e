"""Decoded-image cache: decode + centre-crop + resize every image once into an on-disk uint8 array.

One ``.npy`` file of shape ``[N, 3, S, S]`` per (dataset, file list, resolution), opened later with
``numpy.load(mmap_mode="r")`` so that training, evaluation and every compressed variant read pixels without
touching a JPEG decoder. A JSON sidecar records the files and any that could not be decoded. Both are written
atomically (temporary file + ``os.replace``), so an interrupted build never leaves a torn cache behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from datamodules.errors import DataFormatError

log = logging.getLogger(__name__)

#: Bump when the decoding recipe changes so stale caches are not reused.
CACHE_FORMAT_VERSION = 1
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$FAIRQ_CACHE``, else ``~/.cache/fairq``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("FAIRQ_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fairq"


def decode_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one image to RGB, centre-crop it to a square, resize to ``size`` and return uint8 ``[3, S, S]``."""
    with Image.open(path) as im:
        # JPEG DCT scaling: decode at the smallest 1/2^k scale that is still >= size (several times faster).
        im.draft("RGB", (size, size))
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        if (w, h) != (side, side):
            im = im.crop((left, top, left + side, top + side))
        if side != size:
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


@dataclass
class ImageCache:
    """An opened cache: ``images[i]`` is the uint8 ``[3, S, S]`` array of ``files[i]``; ``bad`` maps index → reason."""

    path: Path
    files: list[str]
    image_size: int
    bad: dict[int, str] = field(default_factory=dict)

    def open(self) -> np.ndarray:
        """Memory-map the pixel array read-only."""
        return np.load(self.path, mmap_mode="r")


def cache_key(dataset: str, root: Path, files: Sequence[str], image_size: int) -> str:
    """Hash of everything that changes the cached pixels: dataset, root, each file's name and size, resolution."""
    h = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}|{dataset}|{root.resolve()}|{image_size}".encode())
    base = str(root)
    for rel in files:
        try:
            size = os.stat(os.path.join(base, rel)).st_size
        except OSError:
            size = -1
        h.update(f"|{rel}:{size}".encode())
    return h.hexdigest()[:16]


class _DecodeDataset(Dataset):
    """Yields ``(index, pixels or None, error or None)`` so worker processes never die on a bad file."""

    def __init__(self, root: Path, files: Sequence[str], size: int):
        self.root, self.files, self.size = root, list(files), size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, decode_image(self.root / self.files[i], self.size), None
        except _DECODE_ERRORS as exc:
            return i, None, f"{type(exc).__name__}: {exc}"


def load_or_build(
    dataset: str,
    root: str | os.PathLike,
    files: Sequence[str],
    image_size: int,
    cache_dir: str | os.PathLike | None = None,
    *,
    skip_bad_images: bool = False,
    num_workers: int = 0,
) -> ImageCache:
    """Return the cache for ``files`` (relative to ``root``) at ``image_size``, building it on first use.

    Raises
    ------
    DataFormatError
        If a file cannot be decoded and ``skip_bad_images`` is false (naming the file); with
        ``skip_bad_images`` the file's slot stays black and its index and reason are listed in ``bad``.
    """
    root = Path(root)
    files = [str(f) for f in files]
    if not files:
        raise DataFormatError(f"no images to cache for {dataset} under {root}")
    key = cache_key(dataset, root, files, image_size)
    folder = default_cache_dir(cache_dir) / "images"
    path = folder / f"{dataset}_{image_size}px_{len(files)}_{key}.npy"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        cache = ImageCache(path, files, image_size, {int(k): v for k, v in meta["bad"].items()})
        log.info("Reusing decoded-image cache %s", path)
    else:
        cache = _build(dataset, root, files, image_size, path, meta_path, skip_bad_images, num_workers)
    if cache.bad and not skip_bad_images:
        first = sorted(cache.bad)[:5]
        listing = "; ".join(f"{root / files[i]} ({cache.bad[i]})" for i in first)
        raise DataFormatError(
            f"{len(cache.bad)} unreadable image(s) in {dataset}: {listing}. "
            "Replace them, or set skip_bad_images=True to skip and count them."
        )
    return cache


def _build(dataset, root, files, size, path, meta_path, skip_bad, num_workers) -> ImageCache:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    bad: dict[int, str] = {}
    loader = DataLoader(
        _DecodeDataset(root, files, size), batch_size=64, num_workers=num_workers, collate_fn=list
    )
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), 3, size, size))
    try:
        with tqdm(total=len(files), desc=f"Decoding {dataset} images to {size}px cache", unit="img") as bar:
            for batch in loader:
                for i, pixels, err in batch:
                    if err is not None:
                        if not skip_bad:
                            raise DataFormatError(
                                f"cannot read image {root / files[i]}: {err}. "
                                "Replace it, or set skip_bad_images=True to skip and count such files."
                            )
                        bad[i] = err
                    else:
                        arr[i] = pixels
                bar.update(len(batch))
        arr.flush()
        del arr
        meta = {
            "dataset": dataset,
            "root": str(root.resolve()),
            "image_size": size,
            "n": len(files),
            "format_version": CACHE_FORMAT_VERSION,
            "bad": {str(i): r for i, r in sorted(bad.items())},
            "bad_files": [files[i] for i in sorted(bad)],
        }
        _atomic_write_text(meta_path, json.dumps(meta, indent=1))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("Wrote decoded-image cache %s (%d images, %d unreadable)", path, len(files), len(bad))
    return ImageCache(path, files, size, bad)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
