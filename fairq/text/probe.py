"""The text bias probe for head attribution (:mod:`fairq.compression.localize.heads`): held-out StereoSet / CrowS-Pairs
items — never the ones a cell is scored on — scored with the same scorers and batched MLM engine as a cell.

Categories ``stereoset:<domain>`` / ``crows:<bias type>`` (those with at least ``min_items`` items); bias of a
category = ``|SS − 50|`` resp. ``|CrowS metric − 50|`` (the official scores, :func:`stereoset_metrics` /
:func:`crows_metrics`); utility = StereoSet LMS over all held-out items. Per-item bias score: the preference for the
stereotypical option, ``score_stereotype − score_anti`` (StereoSet, candidate probabilities) or ``score_more −
score_less`` (CrowS, pseudo-log-likelihoods). A head's activation on an item is read from one forward pass over
the item's stereotypical sentence (StereoSet: the context with the stereotype word in the BLANK; CrowS: the
more-stereotypical sentence).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from fairq.compression.localize.heads import ProbeResult
from fairq.errors import UserError

from .scoring import HFTokenizer, build_crows, build_stereoset, crows_metrics, score_all, stereoset_metrics


class NoValidationItemsError(UserError, ValueError):
    """Every item is scored as test: nothing is left to select heads on."""


class TextBiasProbe:
    """Held-out items ``{"stereoset": [IntraItem], "crows": [CrowsPair]}`` as a :class:`~fairq.compression.localize.heads.
    BiasProbe` (see the module doc)."""

    bias_name = "|score - 50| (StereoSet SS / CrowS metric per category)"

    def __init__(self, items: dict[str, Sequence], tokenizer, *, batch_size: int = 64, max_tokens: int = 8192,
                 min_items: int = 10):
        self.items = {k: list(v) for k, v in items.items() if k in ("stereoset", "crows") and v}
        if not self.items:
            raise NoValidationItemsError(
                "no held-out StereoSet / CrowS-Pairs items to select heads on: every item is scored as test. Score "
                "a subset (data.init_args.stereoset_items / crows_items) and keep validation_items > 0")
        self.tok = tokenizer
        self.ht = HFTokenizer(tokenizer)
        self.batch_size, self.max_tokens, self.min_items = int(batch_size), int(max_tokens), int(min_items)
        self.ids = [f"{b}:{it.id}" for b, its in self.items.items() for it in its]
        self.max_len = 128  # the model's position limit, read in measure()

    def _frames(self, model) -> dict[str, pd.DataFrame]:
        from .engine import MaskedLMEngine

        max_len = int(getattr(getattr(model, "config", None), "max_position_embeddings", 512) or 512)
        self.max_len = max_len
        jobs = []
        if "stereoset" in self.items:
            jobs.append(build_stereoset(self.ht, self.items["stereoset"], max_len=max_len))
        if "crows" in self.items:
            jobs.append(build_crows(self.ht, self.items["crows"], max_len=max_len))
        engine = MaskedLMEngine(model, pad_id=self.ht.pad_id, batch_size=self.batch_size, max_tokens=self.max_tokens)
        return score_all(engine, jobs)

    def measure(self, model, *, with_scores: bool = True) -> ProbeResult:
        frames = self._frames(model)
        bias, scores = {}, {}
        pref = pd.Series(np.nan, index=self.ids, dtype=float)
        ss = frames.get("stereoset", pd.DataFrame())
        cr = frames.get("crows", pd.DataFrame())
        if len(ss):
            pref.loc[ss["sample_id"]] = (ss["score_stereotype"] - ss["score_anti"]).to_numpy(float)
        if len(cr):
            pref.loc[cr["sample_id"]] = (cr["score_more"] - cr["score_less"]).to_numpy(float)
        for bench, frame in (("stereoset", ss), ("crows", cr)):
            if not len(frame):
                continue
            for dom, sub in frame.groupby("domain", sort=True):
                if len(sub) < self.min_items:
                    continue
                value = (stereoset_metrics(sub, "m")["m_ss"] if bench == "stereoset"
                         else crows_metrics(sub, "m")["m_metric"])
                cat = f"{bench}:{dom}"
                bias[cat] = abs(float(value) - 50.0)
                if with_scores:
                    s = pd.Series(np.nan, index=self.ids, dtype=float)
                    s.loc[sub["sample_id"]] = pref.loc[sub["sample_id"]].to_numpy()
                    scores[cat] = s.to_numpy()
        if not bias:
            raise NoValidationItemsError(f"no held-out category has ≥ {self.min_items} scored items")
        lms = stereoset_metrics(ss, "m")["m_lms"] if len(ss) else float("nan")
        return ProbeResult(bias, float(lms), "stereoset_lms", scores, list(self.ids))

    def key(self) -> tuple:
        """What the attribution depends on: the held-out items (their ids) and the category floor."""
        return tuple(self.ids), self.min_items

    def sentences(self) -> list[str]:
        """The stereotypical sentence of every item, in :attr:`ids` order."""
        out = []
        for bench, items in self.items.items():
            for it in items:
                if bench == "stereoset":
                    out.append(it.context.replace("BLANK", it.words["stereotype"]))
                else:
                    out.append(it.sent_more)
        return out

    def item_batches(self):
        import torch

        texts = self.sentences()
        for s in range(0, len(texts), self.batch_size):
            enc = self.tok(texts[s:s + self.batch_size], padding=True, truncation=True, max_length=self.max_len,
                           return_tensors="pt")
            mask = enc["attention_mask"]
            yield (), {"input_ids": enc["input_ids"], "attention_mask": mask}, torch.as_tensor(mask)
