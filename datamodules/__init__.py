"""Face datasets for fairq: Lightning DataModules with sensitive attributes, a balanced sampler and an image cache."""

from datamodules._registry import DATAMODULES, create_datamodule, register_datamodule
from datamodules.base import FaceDataModule
from datamodules.celeba import CelebADataModule
from datamodules.errors import DATASET_URLS, DataFormatError
from datamodules.fairface import FairFaceDataModule
from datamodules.sampler import GroupBalancedSampler
from datamodules.synthetic import SyntheticDataModule
from datamodules.utkface import UTKFaceDataModule

__all__ = [
    "DATAMODULES",
    "DATASET_URLS",
    "CelebADataModule",
    "DataFormatError",
    "FaceDataModule",
    "FairFaceDataModule",
    "GroupBalancedSampler",
    "SyntheticDataModule",
    "UTKFaceDataModule",
    "create_datamodule",
    "register_datamodule",
]
