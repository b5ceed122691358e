"""The one exception type every datamodule raises for bad input, and where each dataset comes from."""

from __future__ import annotations

from fairq.errors import UserError

#: Official download pages, quoted in "missing data" errors.
DATASET_URLS: dict[str, str] = {
    "celeba": "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html "
    "(or torchvision.datasets.CelebA(root, download=True), i.e. `download: true` in the config)",
    "utkface": "https://susanqq.github.io/UTKFace/ (the 'Aligned&Cropped Faces' archive UTKFace.tar.gz)",
    "fairface": "https://github.com/joojs/fairface (images 'Padding=0.25' + the train/val label CSVs)",
}


class DataFormatError(UserError, ValueError):
    """Raised when a dataset's files are missing, malformed or do not match the requested attributes."""
