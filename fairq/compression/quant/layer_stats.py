"""Calibration statistics of Conv2d/Linear inputs for the advanced PTQ algorithms (GPTQ, AWQ, SmoothQuant).

Every layer is seen as a batched matmul ``[G, out_g, d_g] @ [G, d_g, n]`` (``G`` = convolution groups, 1 for a
Linear): a convolution's input is unfolded (``F.unfold``, padding handled as the layer does), so its columns are
``(in_channel, kh, kw)`` in the order of ``weight.reshape(out, -1)``. The statistics are gathered with forward
pre-hooks on the float layers while calibration batches run through the model; a text batch's ``[PAD]``
positions are left out (:func:`fairq.compression.core.data.real_tokens`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fairq.compression.core.data import iter_model_inputs, model_device, real_tokens, token_mask
from fairq.compression.core.modules import is_same_pad_conv, same_pad, set_layer

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ layers as matmuls
def groups_of(mod: nn.Module) -> int:
    return mod.groups if isinstance(mod, nn.Conv2d) else 1


def weight_3d(mod: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The weight as ``[G, out/G, d_g]`` (``d_g`` = in/G · kh · kw for a conv)."""
    w = (mod.weight if weight is None else weight).detach().float()
    g = groups_of(mod)
    return w.reshape(g, w.shape[0] // g, -1)


def input_rows(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as the matmul's right operand, rows first: ``[G, n, d_g]``."""
    x = x.detach().float()
    if isinstance(mod, nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    if is_same_pad_conv(mod) or getattr(mod, "same_pad", False):
        x, padding = same_pad(mod, x), 0
    elif mod.padding_mode != "zeros" or isinstance(mod.padding, str):
        # reflect/replicate/circular padding, or padding="same"/"valid": pad as nn.Conv2d does, then unfold unpadded
        mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
        x, padding = F.pad(x, mod._reversed_padding_repeated_twice, mode=mode), 0
    else:
        padding = mod.padding
    cols = F.unfold(x, mod.kernel_size, dilation=mod.dilation, padding=padding, stride=mod.stride)  # [N, C·k, L]
    g = mod.groups
    n, d, length = cols.shape
    return cols.reshape(n, g, d // g, length).permute(1, 0, 3, 2).reshape(g, n * length, d // g)


def columns_per_channel(mod: nn.Module) -> int:
    """Matmul columns per input channel (kh · kw for a conv, 1 for a Linear)."""
    return mod.kernel_size[0] * mod.kernel_size[1] if isinstance(mod, nn.Conv2d) else 1


def channel_to_columns(mod: nn.Module, per_channel: torch.Tensor) -> torch.Tensor:
    """A per-input-channel vector ``[C_in]`` spread over the matmul columns: ``[G, d_g]``."""
    return per_channel.reshape(groups_of(mod), -1).repeat_interleave(columns_per_channel(mod), dim=1)


def in_channels(mod: nn.Module) -> int:
    return mod.in_channels if isinstance(mod, nn.Conv2d) else mod.in_features


# ------------------------------------------------------------------------------------------ statistics
@dataclass
class InputStats:
    """Running statistics of one layer's input: per-input-channel mean and max of ``|x|``, optionally the GPTQ
    Hessian ``2/n Σ x xᵀ`` per group, and a bounded sample of input rows (for output-error searches)."""

    n: int = 0
    abs_sum: torch.Tensor | None = None
    abs_max: torch.Tensor | None = None
    hessian: torch.Tensor | None = None
    hessian_rows: int = 0
    sample: list = field(default_factory=list)
    sample_rows: int = 0

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.n, 1)

    def rows(self) -> torch.Tensor:
        return torch.cat(self.sample, dim=1)


def _channel_view(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``[n, C_in]`` (every position a row)."""
    x = x.detach().float()
    if isinstance(mod, nn.Conv2d):
        return x.transpose(0, 1).reshape(x.shape[1], -1).t()
    return x.reshape(-1, x.shape[-1])


#: unfolded elements per chunk (a conv's unfolded input is kh·kw times its input; chunks keep memory bounded)
CHUNK_ELEMS = 2**24


def _update(stats: InputStats, mod: nn.Module, x: torch.Tensor, *, hessian: bool, max_rows: int,
            generator: torch.Generator) -> None:
    if isinstance(mod, nn.Linear):
        x = real_tokens(x)  # a text batch's [PAD] positions are no calibration input (see fairq.compression.core.data)
    xc = _channel_view(mod, x).abs()
    s, m = xc.sum(0), xc.amax(0)
    stats.abs_sum = s if stats.abs_sum is None else stats.abs_sum + s
    stats.abs_max = m if stats.abs_max is None else torch.maximum(stats.abs_max, m)
    stats.n += xc.shape[0]
    if not (hessian or stats.sample_rows < max_rows):
        return
    per_sample = max(1, x[0].numel() * columns_per_channel(mod))
    for xs in x.split(max(1, CHUNK_ELEMS // per_sample)):
        rows = input_rows(mod, xs)  # [G, n, d]
        if hessian:
            # running mean of 2 x xᵀ over rows, as the GPTQ reference accumulates it
            h = 2.0 * rows.transpose(1, 2) @ rows
            old, total = stats.hessian_rows, stats.hessian_rows + rows.shape[1]
            stats.hessian = h / total if stats.hessian is None else stats.hessian * (old / total) + h / total
            stats.hessian_rows = total
        if stats.sample_rows < max_rows:
            take = min(max_rows - stats.sample_rows, rows.shape[1])
            idx = torch.randperm(rows.shape[1], generator=generator)[:take].to(rows.device)
            stats.sample.append(rows[:, idx])
            stats.sample_rows += take


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the last layer of interest has been seen."""


def collect_input_stats(model: nn.Module, layers: dict[str, nn.Module], data, *, limit: int | None = None,
                        hessian: bool = False, max_rows: int = 0, stop_after: bool = False,
                        seed: int = 0) -> dict[str, InputStats]:
    """Run ``data`` through ``model`` and return :class:`InputStats` of each layer in ``layers`` that was called.

    ``hessian``: accumulate ``2/n Σ x xᵀ``; ``max_rows``: keep up to that many random input rows per layer;
    ``stop_after``: end each forward pass once every layer of interest has been called (saves the rest of the
    network when statistics of early layers are wanted, as in sequential GPTQ).
    """
    stats = {name: InputStats() for name in layers}
    gen = torch.Generator().manual_seed(seed)
    pending: set[str] = set()

    def hook_for(name, mod):
        def hook(_mod, args):
            _update(stats[name], mod, args[0], hessian=hessian, max_rows=max_rows, generator=gen)
            pending.discard(name)
            if stop_after and not pending:
                raise _Stop

        return hook

    handles = [mod.register_forward_pre_hook(hook_for(name, mod)) for name, mod in layers.items()]
    device, n = model_device(model), 0
    try:
        with torch.no_grad():
            for args, kwargs in iter_model_inputs(data, limit, device):
                pending = set(layers)
                try:
                    with token_mask(kwargs):
                        model(*args, **kwargs)
                except _Stop:
                    pass
                n += 1
    finally:
        for h in handles:
            h.remove()
    if n == 0:
        raise ValueError("calibration data yielded no batches")
    return {name: s for name, s in stats.items() if s.n > 0}


# ------------------------------------------------------------------------------------------ explicit input scale
class ScaledInput(nn.Module):
    """``layer(x / scale)`` with a per-input-channel ``scale``: the input side of an AWQ / SmoothQuant scaling
    whose inverse cannot fold into a preceding op (post-LayerNorm BERT, an activation in between, a conv stem).

    The layer's weight is multiplied by ``scale`` along its input channels, so the float function is unchanged;
    the layer stays a child (``.layer``), so quantizers find and swap it like any other.
    """

    def __init__(self, layer: nn.Module, scale: torch.Tensor):
        super().__init__()
        self.layer = layer
        shape = (1, -1, 1, 1) if isinstance(layer, nn.Conv2d) else (-1,)
        self.register_buffer("inv_scale", (1.0 / scale.detach().float()).reshape(shape).clone())

    @property
    def weight(self):
        return self.layer.weight

    @property
    def bias(self):
        return self.layer.bias

    def forward(self, x, *args, **kwargs):
        return self.layer(x * self.inv_scale.to(x.dtype), *args, **kwargs)


def scale_input_channels(model: nn.Module, name: str, scale: torch.Tensor, fold_into: nn.Module | None = None) -> None:
    """Multiply layer ``name``'s weight by ``scale`` along its input channels and divide its input by it:
    folded into ``fold_into`` (a LayerNorm whose output only this layer reads) when given, else through an
    explicit :class:`ScaledInput` in front of the layer. The float function is unchanged."""
    mod = model.get_submodule(name)
    scale = scale.detach().float().to(mod.weight.device)
    cols = channel_to_columns(mod, scale)  # [G, d_g]
    w = weight_3d(mod) * cols[:, None, :]
    # a new Parameter: a weight tied elsewhere (BERT's MLM decoder = the word embeddings) keeps its values there
    mod.weight = nn.Parameter(w.reshape(mod.weight.shape).to(mod.weight.dtype), requires_grad=mod.weight.requires_grad)
    with torch.no_grad():
        if fold_into is not None:
            fold_into.weight.div_(scale.to(fold_into.weight.dtype))
            if fold_into.bias is not None:
                fold_into.bias.div_(scale.to(fold_into.bias.dtype))
            return
    set_layer(model, name, ScaledInput(mod, scale))


def foldable_norms(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """``{layer name: LayerNorm}`` for layers whose input is a LayerNorm's output that nothing else reads (pre-LN
    transformers: timm ViT's ``norm1 → attn.qkv``, ``norm2 → mlp.fc1``); found by torch.fx tracing. Models that do
    not trace, and post-LN models (BERT: the LayerNorm output also feeds the residual), get none."""
    try:
        from torch.fx import symbolic_trace

        graph = symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001  (any tracing failure just means: no folding)
        log.info("no LayerNorm folding: %s does not trace with torch.fx (%s)", type(model).__name__,
                 str(exc).splitlines()[0][:120])
        return {}
    out = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), nn.LayerNorm):
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and users[0].target in layers:
            out[users[0].target] = model.get_submodule(node.target)
    return out
