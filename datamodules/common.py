"""FairqDataModule: the one base type the CLI's ``--data`` accepts (face datasets and text benchmarks alike).

What the phases use of a datamodule: ``dataset_name``, ``target_name``, ``num_classes``, ``sensitive_names``,
``task`` (how batches are read and a cell is evaluated, :mod:`fairq.batches`), ``prepare_data()`` /
``setup()``, ``describe()`` (written to ``data.json``), ``calibration_dataloader(n, balanced=, seed=)``,
``val_dataloader()``, ``train_dataloader()`` and ``split_dataloader("test", batch_size=)`` (latency batches).
"""
from __future__ import annotations

from typing import ClassVar

import lightning as L


class FairqDataModule(L.LightningDataModule):
    """Base of every fairq datamodule (see the module doc for the interface the phases rely on)."""

    dataset_name: ClassVar[str] = "data"
