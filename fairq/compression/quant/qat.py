"""Quantization-aware training (``qat``) in two steps, like torchao: :func:`prepare_qat` then :func:`convert_qat`.

Prepared layers are torch.ao's QAT ``Linear``/``Conv2d`` (weights fake-quantized each forward, gradients by the
straight-through estimator of ``torch.fake_quantize_*``) plus a fake-quantized input. torchao's own QAT only
covers Linear/Embedding layers with per-token dynamic activations, so it cannot train the CNNs fairq studies
with static per-tensor activations; torch.ao's modules and ``FakeQuantize`` can.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Callable

import torch
import torch.ao.nn.qat as nnqat
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, QConfig
from tqdm.auto import tqdm

from fairq.batches import labelled_positions
from fairq.threads import backward as thread_invariant_backward

from fairq.compression.core.backend import load_int8, resolve_backend
from fairq.compression.core.config import PTQConfig, QATConfig
from fairq.compression.core.data import iter_labelled_batches, logits_of, model_device, run_calibration
from fairq.compression.core.fakequant import FakeQuantLayer, quantize_weight
from fairq.compression.core.modules import is_same_pad_conv, quantizable_layers, same_pad, set_layer
from fairq.compression.core.observers import act_spec, weight_observer
from fairq.compression.core.registry import MethodInputs, MethodResult, register_method

log = logging.getLogger(__name__)


class _QATInput:
    """Mixin: fake-quantize the input; its observer learns (EMA) only in training or calibration."""

    calibrating = False

    def _quantize_input(self, x):
        fq = self.act_fake_quant
        if fq is None:
            return x
        want = bool(self.training or self.calibrating)
        if bool(fq.observer_enabled[0]) != want:
            fq.observer_enabled[0] = int(want)
        return fq(x)


class QATLinear(_QATInput, nnqat.Linear):
    """torch.ao QAT Linear with a fake-quantized input."""

    def forward(self, x):
        return super().forward(self._quantize_input(x))


class QATConv2d(_QATInput, nnqat.Conv2d):
    """torch.ao QAT Conv2d with a fake-quantized input (and timm's run-time 'same' padding when ``same_pad``)."""

    same_pad = False

    def forward(self, x):
        x = self._quantize_input(x)
        if self.same_pad:
            x = same_pad(self, x)
        return super().forward(x)


def _qconfig(config: QATConfig) -> QConfig:
    wcls, wspec = weight_observer(config.weight_bits, config.per_channel, config.symmetric, moving=True)
    weight = FakeQuantize.with_args(observer=wcls, **wspec)
    act = None
    if config.act_bits is not None:
        act = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, **act_spec(config.act_bits, False))
    return QConfig(activation=act or nn.Identity, weight=weight)


def _to_qat(mod: nn.Module, qconfig: QConfig, with_act: bool) -> nn.Module:
    kw = dict(bias=mod.bias is not None, qconfig=qconfig, device=mod.weight.device, dtype=mod.weight.dtype)
    if isinstance(mod, nn.Conv2d):
        new = QATConv2d(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                        dilation=mod.dilation, groups=mod.groups, padding_mode=mod.padding_mode, **kw)
        new.same_pad = is_same_pad_conv(mod)
    else:
        new = QATLinear(mod.in_features, mod.out_features, **kw)
    new.weight = mod.weight  # keep the trained parameters (and any optimizer state keyed on them)
    new.bias = mod.bias
    new.act_fake_quant = qconfig.activation().to(mod.weight.device) if with_act else None
    return new


def qat_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The QAT-prepared layers of ``model`` (each knows its ``weight_bits``)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QATLinear, QATConv2d))}


@contextmanager
def _calibrating(model: nn.Module):
    layers = list(qat_layers(model).values())
    for m in layers:
        m.calibrating = True
    try:
        yield
    finally:
        for m in layers:
            m.calibrating = False


