"""fairq: what does model compression do to whom?

The public API is imported lazily so that ``import fairq`` stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "apply_quantization": "fairq.methods",  # fairq.compression's, with every shipped method registered
    "compute_fairness_metrics": "fairq.api",
    "compare_quantization_methods": "fairq.api",
    "FairnessAwareQuantizer": "fairq.mitigation",
    "fairness_metrics": "fairq.metrics",
    "create_model": "fairq.models",
    "MethodConfig": "fairq.compression.core.config",  # base of every method's config dataclass (docs: Extending)
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fairq' has no attribute {name!r}")
