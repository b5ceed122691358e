"""Whatever the user passes as calibration/validation data → model call arguments (via :mod:`fairq.batches`)."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from itertools import islice
from typing import Iterator

import torch
from torch import nn

from fairq.batches import as_batches, logits_of, model_device, split_batch  # noqa: F401  (re-exported)


def iter_model_inputs(calibration_data, limit: int | None = None, device=None, task=None
                      ) -> Iterator[tuple[tuple, dict]]:
    """Yield ``(args, kwargs)`` for ``model(*args, **kwargs)`` from at most ``limit`` batches.

    ``calibration_data``: a tensor or a dict (one batch), or an iterable of batches (list, DataLoader, …) in any
    form :func:`fairq.batches.split_batch` reads (a tensor, ``(input, target, …)``, a fairq dict batch or a dict
    of Hugging Face keyword inputs; labels and metadata are dropped). Pass a re-iterable (list, DataLoader) where
    a method reads the data twice (mixed precision). Tensors are moved to ``device`` when given; ``task`` (a
    datamodule's :class:`fairq.batches.ClassificationTask`) says which keys are inputs.
    """
    for batch in islice(as_batches(calibration_data), limit):
        b = split_batch(batch, task).to(device)
        yield b.args, b.kwargs


def iter_labelled_batches(data, limit: int | None = None, device=None) -> Iterator[tuple[tuple, dict, torch.Tensor]]:
    """Yield ``(args, kwargs, target)``; a batch without a target is a clear error."""
    for i, batch in enumerate(islice(as_batches(data), limit)):
        b = split_batch(batch).to(device)
        if b.target is None:
            raise ValueError(f"batch {i} has no target: give (x, y) tuples or dicts with 'target'/'labels'")
        yield b.args, b.kwargs, torch.as_tensor(b.target)


#: the attention mask ``[B, T]`` (True = a real token) of the calibration batch running now, if it has one
_TOKENS: ContextVar = ContextVar("calibration_tokens", default=None)


@contextmanager
def token_mask(kwargs: dict):
    """While a calibration batch runs: its ``attention_mask`` (text batches are right-padded with ``[PAD]``), so
    statistics gathered inside the model can leave the padding out (:func:`real_tokens`)."""
    m = kwargs.get("attention_mask") if isinstance(kwargs, dict) else None
    token = _TOKENS.set(m.bool() if torch.is_tensor(m) and m.dim() == 2 else None)
    try:
        yield
    finally:
        _TOKENS.reset(token)


def real_tokens(x: torch.Tensor) -> torch.Tensor:
    """``x`` without its padding positions: the rows ``x[mask]`` (``[n, d]``) when ``x`` is a ``[B, T, d]``
    activation of the calibration batch running now and that batch has padding (:func:`token_mask`); ``x``
    itself otherwise. What every calibration statistic (GPTQ Hessians, AWQ / SmoothQuant magnitudes, activation
    ranges) is computed from: a ``[PAD]`` position is not text, and a batch's padding depends only on which
    sentences were batched together, so statistics with it would change with the batching."""
    m = _TOKENS.get()
    if m is None or x.dim() != 3 or tuple(x.shape[:2]) != tuple(m.shape) or bool(m.all()):
        return x
    return x[m.to(x.device)]


def run_calibration(model: nn.Module, calibration_data, limit: int | None = None) -> int:
    """Forward ``limit`` batches through ``model`` without gradients (padding marked for the observers,
    :func:`token_mask`); returns the number of batches seen."""
    device = model_device(model)
    n = 0
    with torch.no_grad():
        for args, kwargs in iter_model_inputs(calibration_data, limit, device):
            with token_mask(kwargs):
                model(*args, **kwargs)
            n += 1
    if n == 0:
        raise ValueError("calibration data yielded no batches")
    return n