def prepare_qat(model: nn.Module, config: QATConfig, calibration_data=None) -> nn.Module:
    """Swap Conv2d/Linear for fake-quant QAT layers, in place; returns the (trainable, train-mode) model.

    With ``calibration_data`` the activation ranges are initialised from it (in eval mode) before training.
    """
    qconfig = _qconfig(config)
    layers = quantizable_layers(model, config.skip_modules)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d/Linear layers to prepare for QAT")
    for name, mod in layers.items():
        new = _to_qat(mod, qconfig, config.act_bits is not None)
        new.weight_bits = config.weight_bits  # read by the weight audit (layer_bits)
        set_layer(model, name, new)
    if calibration_data is not None and config.act_bits is not None:
        model.eval()
        with _calibrating(model):
            run_calibration(model, calibration_data, config.calibration_batches)
    return model.train()


def _to_float(mod: nn.Module) -> nn.Module:
    """A plain float layer carrying the QAT layer's trained weights."""
    if isinstance(mod, QATConv2d):
        kw = dict(stride=mod.stride, padding=mod.padding, dilation=mod.dilation, groups=mod.groups,
                  bias=mod.bias is not None, device=mod.weight.device, dtype=mod.weight.dtype)
        if mod.same_pad:
            from timm.layers import Conv2dSame

            new = Conv2dSame(mod.in_channels, mod.out_channels, mod.kernel_size, **kw)
        else:
            new = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, padding_mode=mod.padding_mode, **kw)
    else:
        new = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                        device=mod.weight.device, dtype=mod.weight.dtype)
    new.weight = nn.Parameter(mod.weight.detach().clone())
    if mod.bias is not None:
        new.bias = nn.Parameter(mod.bias.detach().clone())
    return new


def convert_qat(model: nn.Module, config: QATConfig, calibration_data=None) -> nn.Module:
    """Freeze a QAT-prepared model, in place where simulated; returns the quantized model (eval mode).

    See :func:`convert_qat_result`, which also says what the model computes with.
    """
    return convert_qat_result(model, config, calibration_data).model


def convert_qat_result(model: nn.Module, config: QATConfig, calibration_data=None) -> MethodResult:
    """Freeze a QAT-prepared model, in place where simulated; the quantized model (eval mode) and its backend.

    W8A8 with a usable INT8 backend and ``calibration_data`` → real INT8 via ``convert_static_int8`` on the
    trained float weights (activation ranges re-calibrated with min-max). Otherwise simulated INT-k layers using
    the weight quantizer of training and the activation ranges learned during training.
    """
    layers = qat_layers(model)
    if not layers:
        raise ValueError("convert_qat: the model has no QAT layers; call prepare_qat first")
    model.eval()
    capable = config.weight_bits == 8 and config.act_bits == 8
    backend = resolve_backend(config.backend, capable, model)
    if backend == "int8" and calibration_data is None:
        if config.backend == "int8":
            raise ValueError("converting QAT to real INT8 needs calibration_data")
        warnings.warn("no calibration_data for the INT8 conversion of QAT: keeping a simulated INT8 model")
        backend = "simulated"
    if backend == "int8":
        for name, mod in layers.items():
            set_layer(model, name, _to_float(mod))
        ptq = PTQConfig(weight_bits=8, act_bits=8, per_channel=config.per_channel, symmetric=config.symmetric,
                        backend="int8", skip_modules=config.skip_modules)
        from fairq.compression.quant.ptq import program_result

        return program_result(load_int8().convert_static_int8(model, ptq, calibration_data), backend="int8")
    for name, mod in layers.items():
        fq = mod.act_fake_quant
        learned = fq is not None and not bool(torch.isinf(fq.activation_post_process.min_val).any())
        if fq is not None and not learned:
            warnings.warn(f"QAT layer {name} never saw an input in training/calibration: its input stays FP32")
        qweight = quantize_weight(mod.weight, config.weight_bits, config.per_channel, config.symmetric)
        new = FakeQuantLayer.from_float(
            mod, config.weight_bits, per_channel=config.per_channel, symmetric=config.symmetric, qweight=qweight,
            act_bits=config.act_bits, act_mode="static" if learned else None,
            act_qparams=(fq.scale, fq.zero_point) if learned else None,
        )
        set_layer(model, name, new)
    # fake-quant at each layer's input, like quantize_layers
    return MethodResult(model, weight_bits=config.weight_bits, act_bits=config.act_bits, backend="simulated",
                        simulation="layer_input")


