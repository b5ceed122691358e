"""GPTQ (``gptq``): k-bit weights chosen column by column, each column's rounding error compensated on the
columns not yet quantized, weighted by the layer's input Hessian ``H = 2/n Σ x xᵀ`` (Frantar et al., 2023).

Per layer (convolutions as matmuls over their unfolded input, per convolution group): dead inputs (``H_jj = 0``)
are zeroed, ``H`` is damped by ``damp · mean(diag H)``, the upper Cholesky factor ``U`` of ``H⁻¹`` is taken, and
columns are quantized in blocks of ``block_size`` ("lazy batch" updates) in natural order or, with
``act_order``, by decreasing ``H_jj``. The grid (scale / zero point per output channel, or per ``group_size``
input slice of it) is min-max on the original weights, fixed before the sweep (the reference code's
``static_groups``), so the codes are on exactly the levels round-to-nearest would use and ≤ 2**k of them per
channel (per group).

``sequential=True`` (the paper's order) computes each layer's Hessian with the layers before it already
quantized; ``False`` takes every Hessian from the float model in one pass.

Why not torchao: ``torchao.prototype.gptq.GPTQConfig`` (0.18) quantizes ``nn.Linear`` to its int4 / int8 tensor
subclasses only — no convolutions, no k other than 4 / 8, and weights the fake-quant level audit cannot read —
so the algorithm is written here (~60 lines) and its codes go into the same simulated INT-k layers as
``ptq_static``.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from fairq.compression.quant.advanced_ptq import NEEDS, AdvancedPTQConfig, calibration_for, calibration_record
from fairq.compression.core.config import check_positive
from fairq.compression.core.fakequant import QuantizedWeight
from fairq.compression.quant.layer_stats import collect_input_stats, groups_of, weight_3d
from fairq.compression.core.modules import quantizable_layers
from fairq.compression.core.observers import qrange, weight_observer
from fairq.compression.core.registry import Artifact, MethodInputs, MethodResult, register_method
from fairq.compression.quant.simulate import quantize_layers

log = logging.getLogger(__name__)


@dataclass
class GPTQConfig(AdvancedPTQConfig):
    """GPTQ weights (see the module doc) plus :class:`~fairq.compression.quant.advanced_ptq.AdvancedPTQConfig`.

    ``group_size``: input columns per scale (``None`` = one scale per output channel; a layer whose input width
    is not a multiple keeps per-channel scales, with a warning); ``damp``: damping as a fraction of the mean
    Hessian diagonal; ``act_order``: quantize columns by decreasing Hessian diagonal; ``block_size``: columns
    per lazy-batch block; ``sequential``: Hessians from the partly quantized model (layer by layer).
    Simulated only (the codes are set per layer): ``backend`` ``"int8"`` / ``"int4"`` and the deployed-graph
    simulation are refused.
    """

    group_size: int | None = None
    damp: float = 0.01
    act_order: bool = False
    block_size: int = 128
    sequential: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_positive("group_size", self.group_size, allow_none=True, integer=True)
        check_positive("damp", self.damp)
        check_positive("block_size", self.block_size, integer=True)
        if self.backend in ("int8", "int4"):
            raise ValueError(f"gptq runs on the simulated backend only (its codes are set per layer), got "
                             f"backend={self.backend!r}; use backend='auto' or 'simulated'")
        if self.simulation != "layer_input":
            raise ValueError("gptq needs simulation='layer_input': the deployed-graph simulation folds BatchNorm "
                             "and re-rounds the weights, which would discard GPTQ's codes")
        if self.group_size is not None and not self.per_channel:
            raise ValueError("group_size needs per_channel=True (groups split each output channel)")


# ------------------------------------------------------------------------------------------ the algorithm
def grid(mod: nn.Module, bits: int, *, per_channel: bool, symmetric: bool, group_size: int | None):
    """Min-max scale and zero point of ``mod``'s weight as ``[out]`` / ``[out, groups]`` (what the layer stores)
    and spread per weight column as ``[G, out/G, d_g]`` (what the sweep uses)."""
    w = mod.weight.detach().float()
    out, d = w.shape[0], w[0].numel()
    rows = w.reshape(out, d)
    grouped = group_size is not None and group_size < d and d % group_size == 0
    if grouped:
        rows = rows.reshape(out * (d // group_size), group_size)
    cls, spec = weight_observer(bits, per_channel, symmetric)
    obs = cls(**spec).to(w.device)  # per channel: axis 0 of ``rows`` (an output channel, or one group of it)
    obs(rows)
    scale, zp = obs.calculate_qparams()
    scale, zp = scale.float().to(w.device), zp.to(device=w.device, dtype=torch.int32)
    if grouped:
        scale, zp = scale.reshape(out, -1), zp.reshape(out, -1)
        cols_s = scale.repeat_interleave(group_size, dim=1)
        cols_z = zp.repeat_interleave(group_size, dim=1)
    else:
        cols_s = scale.reshape(-1, 1).expand(out, d) if scale.numel() > 1 else scale.reshape(1, 1).expand(out, d)
        cols_z = zp.reshape(-1, 1).expand(out, d) if zp.numel() > 1 else zp.reshape(1, 1).expand(out, d)
    g = groups_of(mod)
    return scale, zp, cols_s.reshape(g, out // g, d).float(), cols_z.reshape(g, out // g, d).float()


def _round(w, s, z, qmin, qmax):
    codes = torch.clamp(torch.round(w / s) + z, qmin, qmax)
    return codes, (codes - z) * s


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹``, ``λ = damp · mean(diag H)`` (raised tenfold until ``H + λI`` is
    positive definite in float32)."""
    eye = torch.eye(h.shape[-1], device=h.device, dtype=h.dtype)
    mean_diag = torch.diagonal(h, dim1=-2, dim2=-1).mean(-1)[:, None, None]
    for attempt in range(6):
        lower, info = torch.linalg.cholesky_ex(h + (damp * 10**attempt) * mean_diag * eye)
        if not info.any():
            hinv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if not info.any():
                if attempt:
                    log.info("gptq: Hessian damping raised to %g to stay positive definite", damp * 10**attempt)
                return upper
    raise RuntimeError("gptq: the Hessian stays singular even with 10^5 x damping")


