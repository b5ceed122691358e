"""Finding the layers to quantize, matching name patterns and swapping submodules."""
from __future__ import annotations

import fnmatch
import logging
from typing import Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)

_PLAIN_FORWARDS = {nn.Linear: nn.Linear.forward, nn.Conv2d: nn.Conv2d.forward}


def matches(name: str, patterns: Iterable[str]) -> bool:
    """True if ``name`` or one of its parents matches a pattern (fnmatch, e.g. ``classifier``, ``blocks.*.attn``)."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(p, pat) for pat in patterns for p in prefixes)


def is_same_pad_conv(mod: nn.Module) -> bool:
    """timm's ``Conv2dSame`` (TF 'SAME' padding computed from the input size at run time, then a plain conv).

    The ``tf_*`` EfficientNets use it for the stem and every strided depthwise conv, so a quantizer that skipped
    it would leave those layers in FP32 (tf_efficientnet_lite0: 5 layers, the stem included).
    """
    cls = type(mod)
    if cls.__name__ != "Conv2dSame" or not cls.__module__.startswith("timm."):
        return False
    from timm.layers import Conv2dSame

    return isinstance(mod, Conv2dSame)


def same_pad(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pad ``x`` as ``Conv2dSame`` does before its convolution (timm's own ``pad_same``)."""
    from timm.layers.padding import pad_same

    return pad_same(x, mod.kernel_size, mod.stride, mod.dilation)


def is_quantizable(mod: nn.Module, types=(nn.Linear, nn.Conv2d)) -> bool:
    """A Conv2d/Linear (or subclass) whose forward is the plain one, so swapping it keeps the maths.

    timm's ``Conv2dSame`` counts too: its forward is a plain conv after run-time padding, which the quantized
    layers reproduce (their ``same_pad`` flag). Other subclasses with their own forward (or already-quantized
    layers) are left alone, and :func:`quantizable_layers` names them in a warning.
    """
    for base in types:
        if isinstance(mod, base):
            return type(mod).forward is _PLAIN_FORWARDS[base] or (base is nn.Conv2d and is_same_pad_conv(mod))
    return False


def tied_output_layers(model: nn.Module) -> list[str]:
    """Names of the Linear layers whose weight *is* an ``nn.Embedding``'s table (a tied output projection: BERT's
    MLM decoder = the word embeddings).

    No method quantizes them: a quantized copy of the table next to the FP32 table the embedding still reads
    would make a "compressed" model larger than its FP32 original (BERT's decoder is the largest matrix of a
    small BERT), and quantizing the shared table itself would quantize the input embeddings too. So the tie
    stays a tie and the projection stays FP32, as the embeddings do — as GPTQ's and AWQ's reference code leave an
    LM's output head in full precision."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [n for n, m in model.named_modules()
            if n and isinstance(m, nn.Linear) and isinstance(getattr(m, "weight", None), nn.Parameter)
            and id(m.weight) in tables]


def quantizable_layers(model: nn.Module, skip: Iterable[str] = (), types=(nn.Linear, nn.Conv2d)) -> dict[str, nn.Module]:
    """``{name: module}`` of the layers to quantize, in model order, minus names matching ``skip`` and tied output
    projections (:func:`tied_output_layers`)."""
    skip = tuple(skip)
    found, odd = {}, []
    tied = set(tied_output_layers(model))
    if tied:
        log.info("left in full precision, tied to the embedding table: %s", ", ".join(sorted(tied)))
    for name, mod in model.named_modules():
        if not name or matches(name, skip) or name in tied:
            continue
        if is_quantizable(mod, types):
            found[name] = mod
        elif isinstance(mod, types) and not hasattr(mod, "weight_codes") and not hasattr(mod, "weight_fake_quant"):
            odd.append(f"{name} ({type(mod).__name__})")
        if isinstance(mod, nn.MultiheadAttention) and mod.in_proj_weight is not None and nn.Linear in types:
            # torchvision ViTs: the fused q/k/v projection is a bare Parameter used by F.multi_head_attention_forward,
            # not a Linear a layer swap can reach; say so rather than report the model as fully quantized
            odd.append(f"{name}.in_proj_weight (nn.MultiheadAttention's fused q/k/v projection)")
    if odd:
        log.warning("left in full precision (custom forward): %s", ", ".join(odd))
    return found


def set_layer(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name``."""
    model.set_submodule(name, new)
