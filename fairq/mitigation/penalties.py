"""Differentiable group-gap penalties on predicted probabilities (for fairness fine-tuning).

Groups are the intersectional groups present in the batch (unique rows of the ``[B, n_attrs]`` sensitive codes).
For each class ``k`` scored (binary: the positive class 1 only; multiclass: every class, one-vs-rest), with
``p_k`` the softmax probability:

* ``dp`` — group mean score ``m_g = mean(p_k | g)``; penalty = mean over group pairs of ``(m_g - m_h)^2``.
* ``eo`` — TPR proxy ``mean(p_k | g, y = k)`` and FPR proxy ``mean(p_k | g, y != k)``; penalty = the mean
  pairwise squared difference of the TPR proxies plus that of the FPR proxies.

Summed over the scored classes. A group (or group × label cell for ``eo``) with fewer than ``min_count``
samples in the batch is left out of that term; with fewer than two groups left the term is 0. The mean over
pairs (not the max) keeps the gradient smooth; it still vanishes only when every gap does.

Under distributed training (DDP) the batch is the union of every rank's batch: scores, targets and sensitive
codes are all-gathered first (``torch.distributed.nn.all_gather``, which carries gradients back to each rank), so
group means come from global group counts, never from averaging per-rank gaps. Every rank then computes the same
penalty; its gradient reaches each rank's own samples once per rank, which DDP's gradient averaging divides out.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

KINDS = ("dp", "eo")


def _pairwise_sq(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``(v_i - v_j)^2`` over pairs ``i < j`` of a 1-D tensor (0 when fewer than two values)."""
    n = values.numel()
    if n < 2:
        return values.sum() * 0.0
    diff = values[:, None] - values[None, :]
    return (diff**2).sum() / (n * (n - 1))  # each unordered pair counted twice over n(n-1) ordered pairs


def _masked_means(score: torch.Tensor, groups: torch.Tensor, n_groups: int, mask: torch.Tensor,
                  min_count: int) -> torch.Tensor:
    """Mean ``score`` per group over ``mask``ed samples, for the groups with ≥ ``min_count`` of them."""
    w = mask.to(score.dtype)
    sums = torch.zeros(n_groups, dtype=score.dtype, device=score.device).index_add(0, groups, score * w)
    counts = torch.zeros(n_groups, dtype=score.dtype, device=score.device).index_add(0, groups, w)
    keep = counts >= min_count
    return sums[keep] / counts[keep]


def _gather_global(prob: torch.Tensor, target: torch.Tensor, sensitive: torch.Tensor):
    """Every rank's batch, concatenated in rank order (the local batch itself outside distributed training)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return prob, target, sensitive
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=prob.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(prob)], device=prob.device))
    sizes = [int(s) for s in sizes]
    top = max(sizes)

    def pad(x):
        return torch.cat([x, x.new_zeros((top - len(x),) + tuple(x.shape[1:]))]) if len(x) < top else x

    probs = all_gather(pad(prob))  # differentiable: gradients flow back to the owning rank
    targets = [torch.zeros_like(pad(target)) for _ in range(world)]
    sens = [torch.zeros_like(pad(sensitive)) for _ in range(world)]
    dist.all_gather(targets, pad(target).contiguous())
    dist.all_gather(sens, pad(sensitive).contiguous())
    return (torch.cat([p[:n] for p, n in zip(probs, sizes)]), torch.cat([t[:n] for t, n in zip(targets, sizes)]),
            torch.cat([s[:n] for s, n in zip(sens, sizes)]))


def group_gap_penalty(logits: torch.Tensor, target: torch.Tensor, sensitive: torch.Tensor, *, kind: str = "dp",
                      min_count: int = 2) -> torch.Tensor:
    """The ``kind`` penalty (module docstring) of one batch; a differentiable scalar."""
    if kind not in KINDS:
        raise ValueError(f"penalty kind must be one of {KINDS}, got {kind!r}")
    prob = torch.softmax(logits.float(), dim=-1)
    sensitive = torch.as_tensor(sensitive, device=logits.device).reshape(len(prob), -1)
    prob, target, sensitive = _gather_global(prob, torch.as_tensor(target, device=logits.device), sensitive)
    _, groups = torch.unique(sensitive, dim=0, return_inverse=True)
    n_groups = int(groups.max()) + 1 if groups.numel() else 0
    target = target.to(logits.device).long()
    classes = [1] if prob.shape[1] == 2 else range(prob.shape[1])
    total = prob.sum() * 0.0
    everyone = torch.ones_like(target, dtype=torch.bool)
    for k in classes:
        score = prob[:, k]
        if kind == "dp":
            total = total + _pairwise_sq(_masked_means(score, groups, n_groups, everyone, min_count))
        else:
            pos = target == k
            total = total + _pairwise_sq(_masked_means(score, groups, n_groups, pos, min_count))
            total = total + _pairwise_sq(_masked_means(score, groups, n_groups, ~pos, min_count))
    return total


Penalty = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_penalty(kind: str = "dp", min_count: int = 2) -> Penalty:
    """``penalty(logits, target, sensitive)`` for :class:`fairq.lit.FairClassifier`."""
    if kind not in KINDS:
        raise ValueError(f"penalty kind must be one of {KINDS}, got {kind!r}")

    return functools.partial(group_gap_penalty, kind=kind, min_count=min_count)  # picklable, unlike a closure
