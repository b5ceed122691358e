"""Model size (bytes actually serialized, or the packed size of simulated k-bit weights) and latency."""
from __future__ import annotations

import io
import math
import statistics
import time

import torch
from torch import nn

from .data import iter_model_inputs, model_device
from .fakequant import FakeQuantLayer
from .sparsity import save_sparse, tensor_payload_bytes

MB = 1024 * 1024  # sizes are MiB


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (real INT8 modules serialize their packed int8 weights)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def packed_weight_bytes(numel: int, channels: int, bits: int | None, symmetric: bool = True) -> int:
    """Bytes of one weight tensor: ``bits`` per code packed densely + FP32 scales (+ int32 zero points if
    affine) per channel; ``bits=None`` is FP32."""
    if bits is None:
        return 4 * numel
    return math.ceil(numel * bits / 8) + 4 * channels * (1 if symmetric else 2)


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def state_bytes(model: nn.Module, exclude: set[str] = frozenset()) -> int:
    """Stored bytes of the state-dict tensors not named in ``exclude``; shared tensors count once."""
    seen, total = set(), 0
    for key, t in model.state_dict(keep_vars=True).items():
        if key in exclude or not torch.is_tensor(t):
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else key
        if ident in seen:
            continue
        seen.add(ident)
        total += _tensor_bytes(t)
    return total


def packed_bytes(model: nn.Module) -> int:
    """Packed size of a simulated model: each k-bit layer's codes at k bits plus its qparams, everything else
    (biases, activation qparams, FP32 layers, norms, embeddings) at its stored size."""
    quant_keys, total = set(), 0
    for name, mod in model.named_modules():
        if isinstance(mod, FakeQuantLayer):
            prefix = f"{name}." if name else ""
            quant_keys |= {prefix + k for k in ("weight_codes", "weight_scale", "weight_zero_point")}
            total += packed_weight_bytes(mod.weight_codes.numel(), mod.weight_scale.numel(), mod.weight_bits,
                                         mod.symmetric)
    return total + state_bytes(model, quant_keys)


def sparse_packed_bytes(model: nn.Module) -> int:
    """:func:`packed_bytes` with each k-bit layer stored as a bit mask plus its nonzero codes where that is
    smaller (pruned then quantized models); everything else as in :func:`packed_bytes`."""
    quant_keys, total = set(), 0
    for name, mod in model.named_modules():
        if isinstance(mod, FakeQuantLayer):
            prefix = f"{name}." if name else ""
            quant_keys |= {prefix + k for k in ("weight_codes", "weight_scale", "weight_zero_point")}
            numel, channels = mod.weight_codes.numel(), mod.weight_scale.numel()
            dense = packed_weight_bytes(numel, channels, mod.weight_bits, mod.symmetric)
            nnz = int((mod.weight != 0).sum())
            sparse = math.ceil(numel / 8) + packed_weight_bytes(nnz, channels, mod.weight_bits, mod.symmetric)
            total += min(dense, sparse)
    seen = set()
    for key, t in model.state_dict(keep_vars=True).items():  # the rest as the bitmask format stores it
        if key in quant_keys or not torch.is_tensor(t):
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else key
        if ident not in seen:
            seen.add(ident)
            total += tensor_payload_bytes(t.detach())
    return total


def sparse_state_bytes(state: dict) -> int:
    """Bytes of :func:`fairq.compression.sparsity.save_sparse` for a state dict."""
    buf = io.BytesIO()
    save_sparse(state, buf)
    return buf.getbuffer().nbytes


def model_size(model: nn.Module) -> tuple[float, str]:
    """(size in MiB, kind): ``"serialized"`` bytes written by ``torch.save`` for float and real-INT8 models,
    ``"packed_estimate"`` for simulated k-bit models (what the weights would take packed at k bits).

    Pruned models (``fairq_size_format = "sparse"``, set by the pruning methods): ``"sparse_serialized"`` — the
    bytes of the bitmask serialization (:func:`fairq.compression.sparsity.save_sparse`) — or, quantized after
    pruning, ``"sparse_packed_estimate"`` (bit mask + nonzero k-bit codes per layer, where smaller)."""
    sparse = getattr(model, "fairq_size_format", None) == "sparse"
    if any(isinstance(m, FakeQuantLayer) for m in model.modules()):
        if sparse:
            return sparse_packed_bytes(model) / MB, "sparse_packed_estimate"
        return packed_bytes(model) / MB, "packed_estimate"
    if sparse:
        return sparse_state_bytes(model.state_dict()) / MB, "sparse_serialized"
    return serialized_bytes(model) / MB, "serialized"


def model_size_mb(model: nn.Module) -> float:
    """Model size in MiB (see :func:`model_size` for how it is measured)."""
    return model_size(model)[0]


def _batch_size(args, kwargs) -> int | None:
    for t in (*args, *kwargs.values()):
        if torch.is_tensor(t) and t.dim() > 0:
            return int(t.shape[0])
    return None


def _set_mode(model: nn.Module, training: bool) -> None:
    try:
        model.train(training)
    except NotImplementedError:  # torch.export'ed graph modules refuse train()/eval(); they are eval already
        pass


def measure_latency(model: nn.Module, example_input, *, warmup: int = 3, repeats: int = 10, task=None) -> dict:
    """Median wall time (ms) of ``repeats`` forward passes after ``warmup`` under ``torch.inference_mode``.

    ``example_input``: one batch in any form :func:`~fairq.compression.data.iter_model_inputs` accepts (read with
    ``task`` when given).
    Returns ``dict(latency_ms, batch_size, repeats, threads, device)``; the model is timed in eval mode.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    device = model_device(model)
    args, kwargs = next(iter_model_inputs(example_input, limit=1, device=device, task=task))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was_training = model.training
    _set_mode(model, False)
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(*args, **kwargs)
            sync()
            for _ in range(repeats):
                start = time.perf_counter()
                model(*args, **kwargs)
                sync()
                times.append((time.perf_counter() - start) * 1000.0)
    finally:
        _set_mode(model, was_training)
    return dict(latency_ms=statistics.median(times), batch_size=_batch_size(args, kwargs), repeats=repeats,
                threads=torch.get_num_threads(), device=str(device))
