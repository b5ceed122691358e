"""The one batched masked-LM engine: answers masked-position requests for any (FP32 or compressed) masked LM.

A :class:`MaskRequest` is one input sequence with one ``[MASK]`` at ``pos`` and the token id whose
log-probability is wanted there. Scorers (:mod:`fairq.text.scoring`) turn benchmark items into requests; the engine

1. de-duplicates their inputs (requests that differ only in the target id share one row), sorts them by length (lm-evaluation-harness's reorderer: little padding, and the order of
   the answers never depends on batching),
2. runs the encoder on right-padded batches (``attention_mask``),
3. gathers the hidden states at the mask positions **before** the vocabulary projection, so the
   ``hidden × vocab`` head runs once per request instead of once per token of the batch,
4. returns ``log_softmax`` of the head at the requested ids, in request order.

Models: anything with a base encoder (``model.base_model`` or ``model.<base_model_prefix>``) and an MLM head at
``model.cls.predictions`` (BERT, incl. ``BertForPreTraining``) or ``model.lm_head`` (RoBERTa family); an exported
(INT8 / graph-simulated) masked LM, whose program takes the positions and runs its head there only
(:class:`fairq.compression.backends.int8.GatheredMaskedLM`); other models fall back to the full forward pass
(logits at every position), gathered afterwards.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from fairq.batches import hidden_states, logits_of, mlm_parts, model_device  # noqa: F401 (mlm_parts re-exported)

log = logging.getLogger("fairq")


@dataclass(frozen=True)
class MaskRequest:
    """``log P(ids[pos] := target | ids)`` where ``ids[pos]`` is the mask token."""

    ids: tuple
    pos: int
    target: int


def nsp_head(model: nn.Module):
    """The next-sentence-prediction head (``BertForPreTraining.cls.seq_relationship``), or None."""
    cls = getattr(model, "cls", None)
    return getattr(cls, "seq_relationship", None) if cls is not None else None


class MaskedLMEngine:
    """Batched answers to :class:`MaskRequest` s for one model.

    ``batch_size``: sequences per forward pass; ``max_tokens``: cap on padded tokens per batch (long sequences
    get smaller batches). ``compile``: run the encoder through ``torch.compile`` (inductor, weights frozen as
    constants, dynamic shapes) — on CPU inductor lowers FP32 ``Linear`` to oneDNN, which on this project's AMD
    test machine is ~2× faster than eager (eager FP32 GEMMs go to MKL, slow on AMD); it costs a one-off
    compilation (~30–60 s for a bert-base on 2 cores), so it pays off only on large item sets, and scores agree
    with eager to float32 rounding (summation order). A model that fails to compile falls back to eager (logged).
    Freezing bakes the weights into the compiled program, and dynamo caches programs per code object with guards
    on module identity, not on weight values: a model whose weights were changed in place would be answered by
    the program of its old weights. So the program is keyed on a digest of the encoder's weights (checked at each
    :meth:`logprobs` call): a different digest drops dynamo's caches and compiles afresh.
    """

    def __init__(self, model: nn.Module, *, pad_id: int = 0, batch_size: int = 64, max_tokens: int = 8192,
                 progress: bool = False, desc: str = "masked LM", compile: bool = False):
        self.model, self.pad_id = model, int(pad_id)
        self.batch_size, self.max_tokens = int(batch_size), int(max_tokens)
        self.progress, self.desc = progress, desc
        self.encoder, self.head = mlm_parts(model)
        self.compile = bool(compile)
        self._compiled = None
        self._compiled_key: str | None = None  # digest of the weights frozen into self._compiled
        self.forward_passes = 0  # batches run
        self.rows = 0  # input sequences run (≤ requests: shared inputs run once)

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

    def _forward(self, ids: torch.Tensor, att: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits at ``(rows, pos)``: the encoder's hidden states are gathered at the mask positions
        before the head, so the ``hidden × vocab`` projection runs once per row, not once per token."""
        if self.head is None:
            if getattr(self.model, "gathers", False):  # an exported masked LM with its head at given positions
                return self.model.gathered_logits(ids, att, rows, pos)
            return logits_of(self.model(input_ids=ids, attention_mask=att))[rows, pos]
        encoder = self.encoder
        if self.compile:
            try:
                import torch._inductor.config as inductor_config

                with inductor_config.patch(freezing=True):
                    hidden = hidden_states(self._compiled(input_ids=ids, attention_mask=att))
                return logits_of(self.head(hidden[rows, pos]))
            except Exception as err:  # noqa: BLE001 — compilation is an optimisation: any failure → eager
                log.warning("masked LM engine: torch.compile failed (%s: %s); scoring in eager mode",
                            type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
                self.compile = False
        hidden = hidden_states(encoder(input_ids=ids, attention_mask=att))[rows, pos]  # gather first
        return logits_of(self.head(hidden))

    @torch.inference_mode()
    def logprobs(self, requests: Sequence[MaskRequest]) -> np.ndarray:
        """``log P(target)`` at each request's mask position, in request order (float64 array).

        Requests that differ only in their target share one input row: StereoSet's candidates all start from
        the same sentence with one ``[MASK]`` at the blank, so their first subwords are read from one forward
        row (about half of StereoSet's rows)."""
        from tqdm.auto import tqdm

        if not requests:
            return np.zeros(0)
        row_of: dict[tuple, int] = {}
        req_row = np.empty(len(requests), dtype=np.int64)
        for r, req in enumerate(requests):
            req_row[r] = row_of.setdefault((req.ids, req.pos), len(row_of))
        inputs = list(row_of)  # (ids, pos) per row
        lengths = [len(ids) for ids, _ in inputs]
        # the requests of each row, grouped: rows_sorted[k] owns requests by_row[starts[k]:starts[k + 1]]
        by_row = np.argsort(req_row, kind="stable")
        starts = np.searchsorted(req_row[by_row], np.arange(len(inputs) + 1))
        targets = np.array([req.target for req in requests], dtype=np.int64)
        order = sorted(range(len(inputs)), key=lambda i: (lengths[i], inputs[i][0]))
        out = np.empty(len(requests))
        self.model.eval()
        if self.compile and self.head is not None:
            key = weights_digest(self.encoder)
            if key != self._compiled_key:
                torch._dynamo.reset()  # a cached program may hold other (older) frozen weights of this module
                self._compiled, self._compiled_key = torch.compile(self.encoder, dynamic=True), key
        device = model_device(self.model)
        batches = list(self._batches(order, lengths))
        for batch in tqdm(batches, desc=self.desc, disable=not self.progress, leave=False):
            width = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            att = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :lengths[i]] = torch.tensor(inputs[i][0])
                att[row, :lengths[i]] = 1
            ids, att = ids.to(device), att.to(device)
            rows = torch.arange(len(batch), device=device)
            pos = torch.tensor([inputs[i][1] for i in batch], device=device)
            logp = torch.log_softmax(self._forward(ids, att, rows, pos).float(), dim=-1)
            reqs = [by_row[starts[i]:starts[i + 1]] for i in batch]
            req_idx = np.concatenate(reqs)
            batch_row = torch.as_tensor(np.repeat(np.arange(len(batch)), [len(r) for r in reqs]), device=device)
            tgt = torch.as_tensor(targets[req_idx], device=device)
            out[req_idx] = logp[batch_row, tgt].double().cpu().numpy()
            self.forward_passes += 1
            self.rows += len(batch)
        return out


def weights_digest(module: nn.Module) -> str:
    """A digest of every parameter and buffer of ``module`` (names, dtypes, shapes and bytes)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        t = t.detach().cpu()
        t = (t.int_repr() if t.is_quantized else t).contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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
