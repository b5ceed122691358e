"""Real INT4 weight-only ``nn.Linear`` on CPU (``PTQConfig(weight_bits=4, act_bits=None, backend="int4")``).

Kernel: ATen's ``_weight_int4pack_mm_for_cpu`` (int4 codes packed two per byte by
``_convert_weight_to_int4pack_for_cpu``, bfloat16 activations and per-group scale/zero): the CPU kernel
torchao's int4 weight-only CPU layout wrapped. The torchao 0.18 installed here has no CPU int4 path of its own
(``Int4WeightOnlyConfig`` needs the ``mslk`` package or CUDA for every packing format), so the ATen op is called
directly. The weights are quantized exactly as the simulation quantizes them — signed 4-bit codes per output
channel, symmetric (or one scale per tensor) — and handed to the kernel as codes + 8 with that channel's scale
repeated over every group of 32 inputs and zero 0, so real and simulated INT4 share the codes; the real one
rounds the scales to bfloat16 and runs the matmul on bfloat16 activations (the kernel's fast path).

Convolutions have no such kernel: they stay simulated (weight-only fake-quant, as ``simulation="layer_input"``
with ``act_bits=None``), listed by :func:`simulated_layers` (the row's ``simulated_layers``).
A Linear the kernel cannot take (input size not a multiple of 32, output size not a multiple of 16 — e.g. a
2-class head) stays simulated too.
"""
from __future__ import annotations

import torch
from torch import nn

from fairq.compression.core.fakequant import FakeQuantLayer, quantize_weight
from fairq.compression.core.modules import quantizable_layers, set_layer

GROUP = 32  # the kernel's smallest group size; a per-channel scale is repeated over the groups
N_TILE = 16  # the packing needs out_features divisible by this
ENGINE = "aten._weight_int4pack_mm_for_cpu (weight-only int4 Linear)"


def kernel_fits(linear: nn.Linear) -> bool:
    """Whether the int4 kernel takes this layer's shape."""
    return linear.in_features % GROUP == 0 and linear.out_features % N_TILE == 0


class Int4WeightOnlyLinear(nn.Module):
    """``nn.Linear`` with int4 weights packed for ATen's CPU int4 matmul; activations run in bfloat16.

    The kernel's fast CPU path takes bfloat16 activations and scales (with FP32 activations it falls back to a
    path that ran ~50x slower than the FP32 ``nn.Linear`` here), so inputs are cast to bfloat16 and the output
    back to the input's dtype: the codes are the simulation's, the per-channel scales are rounded to bfloat16.
    """

    compute_dtype = torch.bfloat16

    def __init__(self, linear: nn.Linear, per_channel: bool = True):
        super().__init__()
        if not kernel_fits(linear):
            raise ValueError(f"the int4 kernel needs in_features % {GROUP} == 0 and out_features % {N_TILE} == 0, "
                             f"got {linear.in_features} -> {linear.out_features}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q = quantize_weight(linear.weight, 4, per_channel=per_channel, symmetric=True)
        codes = (q.codes.to(torch.int32) + 8).contiguous()  # the kernel's codes are 0..15 around 8
        scale = q.scale.float().reshape(-1).expand(self.out_features).to(self.compute_dtype)
        groups = self.in_features // GROUP
        scales_and_zeros = torch.stack([scale, torch.zeros_like(scale)], -1)  # w = (code - 8) * scale + 0
        self.register_buffer("packed_weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
        self.register_buffer("scales_and_zeros", scales_and_zeros.expand(groups, -1, -1).contiguous())
        # the codes as packed, for the audit only (not saved: the state dict holds the packed bytes)
        self.register_buffer("_codes", q.codes.clone(), persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.weight_bits = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]).to(self.compute_dtype).contiguous(),
                                                        self.packed_weight, GROUP, self.scales_and_zeros)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    @property
    def weight(self) -> torch.Tensor:
        """The weights the kernel multiplies by: the packed codes times the bfloat16 per-channel scales (FP32)."""
        return self._codes.float() * self.scales_and_zeros[0, :, 0].float()[:, None]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, weight_bits=4 (int4 kernel, "
                f"{str(self.compute_dtype).replace('torch.', '')} activations)")


def convert_weight_only_int4(model: nn.Module, config) -> nn.Module:
    """Linear layers → :class:`Int4WeightOnlyLinear` (real kernel); convolutions → simulated 4-bit weights.

    ``config``: ``per_channel`` and ``skip_modules`` (read by duck typing). Modifies ``model`` in place.
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("the int4 kernel runs on CPU; move the model with .cpu() or use backend='simulated'")
    if not getattr(config, "symmetric", True):
        raise ValueError("the int4 kernel is given symmetric codes here; symmetric=False needs backend='simulated'")
    per_channel = getattr(config, "per_channel", True)
    layers = quantizable_layers(model, tuple(getattr(config, "skip_modules", ()) or ()))
    real = []
    for name, layer in layers.items():
        if isinstance(layer, nn.Linear) and kernel_fits(layer):
            set_layer(model, name, Int4WeightOnlyLinear(layer, per_channel))
            real.append(name)
        else:
            set_layer(model, name, FakeQuantLayer.from_float(layer, 4, per_channel=per_channel, symmetric=True))
    if not real:
        raise ValueError(f"{type(model).__name__} has no nn.Linear the int4 kernel can run (in_features % {GROUP} "
                         f"== 0, out_features % {N_TILE} == 0); use backend='simulated'")
    return model


def int4_layers(model: nn.Module) -> list[str]:
    """The layers of ``model`` that run the int4 kernel (:class:`Int4WeightOnlyLinear`)."""
    return [n for n, m in model.named_modules() if isinstance(m, Int4WeightOnlyLinear)]


def simulated_layers(model: nn.Module) -> list[str]:
    """The layers of a real-INT4 model that have no kernel and are simulated (4-bit weight-only fake-quant)."""
    return [n for n, m in model.named_modules() if isinstance(m, FakeQuantLayer)]
