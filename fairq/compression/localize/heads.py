"""Bias localization to attention heads: which heads of a ViT / BERT carry a model's group bias, measured on a
validation split.

For every head of every attention block (the blocks :func:`fairq.compression.prune.structured.attention_blocks` finds:
timm ``Attention``, Hugging Face BERT-style self-attention) two attributions, per bias *category*:

(a) **ablation** — ``delta_bias = bias_c(model with the head ablated) − bias_c(model)``, the head ablated by
    scaling its query, key and value rows (weights and biases) to 0, which makes its output exactly 0 (the same
    operation :mod:`fairq.compression.localize.soft_pruning` applies with a factor ``1 − α``). Negative = the head carries
    bias: without it the category's bias shrinks. ``delta_utility`` is the same for the utility measure.
(b) **correlation** — Pearson ``r`` between the head's activation and a per-item bias score, over the items of the
    category (the seed study's second view). A head's activation on an item is the L2 norm of its attention output
    (its slice of the output projection's input, before the projection), averaged over the item's tokens
    (attention-masked tokens excluded).

What ``bias``, the categories and the per-item score are comes from a :class:`BiasProbe` over the validation data:

* :class:`GroupGapProbe` (image / classification batches with ``target`` and ``sensitive`` codes). Categories:
  every sensitive attribute, plus ``intersectional`` (all attributes combined) when there are several. With
  ``m_i = P(y_i | x_i)`` the model's probability of sample *i*'s true label and ``m̄_l`` its mean over level *l*
  of the category, ``bias_c = max_l m̄_l − min_l m̄_l`` (the *soft accuracy gap*; levels with fewer than
  ``min_group_size`` samples are left out), and ``utility`` = accuracy. The per-sample group-gap contribution is
  defined against the unablated model's best level *b* and worst level *w* of the category:
  ``s_i = m_i / n_b`` for *i* in *b*, ``s_i = −m_i / n_w`` for *i* in *w*, undefined (left out) otherwise, so
  ``Σ_i s_i = m̄_b − m̄_w = bias_c`` exactly. A head whose activation is larger on the disadvantaged level
  correlates negatively with ``s``.
* ``fairq.text.probe.TextBiasProbe`` (held-out StereoSet / CrowS-Pairs items, handed out by the text
  datamodule's validation loader as ``.bias_probe``): categories ``stereoset:<domain>`` and
  ``crows:<bias type>``; ``bias_c = |SS_c − 50|`` resp. ``|CrowS_c − 50|`` (the official scores), utility =
  StereoSet LMS, per-item score = the preference for the stereotypical option (``score_stereotype −
  score_anti`` resp. ``score_more − score_less``).

Selection (:func:`select_heads`): a head is a candidate when its ablation reduces the bias of at least
``min_consistency`` of the categories (its *consistency*) and their mean (its *effect*) is negative (and, with
``max_utility_drop``, its ablation costs at most that much utility); candidates are ranked by effect (``rank_by="ablation"``) or by mean ``|r|`` over the categories (``rank_by="correlation"``), and
the first ``n`` are taken. None may qualify: then nothing is selected, and the record says so.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from fairq.batches import model_device, predict, split_batch
from fairq.errors import UserError

from fairq.compression.prune.structured import AttentionHeads, attention_blocks

RANK_BY = ("ablation", "correlation")


class NoAttentionHeadsError(UserError, ValueError):
    """The model has no attention heads to attribute or attenuate (a CNN)."""


def head_blocks(model: nn.Module, method: str = "soft_head_pruning", *, model_name: str | None = None
                ) -> list[AttentionHeads]:
    """The model's attention blocks; a model without any (a CNN) is a clear error naming it (``model_name``: its
    registry name, when known)."""
    blocks = attention_blocks(model)
    if not blocks:
        name = f"{model_name!r} ({type(model).__name__})" if model_name else type(model).__name__
        raise NoAttentionHeadsError(
            f"{method}: model {name} has no attention heads (it needs a timm ViT or a "
            "BERT-style encoder); restrict the method entry to attention models, e.g. models: [tiny_vit]")
    return blocks


# ------------------------------------------------------------------------------------------- scaling heads
@torch.no_grad()
def scale_heads(blocks: Sequence[AttentionHeads], selection: dict[str, Sequence[int]], factor: float) -> None:
    """Multiply the query, key and value rows (weights and biases) of the selected heads by ``factor`` in place.

    ``selection``: ``{block name: [head indices]}``. Scaling q and k scales the head's attention logits by
    ``factor²``, scaling v its output by ``factor``; ``factor = 0`` silences the head exactly.
    """
    by_name = {b.name: b for b in blocks}
    unknown = sorted(set(selection) - set(by_name))
    if unknown:
        raise ValueError(f"unknown attention block(s) {unknown}; known: {sorted(by_name)}")
    for name, heads in selection.items():
        b = by_name[name]
        for h in heads:
            if not 0 <= int(h) < b.num_heads:
                raise ValueError(f"{name} has {b.num_heads} heads, got head {h}")
        if not heads:
            continue
        for _, lin, off in b.producers():
            rows = b.rows([int(h) for h in heads], off).to(lin.weight.device)
            lin.weight[rows] *= factor
            if lin.bias is not None:
                lin.bias[rows] *= factor


@contextlib.contextmanager
def heads_scaled(blocks: Sequence[AttentionHeads], selection: dict[str, Sequence[int]], factor: float):
    """:func:`scale_heads` for the duration of a ``with`` block; the exact original rows are restored after."""
    saved = []
    for b in blocks:
        if selection.get(b.name):
            for _, lin, _ in b.producers():
                saved.append((lin, lin.weight.detach().clone(),
                              None if lin.bias is None else lin.bias.detach().clone()))
    scale_heads(blocks, selection, factor)
    try:
        yield
    finally:
        with torch.no_grad():
            for lin, w, bias in saved:
                lin.weight.copy_(w)
                if bias is not None:
                    lin.bias.copy_(bias)


# ------------------------------------------------------------------------------------------- probes
@dataclass
class ProbeResult:
    """One model's bias on a probe's items.

    ``bias``: category → bias measure (≥ 0, larger = more biased); ``utility``: one number (higher = better);
    ``scores``: category → per-item bias score over all items of the probe (NaN where an item does not count);
    ``item_ids``: the items' sample ids (recorded, so that a run can show selection and test never overlap).
    """

    bias: dict[str, float]
    utility: float
    utility_name: str
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    item_ids: list[str] = field(default_factory=list)


class BiasProbe(Protocol):
    """What head attribution needs from validation data (see the module doc)."""

    #: what ``bias`` means, for the record (e.g. ``"soft accuracy gap"``).
    bias_name: str

    def measure(self, model: nn.Module, *, with_scores: bool = True) -> ProbeResult:
        """The model's bias per category (and per-item scores unless ``with_scores`` is False)."""

    def item_batches(self) -> Iterable[tuple[tuple, dict, torch.Tensor | None]]:
        """``(args, kwargs, token mask or None)`` model inputs, one row per item, in the order of ``scores``."""


