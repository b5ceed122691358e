"""Model size (bytes actually serialized, or the packed size of simulated k-bit weights) and latency."""
from __future__ import annotations

import io
import math
import statistics
import time

import torch
from torch import nn

from fairq.compression.core.data import iter_model_inputs, model_device
from fairq.compression.core.fakequant import FakeQuantLayer
from fairq.compression.core.sparsity import save_sparse, tensor_payload_bytes

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
        if hasattr(mod, "packed_weight_entries"):  # graph simulation: the codes live in its program
            prefix = f"{name}." if name else ""
            for keys, numel, channels, bits, symmetric in mod.packed_weight_entries():
                quant_keys |= {prefix + k for k in keys}
                total += packed_weight_bytes(numel, channels, bits, symmetric)
        elif isinstance(mod, FakeQuantLayer):
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
    """Bytes of :func:`fairq.compression.core.sparsity.save_sparse` for a state dict."""
    buf = io.BytesIO()
    save_sparse(state, buf)
    return buf.getbuffer().nbytes


def model_size(model: nn.Module, size_format: str = "dense") -> tuple[float, str]:
    """(size in MiB, kind): ``"serialized"`` bytes written by ``torch.save`` for float and real-INT8 models,
    ``"packed_estimate"`` for simulated k-bit models (what the weights would take packed at k bits).

    Pruned models (``size_format="sparse"``, a pruning method's :class:`~fairq.compression.MethodResult` field):
    ``"sparse_serialized"`` — the
    bytes of the bitmask serialization (:func:`fairq.compression.core.sparsity.save_sparse`) — or, quantized after
    pruning on the per-layer-input simulation, ``"sparse_packed_estimate"`` (bit mask + nonzero k-bit codes per
    layer, where smaller). A pruned model quantized on the graph simulation is estimated densely
    (``"packed_estimate"``): its codes live in the traced program, where the mask is not counted."""
    if size_format not in ("dense", "sparse"):
        raise ValueError(f"size_format must be 'dense' or 'sparse', got {size_format!r}")
    sparse = size_format == "sparse"
    if any(isinstance(m, FakeQuantLayer) or hasattr(m, "packed_weight_entries") for m in model.modules()):
        if sparse and any(isinstance(m, FakeQuantLayer) for m in model.modules()):
            return sparse_packed_bytes(model) / MB, "sparse_packed_estimate"
        return packed_bytes(model) / MB, "packed_estimate"
    if sparse:
        return sparse_state_bytes(model.state_dict()) / MB, "sparse_serialized"
    return serialized_bytes(model) / MB, "serialized"


def model_size_mb(model: nn.Module, size_format: str = "dense") -> float:
    """Model size in MiB (see :func:`model_size` for how it is measured)."""
    return model_size(model, size_format)[0]


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

    ``example_input``: one batch in any form :func:`~fairq.compression.core.data.iter_model_inputs` accepts (read with
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


def measure_latency_paired(model: nn.Module, reference: nn.Module, example_input, *, warmup: int = 2,
                           repeats: int = 10, task=None) -> dict:
    """Latency of ``model`` timed alternately with its FP32 ``reference`` on the same batch, in one process.

    Each repeat times one forward of each (which goes first alternates), so load from other processes on a shared
    machine hits both alike: the ratio is the median of the per-repeat ratios, steadier than either median.
    Returns ``dict(latency_ms, reference_latency_ms, latency_ratio_vs_fp32, batch_size, repeats, threads,
    device)``; both models are timed in eval mode under ``torch.inference_mode``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    device = model_device(model)
    args, kwargs = next(iter_model_inputs(example_input, limit=1, device=device, task=task))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    modes = [(m, m.training) for m in (model, reference)]

    def once(m) -> float:
        start = time.perf_counter()
        m(*args, **kwargs)
        sync()
        return (time.perf_counter() - start) * 1000.0

    times: dict[int, list[float]] = {0: [], 1: []}
    try:
        for m, _ in modes:
            _set_mode(m, False)
        with torch.inference_mode():
            for _ in range(warmup):
                model(*args, **kwargs)
                reference(*args, **kwargs)
            sync()
            for i in range(repeats):
                order = (0, 1) if i % 2 == 0 else (1, 0)
                for j in order:
                    times[j].append(once(model if j == 0 else reference))
    finally:
        for m, was_training in modes:
            _set_mode(m, was_training)
    ratios = [a / b for a, b in zip(times[0], times[1])]
    return dict(latency_ms=statistics.median(times[0]), reference_latency_ms=statistics.median(times[1]),
                latency_ratio_vs_fp32=statistics.median(ratios), batch_size=_batch_size(args, kwargs),
                repeats=repeats, threads=torch.get_num_threads(), device=str(device))
