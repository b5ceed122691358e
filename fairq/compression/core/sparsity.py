"""Measuring what pruning did: the sparsity audit, a real sparse serialization, parameter and FLOP counts.

* :func:`sparsity_audit` — per-layer zero fraction read from the weights the model computes with (so a "50 %"
  model that is not 50 % sparse is caught), tied tensors counted once.
* :func:`save_sparse` / :func:`load_sparse` — a bitmask format: every float tensor whose zeros make it pay is
  written as a packed bit mask (1 bit per entry) plus its nonzero values, the rest densely; read back to a
  ``state_dict``. :func:`sparse_serialized_bytes` is the size of exactly those bytes.
* :func:`count_params` / :func:`count_flops` — parameters (all and nonzero) and FLOPs per sample
  (``torch.utils.flop_counter``: dense kernels, so unstructured zeros do not lower it — structured pruning does).
"""
from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fairq.compression.core.data import iter_model_inputs, model_device

FORMAT = "fairq-bitmask-v1"
PRUNABLE = (nn.Linear, nn.Conv2d, nn.Conv1d, nn.Embedding)


def _ident(t: torch.Tensor):
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)


def sparsity_audit(model: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> dict[str, dict]:
    """``{layer: {"numel", "zeros", "sparsity"}}`` for every Conv/Linear/Embedding weight (or the given
    ``weights``, e.g. :func:`fairq.compression.effective_weights` of a quantized model); a tensor shared by several
    layers (tied weights) is reported once, under its first name."""
    if weights is None:
        weights = {n: m.weight for n, m in model.named_modules()
                   if isinstance(m, PRUNABLE) and isinstance(getattr(m, "weight", None), torch.Tensor)}
    out, seen = {}, set()
    for name, w in weights.items():
        key = _ident(w)
        if key in seen:
            continue
        seen.add(key)
        zeros = int((w.detach() == 0).sum())
        out[name] = {"numel": int(w.numel()), "zeros": zeros, "sparsity": zeros / max(1, w.numel())}
    return out


def overall_sparsity(audit: dict[str, dict]) -> float:
    """Zero fraction over all audited weights (parameter-weighted)."""
    total = sum(v["numel"] for v in audit.values())
    return sum(v["zeros"] for v in audit.values()) / max(1, total)


def tensor_payload_bytes(t: torch.Tensor) -> int:
    """Raw bytes of one tensor as the bitmask format stores it (mask + nonzero values, or dense if smaller)."""
    dense = t.numel() * t.element_size()
    if not t.is_floating_point() or t.numel() == 0:
        return dense
    return min(dense, (t.numel() + 7) // 8 + int((t != 0).sum()) * t.element_size())


def _encode(t: torch.Tensor):
    """A tensor as ``("bitmask", shape, packed mask, nonzero values)`` when that is smaller, else as itself."""
    if not t.is_floating_point() or t.numel() == 0:
        return t
    flat = t.detach().reshape(-1).cpu()
    mask = flat != 0
    nnz = int(mask.sum())
    sparse_bytes = (flat.numel() + 7) // 8 + nnz * flat.element_size()
    if sparse_bytes >= flat.numel() * flat.element_size():
        return t.detach().cpu()
    packed = torch.from_numpy(np.packbits(mask.numpy()))
    return {"format": "bitmask", "shape": list(t.shape), "mask": packed, "values": flat[mask].clone()}


def _decode(entry) -> torch.Tensor:
    if not isinstance(entry, dict):
        return entry
    shape = entry["shape"]
    numel = int(np.prod(shape)) if shape else 1
    mask = torch.from_numpy(np.unpackbits(entry["mask"].numpy(), count=numel).astype(bool))
    out = torch.zeros(numel, dtype=entry["values"].dtype)
    out[mask] = entry["values"]
    return out.reshape(shape)


def save_sparse(model_or_state: nn.Module | dict, f) -> None:
    """Write a state dict in the bitmask format to ``f`` (a path or a binary file); shared tensors once."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors, aliases, first = {}, {}, {}
    for key, t in state.items():
        if not torch.is_tensor(t):
            continue
        ident = _ident(t) if t.numel() else key
        if ident in first:
            aliases[key] = first[ident]
            continue
        first[ident] = key
        tensors[key] = _encode(t)
    torch.save({"format": FORMAT, "tensors": tensors, "aliases": aliases, "order": list(state)}, f)


def load_sparse(f) -> dict[str, torch.Tensor]:
    """Read what :func:`save_sparse` wrote back into a ``state_dict`` (tied entries share one tensor again)."""
    blob = torch.load(f, map_location="cpu", weights_only=True)
    if blob.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file (format {blob.get('format')!r})")
    dense = {k: _decode(v) for k, v in blob["tensors"].items()}
    for key, src in blob["aliases"].items():
        dense[key] = dense[src]
    return {k: dense[k] for k in blob["order"] if k in dense}


def sparse_serialized_bytes(model: nn.Module) -> int:
    """Bytes :func:`save_sparse` writes for ``model``."""
    buf = io.BytesIO()
    save_sparse(model, buf)
    return buf.getbuffer().nbytes


def count_params(model: nn.Module) -> dict[str, int]:
    """``{"params": all parameters, "nonzero_params": those not exactly zero}``; shared parameters once."""
    seen, total, nonzero = set(), 0, 0
    for p in model.parameters():  # parameters() already yields a shared Parameter once
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        nonzero += int((p.detach() != 0).sum())
    return {"params": int(total), "nonzero_params": int(nonzero)}


def count_flops(model: nn.Module, example) -> float | None:
    """FLOPs per sample of one forward pass on the first batch of ``example`` (``torch.utils.flop_counter``,
    which counts matmuls and convolutions as dense kernels run them); ``None`` without an example."""
    if example is None:
        return None
    args, kwargs = next(iter_model_inputs(example, limit=1, device=model_device(model)))
    batch = next((int(t.shape[0]) for t in (*args, *kwargs.values()) if torch.is_tensor(t) and t.dim() > 0), 1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args, **kwargs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / batch
