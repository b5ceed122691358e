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
from typing import Callable, ClassVar

from torch import nn

from fairq.batches import model_device
from fairq.errors import UserError
from fairq.compression.core.config import QATConfig, check_choice, check_positive, variant_of
from fairq.compression.quant.qat import convert_qat_result, prepare_qat
from fairq.compression.core.registry import Artifact, MethodInputs, MethodResult, register_method

from .penalties import KINDS, make_penalty

log = logging.getLogger(__name__)


@dataclass
class FairnessFinetuneConfig(QATConfig):
    """:class:`~fairq.compression.QATConfig` plus the fairness penalty.

    ``fairness``: ``dp`` (group mean scores) or ``eo`` (group TPR/FPR proxies); ``lam``: penalty weight λ ≥ 0;
    ``min_group_count``: smallest group (cell) counted in a batch's penalty; ``weight_decay``: AdamW's.
    ``epochs``/``max_steps``/``lr`` size the fine-tune (``max_steps`` stops early).
    """

    reference_method: ClassVar[str] = "ptq_static"

    fairness: str = "dp"
    lam: float = 1.0
    min_group_count: int = 2
    weight_decay: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        check_choice("fairness", self.fairness, KINDS)
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or self.lam < 0:
            raise ValueError(f"lam (the penalty weight λ) must be a number ≥ 0, got {self.lam!r}")
        check_positive("min_group_count", self.min_group_count, integer=True)
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay!r}")

    def controls(self) -> list:
        """Below W8A8 the fine-tuned model is a per-layer-input simulation: plain PTQ computed the same way is its
        like-for-like reference (:mod:`.controls`); at W8A8 it converts to real INT8 like plain PTQ does."""
        from .controls import layer_input_ptq

        return [] if (self.weight_bits, self.act_bits) == (8, 8) else [layer_input_ptq(self)]

    def variant(self) -> str:
        """``lambda=…`` first (the sweep's axis), then the other non-default fields."""
        rest = variant_of(self, skip=("lam", *self.run_fields))
        return "_".join(p for p in (f"lambda={self.lam:g}", rest) if p)


def finetune_with_penalty(model: nn.Module, config: FairnessFinetuneConfig, train_loader=None, *,
                          datamodule=None, make_trainer: Callable[..., object] | None = None) -> dict:
    """Fine-tune ``model`` in place with :func:`fairq.lit.fit` (CE + λ·penalty) on ``train_loader`` or a
    ``datamodule``'s training batches; returns the fine-tune's stats (steps, last logged losses).

    ``make_trainer(**overrides)`` builds the Lightning Trainer (a run passes one with fairq's logger and
    callbacks); default: a quiet Trainer on the model's device. Validation and checkpoints are off.
    """
    from fairq.lit import fit, quiet_trainer

    if make_trainer is None:
        def make_trainer(**overrides):
            return quiet_trainer(model_device(model).type, **overrides)

    return fit(model, make_trainer, datamodule=datamodule, train_loader=train_loader, lr=config.lr,
               weight_decay=config.weight_decay, penalty=make_penalty(config.fairness, config.min_group_count),
               penalty_weight=config.lam, enable_checkpointing=False, limit_val_batches=0,
               max_epochs=config.epochs, max_steps=config.max_steps or -1)


def quantize_fairness_finetune(model: nn.Module, config: FairnessFinetuneConfig, calibration_data=None, *,
                               train_loader=None, datamodule=None, make_trainer=None) -> tuple[nn.Module, dict]:
    """prepare (PTQ start) → fine-tune with the penalty → convert; see the module docstring. Returns the model and
    the fine-tune's stats.

    Training data: ``train_loader`` (fairq batches ``image, target, sensitive``: the penalty needs the sensitive
    codes) or a ``datamodule`` (its ``train_dataloader``).
    """
    result, stats = fairness_finetune_result(model, config, calibration_data, train_loader=train_loader,
                                             datamodule=datamodule, make_trainer=make_trainer)
    return result.model, stats


def fairness_finetune_result(model: nn.Module, config: FairnessFinetuneConfig, calibration_data=None, *,
                             train_loader=None, datamodule=None, make_trainer=None) -> tuple[MethodResult, dict]:
    """:func:`quantize_fairness_finetune` with the quantized model's :class:`MethodResult` (what it computes
    with)."""
    if train_loader is None and datamodule is None:
        raise ValueError("fairness_finetune needs train_loader=<fairq batches with image, target, sensitive> "
                         "or a datamodule")
    if calibration_data is None and config.act_bits is not None:
        raise ValueError("fairness_finetune starts from static PTQ: pass calibration_data (or act_bits=None)")
    prepare_qat(model, config, calibration_data)
    stats = finetune_with_penalty(model, config, train_loader, datamodule=datamodule, make_trainer=make_trainer)
    log.info("fairness fine-tune (%s, λ=%g): %d steps, %s", config.fairness, config.lam, stats["steps"],
             {k: round(v, 4) for k, v in stats.items() if k != "steps"})
    return convert_qat_result(model, config, calibration_data), stats


def handle_fairness_finetune(model: nn.Module, config: FairnessFinetuneConfig, inputs: MethodInputs) -> MethodResult:
    from fairq.lit import objective_of

    if (inputs.datamodule is not None or inputs.train_loader is not None) and \
            objective_of(inputs.datamodule, inputs.train_loader) == "masked_lm":
        raise UserError("fairness_finetune penalises group gaps of a classifier's predictions; a masked LM's "
                        "training batches have no group labels, so it has no meaning for text cells (use "
                        "distill, qat or pruning there)")
    if inputs.train_fn is not None:
        raise ValueError("fairness_finetune trains with its own penalty (fairq.lit.FairClassifier): pass "
                         "train_loader (and optionally make_trainer), not train_fn")
    result, stats = fairness_finetune_result(model, config, inputs.calibration, train_loader=inputs.train_loader,
                                             datamodule=inputs.datamodule, make_trainer=inputs.make_trainer)
    return result.replace(record={"lambda": config.lam, "penalty": config.fairness, "finetune_steps": stats["steps"]},
                          artifacts=[Artifact("mitigation", {"finetune": stats})], info={"finetune": stats})


register_method("fairness_finetune", FairnessFinetuneConfig, handle_fairness_finetune,
                needs={"calibration", "training"}, family="mitigation")
