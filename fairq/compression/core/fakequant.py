"""Simulated INT-k layers: weights stored as k-bit integer codes + scale/zero-point, inputs fake-quantized.

The weights are quantized once, at conversion; the layer keeps the integer codes (so a level audit is exact) and
computes with their dequantized values, cached as a non-persistent buffer. Input activations are fake-quantized
per tensor either with calibrated parameters (``act_mode="static"``) or with each batch's own range
(``act_mode="dynamic"``), using torch's fake-quantize op.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization.utils import determine_qparams

from fairq.compression.core.modules import is_same_pad_conv, same_pad
from fairq.compression.core.observers import act_spec, qrange, weight_observer


@dataclass
class QuantizedWeight:
    """Integer codes (int8 storage for any k ≤ 8) with per-channel (axis 0) or per-tensor scale/zero-point, or
    grouped ones: ``scale`` of shape ``[out, groups]`` over equal slices of each output channel's flattened input
    (GPTQ's ``group_size``; ≤ 2**k levels then holds per group)."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero_point)


def _per_axis0(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1))) if t.numel() > 1 else t.reshape(())


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``(codes - zero_point) * scale`` with scale/zero-point broadcast along axis 0 (or, for a 2-D ``[out,
    groups]`` scale, along each output channel's equal input slices)."""
    if scale.dim() == 2:
        out, groups = scale.shape
        c = codes.to(torch.float32).reshape(out, groups, -1)
        z = zero_point.to(torch.float32).reshape(out, groups, 1)
        return ((c - z) * scale.to(torch.float32).reshape(out, groups, 1)).reshape(codes.shape)
    s, z = _per_axis0(scale, codes), _per_axis0(zero_point, codes)
    return (codes.to(torch.float32) - z.to(torch.float32)) * s.to(torch.float32)


def quantize_weight(w: torch.Tensor, bits: int, per_channel: bool = True, symmetric: bool = True) -> QuantizedWeight:
    """Quantize a weight to k-bit codes with torch.ao's min-max qparams (output channels on axis 0)."""
    cls, spec = weight_observer(bits, per_channel, symmetric)
    obs = cls(**spec).to(w.device)
    w = w.detach().float()
    obs(w)
    scale, zp = obs.calculate_qparams()
    return quantize_with(w, bits, scale, zp)


def quantize_with(w: torch.Tensor, bits: int, scale: torch.Tensor, zero_point: torch.Tensor) -> QuantizedWeight:
    """Codes of ``w`` for given scale/zero-point, clamped to the signed k-bit range.

    Rounding is torch's own fake-quantize op (the one QAT trains with), so codes never differ from what
    ``torch.fake_quantize_per_*_affine`` would produce by a rounding tie.
    """
    qmin, qmax = qrange(bits, signed=True)
    w = w.detach().float()
    scale = scale.detach().float().to(w.device).reshape(-1)
    zero_point = zero_point.detach().to(device=w.device, dtype=torch.int32).reshape(-1)
    if scale.numel() > 1:
        fq = torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, qmin, qmax)
    else:
        fq = torch.fake_quantize_per_tensor_affine(w, scale, zero_point, qmin, qmax)
    s, z = _per_axis0(scale, w), _per_axis0(zero_point, w)
    codes = torch.clamp(torch.round(fq / s) + z, qmin, qmax).to(torch.int8)
    return QuantizedWeight(codes, scale, zero_point, bits)


def dynamic_fake_quant(x: torch.Tensor, bits: int, symmetric: bool = False) -> torch.Tensor:
    """Fake-quantize ``x`` per tensor with qparams from this batch's own min/max (dynamic quantization)."""
    spec = act_spec(bits, symmetric)
    lo, hi = torch.aminmax(x.detach())
    scale, zp = determine_qparams(lo, hi, spec["quant_min"], spec["quant_max"], spec["dtype"],
                                  torch.tensor(torch.finfo(torch.float32).eps), True, spec["qscheme"])
    return torch.fake_quantize_per_tensor_affine(x, scale.float().to(x.device), zp.to(x.device, torch.int32),
                                                 spec["quant_min"], spec["quant_max"])


