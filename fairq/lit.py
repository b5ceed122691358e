"""The LightningModule every fairq training run uses: baseline fine-tuning, QAT and fairness fine-tuning."""
from __future__ import annotations

from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from fairq.batches import logits_of, split_batch

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
        self.save_hyperparameters(ignore=["model", "penalty"])

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return logits_of(self.model(*args, **kwargs))

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

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        steps = self.trainer.estimated_stepping_batches if self.trainer is not None else None
        if not steps or steps == float("inf"):
            return opt
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=int(steps), pct_start=0.15)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fit(model: nn.Module, make_trainer: Callable[..., L.Trainer], *, datamodule=None, train_loader=None,
        lr: float, weight_decay: float = 0.0, penalty: Penalty | None = None, penalty_weight: float = 0.0,
        **trainer_overrides) -> dict:
    """Fine-tune ``model`` in place with :class:`FairClassifier` on a ``datamodule`` (preferred) or a
    ``train_loader``; ``make_trainer(**trainer_overrides)`` builds the Trainer. Returns ``{"steps": …,
    "train/…": last logged values}`` — the one training entry point of QAT, fairness fine-tuning and the like."""
    from torch.utils.data import DataLoader

    module = FairClassifier(model, lr=lr, weight_decay=weight_decay, penalty=penalty, penalty_weight=penalty_weight)
    trainer = make_trainer(**trainer_overrides)
    if datamodule is not None:
        trainer.fit(module, datamodule=datamodule)
    elif train_loader is not None:
        # a bare list would be read as a list of loaders: wrap ready-made batches in one loader
        loader = train_loader if isinstance(train_loader, DataLoader) else DataLoader(
            list(train_loader), batch_size=None, shuffle=False)
        trainer.fit(module, train_dataloaders=loader)
    else:
        raise ValueError("training needs a datamodule or a train_loader")
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    return {"steps": int(trainer.global_step), **logged}


def quiet_trainer(device_type: str = "cpu", **overrides) -> L.Trainer:
    """A Trainer without logger, checkpoints, progress bar or validation (library use outside a fairq run)."""
    kwargs = dict(accelerator="gpu" if device_type == "cuda" else "cpu", devices=1, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  num_sanity_val_steps=0, limit_val_batches=0)
    return L.Trainer(**{**kwargs, **overrides})
