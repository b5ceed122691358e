"""Method registry: method name → config class, and config class → handler (the transform).

Later techniques plug in with :func:`register_method`; the entry point :func:`fairq.compression.quantize`
and the registry-generated tests pick them up without further changes.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

#: method name → config class (e.g. ``"ptq_static"`` → ``PTQConfig``).
METHODS: dict[str, type] = {}
_HANDLERS: dict[type, tuple[str, Callable[..., nn.Module]]] = {}

Handler = Callable[..., nn.Module]


def register_method(name: str, config_cls: type, handler: Handler) -> None:
    """Register ``handler(model, config, calibration_data, **ctx) -> model`` for ``config_cls`` under ``name``.

    The handler gets a private deep copy it may modify in place, and must return the quantized model with the
    attributes ``fairq_weight_bits``, ``fairq_act_bits`` and ``fairq_backend`` set (``quantize`` adds
    ``fairq_method``). Unknown ``ctx`` keys must be ignored.
    """
    if name in METHODS:
        raise ValueError(f"compression method {name!r} registered twice")
    if config_cls in _HANDLERS:
        raise ValueError(f"{config_cls.__name__} already handles method {_HANDLERS[config_cls][0]!r}; "
                         "give each method its own config class (a subclass is fine)")
    METHODS[name] = config_cls
    _HANDLERS[config_cls] = (name, handler)


def lookup(config) -> tuple[str, Handler]:
    """(method name, handler) for a config instance; subclasses fall back to their registered parents."""
    for cls in type(config).__mro__:
        if cls in _HANDLERS:
            return _HANDLERS[cls]
    raise TypeError(f"no compression handler for {type(config).__name__}; registered configs: "
                    f"{', '.join(c.__name__ for c in _HANDLERS)}")


def make_config(method: str, bit_width=None, **options):
    """Config for a registered ``method`` name, ``bit_width`` filling the config's bits field."""
    if method not in METHODS:
        # The mitigation methods register themselves from fairq.mitigation, a layer above this one; load it on
        # demand so apply_quantization(model, "bias_aware_calibration", ...) works without a prior import.
        import importlib

        importlib.import_module("fairq.mitigation")
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[method].from_bit_width(bit_width, **options)
