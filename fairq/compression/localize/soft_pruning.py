"""Soft head pruning (``soft_head_pruning``): attenuate the attention heads that carry bias instead of retraining.

"Toward Inclusive Language Models" localizes bias to attention heads and scales their weights, ``W ← (1 − α)·W``.
Here: the heads are attributed and selected on the run's **validation** split (:mod:`fairq.compression.localize.heads`:
ablation effect on the bias measure, consistency across categories, activation–bias correlation), then the
query, key and value rows (weights and biases) of the ``n_heads`` selected heads are multiplied by ``1 − alpha``;
the phase evaluates the cell on the **test** split, never the one the heads were chosen on. ``alpha`` is swept
like any field (``alpha: [0.25, 0.5, 1.0]`` → one cell each; ``alpha = 0`` is the unchanged model, ``1`` removes
the heads' output). An optional recovery fine-tune (``finetune_epochs`` > 0, Lightning, the run's training split)
trains the rest of the model with the selected heads' rows held at their scaled values.

CNNs have no heads: the handler raises :class:`~fairq.compression.localize.heads.NoAttentionHeadsError` naming the model;
in a config restrict the entry to the attention models (``models: [tiny_vit]``).

Records: ``alpha``, ``heads_selected`` (count), ``selected_heads`` (``block:head`` list), ``heads_total``,
``val_bias_before`` / ``val_bias_after`` (mean bias over the validation categories before / after the scaling —
the selection split, for orientation only; the findings come from the test split) and the artifact
``heads/<cell>.json`` (column ``head_attribution``): the whole attribution table, the selection, α and the ids of
the validation items it was measured on.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fairq.compression.core.config import check_choice, check_positive, variant_of
from fairq.compression.localize.heads import RANK_BY, cached_attribution, head_blocks, probe_for, scale_heads, select_heads
from fairq.compression.prune.pruning import PruneConfigBase, finetune
from fairq.compression.core.registry import Artifact, MethodInputs, MethodResult, register_method

log = logging.getLogger(__name__)


@dataclass
class SoftHeadPruningConfig(PruneConfigBase):
    """Scale the q/k/v of the ``n_heads`` most bias-carrying heads by ``1 − alpha`` (see the module doc).

    ``rank_by``: ``ablation`` (mean bias change when the head is ablated) or ``correlation`` (mean |r| of its
    activation with the per-item bias score); ``min_consistency``: share of bias categories whose bias the head's
    ablation must reduce; ``max_utility_drop``: leave out heads whose ablation lowers the validation utility
    (accuracy, 0–1 / LMS, 0–100) by more than this; ``val_batches``: validation batches used (image data; ``None`` = all);
    ``finetune_*``: the optional recovery fine-tune.
    """

    alpha: float = 0.5
    n_heads: int = 1
    rank_by: str = "ablation"
    min_consistency: float = 0.5
    max_utility_drop: float | None = None
    val_batches: int | None = None

    def __post_init__(self):
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        self.alpha = float(self.alpha)
        check_positive("n_heads", self.n_heads, integer=True)
        check_choice("rank_by", self.rank_by, RANK_BY)
        if isinstance(self.min_consistency, bool) or not isinstance(self.min_consistency, (int, float)) \
                or not 0.0 <= self.min_consistency <= 1.0:
            raise ValueError(f"min_consistency must be in [0, 1], got {self.min_consistency!r}")
        check_positive("max_utility_drop", self.max_utility_drop, allow_none=True)
        check_positive("val_batches", self.val_batches, allow_none=True, integer=True)
        self._check_finetune()

    def variant(self) -> str:
        """Always names alpha (the trade-off's x axis)."""
        base = variant_of(dataclasses.replace(self, alpha=0.5), skip=self.run_fields)
        return "_".join([f"alpha={self.alpha:g}"] + ([base] if base else []))

    def uses(self, needs: frozenset) -> frozenset:
        """The training split only when a recovery fine-tune is asked for (text runs have none)."""
        return needs if self.finetune_epochs else needs - {"training"}


def _freeze_rows(blocks, selection):
    """Gradient hooks that keep the selected heads' q/k/v rows where they are; returns (restore, remove)."""
    saved, hooks = [], []
    for b in blocks:
        heads = selection.get(b.name)
        if not heads:
            continue
        for _, lin, off in b.producers():
            rows = b.rows(heads, off).to(lin.weight.device)
            for p in (lin.weight, lin.bias):
                if p is None:
                    continue
                saved.append((p, rows, p.detach()[rows].clone()))

                def zero(grad, rows=rows):
                    grad = grad.clone()
                    grad[rows] = 0
                    return grad

                hooks.append(p.register_hook(zero))

    def restore():  # weight decay still moves them a little: put the scaled values back exactly
        with torch.no_grad():
            for p, rows, values in saved:
                p[rows] = values

    def remove():
        for h in hooks:
            h.remove()

    return restore, remove


def handle_soft_head_pruning(model: nn.Module, config: SoftHeadPruningConfig, inputs: MethodInputs) -> MethodResult:
    model.eval()
    blocks = head_blocks(model, model_name=inputs.model_name)
    if inputs.validation is None:
        raise ValueError("soft_head_pruning selects heads on the validation split: give validation data")
    probe = probe_for(inputs.validation, inputs.sensitive_names, limit=config.val_batches)
    attribution = cached_attribution(model, probe, blocks)
    selection = select_heads(attribution, config.n_heads, rank_by=config.rank_by,
                             min_consistency=config.min_consistency, max_utility_drop=config.max_utility_drop)
    chosen = [f"{b}:{h}" for b, hs in selection.items() for h in hs]
    if not chosen:
        log.warning("soft_head_pruning: no head's ablation reduced the validation bias in ≥ %.0f%% of the "
                    "categories; the model is left unchanged", 100 * config.min_consistency)
    scale_heads(blocks, selection, 1.0 - config.alpha)
    after = probe.measure(model, with_scores=False)
    record = {"alpha": config.alpha, "heads_selected": len(chosen), "selected_heads": ";".join(chosen),
              "heads_total": sum(b.num_heads for b in blocks),
              "val_bias_before": float(np.mean(list(attribution.bias.values()))),
              "val_bias_after": float(np.nanmean([after.bias.get(c, np.nan) for c in attribution.bias])),
              "val_utility_before": attribution.utility, "val_utility_after": after.utility}
    if config.finetune_epochs:
        for p in model.parameters():
            p.requires_grad_(True)
        restore, remove = _freeze_rows(blocks, selection)
        try:
            record.update(finetune(model, inputs, config))
        finally:
            remove()
        restore()
    content = {"alpha": config.alpha, "scale": 1.0 - config.alpha, "n_heads": config.n_heads,
               "rank_by": config.rank_by, "min_consistency": config.min_consistency,
               "max_utility_drop": config.max_utility_drop, "selected": selection,
               "split": "validation", **attribution.to_dict()}
    return MethodResult.fp32(model.eval(), record=record,
                             artifacts=[Artifact("heads", content, column="head_attribution")])


register_method("soft_head_pruning", SoftHeadPruningConfig, handle_soft_head_pruning,
                needs={"validation", "training"}, family="soft_pruning", requires={"attention_heads"})
