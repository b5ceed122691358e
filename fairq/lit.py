"""The LightningModules every fairq training run uses, and the one training entry point :func:`fit`.

:class:`FairClassifier` trains classifiers (baseline fine-tuning, QAT, fairness fine-tuning, pruning recovery);
:class:`MaskedLMModule` trains masked language models on MLM batches (Hugging Face convention: token-level
``labels`` holding the original id at masked positions and ``-100`` elsewhere). Which one a run uses is its
*objective*: the datamodule's task says (``task.objective``), or, for library use, the first batch
(:func:`objective_of_batch`).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from fairq.batches import (IGNORE_INDEX, hidden_states, labelled_positions, logits_of,  # noqa: F401 (re-exported)
                           mlm_parts, split_batch)

# penalty(logits, target, sensitive) -> scalar tensor added to the loss (fairness-constrained fine-tuning)
Penalty = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class FairClassifier(L.LightningModule):
    """Cross-entropy classifier over any batches :func:`fairq.batches.split_batch` reads (fairq dict batches
    ``image, target, sensitive, sample_id``, Hugging Face keyword batches with ``labels``, tuples).

    ``validation_step`` returns the batch's predictions, targets and sensitive codes so that
    :class:`callbacks.FairnessMonitor` can log group metrics without a second pass.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-4,
                 label_smoothing: float = 0.0, penalty: Penalty | None = None, penalty_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.label_smoothing = lr, weight_decay, label_smoothing
        self.penalty, self.penalty_weight = penalty, penalty_weight
        self.save_hyperparameters(ignore=["model", "penalty", "student", "teacher"])  # modules: not hparams

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return logits_of(self.model(*args, **kwargs))

    def scored(self, model: nn.Module, b) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, target)`` the loss is taken on, for ``model`` (this module's or a teacher) on batch ``b``
        (a :class:`fairq.batches.Batch`): a classifier's every sample."""
        return logits_of(model(*b.args, **b.kwargs)), b.target

    def _step(self, batch, stage: str):
        b = split_batch(batch)
        if b.target is None:
            raise ValueError(f"{stage} batch has no target ('target'/'labels')")
        logits = self(*b.args, **b.kwargs)
        loss = F.cross_entropy(logits, b.target, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == b.target).float().mean()
        bs = b.target.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=stage != "train", batch_size=bs, on_epoch=True,
                 on_step=stage == "train")
        self.log(f"{stage}/acc", acc, prog_bar=True, batch_size=bs, on_epoch=True, on_step=False)
        return b, logits, loss

    def training_step(self, batch, batch_idx):
        b, logits, loss = self._step(batch, "train")
        if self.penalty is not None and self.penalty_weight > 0:
            if b.sensitive is None:
                raise ValueError("the fairness penalty needs batches with 'sensitive' codes")
            pen = self.penalty(logits, b.target, b.sensitive.to(logits.device))
            self.log("train/fairness_penalty", pen, batch_size=b.target.shape[0], on_epoch=True)
            loss = loss + self.penalty_weight * pen
        return loss

    def validation_step(self, batch, batch_idx):
        b, logits, _ = self._step(batch, "val")
        return {"preds": logits.argmax(1), "target": b.target, "sensitive": b.sensitive}

    def backward(self, loss, *args, **kwargs):
        """Lightning's backward on one intra-op thread: trained weights do not depend on the thread count
        (:mod:`fairq.threads`)."""
        from fairq.threads import one_thread

        with one_thread():
            super().backward(loss, *args, **kwargs)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        steps = self.trainer.estimated_stepping_batches if self.trainer is not None else None
        if not steps or steps == float("inf"):
            return opt
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=int(steps), pct_start=0.15)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


OBJECTIVES = ("classification", "masked_lm")


