"""fairq datamodules: face datasets (sensitive attributes, a balanced sampler, an image cache) and text bias benchmarks."""

from datamodules._registry import DATAMODULES, create_datamodule, register_datamodule
from datamodules.base import FaceDataModule
from datamodules.common import FairqDataModule
from datamodules.celeba import CelebADataModule
from datamodules.errors import DATASET_URLS, DataFormatError
from datamodules.fairface import FairFaceDataModule
from datamodules.sampler import GroupBalancedSampler
from datamodules.synthetic import SyntheticDataModule
from datamodules.text import TextDataModule
from datamodules.utkface import UTKFaceDataModule

__all__ = [
    "DATAMODULES",
    "DATASET_URLS",
    "CelebADataModule",
    "DataFormatError",
    "FaceDataModule",
    "FairqDataModule",
    "FairFaceDataModule",
    "GroupBalancedSampler",
    "SyntheticDataModule",
    "TextDataModule",
    "UTKFaceDataModule",
    "create_datamodule",
    "register_datamodule",
]
