"""Normalise whatever the user passes as calibration/validation data into model call arguments."""
from __future__ import annotations

from itertools import islice
from typing import Any, Iterable, Iterator

import torch
from torch import nn

#: dict keys that are labels or metadata, never model inputs.
NON_INPUT_KEYS = frozenset({"labels", "label", "target", "targets", "sensitive", "sample_id"})
TARGET_KEYS = ("target", "targets", "labels", "label")


def _to(x, device):
    if device is None:
        return x
    if torch.is_tensor(x):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


def _batches(data) -> Iterable:
    """A tensor or a dict is one batch; anything else iterable is a sequence of batches."""
    if data is None:
        raise ValueError("calibration/validation data is required here but got None")
    if torch.is_tensor(data) or isinstance(data, dict):
        return [data]
    if not hasattr(data, "__iter__"):
        raise TypeError(f"calibration data must be a tensor, a dict or an iterable of batches, got {type(data)}")
    return data


def split_batch(batch) -> tuple[tuple, dict, Any]:
    """One batch → (args, kwargs, target or None).

    A tensor is the input; a tuple/list's first item is the input (second, if any, the target); a dict with
    ``image`` (fairq datamodule batch) gives that tensor and ``target``; any other dict is keyword inputs for a
    Hugging Face model, minus label/metadata keys (``labels``/``target`` become the target).
    """
    if torch.is_tensor(batch):
        return (batch,), {}, None
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("empty tuple/list batch: expected (input, ...) ")
        return (batch[0],), {}, (batch[1] if len(batch) > 1 else None)
    if isinstance(batch, dict):
        target = next((batch[k] for k in TARGET_KEYS if k in batch), None)
        if "image" in batch:
            return (batch["image"],), {}, target
        kwargs = {k: v for k, v in batch.items() if k not in NON_INPUT_KEYS}
        if not kwargs:
            raise ValueError(f"dict batch has no model inputs (keys: {sorted(batch)}); expected 'image' or "
                             "keyword inputs such as input_ids/attention_mask")
        return (), kwargs, target
    raise TypeError(f"unsupported batch type {type(batch).__name__}: expected a tensor, a tuple/list whose first "
                    "item is the input, or a dict")


def iter_model_inputs(calibration_data, limit: int | None = None, device=None) -> Iterator[tuple[tuple, dict]]:
    """Yield ``(args, kwargs)`` for ``model(*args, **kwargs)`` from at most ``limit`` batches.

    ``calibration_data``: a tensor or a dict (one batch), or an iterable of batches (list, DataLoader, …) where
    each batch is a tensor, a tuple/list whose first item is the input, a fairq dict (``image`` → input) or a
    dict of keyword inputs for a Hugging Face model (``labels``/``target``/metadata keys dropped). Pass a
    re-iterable (list, DataLoader) where a method reads the data twice (mixed precision). Tensors are moved to
    ``device`` when given.
    """
    for batch in islice(_batches(calibration_data), limit):
        args, kwargs, _ = split_batch(batch)
        yield _to(args, device), _to(kwargs, device)


def iter_labelled_batches(data, limit: int | None = None, device=None) -> Iterator[tuple[tuple, dict, torch.Tensor]]:
    """Yield ``(args, kwargs, target)``; a batch without a target is a clear error."""
    for i, batch in enumerate(islice(_batches(data), limit)):
        args, kwargs, target = split_batch(batch)
        if target is None:
            raise ValueError(f"batch {i} has no target: give (x, y) tuples or dicts with 'target'/'labels'")
        yield _to(args, device), _to(kwargs, device), _to(torch.as_tensor(target), device)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a stateless model)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def logits_of(output) -> torch.Tensor:
    """The logits tensor of a model output (plain tensor, HF ``ModelOutput`` or a tuple)."""
    if torch.is_tensor(output):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    raise TypeError(f"cannot find logits in model output of type {type(output).__name__}")


def run_calibration(model: nn.Module, calibration_data, limit: int | None = None) -> int:
    """Forward ``limit`` batches through ``model`` without gradients; returns the number of batches seen."""
    device = model_device(model)
    n = 0
    with torch.no_grad():
        for args, kwargs in iter_model_inputs(calibration_data, limit, device):
            model(*args, **kwargs)
            n += 1
    if n == 0:
        raise ValueError("calibration data yielded no batches")
    return n
