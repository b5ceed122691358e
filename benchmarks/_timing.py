"""Shared timing of the benchmarks: a model's bare forward vs fairq's whole evaluation loop on the same split."""
from __future__ import annotations

import time

import torch

from fairq.evaluate import predict_frame


def forward_and_loop_seconds(model, batches, dm, repeats: int) -> tuple[float, float]:
    """Fastest of ``repeats`` passes of (bare forward + softmax over in-memory ``batches``, ``predict_frame`` over
    ``dm.test_dataloader()``), alternated so that load from other processes hits both alike; after one warm-up."""
    with torch.inference_mode():
        model(batches[0])  # warm-up (oneDNN primitive creation, allocator)
    t_fwd = t_loop = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            for x in batches:
                model(x).softmax(-1)
        t_fwd = min(t_fwd, time.perf_counter() - t0)
        t0 = time.perf_counter()
        predict_frame(model, dm.test_dataloader(), sensitive_names=dm.sensitive_names,
                      sensitive_levels=dm.sensitive_levels, progress=False)
        t_loop = min(t_loop, time.perf_counter() - t0)
    return t_fwd, t_loop
