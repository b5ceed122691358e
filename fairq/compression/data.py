"""Whatever the user passes as calibration/validation data → model call arguments (via :mod:`fairq.batches`)."""
from __future__ import annotations

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
