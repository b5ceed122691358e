"""Structured pruning: the pruned model is physically smaller (fewer channels, fewer attention heads).

* ``channel_prune``: the maintained ``torch-pruning`` package builds the dependency graph (DepGraph), so
  residual additions, depthwise convolutions and BatchNorms are pruned consistently; the classifier keeps its
  outputs. On ViT / BERT it removes MLP hidden units (attention is :func:`head_prune`'s). Ranking:
  ``magnitude`` (group L2 norm of the weights) or ``taylor`` (|w · ∂loss/∂w| measured on the
  validation split).
* ``head_prune`` (timm ViTs, Hugging Face BERT-style encoders): whole attention heads are removed — the q/k/v
  projection rows and the output-projection columns of a removed head are cut out, so the Linear layers shrink.
  Ranking: ``magnitude`` (L1 norm of a head's q/k/v rows and output columns) or ``ablation`` (validation loss
  increase when that head alone is silenced).

Both record ``sparsity`` as the share of parameters removed (measured: 1 − params / dense params), ``params``,
``nonzero_params`` and ``flops``; the size is the dense serialization of the smaller model.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fairq.batches import labelled_positions
from fairq.threads import backward as thread_invariant_backward

from fairq.compression.core.config import as_str_tuple, check_choice, check_positive, variant_of
from fairq.compression.core.data import iter_labelled_batches, iter_model_inputs, logits_of, model_device
from fairq.compression.core.modules import matches
from fairq.compression.prune.pruning import PruneConfigBase, finetune
from fairq.compression.core.registry import Artifact, MethodInputs, MethodResult, register_method, register_requirement
from fairq.compression.core.sparsity import count_flops, count_params

log = logging.getLogger(__name__)


def _check_ratio(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"ratio must be a number in (0, 1), got {value!r}")
    return float(value)


class _RatioVariant:
    def variant(self) -> str:
        """Always names the ratio (the curves' x axis)."""
        base = variant_of(dataclasses.replace(self, ratio=0.5), skip=self.run_fields)
        return "_".join([f"ratio={self.ratio:g}"] + ([base] if base else []))


def _validation_loss(model: nn.Module, data, limit: int | None) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for args, kwargs, target in iter_labelled_batches(data, limit, device=model_device(model)):
            logits = logits_of(model(*args, **kwargs))
            if logits.dim() == target.dim() + 2:  # a masked LM's output on unlabelled text (no masked positions)
                raise ValueError("a measured importance needs labelled validation batches; a masked LM's validation "
                                 "split is unlabelled text: use importance: magnitude")
            logits, target = labelled_positions(logits, target.long())  # token-level labels: masked positions
            total += float(F.cross_entropy(logits, target, reduction="sum"))
            n += int(target.shape[0])
    if n == 0:
        raise ValueError("the validation data yielded no batches")
    return total / n


def _structured_record(model: nn.Module, dense_params: int, example) -> dict:
    counts = count_params(model)
    return {**counts, "sparsity": 1.0 - counts["params"] / dense_params, "flops": count_flops(model, example)}


# ------------------------------------------------------------------------------------------- channel pruning
@dataclass
class ChannelPruneConfig(_RatioVariant, PruneConfigBase):
    """Remove ``ratio`` of the output channels of every prunable conv, or of every MLP hidden layer of a
    transformer (``global_pruning``: ranked across layers)
    with torch-pruning's DepGraph; ``importance``: ``magnitude`` or ``taylor`` (on ``val_batches`` validation
    batches); ``skip_modules`` (fnmatch) and the classifier keep their channels."""

    ratio: float = 0.5
    importance: str = "magnitude"
    global_pruning: bool = False
    skip_modules: tuple[str, ...] = ()
    val_batches: int | None = 4

    def __post_init__(self):
        self.ratio = _check_ratio(self.ratio)
        check_choice("importance", self.importance, ("magnitude", "taylor"))
        self.skip_modules = as_str_tuple("skip_modules", self.skip_modules)
        check_positive("val_batches", self.val_batches, allow_none=True, integer=True)
        self._check_finetune()


def _classifier(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Module) and any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in head.modules()):
            return head
    last = None
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            last = mod
    return last


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def channel_prune(model: nn.Module, example, ratio: float, *, importance: str = "magnitude",
                  global_pruning: bool = False, skip=(), validation=None, val_batches: int | None = 4) -> dict:
    """Prune ``model``'s channels in place with torch-pruning; returns ``{"channels": {layer: (before, after)}}``.

    CNNs: conv channels (residual adds, depthwise convs and BatchNorms follow through DepGraph). Transformers
    (timm ViT, BERT-style): the attention projections are left to :func:`head_prune`, and the residual stream
    is coupled to them, so what goes is the MLP's hidden units (fc1 outputs with the fc2 inputs that read them).
    """
    import warnings

    import torch_pruning as tp

    args, kwargs = next(iter_model_inputs(example, limit=1, device=model_device(model)))
    if kwargs and args:
        raise ValueError("channel_prune needs batches of one input tensor or of keyword inputs, not both")
    x = {k: v[:2] for k, v in kwargs.items()} if kwargs else args[0][:2]
    ignored = [m for n, m in model.named_modules() if n and matches(n, skip)]
    for block in attention_blocks(model):
        ignored += [lin for _, lin, _ in block.producers()] + [block.out]
    ignored += [m.out_proj for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    head = _classifier(model)
    if head is not None:
        ignored.append(head)
    before = _widths(model)
    if importance == "taylor":
        if validation is None:
            raise ValueError("importance='taylor' needs validation data")
        imp = tp.importance.GroupTaylorImportance()
    else:
        imp = tp.importance.GroupMagnitudeImportance(p=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters")  # cls/pos tokens: residual width, kept
        pruner = tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=ratio, global_pruning=global_pruning,
                                      ignored_layers=ignored)
    if importance == "taylor":
        model.zero_grad(set_to_none=True)
        for a, k, target in iter_labelled_batches(validation, val_batches, device=model_device(model)):
            thread_invariant_backward(F.cross_entropy(logits_of(model(*a, **k)), target.long()))
    pruner.step()
    model.zero_grad(set_to_none=True)
    after = _widths(model)
    changed = {n: (before[n], after[n]) for n in before if n in after and before[n] != after[n]}
    if not changed:
        raise ValueError(f"channel_prune found no prunable channels in {type(model).__name__}")
    return {"channels": changed}


def handle_channel_prune(model: nn.Module, config: ChannelPruneConfig, inputs: MethodInputs) -> MethodResult:
    model.eval()
    dense = count_params(model)["params"]
    info = channel_prune(model, inputs.calibration, config.ratio, importance=config.importance,
                         global_pruning=config.global_pruning, skip=config.skip_modules, validation=inputs.validation,
                         val_batches=config.val_batches)
    for p in model.parameters():
        p.requires_grad_(True)
    tuned = finetune(model, inputs, config)
    record = {**_structured_record(model, dense, inputs.calibration), **tuned}
    ch = info["channels"]
    record["channels_kept"] = sum(a for _, a in ch.values()) / max(1, sum(b for b, _ in ch.values()))
    return MethodResult.fp32(model.eval(), record=record,
                             artifacts=[Artifact("pruning", {"ratio": config.ratio, "importance": config.importance,
                                                             "channels": ch}, column="pruning_plan")])


register_method("channel_prune", ChannelPruneConfig, handle_channel_prune,
                needs={"calibration", "validation", "training"}, family="pruning")


# ------------------------------------------------------------------------------------------- head pruning
@dataclass
class AttentionHeads:
    """One attention block seen as heads: the projections that produce them and the one that reads them."""

    name: str
    module: nn.Module
    kind: str  # "timm" (fused qkv) or "bert" (query/key/value)

    @property
    def num_heads(self) -> int:
        return self.module.num_heads if self.kind == "timm" else self.module.self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.module.head_dim if self.kind == "timm" else self.module.self.attention_head_size

    @property
    def out(self) -> nn.Linear:
        return self.module.proj if self.kind == "timm" else self.module.output.dense

    def producers(self) -> list[tuple[str, nn.Linear, int]]:
        """``(attribute path, Linear, row offset of head 0)`` of the q, k and v projections."""
        if self.kind == "timm":
            dim = self.num_heads * self.head_dim
            return [("qkv", self.module.qkv, 0), ("qkv", self.module.qkv, dim), ("qkv", self.module.qkv, 2 * dim)]
        s = self.module.self
        return [("self.query", s.query, 0), ("self.key", s.key, 0), ("self.value", s.value, 0)]

    def rows(self, heads, offset: int) -> torch.Tensor:
        d = self.head_dim
        return torch.cat([torch.arange(offset + h * d, offset + (h + 1) * d) for h in heads])

    @torch.no_grad()
    def magnitude(self) -> torch.Tensor:
        d, out = self.head_dim, []
        for h in range(self.num_heads):
            score = sum(float(lin.weight[off + h * d: off + (h + 1) * d].abs().sum())
                        for _, lin, off in self.producers())
            out.append(score + float(self.out.weight[:, h * d:(h + 1) * d].abs().sum()))
        return torch.tensor(out)

    def silence(self, head: int) -> Callable[[], None]:
        """Zero ``head``'s output-projection columns (its contribution); returns the undo."""
        d = self.head_dim
        w = self.out.weight
        saved = w.data[:, head * d:(head + 1) * d].clone()
        w.data[:, head * d:(head + 1) * d] = 0

        def undo():
            w.data[:, head * d:(head + 1) * d] = saved

        return undo

    def keep(self, heads: list[int]) -> None:
        """Physically remove every head not in ``heads``."""
        heads = sorted(heads)
        if self.kind == "timm":
            dim = self.num_heads * self.head_dim
            rows = torch.cat([self.rows(heads, off) for off in (0, dim, 2 * dim)])
            self.module.qkv = _select(self.module.qkv, rows=rows)
        else:
            s = self.module.self
            for attr in ("query", "key", "value"):
                setattr(s, attr, _select(getattr(s, attr), rows=self.rows(heads, 0)))
        cols = self.rows(heads, 0)
        if self.kind == "timm":
            self.module.proj = _select(self.module.proj, cols=cols)
            self.module.num_heads = len(heads)
            self.module.attn_dim = len(heads) * self.head_dim
        else:
            self.module.output.dense = _select(self.module.output.dense, cols=cols)
            self.module.self.num_attention_heads = len(heads)
            self.module.self.all_head_size = len(heads) * self.head_dim


def _select(lin: nn.Linear, rows=None, cols=None) -> nn.Linear:
    w = lin.weight.detach()
    b = lin.bias.detach() if lin.bias is not None else None
    if rows is not None:
        w, b = w[rows], (b[rows] if b is not None else None)
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def attention_blocks(model: nn.Module) -> list[AttentionHeads]:
    """The attention blocks :func:`head_prune` can shrink: timm ``Attention`` and BERT-style self-attention."""
    out = []
    try:
        from timm.layers import Attention as TimmAttention
    except ImportError:  # pragma: no cover - timm is a requirement
        TimmAttention = ()
    for name, mod in model.named_modules():
        if TimmAttention and type(mod) is TimmAttention:
            if not isinstance(mod.norm, nn.Identity) or mod.gate is not None:
                raise ValueError(f"{name}: timm Attention with scale_norm/gate is not supported by head_prune")
            out.append(AttentionHeads(name, mod, "timm"))
        elif all(hasattr(mod, a) for a in ("self", "output")) and all(
                hasattr(mod.self, a) for a in ("query", "key", "value", "num_attention_heads")) \
                and isinstance(getattr(mod.output, "dense", None), nn.Linear):
            out.append(AttentionHeads(name, mod, "bert"))
    return out


def has_attention_heads(model: nn.Module) -> bool:
    """Whether ``model`` has attention blocks the head methods can handle (its skeleton will do)."""
    try:
        return bool(attention_blocks(model))
    except ValueError:  # attention of a kind head methods cannot handle (timm's scale_norm / gate)
        return False


register_requirement("attention_heads", "attention heads (a timm ViT or a BERT-style encoder)", has_attention_heads)


@dataclass
class HeadPruneConfig(_RatioVariant, PruneConfigBase):
    """Remove ``ratio`` of the attention heads of every block (at least one head stays per block), the
    lowest-ranked first; ``importance``: ``magnitude`` or ``ablation`` (validation loss increase with the head
    silenced, on ``val_batches`` batches)."""

    ratio: float = 0.5
    importance: str = "magnitude"
    val_batches: int | None = 4

    def __post_init__(self):
        self.ratio = _check_ratio(self.ratio)
        check_choice("importance", self.importance, ("magnitude", "ablation"))
        check_positive("val_batches", self.val_batches, allow_none=True, integer=True)
        self._check_finetune()


def head_importance(model: nn.Module, blocks: list[AttentionHeads], importance: str, validation=None,
                    val_batches: int | None = 4) -> dict[str, torch.Tensor]:
    """``{block name: score per head}`` (higher = more important)."""
    if importance == "magnitude":
        return {b.name: b.magnitude() for b in blocks}
    if validation is None:
        raise ValueError("importance='ablation' needs validation data")
    base = _validation_loss(model, validation, val_batches)
    scores = {}
    for b in blocks:
        s = []
        for h in range(b.num_heads):
            undo = b.silence(h)
            try:
                s.append(_validation_loss(model, validation, val_batches) - base)
            finally:
                undo()
        scores[b.name] = torch.tensor(s)
    return scores


def head_prune(model: nn.Module, ratio: float, *, importance: str = "magnitude", validation=None,
               val_batches: int | None = 4) -> dict:
    """Remove heads in place; returns ``{"heads": {block: {"kept": [...], "removed": [...], "scores": [...]}}}``."""
    blocks = attention_blocks(model)
    if not blocks:
        raise ValueError(f"head_prune needs timm or BERT-style attention blocks; {type(model).__name__} has none")
    scores = head_importance(model, blocks, importance, validation, val_batches)
    plan = {}
    for b in blocks:
        n = b.num_heads
        n_remove = min(n - 1, int(round(ratio * n)))
        order = torch.argsort(scores[b.name], stable=True).tolist()  # least important first
        removed = sorted(order[:n_remove])
        kept = sorted(order[n_remove:])
        b.keep(kept)
        plan[b.name] = {"kept": kept, "removed": removed, "scores": [float(v) for v in scores[b.name]]}
    return {"heads": plan}


def handle_head_prune(model: nn.Module, config: HeadPruneConfig, inputs: MethodInputs) -> MethodResult:
    model.eval()
    dense = count_params(model)["params"]
    info = head_prune(model, config.ratio, importance=config.importance, validation=inputs.validation,
                      val_batches=config.val_batches)
    tuned = finetune(model, inputs, config)
    record = {**_structured_record(model, dense, inputs.calibration), **tuned}
    heads = info["heads"].values()
    record.update(heads_before=sum(len(h["kept"]) + len(h["removed"]) for h in heads),
                  heads_after=sum(len(h["kept"]) for h in heads))
    return MethodResult.fp32(model, record=record,
                             artifacts=[Artifact("pruning", {"ratio": config.ratio, "importance": config.importance,
                                                             **info}, column="pruning_plan")])


register_method("head_prune", HeadPruneConfig, handle_head_prune,
                needs={"calibration", "validation", "training"}, family="pruning", requires={"attention_heads"})
