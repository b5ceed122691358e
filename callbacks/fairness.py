"""FairnessMonitor: group metrics of every validation epoch, logged to TensorBoard or any Lightning logger."""
from __future__ import annotations

from typing import Mapping, Sequence

import lightning as L
import torch

from fairq.metrics import GroupConfusionMetric, intersectional_group_ids, radix_groups

LOGGED = {
    "demographic_parity_difference": "dp_diff",
    "equalized_odds_difference": "eo_diff",
    "worst_group_accuracy": "worst_group_acc",
    "accuracy_difference": "acc_diff",
}


class FairnessMonitor(L.Callback):
    """Logs DP / EO / worst-group accuracy at each validation end, intersectionally and per attribute.

    Reads the ``{"preds", "target", "sensitive"}`` dict that :class:`fairq.lit.FairClassifier.validation_step`
    returns; it only observes. Scalars are named ``fairness/<scope>/<metric>``, where scope is
    ``intersectional`` (all sensitive attributes crossed) or an attribute name. Group ids are fixed from the
    datamodule's level lists up front, so a batch that lacks a group cannot shift counts (torchmetrics#3489).

    Parameters
    ----------
    sensitive_levels : mapping name -> level labels, optional
        Defaults to ``trainer.datamodule.sensitive_levels`` (in ``sensitive_names`` order).
    min_group_size : int, default 1
        Groups smaller than this are left out of the logged gaps. Validation sets are small, and these curves
        are for watching training, so every non-empty group counts here; the reported test metrics use
        ``fairq.metrics``' stricter default.
    """

    def __init__(self, sensitive_levels: Mapping[str, Sequence[str]] | None = None, num_classes: int | None = None,
                 min_group_size: int = 1):
        super().__init__()
        self.min_group_size = int(min_group_size)
        self._levels = dict(sensitive_levels) if sensitive_levels is not None else None
        self._num_classes = num_classes
        self._scopes: dict[str, tuple[list[int], GroupConfusionMetric]] = {}

    def setup(self, trainer, pl_module, stage=None):
        dm = trainer.datamodule
        if self._levels is None and getattr(dm, "sensitive_levels", None) is None:
            self._scopes = {}  # no group levels to count by (a masked LM's training data): nothing to log
            return
        levels = self._levels or {n: list(dm.sensitive_levels[n]) for n in dm.sensitive_names}
        num_classes = self._num_classes or int(dm.num_classes)
        names = list(levels)
        self._scopes = {"intersectional": (list(range(len(names))),
                                           GroupConfusionMetric(_n(levels, names), num_classes,
                                                                groups=radix_groups(levels),
                                                                min_group_size=self.min_group_size))}
        if len(names) > 1:
            for i, name in enumerate(names):
                sub = {name: levels[name]}
                self._scopes[name] = ([i], GroupConfusionMetric(len(levels[name]), num_classes,
                                                               groups=radix_groups(sub),
                                                               min_group_size=self.min_group_size))
        self._sizes = {scope: [len(levels[names[i]]) for i in cols] for scope, (cols, _) in self._scopes.items()}

    def on_validation_epoch_start(self, trainer, pl_module):
        for _, metric in self._scopes.values():
            metric.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not isinstance(outputs, Mapping) or "preds" not in outputs:
            return
        sens = outputs["sensitive"].detach().cpu()
        for scope, (cols, metric) in self._scopes.items():
            gid = intersectional_group_ids(sens[:, cols], self._sizes[scope])
            metric.update(outputs["preds"].detach().cpu(), outputs["target"].detach().cpu(), gid)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        logged = {}
        for scope, (_, metric) in self._scopes.items():
            values = metric.compute()
            for key, short in LOGGED.items():
                v = values[key]
                if torch.isfinite(v):
                    logged[f"fairness/{scope}/{short}"] = v
        if logged:
            pl_module.log_dict(logged, on_epoch=True, sync_dist=False)


def _n(levels: Mapping[str, Sequence[str]], names: Sequence[str]) -> int:
    out = 1
    for n in names:
        out *= len(levels[n])
    return out
