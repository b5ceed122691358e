"""Turn chosen layers of a float model into simulated INT-k layers, calibrating their input activations."""
from __future__ import annotations

import logging
import warnings

from torch import nn

from fairq.compression.core.data import real_tokens, run_calibration
from fairq.compression.core.fakequant import FakeQuantLayer
from fairq.compression.core.modules import quantizable_layers, set_layer
from fairq.compression.core.observers import act_observer

log = logging.getLogger(__name__)


class _Observing(nn.Module):
    """A float layer with an observer on its input, used only during calibration."""

    def __init__(self, layer: nn.Module, observer: nn.Module):
        super().__init__()
        self.layer = layer
        self.observer = observer
        self.seen = False

    # Parents that read the weights directly instead of calling the layer (nn.MultiheadAttention's out_proj)
    # still find them; such a layer is never "seen" and ends up with quantized weights but FP32 inputs.
    @property
    def weight(self):
        return self.layer.weight

    @property
    def bias(self):
        return self.layer.bias

    def forward(self, x, *args, **kwargs):
        self.observer(real_tokens(x.detach().float()))  # without a text batch's [PAD] positions
        self.seen = True
        return self.layer(x, *args, **kwargs)


def quantize_layers(model: nn.Module, layer_bits: dict[str, int], *, per_channel: bool = True,
                    symmetric: bool = True, act_bits: int | None = 8, act_mode: str | None = "static",
                    observer: str = "minmax", percentile: float = 99.99, act_symmetric: bool = False,
                    calibration_data=None, calibration_batches: int | None = None,
                    qweights: dict | None = None) -> nn.Module:
    """Replace each ``name`` in ``layer_bits`` by a simulated INT-``bits`` layer, in place; returns ``model``.

    ``qweights``: ``{name: QuantizedWeight}`` codes computed elsewhere (GPTQ) used instead of round-to-nearest.

    With ``act_mode="static"`` the inputs of those layers are observed on ``calibration_data`` in the float
    model first (as torch.ao/PT2E calibrate), then frozen into per-tensor ``act_bits`` parameters.
    """
    layers = dict(model.named_modules())
    missing = [n for n in layer_bits if n not in layers]
    if missing:
        raise KeyError(f"no such layer(s) in {type(model).__name__}: {missing}")
    if act_bits is None:
        act_mode = None
    qparams: dict[str, tuple] = {}
    if act_mode == "static":
        if calibration_data is None:
            raise ValueError("static activation quantization needs calibration_data (or set act_bits=None)")
        wrapped = {}
        for name in layer_bits:
            obs = act_observer(observer, act_bits, act_symmetric, percentile).to(layers[name].weight.device)
            wrapped[name] = _Observing(layers[name], obs)
            set_layer(model, name, wrapped[name])
        try:
            n = run_calibration(model, calibration_data, calibration_batches)
        finally:
            for name, w in wrapped.items():
                set_layer(model, name, w.layer)
        log.info("calibrated %d layers on %d batches (%s observer)", len(wrapped), n, observer)
        unseen = [name for name, w in wrapped.items() if not w.seen]
        if unseen:
            warnings.warn(f"layers never called during calibration keep FP32 inputs: {unseen}")
        qparams = {name: w.observer.calculate_qparams() for name, w in wrapped.items() if w.seen}
    for name, bits in layer_bits.items():
        mode = act_mode if (act_mode != "static" or name in qparams) else None
        new = FakeQuantLayer.from_float(layers[name], bits, per_channel=per_channel, symmetric=symmetric,
                                        act_bits=act_bits, act_mode=mode, act_symmetric=act_symmetric,
                                        act_qparams=qparams.get(name), qweight=(qweights or {}).get(name))
        set_layer(model, name, new)
    return model


def uniform_layer_bits(model: nn.Module, bits: int, skip=(), types=(nn.Linear, nn.Conv2d)) -> dict[str, int]:
    """``{name: bits}`` for every quantizable layer of ``model`` not matching ``skip``."""
    layers = quantizable_layers(model, skip, types)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantizable {'/'.join(t.__name__ for t in types)} layers "
                         f"(after skip patterns {tuple(skip)})")
    return {name: bits for name in layers}


def simulated_layers(model: nn.Module) -> dict[str, FakeQuantLayer]:
    """The simulated INT-k layers of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantLayer)}
