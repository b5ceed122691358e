"""Fairness fine-tuning (``fairness_finetune``): fine-tune the fake-quantized model with a group-gap penalty.

Post-training quantization first (QAT preparation with activation ranges calibrated on ``calibration_data`` and
weights fake-quantized by their own min-max, i.e. the static-PTQ starting point), then a short fine-tune of the
fake-quant model — gradients flow through the rounding by the straight-through estimator — with the loss
``cross-entropy + lam * penalty`` (:mod:`fairq.mitigation.penalties`: ``dp`` or ``eo``), then conversion to
simulated (or real INT8) layers exactly as :func:`fairq.compression.convert_qat` does. ``lam = 0`` is the
same fine-tune without the penalty: the control that isolates what the penalty does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from torch import nn
from torch.utils.data import DataLoader

from fairq.compression.config import QATConfig, _check_choice, _check_positive
from fairq.compression.data import model_device
from fairq.compression.qat import convert_qat, prepare_qat
from fairq.compression.registry import register_method

from .penalties import KINDS, make_penalty

log = logging.getLogger(__name__)


@dataclass
class FairnessFinetuneConfig(QATConfig):
    """:class:`~fairq.compression.QATConfig` plus the fairness penalty.

    ``fairness``: ``dp`` (group mean scores) or ``eo`` (group TPR/FPR proxies); ``lam``: penalty weight λ ≥ 0;
    ``min_group_count``: smallest group (cell) counted in a batch's penalty; ``weight_decay``: AdamW's.
    ``epochs``/``max_steps``/``lr`` size the fine-tune (``max_steps`` stops early).
    """

    fairness: str = "dp"
    lam: float = 1.0
    min_group_count: int = 2
    weight_decay: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        _check_choice("fairness", self.fairness, KINDS)
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or self.lam < 0:
            raise ValueError(f"lam (the penalty weight λ) must be a number ≥ 0, got {self.lam!r}")
        _check_positive("min_group_count", self.min_group_count, integer=True)
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay!r}")


def _default_trainer(model: nn.Module, **overrides):
    import lightning as L

    device = model_device(model)
    kwargs = dict(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  num_sanity_val_steps=0, limit_val_batches=0)
    return L.Trainer(**{**kwargs, **overrides})


def _as_loader(batches) -> DataLoader:
    """A DataLoader as is; any other iterable of ready-made batches wrapped so Lightning sees one loader (a bare
    list would be read as a list of loaders)."""
    if isinstance(batches, DataLoader):
        return batches
    return DataLoader(list(batches), batch_size=None, shuffle=False)


def finetune_with_penalty(model: nn.Module, config: FairnessFinetuneConfig, train_loader=None, *,
                          datamodule=None, make_trainer: Callable[..., object] | None = None) -> nn.Module:
    """Fine-tune ``model`` in place with :class:`fairq.lit.FairClassifier` (CE + λ·penalty) on ``train_loader``
    or a ``datamodule``'s training batches.

    ``make_trainer(**overrides)`` builds the Lightning Trainer (the phase passes one with fairq's logger and
    callbacks, which read the datamodule); default: a quiet Trainer on the model's device.
    """
    from fairq.lit import FairClassifier

    module = FairClassifier(model, lr=config.lr, weight_decay=config.weight_decay,
                            penalty=make_penalty(config.fairness, config.min_group_count), penalty_weight=config.lam)
    overrides = {"max_epochs": config.epochs, "max_steps": config.max_steps or -1}
    trainer = make_trainer(**overrides) if make_trainer is not None else _default_trainer(model, **overrides)
    if datamodule is not None:
        trainer.fit(module, datamodule=datamodule)
    else:
        trainer.fit(module, train_dataloaders=_as_loader(train_loader))
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    model.fairq_finetune = {"steps": int(trainer.global_step), **logged}
    return model


def quantize_fairness_finetune(model: nn.Module, config: FairnessFinetuneConfig, calibration_data=None, *,
                               train_loader=None, datamodule=None, make_trainer=None, **ctx) -> nn.Module:
    """prepare (PTQ start) → fine-tune with the penalty → convert; see the module docstring.

    Training data: ``train_loader`` (fairq batches ``image, target, sensitive``: the penalty needs the sensitive
    codes) or a ``datamodule`` (its ``train_dataloader``; its validation runs unless the trainer disables it).
    """
    if ctx.get("train_fn") is not None:
        raise ValueError("fairness_finetune trains with its own penalty (fairq.lit.FairClassifier): pass "
                         "train_loader (and optionally make_trainer), not train_fn")
    if train_loader is None and datamodule is None:
        raise ValueError("fairness_finetune needs train_loader=<fairq batches with image, target, sensitive> "
                         "or a datamodule")
    if calibration_data is None and config.act_bits is not None:
        raise ValueError("fairness_finetune starts from static PTQ: pass calibration_data (or act_bits=None)")
    prepare_qat(model, config, calibration_data)
    finetune_with_penalty(model, config, train_loader, datamodule=datamodule, make_trainer=make_trainer)
    stats = model.fairq_finetune
    log.info("fairness fine-tune (%s, λ=%g): %d steps, %s", config.fairness, config.lam, stats["steps"],
             {k: round(v, 4) for k, v in stats.items() if k != "steps"})
    qmodel = convert_qat(model, config, calibration_data)
    qmodel.fairq_finetune = stats
    return qmodel


register_method("fairness_finetune", FairnessFinetuneConfig, quantize_fairness_finetune)