def gptq_codes(w: torch.Tensor, h: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, *, damp: float = 0.01,
               act_order: bool = False, block_size: int = 128) -> torch.Tensor:
    """Integer codes ``[G, o, d]`` of weights ``w`` ``[G, o, d]`` with Hessians ``h`` ``[G, d, d]`` on the grid
    ``s`` / ``z`` ``[G, o, d]`` (GPTQ, see the module doc)."""
    qmin, qmax = qrange(bits, signed=True)
    w, h = w.clone().float(), h.clone().float()
    n_groups, out, d = w.shape
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag == 0
    diag[dead] = 1.0
    w.masked_fill_(dead[:, None, :], 0.0)
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(h, dim1=1, dim2=2), dim=1, descending=True)
        cols = perm[:, None, :].expand(n_groups, out, d)
        w, s, z = w.gather(2, cols), s.gather(2, cols), z.gather(2, cols)
        h = h.gather(1, perm[:, :, None].expand(n_groups, d, d)).gather(2, perm[:, None, :].expand(n_groups, d, d))
    u = _inverse_hessian_factor(h, damp)
    codes = torch.zeros_like(w)
    for i1 in range(0, d, block_size):
        i2 = min(i1 + block_size, d)
        w1, u1 = w[:, :, i1:i2].clone(), u[:, i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col = w1[:, :, i]
            c, q = _round(col, s[:, :, i1 + i], z[:, :, i1 + i], qmin, qmax)
            codes[:, :, i1 + i] = c
            err = (col - q) / u1[:, i, i][:, None]
            w1[:, :, i:] -= err[:, :, None] * u1[:, None, i, i:]
            err1[:, :, i] = err
        w[:, :, i2:] -= err1 @ u[:, i1:i2, i2:]
    if perm is not None:
        codes = codes.gather(2, torch.argsort(perm, dim=1)[:, None, :].expand(n_groups, out, d))
    return codes


def reconstruction_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """``mean over calibration rows of ||(W − Q) x||²`` summed over output channels = ``tr((W−Q) H (W−Q)ᵀ) / 2``
    (``H = 2/n Σ x xᵀ``), for ``[G, o, d]`` weights and ``[G, d, d]`` Hessians."""
    e = (w - q).float()
    return float(((e @ h) * e).sum() / 2)


def quantize_layer_gptq(mod: nn.Module, hessian: torch.Tensor, config: GPTQConfig) -> tuple[QuantizedWeight, dict]:
    """GPTQ codes of one layer and its reconstruction error next to round-to-nearest's on the same grid."""
    scale, zp, s, z = grid(mod, config.weight_bits, per_channel=config.per_channel, symmetric=config.symmetric,
                           group_size=config.group_size)
    w = weight_3d(mod)
    codes = gptq_codes(w, hessian, s, z, config.weight_bits, damp=config.damp, act_order=config.act_order,
                       block_size=config.block_size)
    rtn_codes, rtn_q = _round(w, s, z, *qrange(config.weight_bits, signed=True))
    q = (codes - z) * s
    errors = {"gptq": reconstruction_error(w, q, hessian), "rtn": reconstruction_error(w, rtn_q, hessian)}
    qweight = QuantizedWeight(codes.reshape(mod.weight.shape).to(torch.int8), scale, zp, config.weight_bits)
    return qweight, errors


def quantize_gptq(model: nn.Module, config: GPTQConfig, calibration_data) -> tuple[nn.Module, dict]:
    """GPTQ weights for every quantizable layer of ``model`` (in place), then the simulated INT-k layers (with
    calibrated activations when ``act_bits``); returns the model and ``{layer: {"gptq": err, "rtn": err}}``."""
    if calibration_data is None:
        raise ValueError("gptq needs calibration_data (its Hessians come from the layers' inputs)")
    model.eval()
    layers = quantizable_layers(model, config.skip_modules)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantizable layers (skip patterns {config.skip_modules})")
    limit = config.calibration_batches
    stats = {} if config.sequential else collect_input_stats(model, layers, calibration_data, limit=limit,
                                                             hessian=True)
    qweights, errors, skipped_groups = {}, {}, []
    for name, mod in layers.items():
        if config.sequential:
            stats.update(collect_input_stats(model, {name: mod}, calibration_data, limit=limit, hessian=True,
                                             stop_after=True))
        if name not in stats:
            continue
        d = mod.weight[0].numel()
        if config.group_size is not None and config.group_size < d and d % config.group_size:
            skipped_groups.append(name)
        qweights[name], errors[name] = quantize_layer_gptq(mod, stats.pop(name).hessian, config)
        # later layers (sequential) and the activation calibration see the quantized weights; a new Parameter, so a
        # weight tied elsewhere (BERT's MLM decoder = the word embeddings) is not changed there
        mod.weight = nn.Parameter(qweights[name].dequantize().to(mod.weight.dtype), requires_grad=False)
    unseen = [n for n in layers if n not in qweights]
    if unseen:
        warnings.warn(f"gptq: layers never called during calibration are rounded to nearest: {unseen}")
    if skipped_groups:
        warnings.warn(f"gptq: group_size={config.group_size} does not divide the input width of {skipped_groups}; "
                      "they keep one scale per output channel")
    quantize_layers(model, {n: config.weight_bits for n in layers}, per_channel=config.per_channel,
                    symmetric=config.symmetric, act_bits=config.act_bits, act_mode="static",
                    observer=config.observer, percentile=config.percentile, act_symmetric=config.act_symmetric,
                    calibration_data=calibration_data, calibration_batches=limit, qweights=qweights)
    return model, errors


def handle_gptq(model: nn.Module, config: GPTQConfig, inputs: MethodInputs) -> MethodResult:
    qmodel, errors = quantize_gptq(model, config, calibration_for(config, inputs))
    total = {k: sum(e[k] for e in errors.values()) for k in ("gptq", "rtn")}
    record = {**calibration_record(config), "gptq_layers": len(errors),
              "gptq_error_ratio": total["gptq"] / total["rtn"] if total["rtn"] > 0 else float("nan")}
    return MethodResult(qmodel, weight_bits=config.weight_bits, act_bits=config.act_bits, backend="simulated",
                        simulation="layer_input", record=record,
                        artifacts=[Artifact("ptq", {"reconstruction_error": errors})],
                        info={"reconstruction_error": errors})


register_method("gptq", GPTQConfig, handle_gptq, needs=NEEDS)