class GroupGapProbe:
    """Image / classification validation batches (``target`` + ``sensitive`` codes) as a probe; see the module doc.

    ``sensitive_names``: names of the ``sensitive`` columns (default ``attr0``, ``attr1``, …); ``limit``: at most
    this many batches; ``min_group_size``: smaller levels are left out of a category's gap.
    """

    bias_name = "soft accuracy gap (max - min over levels of mean P(true label))"

    def __init__(self, batches, sensitive_names: Sequence[str] | None = None, *, limit: int | None = None,
                 min_group_size: int = 5):
        if batches is None:
            raise ValueError("head attribution needs validation data (batches with targets and sensitive codes)")
        self.batches = list(islice(iter(batches), limit))
        if not self.batches:
            raise ValueError("the validation data yielded no batches")
        self.names = list(sensitive_names) if sensitive_names else None
        self.min_group_size = int(min_group_size)
        self._reference: dict[str, tuple[int, int]] | None = None  # category → (best, worst) level

    def _groups(self, sensitive: np.ndarray) -> dict[str, np.ndarray]:
        names = self.names or [f"attr{j}" for j in range(sensitive.shape[1])]
        if len(names) != sensitive.shape[1]:
            raise ValueError(f"the batches carry {sensitive.shape[1]} sensitive columns; expected {names}")
        out = {n: sensitive[:, j] for j, n in enumerate(names)}
        if len(names) > 1:
            out["intersectional"] = np.unique(sensitive, axis=0, return_inverse=True)[1].reshape(-1)
        return out

    def measure(self, model: nn.Module, *, with_scores: bool = True) -> ProbeResult:
        p = predict(model, self.batches)
        if p.sensitive is None:
            raise ValueError("head attribution on classification data needs 'sensitive' codes in the validation "
                             "batches")
        m = p.prob[np.arange(len(p.target)), p.target]
        bias, scores, ref = {}, {}, {}
        for cat, codes in self._groups(p.sensitive).items():
            levels = [lv for lv in np.unique(codes) if (codes == lv).sum() >= self.min_group_size]
            if len(levels) < 2:
                continue
            means = {lv: float(m[codes == lv].mean()) for lv in levels}
            best, worst = max(means, key=means.get), min(means, key=means.get)
            bias[cat] = means[best] - means[worst]
            ref[cat] = (best, worst)
            if with_scores:
                if self._reference is not None and cat in self._reference:
                    best, worst = self._reference[cat]
                s = np.full(len(m), np.nan)
                for lv, sign in ((best, 1.0), (worst, -1.0)):
                    k = codes == lv
                    s[k] = sign * m[k] / k.sum()
                scores[cat] = s
        if not bias:
            raise ValueError(f"no sensitive attribute has two levels with ≥ {self.min_group_size} validation samples")
        if self._reference is None:
            self._reference = ref
        return ProbeResult(bias, float((p.pred == p.target).mean()), "accuracy", scores, list(p.sample_ids))

    def item_batches(self):
        for raw in self.batches:
            b = split_batch(raw)
            yield b.args, b.kwargs, None

    def key(self) -> tuple:
        """What the attribution depends on: the batches' contents, the attribute names and the size floor."""
        return fingerprint(self.batches), tuple(self.names or ()), self.min_group_size


