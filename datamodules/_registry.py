"""Name → DataModule class registry (timm-style): ``@register_datamodule("name")`` and ``create_datamodule``."""

from __future__ import annotations

import difflib
from typing import Any

DATAMODULES: dict[str, type] = {}


def register_datamodule(name: str):
    """Class decorator registering a DataModule under ``name``."""

    def wrap(cls: type) -> type:
        if name in DATAMODULES and DATAMODULES[name] is not cls:
            raise ValueError(f"datamodule name {name!r} already registered to {DATAMODULES[name].__name__}")
        DATAMODULES[name] = cls
        return cls

    return wrap


def create_datamodule(name: str, **kwargs: Any):
    """Instantiate the DataModule registered as ``name`` with ``kwargs``."""
    try:
        cls = DATAMODULES[name.lower()]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), DATAMODULES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown datamodule {name!r}; available: {', '.join(sorted(DATAMODULES))}.{hint}") from None
    return cls(**kwargs)
