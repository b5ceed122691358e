"""Quantization ranges and observers for simulated INT-k (k in 2..8).

torch.ao's observers already accept any ``quant_min``/``quant_max`` inside their dtype's range, so min-max
(weights and activations) is theirs unchanged. Their ``HistogramObserver`` keeps the running histogram we need,
but its L2 search assumes 256 destination levels whatever the range (``dst_nbins = 2 ** dtype bits``), so
:class:`KBitHistogramObserver` only corrects that to the real ``2**k`` levels. torch.ao has no percentile or
MSE observer; :class:`PercentileObserver` and :class:`MSEObserver` are small subclasses reading the same
running histogram (percentile clipping as in NVIDIA's pytorch-quantization calibrator; MSE as a grid search
over the clipping range, as in TensorRT/OpenVINO "MSE" calibration).
"""
from __future__ import annotations

import torch
from torch.ao.quantization.observer import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer code range of a k-bit signed (two's complement) or unsigned quantizer."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def act_spec(bits: int, symmetric: bool) -> dict:
    """torch.ao observer kwargs for per-tensor k-bit activations (affine → unsigned codes, like quint8)."""
    qmin, qmax = qrange(bits, signed=symmetric)
    return dict(
        dtype=torch.qint8 if symmetric else torch.quint8,
        qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine,
        quant_min=qmin,
        quant_max=qmax,
    )


def weight_spec(bits: int, per_channel: bool, symmetric: bool) -> dict:
    """torch.ao observer kwargs for k-bit weights (signed codes; affine via the zero point)."""
    qmin, qmax = qrange(bits, signed=True)
    if per_channel:
        qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    else:
        qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    return dict(dtype=torch.qint8, qscheme=qscheme, quant_min=qmin, quant_max=qmax)


def weight_observer(bits: int, per_channel: bool, symmetric: bool, moving: bool = False):
    """Min-max observer for a weight tensor (output channels on axis 0).

    ``moving=True`` gives the moving-average variant with averaging constant 1, i.e. the current weights'
    range at every step — what QAT's weight fake-quant uses, so training and conversion quantize identically.
    """
    spec = weight_spec(bits, per_channel, symmetric)
    if per_channel:
        cls = MovingAveragePerChannelMinMaxObserver if moving else PerChannelMinMaxObserver
        spec["ch_axis"] = 0
    else:
        cls = MovingAverageMinMaxObserver if moving else MinMaxObserver
    if moving:
        spec["averaging_constant"] = 1.0
    return cls, spec


class KBitHistogramObserver(HistogramObserver):
    """torch.ao's histogram (L2-minimising) observer, searching for ``quant_max - quant_min + 1`` levels."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dst_nbins = self.quant_max - self.quant_min + 1


class PercentileObserver(HistogramObserver):
    """Clip the range to the ``100-p`` and ``p`` percentiles of the observed values' histogram."""

    def __init__(self, percentile: float = 99.99, **kwargs):
        super().__init__(**kwargs)
        self.percentile = float(percentile)

    def calculate_qparams(self):
        if self.min_val.isinf().any() or self.max_val.isinf().any():
            return super().calculate_qparams()  # torch.ao's warning + default qparams
        cdf = torch.cumsum(self.histogram, 0) / self.histogram.sum().clamp_min(1e-12)
        width = (self.max_val - self.min_val) / self.bins
        lo_bin = int(torch.searchsorted(cdf, torch.tensor(1.0 - self.percentile / 100.0, device=cdf.device)))
        hi_bin = int(torch.searchsorted(cdf, torch.tensor(self.percentile / 100.0, device=cdf.device)))
        hi_bin = min(max(hi_bin, lo_bin), self.bins - 1)
        new_min = self.min_val + width * lo_bin
        new_max = self.min_val + width * (hi_bin + 1)
        return self._calculate_qparams(new_min, torch.minimum(new_max, self.max_val))


class MSEObserver(HistogramObserver):
    """Choose the clipping range ``alpha * [min, max]`` (alpha on a grid) minimising the quantization MSE.

    The error is evaluated on the running histogram (bin centres weighted by counts), with exactly the
    scale/zero-point the observer would return, so the chosen range is the one actually applied.
    """

    def __init__(self, grid: int = 100, min_ratio: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.grid = grid
        self.min_ratio = min_ratio

    def _mse(self, lo, hi, centres) -> float:
        scale, zp = self._calculate_qparams(lo, hi)
        q = torch.clamp(torch.round(centres / scale) + zp, self.quant_min, self.quant_max)
        return float((self.histogram * (centres - (q - zp) * scale) ** 2).sum())

    def calculate_qparams(self):
        if self.min_val.isinf().any() or self.max_val.isinf().any():
            return super().calculate_qparams()
        width = (self.max_val - self.min_val) / self.bins
        centres = self.min_val + width * (torch.arange(self.bins, device=self.histogram.device) + 0.5)
        best, best_err = (self.min_val, self.max_val), float("inf")
        for alpha in torch.linspace(self.min_ratio, 1.0, self.grid).tolist():
            lo, hi = self.min_val * alpha, self.max_val * alpha
            err = self._mse(lo, hi, centres)
            if err < best_err:
                best, best_err = (lo, hi), err
        return self._calculate_qparams(*best)


def act_observer(kind: str, bits: int, symmetric: bool = False, percentile: float = 99.99):
    """A fresh per-tensor activation observer of the named ``kind`` for k-bit codes."""
    spec = act_spec(bits, symmetric)
    if kind == "minmax":
        return MinMaxObserver(**spec)
    if kind == "histogram":
        return KBitHistogramObserver(**spec)
    if kind == "percentile":
        return PercentileObserver(percentile=percentile, **spec)
    if kind == "mse":
        return MSEObserver(**spec)
    raise ValueError(f"unknown observer {kind!r}: expected minmax, percentile, mse or histogram")
