"""The one batched masked-LM engine: answers masked-position requests for any (FP32 or compressed) masked LM.

A :class:`MaskRequest` is one input sequence with one ``[MASK]`` at ``pos`` and the token id whose
log-probability is wanted there. Scorers (:mod:`fairq.text.scoring`) turn benchmark items into requests; the engine

1. de-duplicates them, sorts them by length (lm-evaluation-harness's reorderer: little padding, and the order of
   the answers never depends on batching),
2. runs the encoder on right-padded batches (``attention_mask``),
3. gathers the hidden states at the mask positions **before** the vocabulary projection, so the
   ``hidden × vocab`` head runs once per request instead of once per token of the batch,
4. returns ``log_softmax`` of the head at the requested ids, in request order.

Models: anything with a base encoder (``model.base_model`` or ``model.<base_model_prefix>``) and an MLM head at
``model.cls.predictions`` (BERT, incl. ``BertForPreTraining``) or ``model.lm_head`` (RoBERTa family); other
models fall back to the full forward pass (logits at every position), gathered afterwards.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from fairq.batches import logits_of, model_device

log = logging.getLogger("fairq")


@dataclass(frozen=True)
class MaskRequest:
    """``log P(ids[pos] := target | ids)`` where ``ids[pos]`` is the mask token."""

    ids: tuple
    pos: int
    target: int


def mlm_parts(model: nn.Module):
    """``(encoder, head)`` of a masked LM, or ``(None, None)`` when the model is not split that way."""
    head = None
    cls = getattr(model, "cls", None)
    if cls is not None:
        head = getattr(cls, "predictions", cls)
    elif isinstance(getattr(model, "lm_head", None), nn.Module):
        head = model.lm_head
    prefix = getattr(model, "base_model_prefix", None)
    encoder = getattr(model, prefix, None) if prefix else None
    if head is None or not isinstance(encoder, nn.Module) or encoder is model:
        return None, None
    return encoder, head


def nsp_head(model: nn.Module):
    """The next-sentence-prediction head (``BertForPreTraining.cls.seq_relationship``), or None."""
    cls = getattr(model, "cls", None)
    return getattr(cls, "seq_relationship", None) if cls is not None else None


def _hidden(output) -> torch.Tensor:
    if torch.is_tensor(output):
        return output
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    return output[0]


class MaskedLMEngine:
    """Batched answers to :class:`MaskRequest` s for one model.

    ``batch_size``: sequences per forward pass; ``max_tokens``: cap on padded tokens per batch (long sequences
    get smaller batches).
    """

    def __init__(self, model: nn.Module, *, pad_id: int = 0, batch_size: int = 64, max_tokens: int = 8192,
                 progress: bool = False, desc: str = "masked LM"):
        self.model, self.pad_id = model, int(pad_id)
        self.batch_size, self.max_tokens = int(batch_size), int(max_tokens)
        self.progress, self.desc = progress, desc
        self.encoder, self.head = mlm_parts(model)
        self.forward_passes = 0

    def _batches(self, order: list[int], lengths: list[int]):
        batch: list[int] = []
        for i in order:
            width = max([lengths[j] for j in batch] + [lengths[i]])
            if batch and (len(batch) >= self.batch_size or width * (len(batch) + 1) > self.max_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    @torch.inference_mode()
    def logprobs(self, requests: Sequence[MaskRequest]) -> np.ndarray:
        """``log P(target)`` at each request's mask position, in request order (float64 array)."""
        from tqdm.auto import tqdm

        if not requests:
            return np.zeros(0)
        index: dict[MaskRequest, int] = {}
        inverse = np.empty(len(requests), dtype=np.int64)
        for r, req in enumerate(requests):
            inverse[r] = index.setdefault(req, len(index))
        unique = list(index)
        lengths = [len(u.ids) for u in unique]
        order = sorted(range(len(unique)), key=lambda i: (lengths[i], unique[i].ids))
        out = np.empty(len(unique))
        self.model.eval()
        device = model_device(self.model)
        batches = list(self._batches(order, lengths))
        for batch in tqdm(batches, desc=self.desc, disable=not self.progress, leave=False):
            width = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            att = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :lengths[i]] = torch.tensor(unique[i].ids)
                att[row, :lengths[i]] = 1
            ids, att = ids.to(device), att.to(device)
            rows = torch.arange(len(batch), device=device)
            pos = torch.tensor([unique[i].pos for i in batch], device=device)
            tgt = torch.tensor([unique[i].target for i in batch], device=device)
            if self.head is not None:
                hidden = _hidden(self.encoder(input_ids=ids, attention_mask=att))[rows, pos]  # gather first
                logits = logits_of(self.head(hidden))
            else:
                logits = logits_of(self.model(input_ids=ids, attention_mask=att))[rows, pos]
            lp = torch.log_softmax(logits.float(), dim=-1)[rows, tgt]
            out[batch] = lp.double().cpu().numpy()
            self.forward_passes += 1
        return out[inverse]


@torch.inference_mode()
def naive_logprobs(model: nn.Module, requests: Sequence[MaskRequest]) -> np.ndarray:
    """Reference: one full forward pass (vocabulary logits at every position) per request, no batching."""
    model.eval()
    device = model_device(model)
    out = np.empty(len(requests))
    for r, req in enumerate(requests):
        ids = torch.tensor([req.ids], device=device)
        logits = logits_of(model(input_ids=ids, attention_mask=torch.ones_like(ids)))
        out[r] = float(torch.log_softmax(logits[0, req.pos].float(), dim=-1)[req.target])
    return out


@torch.inference_mode()
def nsp_is_next(model: nn.Module, pairs: Sequence[tuple[list, list]], *, cls_id: int, sep_id: int,
                pad_id: int = 0, batch_size: int = 32) -> np.ndarray:
    """``P(IsNext)`` of each ``(first_ids, second_ids)`` pair from a model's NSP head (BERT pre-training)."""
    model.eval()
    device = model_device(model)
    seqs = [([cls_id, *a, sep_id, *b, sep_id], [0] * (len(a) + 2) + [1] * (len(b) + 1)) for a, b in pairs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    out = np.empty(len(seqs))
    for s in range(0, len(order), batch_size):
        batch = order[s:s + batch_size]
        width = max(len(seqs[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        tt = torch.zeros_like(ids)
        att = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            n = len(seqs[i][0])
            ids[row, :n], tt[row, :n], att[row, :n] = torch.tensor(seqs[i][0]), torch.tensor(seqs[i][1]), 1
        res = model(input_ids=ids.to(device), token_type_ids=tt.to(device), attention_mask=att.to(device))
        logits = res.seq_relationship_logits if hasattr(res, "seq_relationship_logits") else res[1]
        out[batch] = torch.softmax(logits.float(), -1)[:, 0].double().cpu().numpy()  # label 0 = IsNext
    return out
