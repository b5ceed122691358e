"""Baseline phase: get each configured model's FP32 weights, then evaluate them.

By default a model is fine-tuned with Lightning on the training split; a datamodule's task with a
``baseline_model(ctx, model_name)`` provides the FP32 model itself (e.g. a pre-trained masked LM that is scored
as it is), as the model or ``(model, ModelInfo)`` (where its weights came from: the ``pretrained`` column)."""
from __future__ import annotations

import logging

import lightning as L

from fairq.compression.core.registry import MethodResult
from fairq.lit import FairClassifier
from fairq.models.registry import ModelInfo
from fairq.store import atomic_torch_save

from .context import RunContext

log = logging.getLogger("fairq")


def train_baseline(ctx: RunContext, model_name: str) -> tuple:
    """Fine-tune ``model_name`` (resuming from Lightning's ``last.ckpt`` if a run was interrupted); returns
    ``(model, ModelInfo)`` (weights found from an earlier run: no source recorded)."""
    dm = ctx.data()
    final = ctx.store.checkpoint_path(model_name, ctx.seed)
    if final.exists():
        log.info("baseline %s: trained weights found at %s, not retraining", model_name, final)
        return ctx.load_baseline(model_name), ModelInfo(model_name)
    L.seed_everything(ctx.seed, workers=True, verbose=False)
    model, info = ctx.build_model(model_name)
    log.info("baseline %s: weights from %s", model_name, info.pretrained or "random init")
    module = FairClassifier(model, **ctx.optim)
    ckpt_dir = final.parent / f"{final.stem}_lightning"
    last = ckpt_dir / "last.ckpt"
    trainer = ctx.make_trainer(f"{model_name.replace('/', '-')}_baseline_s{ctx.seed}", ckpt_dir=ckpt_dir)
    # Lightning's own checkpoints make an interrupted fit resumable; the final plain state_dict is what later
    # phases load (with weights_only=True).
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.exists() else None)
    atomic_torch_save(module.model.state_dict(), final)
    return module.model.eval(), info


def run(ctx: RunContext) -> list[dict]:
    rows = []
    for model_name in ctx.models:
        ctx.data()
        cell = ctx.cell(model_name, "baseline", 32, 32)
        if ctx.store.has_cell(cell):
            log.info("baseline %s: cell %s already in metrics.csv, skipping", model_name, cell)
            continue
        provide = getattr(ctx.data().task, "baseline_model", None)
        built = provide(ctx, model_name) if provide is not None else train_baseline(ctx, model_name)
        model, info = built if isinstance(built, tuple) else (built, ModelInfo(model_name))
        result = MethodResult(model, weight_bits=32, act_bits=32, backend="fp32")
        rows.append(ctx.evaluate_cell(result, model_name=model_name, method="baseline", cell=cell,
                                      extra={"pretrained": info.pretrained or "", "phase": "baseline",
                                             "family": "baseline"}))
    return rows
