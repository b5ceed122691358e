"""The LightningModule every fairq training run uses: baseline fine-tuning, QAT and fairness fine-tuning."""
from __future__ import annotations

from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

# penalty(logits, target, sensitive) -> scalar tensor added to the loss (fairness-constrained fine-tuning)
Penalty = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class FairClassifier(L.LightningModule):
    """Cross-entropy classifier over fairq dict batches (``image, target, sensitive, sample_id``).

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out.logits if hasattr(out, "logits") else out

    def _step(self, batch, stage: str):
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["target"], label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == batch["target"]).float().mean()
        bs = batch["target"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=stage != "train", batch_size=bs, on_epoch=True,
                 on_step=stage == "train")
        self.log(f"{stage}/acc", acc, prog_bar=True, batch_size=bs, on_epoch=True, on_step=False)
        return logits, loss

    def training_step(self, batch, batch_idx):
        logits, loss = self._step(batch, "train")
        if self.penalty is not None and self.penalty_weight > 0:
            pen = self.penalty(logits, batch["target"], batch["sensitive"])
            self.log("train/fairness_penalty", pen, batch_size=batch["target"].shape[0], on_epoch=True)
            loss = loss + self.penalty_weight * pen
        return loss

    def validation_step(self, batch, batch_idx):
        logits, _ = self._step(batch, "val")
        return {"preds": logits.argmax(1), "target": batch["target"], "sensitive": batch["sensitive"]}

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        steps = self.trainer.estimated_stepping_batches if self.trainer is not None else None
        if not steps or steps == float("inf"):
            return opt
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=int(steps), pct_start=0.15)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