def train_briefly(model: nn.Module, train_loader, *, epochs: int = 1, lr: float = 1e-4,
                  max_steps: int | None = None) -> nn.Module:
    """Minimal cross-entropy training loop (Adam) for QAT when no ``train_fn`` is given (token-level labels: the
    masked-LM loss); returns ``model``."""
    device = model_device(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    step = 0
    for epoch in range(epochs):
        bar = tqdm(iter_labelled_batches(train_loader, device=device), desc=f"QAT epoch {epoch + 1}/{epochs}",
                   leave=False)
        for args, kwargs, target in bar:
            # a masked LM's token-level labels: the loss at the masked positions only
            loss = F.cross_entropy(*labelled_positions(logits_of(model(*args, **kwargs)), target.long()))
            opt.zero_grad(set_to_none=True)
            thread_invariant_backward(loss)
            opt.step()
            bar.set_postfix(loss=float(loss.detach()))
            step += 1
            if max_steps is not None and step >= max_steps:
                return model
    if step == 0:
        raise ValueError("train_loader yielded no batches")
    return model


def quantize_qat(model: nn.Module, config: QATConfig, calibration_data=None, *,
                 train_fn: Callable[[nn.Module], object] | None = None, train_loader=None) -> nn.Module:
    """prepare → train → convert. Training: ``train_fn(model)`` if given (it trains the model in place or returns
    it), else the built-in loop over ``train_loader``; with neither, a clear error."""
    return qat_result(model, config, calibration_data, train_fn=train_fn, train_loader=train_loader).model


def qat_result(model: nn.Module, config: QATConfig, calibration_data=None, *,
               train_fn: Callable[[nn.Module], object] | None = None, train_loader=None) -> MethodResult:
    """:func:`quantize_qat`, returning the quantized model with what it computes with."""
    if train_fn is None and train_loader is None:
        raise ValueError("QAT needs training: pass train_fn=callable(model) or train_loader=<batches with targets>")
    prepare_qat(model, config, calibration_data)
    if train_fn is not None:
        trained = train_fn(model)
        model = trained if isinstance(trained, nn.Module) else model
    else:
        train_briefly(model, train_loader, epochs=config.epochs, lr=config.lr, max_steps=config.max_steps)
    return convert_qat_result(model, config, calibration_data)


def _lightning_train_fn(config: QATConfig, inputs: MethodInputs):
    """Fine-tune with fairq's Lightning module on the run's datamodule and trainer factory."""
    from fairq.lit import fit

    def train(model):
        overrides = {"max_epochs": int(config.epochs)}
        if config.max_steps:
            overrides["max_steps"] = int(config.max_steps)
        fit(model, inputs.make_trainer, datamodule=inputs.datamodule, lr=config.lr,
            weight_decay=inputs.optim.get("weight_decay", 0.0), **overrides)
        return model

    return train


def handle_qat(model: nn.Module, config: QATConfig, inputs: MethodInputs) -> MethodResult:
    """Training: ``inputs.train_fn``; else a Lightning fit when the run gives a datamodule and a trainer factory;
    else the minimal loop over ``inputs.train_loader``."""
    train_fn = inputs.train_fn
    if train_fn is None and inputs.make_trainer is not None and inputs.datamodule is not None:
        train_fn = _lightning_train_fn(config, inputs)
    train_loader = inputs.train_loader
    if train_fn is None and train_loader is None and inputs.datamodule is not None:
        train_loader = inputs.datamodule.train_dataloader()
    return qat_result(model, config, inputs.calibration, train_fn=train_fn, train_loader=train_loader)


register_method("qat", QATConfig, handle_qat, needs={"calibration", "training"})