def probe_for(validation, sensitive_names=None, *, limit: int | None = None) -> BiasProbe:
    """The probe a validation loader brings (``.bias_probe``: the text datamodule's held-out scored items), else a
    :class:`GroupGapProbe` over its batches."""
    probe = getattr(validation, "bias_probe", None)
    if probe is not None:
        return probe() if callable(probe) and not hasattr(probe, "measure") else probe
    return GroupGapProbe(validation, sensitive_names, limit=limit)


# ------------------------------------------------------------------------------------------- activations
@torch.no_grad()
def head_activations(model: nn.Module, blocks: Sequence[AttentionHeads], batches) -> dict[str, np.ndarray]:
    """``{block name: [n_items, n_heads]}``: per item, the L2 norm of each head's attention output (its slice of
    the output projection's input), averaged over the item's tokens (mask ≠ 0)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for b in blocks:
        def hook(_mod, args, name=b.name, h=b.num_heads, d=b.head_dim):
            x = args[0]
            seen[name] = x.reshape(*x.shape[:-1], h, d).float().norm(dim=-1)  # [B, T, H]
        hooks.append(b.out.register_forward_pre_hook(hook))
    out: dict[str, list] = {b.name: [] for b in blocks}
    device = model_device(model)
    was = model.training
    model.eval()
    try:
        for args, kwargs, mask in batches:
            seen.clear()
            move = (lambda t: t.to(device) if torch.is_tensor(t) else t)
            model(*[move(a) for a in args], **{k: move(v) for k, v in kwargs.items()})
            for b in blocks:
                a = seen[b.name]
                if a.dim() == 2:  # [T, H] for a batch of one without a batch axis: never in practice
                    a = a[None]
                if mask is not None:
                    w = mask.to(a.device).float()[..., None]
                    out[b.name].append(((a * w).sum(1) / w.sum(1).clamp_min(1)).cpu())
                else:
                    out[b.name].append(a.mean(1).cpu())
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


# ------------------------------------------------------------------------------------------- attribution
@dataclass
class HeadAttribution:
    """The attribution of every head: ``rows`` (one per block × head × category: ``layer, block, head, category,
    delta_bias, delta_utility, correlation``), the unablated model's ``bias`` / ``utility``, the probe's
    ``bias_name`` / ``utility_name`` and the ``item_ids`` it was measured on."""

    rows: list[dict[str, Any]]
    bias: dict[str, float]
    utility: float
    bias_name: str
    utility_name: str
    blocks: list[dict[str, Any]]
    item_ids: list[str] = field(default_factory=list)

    def summary(self) -> list[dict[str, Any]]:
        """One row per head: ``effect`` (mean ``delta_bias`` over categories), ``consistency`` (share of
        categories whose bias its ablation reduces), ``mean_abs_correlation``, ``delta_utility``."""
        out = []
        keys = list(dict.fromkeys((r["layer"], r["block"], r["head"]) for r in self.rows))
        for layer, block, head in keys:
            rs = [r for r in self.rows if (r["layer"], r["block"], r["head"]) == (layer, block, head)]
            d = np.array([r["delta_bias"] for r in rs], float)
            c = np.array([r["correlation"] for r in rs], float)
            out.append({"layer": layer, "block": block, "head": head, "effect": float(np.nanmean(d)),
                        "consistency": float(np.mean(d < 0)),
                        "mean_abs_correlation": float(np.nanmean(np.abs(c))) if np.isfinite(c).any() else np.nan,
                        "delta_utility": rs[0]["delta_utility"]})
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (NaN as ``null``)."""
        return _json_safe({"bias_name": self.bias_name, "utility_name": self.utility_name, "bias": self.bias,
                           "utility": self.utility, "blocks": self.blocks, "rows": self.rows,
                           "heads": self.summary(), "item_ids": self.item_ids})


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def attribute_heads(model: nn.Module, probe: BiasProbe, blocks: Sequence[AttentionHeads] | None = None) -> HeadAttribution:
    """Ablation and correlation attribution of every head of ``model`` on ``probe`` (the model is restored)."""
    blocks = list(blocks) if blocks is not None else head_blocks(model, "head attribution")
    base = probe.measure(model, with_scores=True)
    acts = head_activations(model, blocks, probe.item_batches())
    rows = []
    for layer, b in enumerate(blocks):
        for h in range(b.num_heads):
            with heads_scaled(blocks, {b.name: [h]}, 0.0):
                abl = probe.measure(model, with_scores=False)
            for cat, before in base.bias.items():
                after = abl.bias.get(cat, np.nan)
                score = base.scores.get(cat)
                a = acts[b.name][:, h]
                if score is not None and len(score) != len(a):
                    raise RuntimeError(f"probe gave {len(score)} item scores but {len(a)} activations")
                rows.append({"layer": layer, "block": b.name, "head": h, "category": cat,
                             "bias_before": before, "bias_ablated": float(after),
                             "delta_bias": float(after - before), "delta_utility": float(abl.utility - base.utility),
                             "correlation": _pearson(a, score) if score is not None else np.nan})
    return HeadAttribution(rows, base.bias, base.utility, probe.bias_name, base.utility_name,
                           [{"layer": i, "block": b.name, "num_heads": b.num_heads} for i, b in enumerate(blocks)],
                           list(base.item_ids))


