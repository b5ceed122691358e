"""Per-input-channel rescaling before round-to-nearest: AWQ (``awq``) and SmoothQuant (``smoothquant``).

Both multiply a layer's weight by ``s`` along its input channels and divide its input by ``s``, so the FP32
function is unchanged (up to float rounding), and then quantize the rescaled model exactly as ``ptq_static``
does. The inverse scale folds into a LayerNorm when that LayerNorm's output feeds only this layer (pre-LN
transformers such as timm's ViT, found by torch.fx tracing); everywhere else — BERT is post-LayerNorm (its
LayerNorm output also feeds the residual), an activation sits in between, or the model does not trace — it stays
an explicit per-channel input scale in front of the layer
(:class:`~fairq.compression.quant.layer_stats.ScaledInput`).

* **AWQ** (Lin et al., 2024): ``s = mean|x|^α`` (divided by ``sqrt(max s · min s)``, as AWQ's code does) with
  ``α`` on a grid in [0, 1] chosen per layer by the output MSE of the layer with quantized weights (FP32 inputs,
  as in AWQ) on sampled calibration inputs; ``α = 0`` is plain round-to-nearest, so the chosen scale never does
  worse than RTN on those inputs.
* **SmoothQuant** (Xiao et al., 2023): ``s_j = max|X_j|^α / max|W_j|^(1−α)`` moves activation outliers into the
  weights so per-tensor activation quantization loses less; then W8A8 (or WkA8).

Why not torchao: ``torchao.prototype.awq`` / ``torchao.prototype.smoothquant`` (0.18) handle ``nn.Linear`` only,
at int4 / int8 through their tensor subclasses (no convolutions, no other k, weights the fake-quant level audit
cannot read); the scale search is a few lines, so it is written here and feeds ``ptq_static``'s quantizers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fairq.compression.quant.advanced_ptq import NEEDS, AdvancedPTQConfig, calibration_for, calibration_record
from fairq.compression.core.config import check_positive
from fairq.compression.core.fakequant import quantize_weight
from fairq.compression.quant.layer_stats import (
    channel_to_columns, collect_input_stats, foldable_norms, groups_of, in_channels, scale_input_channels, weight_3d,
)
from fairq.compression.core.modules import quantizable_layers
from fairq.compression.quant.ptq import ptq_result
from fairq.compression.core.registry import Artifact, MethodInputs, MethodResult, register_method

EPS = 1e-5


@dataclass
class AWQConfig(AdvancedPTQConfig):
    """AWQ scales (see the module doc) plus :class:`~fairq.compression.quant.advanced_ptq.AdvancedPTQConfig`.

    ``grid``: number of steps of ``α`` in [0, 1] (``grid + 1`` candidates); ``search_rows``: calibration input
    rows (tokens / conv patches) sampled per layer for the search; ``fold_layernorm``: fold scales into a
    LayerNorm where possible (``False``: always an explicit input scale).
    """

    grid: int = 20
    search_rows: int = 1024
    fold_layernorm: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_positive("grid", self.grid, integer=True)
        check_positive("search_rows", self.search_rows, integer=True)


@dataclass
class SmoothQuantConfig(AdvancedPTQConfig):
    """SmoothQuant scales (see the module doc) plus :class:`~fairq.compression.quant.advanced_ptq.AdvancedPTQConfig`;
    8-bit activations by default (W8A8; ``weight_bits`` < 8 gives WkA8). ``alpha``: migration strength in [0, 1]
    (0: no smoothing; 1: every activation channel's max moved into the weights)."""

    act_bits: int | None = 8
    alpha: float = 0.5
    fold_layernorm: bool = True

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        if self.act_bits is None:
            raise ValueError("smoothquant smooths activations for their quantization: it needs act_bits "
                             "(use awq or gptq for weight-only)")


# ------------------------------------------------------------------------------------------ scales
def weight_channel_max(mod: nn.Module) -> torch.Tensor:
    """``max |W|`` per input channel ``[C_in]`` (over output channels and kernel positions)."""
    w = weight_3d(mod).abs().amax(1)  # [G, d_g]
    k = w.shape[1] // (in_channels(mod) // groups_of(mod))
    return w.reshape(w.shape[0], -1, k).amax(2).reshape(-1)


def smoothquant_scale(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|X_j|^α / max|W_j|^(1−α)`` (clamped away from 0, as the reference code does)."""
    return (act_max.clamp_min(EPS) ** alpha / weight_max.clamp_min(EPS) ** (1 - alpha)).clamp_min(EPS)


def awq_search(mod: nn.Module, rows: torch.Tensor, abs_mean: torch.Tensor, config: AWQConfig
               ) -> tuple[torch.Tensor, float, dict]:
    """The AWQ scale of one layer: ``(s, α, {"rtn_mse", "awq_mse"})`` minimising the quantized layer's output MSE
    on ``rows`` ``[G, n, d_g]`` over ``α ∈ {0, 1/grid, …, 1}``."""
    w = weight_3d(mod)
    ref = rows @ w.transpose(1, 2)
    base = abs_mean.clamp_min(EPS)
    best = (None, 0.0, float("inf"))
    rtn_mse = None
    for a in torch.linspace(0, 1, config.grid + 1).tolist():
        s = base**a
        s = s / torch.sqrt(s.max() * s.min())
        cols = channel_to_columns(mod, s)[:, None, :]  # [G, 1, d_g]
        scaled = (w * cols).reshape(mod.weight.shape)
        q = weight_3d(mod, quantize_weight(scaled, config.weight_bits, config.per_channel,
                                           config.symmetric).dequantize())
        mse = float(((rows / cols) @ q.transpose(1, 2) - ref).pow(2).mean())
        if rtn_mse is None:
            rtn_mse = mse  # α = 0: s = 1, round-to-nearest
        if mse < best[2]:
            best = (s, a, mse)
    return best[0], best[1], {"rtn_mse": rtn_mse, "awq_mse": best[2]}


def smooth(model: nn.Module, config, calibration_data) -> tuple[nn.Module, dict]:
    """Rescale the input channels of every quantizable layer of ``model`` in place (AWQ or SmoothQuant per the
    config's type); the FP32 function is unchanged. Returns the model and ``{layer: record}``."""
    if calibration_data is None:
        raise ValueError(f"{type(config).__name__} needs calibration_data (its scales come from the layers' inputs)")
    model.eval()
    layers = quantizable_layers(model, config.skip_modules)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantizable layers (skip patterns {config.skip_modules})")
    is_awq = isinstance(config, AWQConfig)
    stats = collect_input_stats(model, layers, calibration_data, limit=config.calibration_batches,
                                max_rows=config.search_rows if is_awq else 0)
    norms = foldable_norms(model, layers) if config.fold_layernorm else {}
    records = {}
    for name, st in stats.items():
        mod = layers[name]
        if is_awq:
            s, alpha, errs = awq_search(mod, st.rows(), st.abs_mean, config)
            records[name] = {"alpha": alpha, **errs}
        else:
            s = smoothquant_scale(st.abs_max, weight_channel_max(mod), config.alpha)
            records[name] = {"scale_max": float(s.max()), "scale_min": float(s.min())}
        records[name]["folded"] = name in norms
        scale_input_channels(model, name, s, fold_into=norms.get(name))
    return model, records


def _handle(model: nn.Module, config, inputs: MethodInputs) -> MethodResult:
    data = calibration_for(config, inputs)
    model, records = smooth(model, config, data)
    result = ptq_result(model, config, data)
    record = {**calibration_record(config), "scaled_layers": len(records),
              "folded_scales": sum(r["folded"] for r in records.values())}
    if isinstance(config, AWQConfig) and records:
        record["awq_mean_alpha"] = sum(r["alpha"] for r in records.values()) / len(records)
    return result.replace(record=record, artifacts=[Artifact("ptq", {"scales": records})], info={"scales": records})


register_method("awq", AWQConfig, _handle, needs=NEEDS)
register_method("smoothquant", SmoothQuantConfig, _handle, needs=NEEDS)
