"""Results that do not depend on the number of intra-op threads (a Ray worker's ``cpus_per_cell`` or a machine's
core count).

Measured on fairq's models (torch 2.14, CPU): every forward pass gives bit-identical outputs under 1 and 2 threads,
but the backward pass does not — oneDNN's convolution weight gradient and LayerNorm's γ/β gradient sum per-thread
partial buffers, so the reduction order (and the last bits of every trained weight) follows the thread count. One
training step then differs by ~1e-8, and a few epochs later a prediction or two. The remedy is narrow: every
backward pass runs on one intra-op thread (the forward, most of a step's time in inference and evaluation, keeps
all of them), which fixes the reduction order whatever the process was given.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    """Run the block on one intra-op thread, then restore the previous count (a no-op when it is already 1)."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def backward(loss: torch.Tensor, *args, **kwargs) -> None:
    """``loss.backward(...)`` with a thread-count-independent reduction order (module docstring)."""
    with one_thread():
        loss.backward(*args, **kwargs)