#: the last few attributions, keyed by (model weights, probe items): an α sweep is one attribution, not one per cell.
_CACHE: "OrderedDict[tuple, HeadAttribution]" = OrderedDict()
_CACHE_SIZE = 4


def fingerprint(obj) -> str:
    """SHA-1 of a model's state (names, shapes and bytes of every tensor) or of a sequence of batches' tensors."""
    h = hashlib.sha1()

    def add(name, t):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")

    if isinstance(obj, nn.Module):
        for name, t in obj.state_dict().items():
            if torch.is_tensor(t):
                add(name, t)
    else:
        for i, batch in enumerate(obj):
            items = batch.items() if isinstance(batch, dict) else enumerate(batch if isinstance(batch, (list, tuple))
                                                                              else [batch])
            for k, v in items:
                if torch.is_tensor(v):
                    add(f"{i}.{k}", v)
                else:
                    h.update(f"{i}.{k}={v!r}".encode())
    return h.hexdigest()


def cached_attribution(model: nn.Module, probe: BiasProbe, blocks: Sequence[AttentionHeads] | None = None
                       ) -> HeadAttribution:
    """:func:`attribute_heads`, reused when the same weights meet the same probe items again in this process
    (the cells of an α sweep share one baseline and one validation split). A probe without ``key()`` is never
    cached."""
    key_fn = getattr(probe, "key", None)
    if key_fn is None:
        return attribute_heads(model, probe, blocks)
    key = (fingerprint(model), type(probe).__name__, key_fn())
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return copy.deepcopy(_CACHE[key])
    out = attribute_heads(model, probe, blocks)
    _CACHE[key] = copy.deepcopy(out)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out


def select_heads(attribution: HeadAttribution, n: int, *, rank_by: str = "ablation",
                 min_consistency: float = 0.5, max_utility_drop: float | None = None) -> dict[str, list[int]]:
    """``{block: [heads]}``: the first ``n`` candidates (see the module doc), ranked by ``rank_by``; with
    ``max_utility_drop``, heads whose ablation lowers the validation utility by more than that are no candidates."""
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
    cands = [s for s in attribution.summary() if s["effect"] < 0 and s["consistency"] >= min_consistency
             and (max_utility_drop is None or -s["delta_utility"] <= max_utility_drop)]
    if rank_by == "ablation":
        cands.sort(key=lambda s: (s["effect"], s["layer"], s["head"]))
    else:
        cands.sort(key=lambda s: (-np.nan_to_num(s["mean_abs_correlation"], nan=-1.0), s["layer"], s["head"]))
    out: dict[str, list[int]] = {}
    for s in cands[:n]:
        out.setdefault(s["block"], []).append(int(s["head"]))
    return {k: sorted(v) for k, v in out.items()}