class FakeQuantLayer(nn.Module):
    """Base of the simulated INT-k Conv2d/Linear; ``weight`` is the dequantized weight it computes with."""

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None, *, per_channel: bool, symmetric: bool,
                 act_bits: int | None = None, act_mode: str | None = None, act_symmetric: bool = False,
                 act_qparams: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        if act_mode not in (None, "static", "dynamic"):
            raise ValueError(f"act_mode must be None, 'static' or 'dynamic', got {act_mode!r}")
        if act_mode == "static" and (act_qparams is None or act_bits is None):
            raise ValueError("static activation quantization needs act_bits and calibrated act_qparams")
        self.weight_bits = qweight.bits
        self.per_channel = per_channel
        self.symmetric = symmetric
        self.act_bits = act_bits if act_mode else None
        self.act_mode = act_mode
        self.act_symmetric = act_symmetric
        self.register_buffer("weight_codes", qweight.codes)
        self.register_buffer("weight_scale", qweight.scale)
        self.register_buffer("weight_zero_point", qweight.zero_point)
        self.register_buffer("_weight_deq", qweight.dequantize(), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        if act_mode == "static":
            scale, zp = act_qparams
            self.register_buffer("act_scale", scale.detach().float().reshape(1).clone())
            self.register_buffer("act_zero_point", zp.detach().to(torch.int32).reshape(1).clone())
            self.act_quant_min, self.act_quant_max = qrange(act_bits, signed=act_symmetric)

    @property
    def weight(self) -> torch.Tensor:
        return self._weight_deq

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._weight_deq = dequantize(self.weight_codes, self.weight_scale, self.weight_zero_point)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_mode == "static":
            return torch.fake_quantize_per_tensor_affine(x, self.act_scale, self.act_zero_point,
                                                         self.act_quant_min, self.act_quant_max)
        if self.act_mode == "dynamic":
            return dynamic_fake_quant(x, self.act_bits, self.act_symmetric)
        return x

    def extra_repr(self) -> str:
        gran = "per_channel" if self.per_channel else "per_tensor"
        sym = "symmetric" if self.symmetric else "affine"
        act = f"act_bits={self.act_bits} ({self.act_mode})" if self.act_mode else "act=fp32"
        return f"{self._shape_repr()}, weight_bits={self.weight_bits} ({gran}, {sym}), {act}"

    @classmethod
    def from_float(cls, mod: nn.Module, bits: int, *, per_channel: bool = True, symmetric: bool = True,
                   qweight: QuantizedWeight | None = None, **act) -> "FakeQuantLayer":
        """Quantize ``mod`` (an ``nn.Linear`` or ``nn.Conv2d``) to the matching simulated layer."""
        if qweight is None:
            qweight = quantize_weight(mod.weight, bits, per_channel, symmetric)
        if isinstance(mod, nn.Conv2d):
            return FakeQuantConv2d(mod, qweight, per_channel=per_channel, symmetric=symmetric, **act)
        if isinstance(mod, nn.Linear):
            return FakeQuantLinear(mod, qweight, per_channel=per_channel, symmetric=symmetric, **act)
        raise TypeError(f"cannot fake-quantize {type(mod).__name__}: only nn.Conv2d and nn.Linear")


class FakeQuantLinear(FakeQuantLayer):
    """Simulated INT-k ``nn.Linear``."""

    def __init__(self, mod: nn.Linear, qweight: QuantizedWeight, **kw):
        super().__init__(qweight, mod.bias, **kw)
        self.in_features, self.out_features = mod.in_features, mod.out_features

    def _shape_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self._weight_deq, self.bias)


class FakeQuantConv2d(FakeQuantLayer):
    """Simulated INT-k ``nn.Conv2d`` (any padding mode: reuses ``nn.Conv2d._conv_forward``)."""

    _CONV_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                   "padding_mode", "_reversed_padding_repeated_twice")

    def __init__(self, mod: nn.Conv2d, qweight: QuantizedWeight, **kw):
        super().__init__(qweight, mod.bias, **kw)
        for attr in self._CONV_ATTRS:
            setattr(self, attr, getattr(mod, attr))
        # timm Conv2dSame (or a QAT layer made from one): pad at run time, as the float layer did.
        self.same_pad = bool(getattr(mod, "same_pad", False) or is_same_pad_conv(mod))

    def _shape_repr(self) -> str:
        pad = ", padding=same (run time)" if self.same_pad else ""
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}{pad}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        if self.same_pad:
            x = same_pad(self, x)
        return nn.Conv2d._conv_forward(self, x, self._weight_deq, self.bias)
