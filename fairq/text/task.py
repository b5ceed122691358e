"""The text task: how a masked-LM cell is evaluated and where its FP32 model comes from (the modality seam's text side).

A :class:`TextTask` is what :class:`datamodules.TextDataModule` hands out as ``.task``. The phases call the same
four things on any task — ``evaluate`` (per-item frame + metrics), ``side_files`` (files stored beside the
cell's parquet), ``baseline_model`` / ``load_baseline`` (the FP32 model a run scores and compresses) — and know
nothing about text. Batches for calibration and latency are ``{"input_ids", "attention_mask"}`` dicts, read by the
inherited :meth:`~fairq.batches.ClassificationTask.split`.

The per-item frame (``predictions/<cell>.parquet``) has one row per scored item: ``sample_id``, ``benchmark``
(``stereoset``, ``stereoset_inter``, ``crows``, ``bbq``, ``probe_stereoset``, ``probe_crows``), ``domain`` (bias type
/ BBQ category), ``y_pred`` (the preferred option: StereoSet / CrowS 1 = the stereotypical one, 0 = the other,
CrowS 2 = a tie; BBQ the chosen answer index by the headline rule, the mean log-probability per word piece —
``y_pred_sum`` / ``y_pred_norm`` hold both rules' choices, see :mod:`fairq.text.scoring`), ``y_true``
(StereoSet / CrowS: 1, the stereotypical option, so a "correct → wrong" flip is stereotype → anti-stereotype;
BBQ: the gold answer), ``cluster`` (the resampling unit the analysis's bootstrap draws, :func:`resampling_units`)
and the scores every metric is computed from (:func:`text_metrics`).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from fairq.batches import ClassificationTask
from fairq.errors import UserError

from .benchmarks import benchmarks, contract_columns, headline_metrics
from .scoring import HFTokenizer, official_predictions, score_all

log = logging.getLogger("fairq")

TASK_NAME = "masked_lm_bias"


def resampling_units(frame: pd.DataFrame) -> np.ndarray:
    """The cluster of each per-item row: the unit a benchmark's metrics are built from, which the analysis's
    bootstrap resamples (``frame["cluster"]`` when stored; else each registered benchmark's ``units``, see
    :mod:`fairq.text.benchmarks`).

    * StereoSet (intra / inter, probes): the target term within its domain (``<domain>:<term>``) — SS and LMS are
      computed per term and then averaged over terms;
    * BBQ: the template within its category (``<category>:<question_index>``): every item generated from one
      template — its name / group instantiations, both versions (BBQ's ``a`` / ``b`` swap the two names in the same
      template), ambiguous / disambiguated twins and negative / non-negative questions — shares the template's
      wording and stereotype, so they are one unit;
    * CrowS-Pairs (and any benchmark that declares no units): the item itself (one pair).

    Every cluster lies within one ``domain`` (the bootstrap's strata)."""
    if "cluster" in frame.columns:
        return frame["cluster"].astype(str).to_numpy()
    out = frame["sample_id"].astype(str).to_numpy().astype(object)
    bench = frame["benchmark"].astype(str).to_numpy()
    registry = benchmarks()
    for name in sorted(set(bench)):
        b = registry.get(name)
        if b is not None and b.units is not None:
            mask = bench == name
            out[mask] = b.units(frame[mask])
    return out.astype(str)


class BaselineMissingError(UserError, RuntimeError):
    """The embedded model was not pre-trained in this output folder yet."""


def text_metrics(frame: pd.DataFrame, inter_reason: str = "") -> dict:
    """Every text metric of a cell from its per-item frame: each registered benchmark's values
    (:meth:`~fairq.text.benchmarks.Benchmark.point`) on its rows; the contract columns NaN where it is off."""
    out = {k: np.nan for k in contract_columns()}
    names = set(frame["benchmark"].astype(str)) if len(frame) else set()
    for name, bench in benchmarks().items():
        if name in names:
            out.update(bench.point(frame[frame["benchmark"] == name]))
    if inter_reason:
        out["stereoset_inter_reason"] = inter_reason
    return out


@dataclass(frozen=True)
class TextTask(ClassificationTask):
    """Evaluates a masked LM on the datamodule's benchmark items (see the module doc)."""

    datamodule: Any = field(default=None, compare=False, repr=False)
    name: str = TASK_NAME
    #: methods that train (distill, qat, pruning with fine-tuning) fit an MLM (:class:`fairq.lit.MaskedLMModule`)
    objective: ClassVar[str] = "masked_lm"
    #: the log line's metrics (default: every registered benchmark's ``headline``)
    headline: tuple | None = None

    # --- the FP32 model --------------------------------------------------------------------------------
    def baseline_model(self, ctx, model_name: str):
        """Pre-train the embedded default (or reuse this output folder's weights), or load an HF masked LM;
        ``(model, ModelInfo)``."""
        return self._model(ctx, model_name, train=True)

    def load_baseline(self, ctx, model_name: str):
        return self._model(ctx, model_name, train=False)[0]

    def _model(self, ctx, model_name: str, *, train: bool):
        import torch

        from fairq.models.registry import ModelInfo

        from .embedded import TinyBertSpec, build_tiny_bert, pretrain
        from .models import EMBEDDED, bert_uncased_tokenizer, load_masked_lm

        dm = self.datamodule
        section = dict(ctx.sections.get("text") or {})
        spec = None
        if model_name != EMBEDDED:
            model, tok = load_masked_lm(model_name)
            source = model_name
        else:
            tok = bert_uncased_tokenizer()
            spec = TinyBertSpec(**{**dict(section.get("pretrain") or {}), "seed": ctx.seed})
            path = ctx.store.checkpoint_path(model_name, ctx.seed)
            if path.exists():
                model = build_tiny_bert(spec, len(tok))
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            elif not train:
                raise BaselineMissingError(f"no pre-trained {model_name} at {path}; run `python main.py --phase "
                                           "baseline` with the same --output_dir first")
            else:
                from fairq.store import atomic_torch_save

                log.info("baseline %s: pre-training the embedded BERT (MLM) on the generated corpus", model_name)
                model, info = pretrain(spec, tok, log_dir=ctx.store.root / "tensorboard" /
                                       f"{model_name}_pretrain_s{ctx.seed}", progress=bool(
                                           ctx.evaluation.get("progress", True)))
                atomic_torch_save(model.state_dict(), path)
                ctx.store.write_json("pretraining.json", info)
                log.info("baseline %s: pre-trained %d steps in %.1f s (MLM loss %.3f → %.3f); planted: %s",
                         model_name, spec.steps, info["seconds"], info["first_loss"],
                         info["final_loss_mean_last50"], info["planted"])
            source = f"{model_name} (pre-trained here: pretraining.json)"
        dm.set_tokenizer(tok, model_name=model_name, corpus_spec=spec)  # spec: the embedded corpus, for training
        return model.eval(), ModelInfo(model_name, source)

    # --- evaluation ------------------------------------------------------------------------------------
    def evaluate(self, model, datamodule, *, progress: bool = False, desc: str = "evaluate"
                 ) -> tuple[pd.DataFrame, dict]:
        """Score every benchmark item of ``datamodule`` with ``model``: one batched engine call for all masked
        requests (+ NSP for intersentence when the model has that head)."""
        from .engine import MaskedLMEngine

        dm = datamodule
        tok = dm.tokenizer_or_fail()
        ht = HFTokenizer(tok) if not hasattr(tok, "encode") or hasattr(tok, "tokenize") else tok
        max_len = int(getattr(getattr(model, "config", None), "max_position_embeddings", 512) or 512)
        t0 = time.perf_counter()
        registry = benchmarks()
        on = [(name, b) for name, b in registry.items() if dm.items.get(name)]
        jobs = [b.build_requests(ht, dm.items[name], benchmark=name, max_len=max_len) for name, b in on
                if b.build_requests is not None]
        engine = MaskedLMEngine(model, pad_id=ht.pad_id, batch_size=dm.batch_size, max_tokens=dm.max_tokens,
                                progress=progress, desc=desc, compile=getattr(dm, "compile_engine", False))
        frames = score_all(engine, jobs)
        reasons = {}
        for name, b in on:  # benchmarks with a scorer of their own (StereoSet intersentence: NSP)
            if b.score is not None:
                extra, reasons[name] = b.score(model, ht, dm.items[name])
                if len(extra):
                    frames[name] = extra
        reason = (reasons["stereoset_inter"] if "stereoset_inter" in reasons
                  else "not scored: intersentence is off in the config")
        seconds = time.perf_counter() - t0
        frame = pd.concat([f for f in frames.values() if len(f)], ignore_index=True)
        frame["cluster"] = resampling_units(frame)
        for job in jobs:
            dm.skipped_while_scoring(job.benchmark, job.skipped)
        metrics = text_metrics(frame, reason)
        metrics.update(items_scored=int(len(frame)), masked_requests=int(sum(len(j.requests) for j in jobs)),
                       forward_passes=engine.forward_passes,
                       item_latency_ms=round(1000 * seconds / max(1, len(frame)), 4),
                       items_skipped=int(sum(len(j.skipped) for j in jobs)),
                       # items the tokenizer could not score (reason → count); reader skips are in data.json
                       items_skipped_reasons=json.dumps(
                           {j.benchmark: {r: len(ids) for r, ids in j.skipped.reasons.items()} for j in jobs
                            if len(j.skipped)}, sort_keys=True))
        return frame, metrics

    def side_files(self, frame: pd.DataFrame) -> dict[str, Any]:
        """``<cell>.stereoset.json``: the official StereoSet predictions layout, from the per-item rows."""
        def part(name):
            return frame[frame["benchmark"] == name]

        return {".stereoset.json": official_predictions(part("stereoset"), part("stereoset_inter"))}

    def summary(self, row: dict) -> str:
        return ", ".join(f"{k} {row[k]:.2f}" for k in (self.headline or headline_metrics())
                         if isinstance(row.get(k), float) and np.isfinite(row[k]))
