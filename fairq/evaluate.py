"""Model → per-sample predictions frame → metrics row. The one place fairq evaluates a model.

The functions live in :mod:`fairq.batches` (next to the one predict loop, so a task's ``evaluate`` can use them
without an import cycle); this module keeps their established import path.
"""
from __future__ import annotations

from fairq.batches import frame_metrics, predict_frame

__all__ = ["predict_frame", "frame_metrics"]
