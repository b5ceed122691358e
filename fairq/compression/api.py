"""The front door: ``quantize(model, config)`` and its familiar wrapper; re-exports ``compress`` (the registry's
one entry point) and the weight audit (:mod:`fairq.compression.quant.weights`)."""
from __future__ import annotations

import dataclasses

from torch import nn

from fairq.compression.core.registry import MethodInputs, MethodResult, compress, make_config  # noqa: F401 (public)
from fairq.compression.quant import dynamic, mixed_precision, ptq, qat  # noqa: F401  (each registers its method)
from fairq.compression.quant.weights import effective_weights, layer_bits  # noqa: F401 (public here)


def quantize(model: nn.Module, config, calibration_data=None, **inputs) -> nn.Module:
    """Return a quantized deep copy of ``model`` per ``config`` (a registered config, e.g. ``PTQConfig``).

    ``calibration_data``: any iterable of batches (see :func:`fairq.compression.core.data.iter_model_inputs`).
    ``inputs``: what a method needs beyond that — ``val_data`` (mixed precision), ``train_fn`` / ``train_loader``
    (QAT), … (the fields of :class:`~fairq.compression.core.registry.MethodInputs`). :func:`compress` also returns the
    method's record and artifacts.
    """
    return compress(model, config, MethodInputs.from_kwargs(calibration_data, **inputs)).model


def apply_quantization(model: nn.Module, method: str, bit_width=None, calibration_data=None, **options) -> nn.Module:
    """``quantize(model, make_config(method, bit_width, **fields), calibration_data, **inputs)``.

    ``bit_width`` fills the method's bits field (weights; for ``mixed_precision`` the average-bits budget).
    ``options`` are config fields, except run inputs (``train_fn``, ``train_loader``, ``val_data``, … — the
    :class:`~fairq.compression.core.registry.MethodInputs` names), which go to the handler. :func:`apply_method`
    returns the whole :class:`~fairq.compression.core.registry.MethodResult`.
    """
    return apply_method(model, method, bit_width, calibration_data, **options).model


def apply_method(model: nn.Module, method: str, bit_width=None, calibration_data=None, **options) -> MethodResult:
    """:func:`apply_quantization`, returning the method's :class:`~fairq.compression.core.registry.MethodResult`
    (the model, its widths and backend, how to size it, the method's record)."""
    names = {f.name for f in dataclasses.fields(MethodInputs)} | set(MethodInputs.ALIASES)
    inputs = {k: options.pop(k) for k in list(options) if k in names}
    config = make_config(method, bit_width, **options)
    return compress(model, config, MethodInputs.from_kwargs(calibration_data, **inputs))