def masked_lm_logits(model: nn.Module, b) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [N, V], labels [N])`` of a masked LM at the labelled (masked) positions of batch ``b``.

    The encoder's hidden states are gathered at those positions *before* the vocabulary projection (as the text
    engine does, :func:`fairq.batches.mlm_parts`): with BERT's 30,522-token vocabulary the projection of every
    position would cost several times the tiny encoder; models not split into encoder and head run whole."""

    encoder, head = mlm_parts(model)
    if encoder is None:
        return labelled_positions(logits_of(model(*b.args, **b.kwargs)), b.target)
    hidden = hidden_states(encoder(*b.args, **b.kwargs))
    keep = b.target != IGNORE_INDEX
    return head(hidden[keep]), b.target[keep]


class MaskedLMModule(FairClassifier):
    """Masked-LM training: cross-entropy over the vocabulary at the masked positions only (token-level
    ``labels``, ``-100`` elsewhere), the optimiser and schedule of :class:`FairClassifier`. No validation step and
    no fairness penalty: an MLM batch has no groups (a text cell's fairness is its benchmark scores, measured
    after the method)."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0, penalty=None,
                 penalty_weight: float = 0.0):
        if penalty is not None and penalty_weight > 0:
            raise ValueError("a masked LM's training batches carry no group labels: a fairness penalty has "
                             "nothing to compare (methods with a fairness penalty run on classification data only)")
        super().__init__(model, lr=lr, weight_decay=weight_decay)

    def scored(self, model: nn.Module, b) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [N, V], labels [N])`` at the masked positions of an MLM batch (:func:`masked_lm_logits`)."""
        if b.target is None or b.target.dim() < 2:
            raise ValueError("masked-LM training needs token-level 'labels' [batch, length] (-100 where not "
                             "masked), e.g. from fairq's TextDataModule.train_dataloader()")
        logits, labels = masked_lm_logits(model, b)
        if labels.numel() == 0:
            raise ValueError("an MLM batch without any masked position")
        return logits, labels

    def training_step(self, batch, batch_idx):
        logits, labels = self.scored(self.model, split_batch(batch))
        loss = F.cross_entropy(logits, labels)
        n = int(labels.numel())
        self.log("train/mlm_loss", loss, batch_size=n, on_step=True, on_epoch=True)
        self.log("train/mlm_acc", (logits.argmax(-1) == labels).float().mean(), batch_size=n, on_epoch=True)
        return loss

    # the base class's validation step reads classification batches; MLM fits run without validation
    validation_step = None


def objective_of_batch(batch) -> str:
    """``masked_lm`` when the batch's target is token-level (``[batch, length]``), else ``classification``."""
    b = split_batch(batch)
    return "masked_lm" if b.target is not None and torch.as_tensor(b.target).dim() >= 2 else "classification"


def objective_of(datamodule=None, train_loader=None) -> str:
    """The training objective of a run: its datamodule task's ``objective``, else that of the first batch."""
    task = getattr(datamodule, "task", None) if datamodule is not None else None
    objective = getattr(task, "objective", None)
    if objective is None:
        data = train_loader if train_loader is not None else (
            datamodule.train_dataloader() if datamodule is not None else None)
        if data is None:
            raise ValueError("training needs a datamodule or a train_loader")
        if isinstance(data, Iterator):  # a one-shot iterator: peeking would eat a batch
            return "classification"
        objective = objective_of_batch(next(iter(data)))
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown training objective {objective!r}; known: {OBJECTIVES}")
    return objective


def training_module(model: nn.Module, objective: str = "classification", **kwargs) -> FairClassifier:
    """The LightningModule of ``objective`` (:data:`OBJECTIVES`) around ``model``."""
    return {"classification": FairClassifier, "masked_lm": MaskedLMModule}[objective](model, **kwargs)


def fit_module(module: L.LightningModule, make_trainer: Callable[..., L.Trainer], *, datamodule=None,
               train_loader=None, **trainer_overrides) -> L.Trainer:
    """Fit ``module`` on a ``datamodule`` (preferred) or a ``train_loader``; returns the Trainer."""
    import warnings

    from torch.utils.data import DataLoader

    trainer = make_trainer(**trainer_overrides)
    with warnings.catch_warnings():
        if getattr(module, "validation_step", None) is None:  # an MLM fit: no validation, on purpose
            warnings.filterwarnings("ignore", message=r".*val_dataloader.*but have no .validation_step")
        if datamodule is not None:
            trainer.fit(module, datamodule=datamodule)
        elif train_loader is not None:
            # a bare list would be read as a list of loaders: wrap ready-made batches in one loader
            loader = train_loader if isinstance(train_loader, DataLoader) else DataLoader(
                list(train_loader), batch_size=None, shuffle=False)
            trainer.fit(module, train_dataloaders=loader)
        else:
            raise ValueError("training needs a datamodule or a train_loader")
    return trainer


def fit(model: nn.Module, make_trainer: Callable[..., L.Trainer], *, datamodule=None, train_loader=None,
        lr: float, weight_decay: float = 0.0, penalty: Penalty | None = None, penalty_weight: float = 0.0,
        objective: str | None = None, **trainer_overrides) -> dict:
    """Fine-tune ``model`` in place on a ``datamodule`` (preferred) or a ``train_loader`` with the module of the
    run's objective (:func:`objective_of`: :class:`FairClassifier` or :class:`MaskedLMModule`);
    ``make_trainer(**trainer_overrides)`` builds the Trainer. Returns ``{"steps": …, "train/…": last logged
    values}`` — the one training entry point of QAT, fairness fine-tuning, pruning recovery and the like."""
    objective = objective or objective_of(datamodule, train_loader)
    module = training_module(model, objective, lr=lr, weight_decay=weight_decay, penalty=penalty,
                             penalty_weight=penalty_weight)
    trainer = fit_module(module, make_trainer, datamodule=datamodule, train_loader=train_loader,
                         **trainer_overrides)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    return {"steps": int(trainer.global_step), **logged}


def quiet_trainer(device_type: str = "cpu", **overrides) -> L.Trainer:
    """A Trainer without logger, checkpoints, progress bar or validation (library use outside a fairq run)."""
    kwargs = dict(accelerator="gpu" if device_type == "cuda" else "cpu", devices=1, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  num_sanity_val_steps=0, limit_val_batches=0)
    return L.Trainer(**{**kwargs, **overrides})
